"""A loaded model with everything a question about it needs: card, data, the training split it actually saw
(poisoned, for a backdoored model), its backdoor and a stable id for cache keys. The CLI and the dashboard both
load models through :func:`open_workspace` and save edits through :func:`edited_checkpoint`, so they agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
from torch import nn

from gif_core.backdoor import BackdoorSpec, poison_training_set
from gif_core.checkpoints import ModelCard, card_path_for, load_checkpoint_bytes
from gif_core.data import DataBundle, LabelledSet, load_data
from gif_core.experiment import MethodOutcome
from gif_core.requests import LabelChange, backdoor_relabel


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


def open_workspace(
    weights: bytes, card_json: str | bytes, filename: str, source: str, data_root: str | Path | None = None
) -> Workspace:
    """Load a checkpoint from its bytes (safetensors, or a ``.pt`` state dict read with ``weights_only=True``),
    its data set (from ``data_root`` for folder-based sets) and, when the card records one, its backdoor."""
    model, card = load_checkpoint_bytes(weights, card_json, filename)
    bundle = load_data(card.dataset, root=data_root, seed=card.split_seed)
    model_id = hashlib.sha256(weights).hexdigest()[:16]  # equals checkpoints.checkpoint_id of the file
    train, backdoor, request = bundle.train, None, None
    if "backdoor" in card.extra:
        backdoor = BackdoorSpec.from_dict(card.extra["backdoor"])
        train, poisoned = poison_training_set(bundle.train, backdoor, bundle.num_classes)
        request = backdoor_relabel(poisoned.poisoned_rows, poisoned.true_labels)
    return Workspace(model, card, bundle, train, model_id, source, backdoor, request)


def open_workspace_path(path: str | Path, data_root: str | Path | None = None) -> Workspace:
    """:func:`open_workspace` for a checkpoint on disk with its card beside it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; check the path")
    card_path = card_path_for(path)
    if not card_path.is_file():
        raise FileNotFoundError(f"model card {card_path} not found; a checkpoint needs its JSON card beside it")
    return open_workspace(path.read_bytes(), card_path.read_bytes(), path.name, str(path), data_root)


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


def checkpoint_bytes(model: nn.Module) -> bytes:
    """The model's weights as safetensors bytes (for a download; the same layout as ``save_checkpoint``)."""
    tensors = {name: value.detach().to("cpu").clone().contiguous() for name, value in model.state_dict().items()}
    return safetensors.torch.save(tensors, metadata={"format": "pt"})
