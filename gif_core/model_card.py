"""The model card: what a checkpoint is (architecture, input shape, classes, data set and split seed, training
recipe, accuracy), validated field by field before anything is built from it.

Every field is checked for type, range and size (a card is at most :data:`MAX_CARD_BYTES`, an input sample at most
:data:`MAX_INPUT_ELEMENTS` numbers, ``recipe``/``extra`` nest at most :data:`MAX_NESTING` deep); a bad card is a
``ValueError`` that names the field, shows what it holds, and says what it must be and how to fix it.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NoReturn, TypeGuard

import torch

from gif_core.data import BUNDLED_DATASETS, DATASETS, load_data
from gif_core.exported import EXPORTED_ARCH
from gif_core.models import build_model, is_architecture, unknown_architecture
from gif_core.train import OPTIMIZERS, Recipe

FORMAT_VERSION = 1
MAX_CARD_BYTES = 4 * 2**20
"""A model card is a few KB (an edited model's card records the edit too); more is not a card."""
MAX_INPUT_DIMS = 3
MAX_INPUT_ELEMENTS = 2**24
"""Numbers in one input sample: 16.8 million (3x2048x2048 is 12.6 million)."""
MAX_CLASSES = 100_000
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 1_000_000
MAX_NESTING = 32
"""How deeply the card's ``recipe`` and ``extra`` values may nest lists and objects."""
_SPLIT_SEEDS = (0, 2**32 - 1)  # what scikit-learn's random_state accepts
_TORCH_SEEDS = (-(2**63), 2**64 - 1)  # what torch.manual_seed accepts
_CARD_HINT = "fix the model card (the .json beside the weights) or re-save the model with gif_core"


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
        """Validate every field (types, ranges, sizes) before anything is built from the card: a ValueError
        names the field, what it holds and what it must be."""
        if self.arch != EXPORTED_ARCH and not is_architecture(self.arch):
            raise ValueError(
                f"model card names an {unknown_architecture(_show(self.arch))}, or {EXPORTED_ARCH!r} for a .pt2 "
                "exported program"
            )
        if not _is_int(self.format_version) or self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"model card format_version {_show(self.format_version)} is not supported (this version reads "
                f"{FORMAT_VERSION}); re-save the model with this version of gif_core"
            )
        object.__setattr__(self, "input_shape", _check_input_shape(self.input_shape))
        if not _is_int(self.num_classes) or not 2 <= self.num_classes <= MAX_CLASSES:
            _field_error("num_classes", self.num_classes, f"a whole number from 2 to {MAX_CLASSES:,}")
        object.__setattr__(self, "num_classes", int(self.num_classes))
        if isinstance(self.classes, str | bytes) or not isinstance(self.classes, list | tuple):
            _field_error("classes", self.classes, "a list of class names (strings)")
        if not all(isinstance(c, str) for c in self.classes):
            bad = next(c for c in self.classes if not isinstance(c, str))
            _field_error("classes", bad, "a list of strings; this entry is not a string")
        object.__setattr__(self, "classes", tuple(self.classes))
        if len(self.classes) != self.num_classes:
            raise ValueError(f"model card lists {len(self.classes)} classes but num_classes is {self.num_classes}")
        if not isinstance(self.dataset, str) or self.dataset not in DATASETS:
            _field_error("dataset", self.dataset, f"one of {', '.join(DATASETS)}")
        if not _is_int(self.split_seed) or not _SPLIT_SEEDS[0] <= self.split_seed <= _SPLIT_SEEDS[1]:
            _field_error("split_seed", self.split_seed, f"a whole number from {_SPLIT_SEEDS[0]} to {_SPLIT_SEEDS[1]}")
        _check_recipe(self.recipe)
        if not isinstance(self.accuracy, Mapping) or not all(
            isinstance(k, str) and _is_real(v) for k, v in self.accuracy.items()
        ):
            _field_error("accuracy", self.accuracy, 'an object of split names and numbers, e.g. {"test": 97.2}')
        if not _is_finite(self.train_seconds) or self.train_seconds < 0:
            _field_error("train_seconds", self.train_seconds, "a number of seconds >= 0")
        if not isinstance(self.notes, str):
            _field_error("notes", self.notes, "a string")
        if not isinstance(self.extra, Mapping):
            _field_error("extra", self.extra, "an object (a JSON {...})")
        if _nesting(self.extra) > MAX_NESTING:
            _field_error("extra", "{...}", f"nested at most {MAX_NESTING} lists/objects deep")

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
        """The card as strict JSON: a NaN or inf in it (e.g. an accuracy) raises ValueError."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        if len(text) > MAX_CARD_BYTES:
            raise ValueError(
                f"model card is {len(text):,} bytes, more than a card can be ({MAX_CARD_BYTES:,}); "
                "pass the .json card saved with the weights"
            )
        try:
            values = json.loads(text)
        except RecursionError as error:  # e.g. 100,000 nested '[': the decoder's recursion limit
            raise ValueError(
                "model card is not valid JSON: it nests lists/objects too deeply to read; "
                "pass the .json card saved with the weights"
            ) from error
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4,300 digits
            raise ValueError(f"model card is not valid JSON: {error}") from error
        if not isinstance(values, dict):
            raise ValueError("model card JSON must be an object of fields")
        return cls.from_dict(values)


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> TypeGuard[numbers.Real]:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    try:
        return _is_real(value) and math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _field_error(name: str, value: object, expected: str) -> NoReturn:
    raise ValueError(f"model card field {name!r} must be {expected}, got {_show(value)}; {_CARD_HINT}")


def _check_input_shape(shape: object) -> tuple[int, ...]:
    expected = f"a list of 1 to {MAX_INPUT_DIMS} whole numbers >= 1, e.g. [1, 28, 28] or [4]"
    if isinstance(shape, str | bytes) or not isinstance(shape, list | tuple):
        _field_error("input_shape", shape, expected)
    if not 1 <= len(shape) <= MAX_INPUT_DIMS or not all(_is_int(d) and d >= 1 for d in shape):
        _field_error("input_shape", shape, expected)
    dims = tuple(int(d) for d in shape)
    if math.prod(dims) > MAX_INPUT_ELEMENTS:
        _field_error(
            "input_shape", list(dims), f"at most {MAX_INPUT_ELEMENTS:,} numbers per sample (it has {math.prod(dims):,})"
        )
    return dims


_RECIPE_DEFAULTS = Recipe().to_dict()


def _check_recipe(recipe: object) -> None:
    """A card's recipe: empty (the model cannot be retrained), or the keys of :class:`gif_core.train.Recipe` with
    values of the defaults' types in the ranges ``Recipe`` accepts."""
    if not isinstance(recipe, Mapping):
        _field_error("recipe", recipe, f"an object of training settings (keys {sorted(_RECIPE_DEFAULTS)})")
    unknown = sorted(str(k) for k in set(recipe) - set(_RECIPE_DEFAULTS))
    if unknown:
        raise ValueError(
            f"model card recipe has unknown keys {unknown}; known keys are {sorted(_RECIPE_DEFAULTS)}; {_CARD_HINT}"
        )
    for key, value in recipe.items():
        default = _RECIPE_DEFAULTS[key]
        if isinstance(default, str):
            ok, kind = isinstance(value, str), "a string"
        elif isinstance(default, int):
            ok, kind = _is_int(value), "a whole number"
        elif isinstance(default, float):
            ok, kind = _is_finite(value), "a finite number"
        else:  # a field of another kind: Recipe itself checks it below
            ok, kind = True, ""
        if not ok:
            _field_error(f"recipe.{key}", value, kind)
    if recipe.get("optimizer", "adam") not in OPTIMIZERS:
        _field_error("recipe.optimizer", recipe["optimizer"], f"one of {', '.join(OPTIMIZERS)}")
    for key, high in (("epochs", MAX_EPOCHS), ("batch_size", MAX_BATCH_SIZE)):
        if not 1 <= recipe.get(key, 1) <= high:
            _field_error(f"recipe.{key}", recipe[key], f"a whole number from 1 to {high:,}")
    if not _TORCH_SEEDS[0] <= recipe.get("seed", 0) <= _TORCH_SEEDS[1]:
        _field_error("recipe.seed", recipe["seed"], "a seed torch.manual_seed accepts (from -2**63 to 2**64 - 1)")
    try:  # the remaining ranges (lr > 0, weight_decay >= 0, 0 <= momentum < 1), as Recipe itself checks them
        Recipe(**{**_RECIPE_DEFAULTS, **recipe})
    except (ValueError, TypeError) as error:
        raise ValueError(f"model card recipe is out of range: {error}; {_CARD_HINT}") from error


