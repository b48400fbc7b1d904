"""Safe saving and loading of checkpoints: safetensors weights plus a JSON model card beside them.

``X.safetensors`` holds the state dict; ``X.json`` holds the :class:`ModelCard` (architecture, input shape,
classes, data set and split seed, training recipe, accuracy). Nothing is ever unpickled: ``.pt``/``.pth``
state dicts are read with ``torch.load(weights_only=True)``, which refuses arbitrary Python objects; a training
checkpoint's ``{"state_dict": ...}`` or ``{"model_state_dict": ...}`` wrapper is unwrapped (:func:`unwrap_state_dict`).
Saving never overwrites: an edited model is always a new file.

Every input is checked before anything is built or read, and a bad one is a ``ValueError`` that says what is
wrong and what to do:

- the card is validated field by field (types, ranges, sizes; see :class:`ModelCard`) and is at most
  :data:`MAX_CARD_BYTES`;
- the model the card describes is counted on ``torch.device("meta")`` (which allocates nothing) and refused
  above ``GIF_MAX_PARAMETERS`` numbers (parameters and buffers; default :data:`DEFAULT_MAX_PARAMETERS`, 50
  million: resnet18 on 32x32 images has 11.2 million, vgg11 9.5 million);
- the weights are refused above ``GIF_MAX_WEIGHT_BYTES`` bytes (default :data:`DEFAULT_MAX_WEIGHT_BYTES`, 256
  MiB: 50 million float32 numbers fit), counting for a ``.pt``/``.pth`` zip archive the sizes its entries expand
  to (a deflate-compressed archive of a few MB can expand to GBs), before ``torch.load`` reads it. A
  safetensors file is never compressed: its data must lie inside the file, so its length is the bound.

Raise the two limits by setting those environment variables to a larger whole number.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from gif_core.exported import EXPORTED_ARCH, export_bytes, load_exported
from gif_core.model_card import MAX_CARD_BYTES, ModelCard
from gif_core.models import build_model
from gif_core.outputs import write_new_files
from gif_core.train import resolve_device

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth", ".pt2")
SAVED_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt2")
"""How checkpoints are written: safetensors weights, or an exported program's ``.pt2``."""
_MAX_LISTED = 8

MAX_PARAMETERS_ENV = "GIF_MAX_PARAMETERS"
MAX_WEIGHT_BYTES_ENV = "GIF_MAX_WEIGHT_BYTES"
DEFAULT_MAX_PARAMETERS = 50_000_000
"""Numbers (parameters and buffers) a checkpoint's model may hold unless ``GIF_MAX_PARAMETERS`` says otherwise:
4.5x resnet18 on CIFAR-size images, 200 MB of float32."""
DEFAULT_MAX_WEIGHT_BYTES = 256 * 2**20
"""Bytes a weights file may hold (expanded, for a compressed ``.pt``) unless ``GIF_MAX_WEIGHT_BYTES`` says
otherwise: room for :data:`DEFAULT_MAX_PARAMETERS` float32 numbers."""


def _env_limit(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"environment variable {name}={text!r} must be a whole number >= 1 (or unset: {default:,})")
    return value


def max_parameters() -> int:
    """The most numbers (parameters and buffers) a loaded model may hold: ``$GIF_MAX_PARAMETERS``, else
    :data:`DEFAULT_MAX_PARAMETERS`."""
    return _env_limit(MAX_PARAMETERS_ENV, DEFAULT_MAX_PARAMETERS)


def max_weight_bytes() -> int:
    """The most bytes a weights file may hold, expanded: ``$GIF_MAX_WEIGHT_BYTES``, else
    :data:`DEFAULT_MAX_WEIGHT_BYTES`."""
    return _env_limit(MAX_WEIGHT_BYTES_ENV, DEFAULT_MAX_WEIGHT_BYTES)


