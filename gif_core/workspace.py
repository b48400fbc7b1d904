"""A loaded model with everything a question about it needs: card, data, the training split it actually saw
(poisoned, for a backdoored model), its backdoor and a stable id for cache keys. The CLI and the dashboard both
load models through :func:`open_workspace` and save edits through :func:`edited_checkpoint`, so they agree.

A path typed into the dashboard is first checked by :func:`resolve_local_checkpoint`: it must lead, with links
followed, to a checkpoint under one of the allowed folders (``$GIF_LOCAL_ROOTS``, ``os.pathsep``-separated; by
default the current working directory and the repository's ``assets/``), and anything else is one message, so
a visitor learns nothing about the server's other files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from gif_core.backdoor import BackdoorSpec, poison_training_set
from gif_core.checkpoints import (
    WEIGHT_SUFFIXES,
    ModelCard,
    card_path_for,
    check_model_size,
    load_weights,
    read_card,
    read_weights_file,
)
from gif_core.data import DataBundle, LabelledSet, load_data
from gif_core.experiment import (
    PREPARE_SHARE,
    EditConfig,
    EditReport,
    MethodOutcome,
    PreparedEdit,
    Progress,
    answer,
    prepare_edit,
    stage,
)
from gif_core.exported import EXPORTED_ARCH
from gif_core.requests import EditRequest, LabelChange, backdoor_relabel
from gif_core.retrain import Retrained, cached_retrain, retrain


@dataclass(frozen=True)
class Workspace:
    """``train`` is the split the model was trained on (the poisoned copy for a backdoored model), and
    ``backdoor_request`` the label change that undoes the poisoning (None for a clean model)."""

    model: nn.Module
    card: ModelCard
    bundle: DataBundle
    train: LabelledSet
    model_id: str
    source: str
    backdoor: BackdoorSpec | None = None
    backdoor_request: LabelChange | None = None

    @property
    def weight_decay(self) -> float:
        return float(self.card.recipe.get("weight_decay", 0.0))

    @property
    def model_info(self) -> dict:
        """What a report says about the model asked about: where it came from and its content id."""
        return {"path": self.source, "id": self.model_id}

    def backdoor_for(self, request: EditRequest) -> BackdoorSpec | None:
        """The backdoor a request undoes (its metrics are then reported): this model's, if ``request`` is the label
        change that undoes its poisoning, else None."""
        return self.backdoor if self.backdoor_request is not None and request == self.backdoor_request else None

    def retrain(
        self, request: EditRequest, progress: Callable[[int, int], None] | None = None, show_bar: bool = True
    ) -> Retrained:
        """The model retrained on the training split this model saw, edited by ``request`` (cached; see
        :func:`gif_core.retrain.retrain`)."""
        return retrain(
            self.card, self.bundle, self.train, request, self.model_id, progress=progress, show_bar=show_bar,
            template=self.retrain_template,
        )  # fmt: skip

    @property
    def retrain_template(self) -> nn.Module | None:
        """The model itself when its card names no architecture to rebuild (an exported program: the architecture
        is its graph), else None."""
        return self.model if self.card.arch == EXPORTED_ARCH else None

    def cached_retrain(self, request: EditRequest) -> Retrained | None:
        """The retrained model of :meth:`retrain` if the cache holds it, else None (nothing is trained)."""
        return cached_retrain(self.card, self.train, request, self.model_id, template=self.retrain_template)

    def prepare(
        self,
        request: EditRequest,
        config: EditConfig | None = None,
        *,
        retrained: Retrained | None = None,
        progress: Progress | None = None,
    ) -> PreparedEdit:
        """:func:`gif_core.experiment.prepare_edit` for this model, its training split and backdoor, with the
        retrained ground truth (its seconds and cache state reported) when given."""
        prepared = prepare_edit(
            self.model, self.card, self.bundle, request, config, train=self.train,
            backdoor=self.backdoor_for(request), model_info=self.model_info, progress=progress,
        )  # fmt: skip
        if retrained is None:
            return prepared
        return prepared.with_retrained(retrained.model, retrained.seconds, retrained.from_cache)

    def answer(
        self,
        request: EditRequest,
        config: EditConfig | None = None,
        *,
        retrain: bool = False,
        progress: Progress | None = None,
        retrain_progress: Callable[[int, int], None] | None = None,
        show_bar: bool = True,
    ) -> EditReport:
        """The frozen report answering ``request`` with every method of ``config`` on this model; with ``retrain``
        against the model retrained without the data (trained once, then read from the cache). ``progress(message,
        fraction)`` is called between the phases of the edit, ``retrain_progress(step, steps)`` while retraining.
        The model is never modified."""
        config = config or EditConfig()
        retrained = self.retrain(request, retrain_progress, show_bar) if retrain else None
        prepared = self.prepare(request, config, retrained=retrained, progress=stage(progress, 0.0, PREPARE_SHARE))
        return answer(prepared, config, stage(progress, PREPARE_SHARE, 1 - PREPARE_SHARE))


def open_workspace(
    weights: bytes, card_json: str | bytes, filename: str, source: str, data_root: str | Path | None = None
) -> Workspace:
    """Load a checkpoint from its bytes (safetensors, or a ``.pt`` state dict read with ``weights_only=True``),
    its data set (from ``data_root`` for folder-based sets) and, when the card records one, its backdoor.

    Checked in this order, each a ValueError saying what is wrong: the card (every field), the size of its model,
    whether the card fits its data set (input shape and number of classes), the weights' size, and whether the
    weights fit the card."""
    return _open(ModelCard.from_json(card_json), lambda: weights, filename, source, data_root)


def _open(
    card: ModelCard, read: Callable[[], bytes], filename: str, source: str, data_root: str | Path | None
) -> Workspace:
    check_model_size(card)
    bundle = load_data(card.dataset, root=data_root, seed=card.split_seed)
    check_card_matches_data(card, bundle)
    weights = read()
    model, card = load_weights(card, weights, filename)
    model_id = hashlib.sha256(weights).hexdigest()[:16]  # equals checkpoints.checkpoint_id of the file
    train, backdoor, request = bundle.train, None, None
    if "backdoor" in card.extra:
        backdoor, train, request = _backdoor(card, bundle)
    return Workspace(model, card, bundle, train, model_id, source, backdoor, request)


def check_card_matches_data(card: ModelCard, bundle: DataBundle) -> None:
    """ValueError unless the card's input shape and number of classes are those of its data set."""
    if tuple(card.input_shape) == tuple(bundle.input_shape) and card.num_classes == bundle.num_classes:
        return
    raise ValueError(
        f"the model card does not fit its data set: the card describes inputs of shape {list(card.input_shape)} "
        f"and {card.num_classes} classes, but data set {card.dataset!r} has inputs of shape "
        f"{list(bundle.input_shape)} and {bundle.num_classes} classes. Check the card's dataset, input_shape and "
        "num_classes (these weights may have been trained on another data set), or load the card saved with them."
    )


