"""Safe saving and loading of checkpoints: safetensors weights plus a JSON model card beside them.

``X.safetensors`` holds the state dict; ``X.json`` holds the :class:`ModelCard` (architecture, input shape,
classes, data set and split seed, training recipe, accuracy). Nothing is ever unpickled: ``.pt``/``.pth``
state dicts are read with ``torch.load(weights_only=True)``, which refuses arbitrary Python objects.
Saving never overwrites: an edited model is always a new file.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from gif_core.models import ARCHITECTURES, build_model
from gif_core.train import resolve_device

FORMAT_VERSION = 1
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth")
_MAX_LISTED = 8


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint is: enough to rebuild the model and to reproduce its data split and training."""

    arch: str
    input_shape: tuple[int, ...]
    num_classes: int
    classes: tuple[str, ...]
    dataset: str
    split_seed: int
    recipe: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    format_version: int = FORMAT_VERSION
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"model card names unknown architecture {self.arch!r}; known: {', '.join(ARCHITECTURES)}")
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"model card format_version {self.format_version} is not supported (this version reads "
                f"{FORMAT_VERSION}); re-save the model with this version of gif_core"
            )
        if len(self.classes) != self.num_classes:
            raise ValueError(f"model card lists {len(self.classes)} classes but num_classes is {self.num_classes}")
        if not self.input_shape or min(self.input_shape) < 1:
            raise ValueError(f"model card input_shape must be positive sizes, got {self.input_shape}")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["input_shape"] = list(self.input_shape)
        values["classes"] = list(self.classes)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelCard:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model card has unknown fields {unknown}; known fields are {sorted(known)}")
        try:
            return cls(**values)
        except TypeError as error:  # a required field is missing, or a field has the wrong type
            raise ValueError(f"model card is incomplete or malformed: {error}") from error

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"model card is not valid JSON: {error}") from error
        if not isinstance(values, dict):
            raise ValueError("model card JSON must be an object of fields")
        return cls.from_dict(values)


def card_path_for(weights_path: str | Path) -> Path:
    """The model card's path beside a weights file: same name, ``.json`` suffix."""
    return Path(weights_path).with_suffix(".json")


def check_new_checkpoint_path(path: str | Path) -> Path:
    """``path`` if a checkpoint may be saved there: a ``.safetensors`` name whose weights and card do not exist."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoints are saved as .safetensors files, got {path.name!r}; use a .safetensors name")
    for existing in (path, card_path_for(path)):
        if existing.exists():
            raise FileExistsError(f"{existing} already exists; choose a new name (checkpoints are never overwritten)")
    return path


def save_checkpoint(model: nn.Module, card: ModelCard, path: str | Path) -> Path:
    """Write ``model``'s weights to ``path`` (``.safetensors``) and ``card`` beside it; return ``path``.

    Refuses to overwrite either file: edited models are always saved under a new name.
    """
    path = check_new_checkpoint_path(path)
    tensors = {name: value.detach().to("cpu").clone().contiguous() for name, value in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # A single metadata key: safetensors orders metadata keys arbitrarily, and the file's hash must depend on
    # the weights alone (checkpoint_id).
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
    card_path_for(path).write_text(card.to_json(), encoding="utf-8")
    return path


def load_checkpoint(
    path: str | Path, card_path: str | Path | None = None, device: str | torch.device | None = None
) -> tuple[nn.Module, ModelCard]:
    """Load weights (``.safetensors``, or a ``.pt``/``.pth`` state dict) and their model card.

    The card defaults to the ``.json`` file beside the weights. The model is rebuilt from the card and returned
    in eval mode on ``device`` (``None``: the GPU when present).
    """
    path = Path(path)
    card_path = card_path_for(path) if card_path is None else Path(card_path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; check the path")
    if not card_path.is_file():
        raise FileNotFoundError(
            f"model card {card_path} not found; a checkpoint needs its JSON card (architecture, input shape, "
            "classes) beside the weights, or pass the card's path"
        )
    return load_checkpoint_bytes(path.read_bytes(), card_path.read_bytes(), path.name, device=device)


def load_checkpoint_bytes(
    weights: bytes | BinaryIO,
    card_json: str | bytes,
    filename: str,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, ModelCard]:
    """:func:`load_checkpoint` for uploaded content: the format is chosen by ``filename``'s suffix."""
    content = weights if isinstance(weights, bytes) else weights.read()
    card = ModelCard.from_json(card_json)
    state = _read_state_dict(content, filename)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG untouched
        model = build_model(card.arch, card.input_shape, card.num_classes)
    _check_compatible(model, state, card)
    model.load_state_dict(state)
    return model.to(resolve_device(device)).eval(), card


def _read_state_dict(content: bytes, filename: str) -> dict[str, torch.Tensor]:
    suffix = Path(filename).suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"{filename!r} is not a supported weights file; use .safetensors (preferred) or a .pt/.pth state dict"
        )
    if suffix == ".safetensors":
        try:
            return safetensors.torch.load(content)
        except SafetensorError as error:
            raise ValueError(f"{filename!r} is not a valid safetensors file: {error}") from error
    try:
        state = torch.load(io.BytesIO(content), weights_only=True, map_location="cpu")
    except Exception as error:  # any failure of the weights-only reader (UnpicklingError, struct.error, ...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"refused to load {filename!r}: torch.load(weights_only=True) could not read it as a plain state "
            "dict of tensors (the file is corrupt, or holds Python objects that could run code when unpickled; "
            f"reader said: {reason}). Save the weights with torch.save(model.state_dict(), path) or as "
            ".safetensors."
        ) from error
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{filename!r} does not hold a state dict (a mapping of parameter names to tensors); "
            "save it with torch.save(model.state_dict(), path)"
        )
    return state


def _check_compatible(model: nn.Module, state: dict[str, torch.Tensor], card: ModelCard) -> None:
    """One ValueError listing every missing key, unexpected key and shape mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{name}: file {tuple(state[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(state))
        if state[name].shape != expected[name].shape
    ]
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:_MAX_LISTED])}{', ...' if len(items) > _MAX_LISTED else ''}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if items
    ]
    if problems:
        raise ValueError(
            f"the weights do not fit the model card's architecture {card.arch!r} "
            f"(input_shape {card.input_shape}, {card.num_classes} classes): " + "; ".join(problems) + ". "
            "Check that the card's arch, input_shape and num_classes describe these weights, "
            "or load the card saved with them."
        )


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_id(path: str | Path) -> str:
    """A short, stable id of a checkpoint for cache keys: the first 16 hex digits of its weights' SHA-256."""
    return file_sha256(path)[:16]