def count_parameters(arch: str, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Numbers in the state dict (parameters and buffers) of ``build_model(arch, input_shape, num_classes)``,
    counted on ``torch.device("meta")``: shapes only, nothing allocated or initialised."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(arch, input_shape, num_classes)
    return sum(tensor.numel() for tensor in model.state_dict().values())


def check_model_size(card: ModelCard) -> int:
    """The number of parameters and buffers of ``card``'s model; ValueError above :func:`max_parameters`. An
    exported program's are counted from its file when it is read (0 here): its card does not say what it holds."""
    if card.arch == EXPORTED_ARCH:
        return 0
    count, limit = count_parameters(card.arch, card.input_shape, card.num_classes), max_parameters()
    if count > limit:
        raise ValueError(
            f"the model card describes a {card.arch} with {count:,} parameters (input_shape {list(card.input_shape)}, "
            f"{card.num_classes} classes), more than the limit of {limit:,}; check the card's input_shape and "
            f"num_classes, or raise the limit with the environment variable {MAX_PARAMETERS_ENV}"
        )
    return count


def _too_many_bytes(filename: str, size: int, limit: int, expanded: bool) -> ValueError:
    what = "expands to" if expanded else "is"
    return ValueError(
        f"weights file {filename!r} {what} {size:,} bytes, more than the limit of {limit:,}; "
        f"raise the limit with the environment variable {MAX_WEIGHT_BYTES_ENV} if this model is meant to be that big"
    )


def check_weights_size(content: bytes, filename: str) -> None:
    """ValueError when ``content`` holds, or expands to, more than :func:`max_weight_bytes`; a ``.pt``/``.pth``
    must be the zip archive ``torch.save`` writes, whose entries' sizes are added up before anything is
    decompressed."""
    limit = max_weight_bytes()
    if len(content) > limit:
        raise _too_many_bytes(filename, len(content), limit, expanded=False)
    if Path(filename).suffix.lower() not in (".pt", ".pth", ".pt2"):
        return  # safetensors: never compressed, every tensor lies inside the file
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            expanded = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as error:
        raise ValueError(
            f"refused to load {filename!r}: it is not the zip archive torch.save writes (PyTorch >= 1.6), so its "
            "size cannot be checked before reading it. Save the weights with torch.save(model.state_dict(), path) "
            "or as .safetensors."
        ) from error
    if expanded > limit:
        raise _too_many_bytes(filename, expanded, limit, expanded=True)


def _read_bounded(path: Path, limit: int, too_big: Any) -> bytes:
    """The bytes of ``path``, refused (``too_big(size)``) before reading when it is larger than ``limit``."""
    size = path.stat().st_size
    if size > limit:
        raise too_big(size)
    return path.read_bytes()


def card_path_for(weights_path: str | Path) -> Path:
    """The model card's path beside a weights file: same name, ``.json`` suffix."""
    return Path(weights_path).with_suffix(".json")


def check_new_checkpoint_path(path: str | Path) -> Path:
    """``path`` if a checkpoint may be saved there: a ``.safetensors`` name (``.pt2`` for an exported program)
    whose weights and card do not exist."""
    path = Path(path)
    if path.suffix not in SAVED_SUFFIXES:
        raise ValueError(
            f"checkpoints are saved as .safetensors files (.pt2 for an exported program), got {path.name!r}; use a "
            ".safetensors name"
        )
    for existing in (path, card_path_for(path)):
        if existing.exists():
            raise FileExistsError(f"{existing} already exists; choose a new name (checkpoints are never overwritten)")
    return path


def weights_bytes(model: nn.Module) -> bytes:
    """``model``'s state dict as safetensors bytes (CPU, contiguous). A single metadata key: safetensors orders
    metadata keys arbitrarily, and the file's hash must depend on the weights alone (:func:`checkpoint_id`)."""
    tensors = {name: value.detach().to("cpu").clone().contiguous() for name, value in model.state_dict().items()}
    return safetensors.torch.save(tensors, metadata={"format": "pt"})


def checkpoint_files(model: nn.Module, card: ModelCard, path: str | Path) -> dict[Path, bytes]:
    """The two files of a checkpoint at ``path`` (weights and card), as bytes, for :func:`gif_core.outputs.write_new_files`.
    Non-finite weights are refused: a model with NaN or inf in it is never saved. An exported program's model is
    saved as a ``.pt2`` (exported again, and checked by loading it back: :func:`gif_core.exported.export_bytes`)."""
    path = check_new_checkpoint_path(path)
    bad = _non_finite(model.state_dict())
    if bad:
        raise FloatingPointError(f"the model has non-finite weights (NaN or inf) in {bad}; it is not saved")
    exported = card.arch == EXPORTED_ARCH
    if exported != (path.suffix == ".pt2"):
        wanted = ".pt2" if exported else ".safetensors"
        raise ValueError(f"a {card.arch} model is saved as a {wanted} file, got {path.name!r}; use a {wanted} name")
    weights = export_bytes(model, card.input_shape) if exported else weights_bytes(model)
    return {path: weights, card_path_for(path): card.to_json().encode()}


def save_checkpoint(model: nn.Module, card: ModelCard, path: str | Path) -> Path:
    """Write ``model``'s weights to ``path`` (``.safetensors``) and ``card`` beside it; return ``path``.

    Both files or neither: they are written under temporary names and linked into place, and either name existing
    (before, or made by someone else meanwhile) is an error; edited models are always saved under a new name.
    """
    files = checkpoint_files(model, card, path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_new_files(files)
    return Path(path)


def load_checkpoint(
    path: str | Path, card_path: str | Path | None = None, device: str | torch.device | None = None
) -> tuple[nn.Module, ModelCard]:
    """Load weights (``.safetensors``, or a ``.pt``/``.pth`` state dict) and their model card.

    The card defaults to the ``.json`` file beside the weights. The model is rebuilt from the card and returned
    in eval mode on ``device`` (``None``: the GPU when present). The card is read and checked first, then the
    size of its model and of the weights file (see the module docstring), and only then the weights.
    """
    path = Path(path)
    card_path = card_path_for(path) if card_path is None else Path(card_path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; check the path")
    card = read_card(card_path)
    check_model_size(card)
    return _load_sized(card, read_weights_file(path), path.name, device)


def read_weights_file(path: str | Path) -> bytes:
    """The bytes of weights file ``path``, refused before reading when it is larger than :func:`max_weight_bytes`."""
    path, limit = Path(path), max_weight_bytes()
    return _read_bounded(path, limit, lambda size: _too_many_bytes(path.name, size, limit, expanded=False))


def read_card(card_path: str | Path) -> ModelCard:
    """The validated :class:`ModelCard` in the ``.json`` file ``card_path``."""
    card_path = Path(card_path)
    if not card_path.is_file():
        raise FileNotFoundError(
            f"model card {card_path} not found; a checkpoint needs its JSON card (architecture, input shape, "
            "classes) beside the weights, or pass the card's path"
        )
    return ModelCard.from_json(
        _read_bounded(
            card_path,
            MAX_CARD_BYTES,
            lambda size: ValueError(
                f"model card {card_path} is {size:,} bytes, more than a card can be ({MAX_CARD_BYTES:,}); "
                "pass the .json card saved with the weights"
            ),
        )
    )


def load_checkpoint_bytes(
    weights: bytes | BinaryIO,
    card_json: str | bytes,
    filename: str,
    device: str | torch.device | None = None,
    template: nn.Module | None = None,
) -> tuple[nn.Module, ModelCard]:
    """:func:`load_checkpoint` for uploaded content: the format is chosen by ``filename``'s suffix."""
    return load_weights(ModelCard.from_json(card_json), weights, filename, device=device, template=template)


def load_weights(
    card: ModelCard,
    weights: bytes | BinaryIO,
    filename: str,
    device: str | torch.device | None = None,
    template: nn.Module | None = None,
) -> tuple[nn.Module, ModelCard]:
    """The model ``card`` describes with ``weights`` loaded into it (the format chosen by ``filename``'s suffix),
    in eval mode on ``device``. The model's size and the weights' size are checked before either is built or
    read. ``template``: a model of the architecture to load a state dict into (a copy of it), instead of the one
    built from ``card.arch`` — how the weights of a model retrained from an exported program are read back."""
    check_model_size(card)
    if isinstance(weights, bytes):
        content = weights
    else:  # read one byte past the limit: enough to know the file is too big, never the whole of it
        limit = max_weight_bytes()
        content = weights.read(limit + 1)
        if len(content) > limit:
            raise _too_many_bytes(filename, len(content), limit, expanded=False)
    return _load_sized(card, content, filename, device, template)


def _load_sized(
    card: ModelCard,
    content: bytes,
    filename: str,
    device: str | torch.device | None,
    template: nn.Module | None = None,
) -> tuple[nn.Module, ModelCard]:
    """:func:`load_weights` once the card's model is known to be within the parameter limit."""
    check_weights_size(content, filename)
    if (Path(filename).suffix.lower() == ".pt2") != (card.arch == EXPORTED_ARCH and template is None):
        raise ValueError(
            f"{filename!r} and its card disagree: a .pt2 file holds an exported program, whose card names the "
            f"architecture {EXPORTED_ARCH!r} (this card names {card.arch!r}); write the card with `gif card`"
        )
    if template is None and card.arch == EXPORTED_ARCH:
        return _load_exported(card, content, filename, device)
    state = _read_state_dict(content, filename)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG untouched
        model = (
            copy.deepcopy(template)
            if template is not None
            else build_model(card.arch, card.input_shape, card.num_classes)
        )
    _check_compatible(model, state, card)
    _check_finite(state, filename)
    model.load_state_dict(state)
    return model.to(resolve_device(device)).eval(), card


def _load_exported(
    card: ModelCard, content: bytes, filename: str, device: str | torch.device | None
) -> tuple[nn.Module, ModelCard]:
    """The exported program in ``content`` (:func:`gif_core.exported.load_exported`), refused above the parameter
    limit, with non-finite weights, or when its logits are not ``card.num_classes`` wide."""
    model = load_exported(content, filename, card.input_shape)
    count, limit = sum(tensor.numel() for tensor in model.state_dict().values()), max_parameters()
    if count > limit:
        raise ValueError(
            f"the exported program in {filename!r} holds {count:,} parameters and buffers, more than the limit of "
            f"{limit:,}; raise the limit with the environment variable {MAX_PARAMETERS_ENV}"
        )
    _check_finite(model.state_dict(), filename)
    with torch.no_grad():
        width = model(torch.zeros((1, *card.input_shape))).shape
    if tuple(width) != (1, card.num_classes):
        raise ValueError(
            f"the exported program in {filename!r} returns outputs of shape {list(width)[1:]} per input, but its card "
            f"has {card.num_classes} classes; check the card's num_classes"
        )
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
    return unwrap_state_dict(state, filename)


STATE_DICT_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict")
"""The keys under which a training checkpoint saved with ``torch.save({...})`` keeps the model's state dict."""


def unwrap_state_dict(loaded: object, filename: str) -> dict[str, torch.Tensor]:
    """The state dict in what ``torch.load(weights_only=True)`` read from ``filename``: the plain mapping of names
    to tensors that ``torch.save(model.state_dict(), path)`` writes, or a training checkpoint's wrapper
    ``{"state_dict": ...}`` / ``{"model_state_dict": ...}`` (its other entries, e.g. an epoch or the optimizer's
    state, are ignored). Anything else is a ValueError saying what the file holds and how to save it."""
    if _is_state_dict(loaded):
        return loaded
    wrapped = [key for key in STATE_DICT_KEYS if isinstance(loaded, dict) and key in loaded]
    if len(wrapped) > 1:
        raise ValueError(
            f"{filename!r} holds both {wrapped[0]!r} and {wrapped[1]!r}, so which weights to load is ambiguous; "
            "save only the model's weights with torch.save(model.state_dict(), path)"
        )
    inner = loaded[wrapped[0]] if wrapped and isinstance(loaded, dict) else loaded  # wrapped implies a dict
    if wrapped and _is_state_dict(inner):
        return inner
    where = f"its {wrapped[0]!r} entry" if wrapped else "it"
    keys = " or ".join(repr(k) for k in STATE_DICT_KEYS)
    raise ValueError(
        f"{filename!r} does not hold a state dict (a mapping of parameter names to tensors, or one under a {keys} "
        f"key): {where} {_not_a_state_dict(inner)}; save it with torch.save(model.state_dict(), path)"
    )


def _is_state_dict(value: object) -> TypeGuard[dict[str, torch.Tensor]]:
    """Whether ``value`` is a mapping of parameter names (strings) to tensors."""
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _not_a_state_dict(value: object) -> str:
    """What makes ``value`` not a state dict, for the error message: its type, or its first bad entry."""
    if not isinstance(value, dict):
        return f"is a {type(value).__name__}"
    key, entry = next((k, v) for k, v in value.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
    if not isinstance(key, str):
        return f"has the key {repr(key)[:80]} of type {type(key).__name__}, not a parameter name"
    return f"maps {repr(key)[:80]} to a {type(entry).__name__}, not a tensor"


def _non_finite(state: Mapping[str, torch.Tensor]) -> str:
    """The names of the floating-point tensors of ``state`` holding NaN or ±inf, listed ('' when there are none)."""
    bad = [name for name, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    return ", ".join(bad[:_MAX_LISTED]) + (", ..." if len(bad) > _MAX_LISTED else "")


def _check_finite(state: dict[str, torch.Tensor], filename: str) -> None:
    """A ValueError naming the tensors of ``state`` that hold NaN or ±inf (such a model has no valid prediction)."""
    bad = _non_finite(state)
    if bad:
        raise ValueError(
            f"{filename!r} holds non-finite weights (NaN or inf) in {bad}: the model is unusable; load the "
            "checkpoint it was trained or edited from"
        )


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