def _backdoor(card: ModelCard, bundle: DataBundle) -> tuple[BackdoorSpec, LabelledSet, LabelChange]:
    """The card's backdoor, the poisoned training split and the request undoing it; ValueError if malformed."""
    spec = card.extra["backdoor"]
    try:
        if not isinstance(spec, dict):
            raise ValueError(f"it must be an object, got {type(spec).__name__}")
        backdoor = BackdoorSpec.from_dict(spec)
        if backdoor.target >= bundle.num_classes:
            raise ValueError(f"target {backdoor.target} is not one of the {bundle.num_classes} classes")
        if len(bundle.input_shape) != 3:
            raise ValueError(f"a trigger needs image inputs, and {card.dataset!r} is tabular")
        train, poisoned = poison_training_set(bundle.train, backdoor, bundle.num_classes)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError) as error:
        raise ValueError(
            f"the model card's extra.backdoor is malformed ({error}); it must be what BackdoorSpec.to_dict() "
            'writes, e.g. {"target": 0, "fraction": 0.1, "seed": 0, "trigger": {"kind": "checkerboard", "size": '
            '4, "corner": "bottom-right"}}'
        ) from error
    return backdoor, train, backdoor_relabel(poisoned.poisoned_rows, poisoned.true_labels)


def open_workspace_path(path: str | Path, data_root: str | Path | None = None) -> Workspace:
    """:func:`open_workspace` for a checkpoint on disk with its card beside it; the card is read and checked
    first, and the weights file only once its size is known to be within the limit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; check the path")
    card_path = card_path_for(path)
    if not card_path.is_file():
        raise FileNotFoundError(f"model card {card_path} not found; a checkpoint needs its JSON card beside it")
    return _open(read_card(card_path), lambda: read_weights_file(path), path.name, str(path), data_root)


LOCAL_ROOTS_ENV = "GIF_LOCAL_ROOTS"


def local_roots() -> tuple[Path, ...]:
    """The folders local paths may lead into: ``$GIF_LOCAL_ROOTS`` (``os.pathsep``-separated), else the current
    working directory and the repository's ``assets/`` folder; each resolved, links followed."""
    from gif_core.zoo import ASSETS_DIR  # here: zoo imports this module's dependencies, not the other way round

    text = os.environ.get(LOCAL_ROOTS_ENV, "")
    named = [Path(part) for part in text.split(os.pathsep) if part.strip()] or [Path.cwd(), ASSETS_DIR]
    return tuple(dict.fromkeys(root.resolve() for root in named))


