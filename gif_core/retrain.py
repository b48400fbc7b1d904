"""Retraining ground truth: the same architecture, recipe and seed, trained on the edited training set.

Results are cached on disk as ordinary checkpoints, keyed by a hash of (base checkpoint, request, architecture,
data set, split seed, recipe), so the same question is never retrained twice. The cache folder is
``$GIF_CACHE_DIR/retrained`` (default ``~/.cache/gif-explorer/retrained``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gif_core.checkpoints import ModelCard, load_checkpoint, save_checkpoint
from gif_core.data import DataBundle, LabelledSet
from gif_core.requests import EditRequest, LabelChange
from gif_core.train import Recipe, build_and_train


def default_cache_dir() -> Path:
    return Path(os.environ.get("GIF_CACHE_DIR", Path.home() / ".cache" / "gif-explorer"))


def edited_training_set(train: LabelledSet, request: EditRequest, num_classes: int) -> LabelledSet:
    """The training set the request asks about: U removed, or U relabelled."""
    rows = request.forget_rows(train.labels, num_classes)
    if isinstance(request, LabelChange):
        labels = train.labels.clone()
        labels[rows] = request.targets()
        return train.with_labels(labels)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[rows] = False
    return train.subset(keep)


def retrain_key(base_id: str, request: EditRequest, card: ModelCard) -> str:
    payload = {
        "base": base_id,
        "request": request.describe(),
        "arch": card.arch,
        "dataset": card.dataset,
        "split_seed": card.split_seed,
        "recipe": card.recipe,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Retrained:
    model: nn.Module
    card: ModelCard
    path: Path
    from_cache: bool
    seconds: float


def _cache_path(card: ModelCard, request: EditRequest, base_id: str, cache_dir: Path | None) -> Path:
    return (cache_dir or default_cache_dir()) / "retrained" / f"{retrain_key(base_id, request, card)}.safetensors"


def cached_retrain(
    card: ModelCard, request: EditRequest, base_id: str, *, cache_dir: Path | None = None
) -> Retrained | None:
    """The retrained model of :func:`retrain` if the cache holds it, else None (nothing is trained)."""
    path = _cache_path(card, request, base_id, cache_dir)
    if not path.is_file():
        return None
    model, cached_card = load_checkpoint(path)
    return Retrained(model, cached_card, path, True, cached_card.train_seconds)


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
) -> Retrained:
    """The model retrained without U (or with U relabelled), from the cache when it was trained before.

    ``train`` is the training set the base model saw (the bundle's, or its poisoned version for a backdoor);
    ``base_id`` identifies the base checkpoint (e.g. :func:`gif_core.checkpoints.checkpoint_id`).
    """
    if not card.recipe:
        raise ValueError("The model card has no training recipe: it cannot be retrained. Train it with `gif train`.")
    cached = cached_retrain(card, request, base_id, cache_dir=cache_dir)
    if cached is not None:
        return cached
    path = _cache_path(card, request, base_id, cache_dir)
    folder = path.parent
    edited = edited_training_set(train, request, card.num_classes)
    start = time.perf_counter()
    model, report = build_and_train(
        card.arch,
        dataclasses.replace(bundle, train=edited),
        Recipe.from_dict(card.recipe),
        progress=progress,
        show_bar=show_bar,
    )
    seconds = time.perf_counter() - start
    new_card = dataclasses.replace(
        card,
        train_seconds=round(seconds, 3),
        accuracy={},
        notes=f"Retrained ground truth for {request.describe()}",
        extra={**card.extra, "retrained_for": request.describe(), "base": base_id},
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, new_card, path)
    return Retrained(model, new_card, path, False, report.seconds)
