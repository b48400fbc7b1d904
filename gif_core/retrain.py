"""Retraining ground truth: the same architecture, recipe and seed, trained on the edited training set.

Results are cached on disk, one safetensors file per question under ``$GIF_CACHE_DIR/retrained`` (default
``~/.cache/gif-explorer/retrained``), so the same question is never retrained twice. The key
(:func:`retrain_key`) hashes everything the retrained weights depend on: the base checkpoint's id, the request,
the architecture, the data set's name and split seed, the recipe, the card's backdoor spec, and a content
fingerprint of the training set actually used (its inputs' and labels' bytes, dtypes and shapes), so the same
checkpoint over another data root, or a clean and a backdoored card over the same weights, never share an entry.

The entry's metadata holds its key, the model card and a SHA-256 of the weights (:mod:`gif_core.cache_files`);
it is written to a temporary name and moved into place atomically, so two processes asking the same question at
once both succeed. An entry that is truncated, unparsable, for another key (e.g. any checkpoint copied over it) or
whose weights do not match their checksum is a miss: a :class:`~gif_core.cache_files.CacheWarning` names it, and
the model is retrained and the entry replaced. (Entries of older versions, a ``.safetensors`` and ``.json``
pair under another key, are simply never looked up.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
from torch import nn

from gif_core.cache_files import (
    InvalidEntry,
    data_fingerprint,
    default_cache_dir,
    load_entry,
    read_or_miss,
    save_entry,
)
from gif_core.checkpoints import ModelCard, load_checkpoint_bytes
from gif_core.data import DataBundle, LabelledSet
from gif_core.exported import reinitialised
from gif_core.requests import EditRequest
from gif_core.train import TRAINING_PROCEDURE, Recipe, build_and_train


def edited_training_set(train: LabelledSet, request: EditRequest, num_classes: int) -> LabelledSet:
    """The training set the request asks about: U removed, or U relabelled."""
    return request.edit(train.labels, num_classes).edited_set(train)


ENTRY_KIND = "retrained/1"
"""The ``gif_cache`` kind of a retrained-model entry (see :mod:`gif_core.cache_files`)."""


def retrain_key(base_id: str, request: EditRequest, card: ModelCard, train: LabelledSet) -> str:
    """The cache key of a retrain question: a hash of the base checkpoint id, the request, the card's
    architecture, data set name, split seed, recipe, the training procedure's version and backdoor spec, and the
    fingerprint of ``train`` (the
    training set the base model saw, before the edit)."""
    payload = {
        "base": base_id,
        "request": request.describe(),
        "arch": card.arch,
        "dataset": card.dataset,
        "split_seed": card.split_seed,
        "recipe": card.recipe,
        "training": TRAINING_PROCEDURE,
        "backdoor": card.extra.get("backdoor"),
        "train": data_fingerprint(train.inputs, train.labels),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Retrained:
    """A retrained model and its card; ``path`` is its cache entry, ``from_cache`` whether it was found there,
    ``seconds`` the training time (as recorded in the entry for a cached model)."""

    model: nn.Module
    card: ModelCard
    path: Path
    from_cache: bool
    seconds: float


def _cache_path(key: str, cache_dir: Path | None) -> Path:
    return (cache_dir or default_cache_dir()) / "retrained" / f"{key}.safetensors"


def _read_entry(path: Path, key: str, template: nn.Module | None = None) -> Retrained:
    """The verified entry at ``path`` (see the module docstring); :class:`InvalidEntry` if it must not be served."""
    tensors, metadata = load_entry(path, ENTRY_KIND, key)
    try:
        card_json = metadata["card"]
        weights = safetensors.torch.save(tensors)
        model, card = load_checkpoint_bytes(weights, card_json, path.name, template=template)
    except (KeyError, ValueError) as error:
        raise InvalidEntry(f"its model card or weights do not make a model ({error})") from error
    return Retrained(model, card, path, True, card.train_seconds)


def cached_retrain(
    card: ModelCard,
    train: LabelledSet,
    request: EditRequest,
    base_id: str,
    *,
    cache_dir: Path | None = None,
    template: nn.Module | None = None,
) -> Retrained | None:
    """The retrained model of :func:`retrain` if the cache holds a valid entry for it, else None (nothing is
    trained). An invalid entry is a miss, with a :class:`~gif_core.cache_files.CacheWarning`. ``template``: the
    model whose architecture the entry's weights are loaded into, for a card that names none (an exported
    program)."""
    key = retrain_key(base_id, request, card, train)
    path = _cache_path(key, cache_dir)
    return read_or_miss(path, lambda entry: _read_entry(entry, key, template), "The retrained-model cache entry")


def retrain(
    card: ModelCard,
    bundle: DataBundle,
    train: LabelledSet,
    request: EditRequest,
    base_id: str,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    show_bar: bool = True,
    template: nn.Module | None = None,
) -> Retrained:
    """The model retrained without U (or with U relabelled), from the cache when it was trained before.

    ``train`` is the training set the base model saw (the bundle's, or its poisoned version for a backdoor);
    ``base_id`` identifies the base checkpoint (e.g. :func:`gif_core.checkpoints.checkpoint_id`). Both are part
    of the cache key. ``template`` is the model itself when its card names no architecture (an exported program):
    the retrained model is then ``template`` re-initialised by :func:`gif_core.exported.reinitialised` (PyTorch's
    default initialisation of each layer, seeded by the recipe) and trained by the same recipe. A missing or invalid entry is (re)written atomically: a concurrent run asking the same
    question writes the same model, and whichever finishes last replaces the other's file.
    """
    if not card.recipe:
        raise ValueError("The model card has no training recipe: it cannot be retrained. Train it with `gif train`.")
    cached = cached_retrain(card, train, request, base_id, cache_dir=cache_dir, template=template)
    if cached is not None:
        return cached
    key = retrain_key(base_id, request, card, train)
    path = _cache_path(key, cache_dir)
    edited = edited_training_set(train, request, card.num_classes)
    start = time.perf_counter()
    recipe = Recipe.from_dict(card.recipe)
    model, report = build_and_train(
        card.arch,
        dataclasses.replace(bundle, train=edited),
        recipe,
        progress=progress,
        show_bar=show_bar,
        initial=None if template is None else lambda: reinitialised(template, recipe.seed),
    )
    seconds = time.perf_counter() - start
    new_card = dataclasses.replace(
        card,
        train_seconds=round(seconds, 3),
        accuracy={},
        notes=f"Retrained ground truth for {request.describe()}",
        extra={**card.extra, "retrained_for": request.describe(), "base": base_id},
    )
    tensors = {name: value.detach().to("cpu").clone().contiguous() for name, value in model.state_dict().items()}
    save_entry(path, ENTRY_KIND, key, tensors, card=new_card.to_json())
    return Retrained(model, new_card, path, False, report.seconds)