def _under_roots(path: str | Path, roots: Sequence[str | Path] | None) -> tuple[Path | None, tuple[Path, ...]]:
    """``path`` resolved (links followed; relative to the working directory) if it lies under one of ``roots``
    (default :func:`local_roots`), else None; and the resolved roots."""
    resolved_roots = local_roots() if roots is None else tuple(Path(root).resolve() for root in roots)
    try:
        resolved = Path(path).resolve()
    except (OSError, ValueError, RuntimeError):  # a link loop, a NUL byte, ...
        return None, resolved_roots
    inside = any(resolved == root or resolved.is_relative_to(root) for root in resolved_roots)
    return (resolved if inside else None), resolved_roots


def _roots_text(roots: tuple[Path, ...]) -> str:
    return ", ".join(str(root) for root in roots)


def resolve_local_checkpoint(path: str | Path, roots: Sequence[str | Path] | None = None) -> Path:
    """The resolved path of the checkpoint at ``path``, which must lie under one of ``roots`` (default
    :func:`local_roots`) with links followed, and so must its ``.json`` card.

    Anything else (outside the folders, missing, not a weights file, no card, a link leading out) is one
    FileNotFoundError with the same message, which names the allowed folders and never the path, so a visitor
    cannot tell which files exist on the server.
    """
    weights, resolved_roots = _under_roots(path, roots)
    card = None
    if weights is not None and weights.suffix.lower() in WEIGHT_SUFFIXES and weights.is_file():
        card, _ = _under_roots(card_path_for(weights), resolved_roots)
    if card is None or not card.is_file():
        raise FileNotFoundError(
            "checkpoint not found: there is no checkpoint at this path under the allowed folders: "
            f"{_roots_text(resolved_roots)}. A checkpoint is a .safetensors (or .pt/.pth) file with its .json card "
            f"beside it; put it under one of these folders, or add its folder to the environment variable "
            f"{LOCAL_ROOTS_ENV} ({os.pathsep!r}-separated) before starting the dashboard."
        )
    assert weights is not None  # a card is looked up only beside found weights
    return weights


def resolve_local_folder(path: str | Path, roots: Sequence[str | Path] | None = None) -> Path:
    """The resolved path of the folder at ``path`` (a data folder), which must lie under one of ``roots``
    (default :func:`local_roots`) with links followed; anything else is one FileNotFoundError with the same
    message, as in :func:`resolve_local_checkpoint`."""
    folder, resolved_roots = _under_roots(path, roots)
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(
            "folder not found: there is no folder at this path under the allowed folders: "
            f"{_roots_text(resolved_roots)}. Put the data under one of these folders, or add its folder to the "
            f"environment variable {LOCAL_ROOTS_ENV} ({os.pathsep!r}-separated) before starting the dashboard."
        )
    return folder


def edited_card(workspace: Workspace, outcome: MethodOutcome, request_description: dict) -> ModelCard:
    """The card of an edited model: the original's, with the edit recorded and the accuracy cleared."""
    return ModelCard.from_dict(
        {
            **workspace.card.to_dict(),
            "accuracy": {},
            "notes": f"{outcome.method.upper()} edit of {Path(workspace.source).name}: {request_description}",
            "extra": {**workspace.card.extra, "edited_from": workspace.model_id, "edit": outcome.to_dict()},
        }
    )