def _nesting(value: object) -> int:
    """How deeply ``value`` nests lists and objects (iteratively: a deep value cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[object]
        if isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_NESTING:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


@dataclass(frozen=True)
class CardForm:
    """What a person holding only a state dict says about it, to write its model card (:func:`card_from_form`):
    the architecture, the data set it was trained on (one of :data:`~gif_core.data.BUNDLED_DATASETS`: an upload
    names no data folder), the seed that split that data set, how it was trained (``None``: unknown, and then the
    model cannot be retrained for comparison), and free-text notes."""

    arch: str
    dataset: str
    split_seed: int = 0
    recipe: Recipe | None = None
    notes: str = ""


FORM_NOTE = "Card written in GIF Explorer's form for an uploaded state dict."


def card_from_form(form: CardForm, data_root: str | None = None) -> ModelCard:
    """The validated :class:`ModelCard` ``form`` describes: input shape and class names read from its data set
    (a folder-based one from ``data_root``), every field checked by :class:`ModelCard`, and the architecture checked
    to build for that input shape (on ``torch.device("meta")``: nothing allocated), so a card that cannot fit any
    weights is refused when written. An exported program (``arch`` :data:`~gif_core.exported.EXPORTED_ARCH`) is
    checked against its data set when its ``.pt2`` is loaded."""
    if form.dataset not in BUNDLED_DATASETS and data_root is None:
        raise ValueError(
            f"a card written here must name a data set that loads without a folder ({', '.join(BUNDLED_DATASETS)}), "
            f"got {_show(form.dataset)}; for {', '.join(d for d in DATASETS if d not in BUNDLED_DATASETS)}, save the "
            "card beside the weights and load them by path with the data folder"
        )
    bundle = load_data(form.dataset, root=data_root)  # the shape and the classes do not depend on the split seed
    card = ModelCard(
        arch=form.arch,
        input_shape=bundle.input_shape,
        num_classes=bundle.num_classes,
        classes=bundle.classes,
        dataset=form.dataset,
        split_seed=form.split_seed,
        recipe={} if form.recipe is None else form.recipe.to_dict(),
        notes=" ".join(part for part in (FORM_NOTE, form.notes.strip()) if part),
    )
    if card.arch == EXPORTED_ARCH:
        return card
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            build_model(card.arch, card.input_shape, card.num_classes)
    except ValueError as error:
        raise ValueError(f"architecture {card.arch!r} does not fit data set {card.dataset!r}: {error}") from error
    return card
