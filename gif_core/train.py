"""Deterministic training of a classifier (predictions and accuracy: :mod:`gif_core.evaluate`).

The training objective is ``mean cross-entropy + λ/2·|θ|²`` with ``λ = Recipe.weight_decay``, applied as the
optimizer's coupled L2 ``weight_decay`` argument (Adam or SGD, never AdamW's decoupled decay). The influence
engine relies on this: its Hessian and gradients are those of exactly this objective.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from gif_core.data import DataBundle, LabelledSet
from gif_core.models import build_model
from gif_core.objective import data_loss, l2_penalty

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")


@dataclass(frozen=True)
class Recipe:
    """How a model is trained.

    The objective is ``mean CE + weight_decay/2·|θ|²`` over all parameters: ``weight_decay`` is passed to
    ``torch.optim.Adam`` / ``torch.optim.SGD`` as their coupled L2 term (gradient ``+ weight_decay·θ``).
    ``momentum`` is used by SGD only. ``seed`` fixes the initial weights and the shuffling order.
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        numbers = {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay}
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"recipe {name} must be a finite number, got {value!r}")
        for name in ("epochs", "batch_size", "seed"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise ValueError(f"recipe {name} must be a whole number, got {getattr(self, name)!r}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("need lr > 0, weight_decay >= 0 and 0 <= momentum < 1")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("need epochs >= 1 and batch_size >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown recipe keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class TrainReport:
    """Wall-clock seconds, the mean training loss of each epoch (CE + L2 term, as optimised)."""

    seconds: float
    epoch_losses: tuple[float, ...]

    @property
    def epochs(self) -> int:
        return len(self.epoch_losses)

    @property
    def final_loss(self) -> float:
        """Mean training objective over the last epoch's mini-batches."""
        return self.epoch_losses[-1]


class TrainingDiverged(FloatingPointError):
    """The training loss (or a weight) became NaN or ±inf: the model is unusable and is never saved."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` means the GPU when one is present, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over all of ``model``'s parameters, with coupled L2 weight decay."""
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


TRAINING_PROCEDURE = 2
"""The version of what :func:`train_model` does beyond its recipe, for cache keys of trained weights: 2 recomputes
BatchNorm's running statistics after training (:func:`_recalibrate_batch_norm`); weights cached by version 1 are
not served for it."""


def train_model(
    model: nn.Module,
    data: LabelledSet,
    recipe: Recipe,
    *,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    show_bar: bool = True,
) -> TrainReport:
    """Train ``model`` in place on ``data`` with ``recipe``; the model is left on ``device`` in eval mode.

    The loss of every epoch (CE + λ/2·‖θ‖², which is non-finite as soon as a weight is) is checked: a NaN or inf
    raises :class:`TrainingDiverged` at the end of that epoch.

    Mini-batches are shuffled by a ``torch.Generator`` seeded with ``recipe.seed``. ``progress(step, total)``
    is called after every optimisation step; ``show_bar`` shows a tqdm bar on the terminal.
    """
    if len(data) == 0:
        raise ValueError("cannot train on an empty data set")
    target = resolve_device(device)
    model.to(target)
    model.train()
    optimizer = make_optimizer(model, recipe)
    generator = torch.Generator().manual_seed(recipe.seed)
    n = len(data)
    steps_per_epoch = -(-n // recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    epoch_losses = []
    step = 0
    start = time.perf_counter()
    with tqdm(total=total, disable=not show_bar, desc="training", unit="step", leave=False) as bar:
        for _ in range(recipe.epochs):
            order = torch.randperm(n, generator=generator)
            loss_sum = torch.zeros((), device=target)
            for batch in order.split(recipe.batch_size):
                inputs = data.inputs[batch].to(target, non_blocking=True)
                labels = data.labels[batch].to(target, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss = data_loss(model(inputs), labels)  # λθ: the optimiser's weight decay
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(batch)
                step += 1
                bar.update()
                if progress is not None:
                    progress(step, total)
            epoch_losses.append(float(loss_sum) / n + _l2_term(model, recipe.weight_decay))
            if not math.isfinite(epoch_losses[-1]):
                raise TrainingDiverged(
                    f"training diverged in epoch {len(epoch_losses)} of {recipe.epochs}: the loss is "
                    f"{epoch_losses[-1]} (learning rate {recipe.lr:g}, optimizer {recipe.optimizer}); nothing was "
                    "saved: lower the learning rate"
                )
    _recalibrate_batch_norm(model, data, recipe.batch_size, target)
    model.eval()
    return TrainReport(seconds=time.perf_counter() - start, epoch_losses=tuple(epoch_losses))


def _recalibrate_batch_norm(model: nn.Module, data: LabelledSet, batch_size: int, device: torch.device) -> None:
    """BatchNorm's running statistics recomputed at the trained weights, as the average of the batch statistics over
    one pass of the training set (``torch.optim.swa_utils.update_bn``): what eval mode — predictions, gradients and
    Hessians here — then uses. The statistics a training run leaves are an exponential average over weights that kept
    changing, with torchvision's MobileNet-V3 momentum of 0.01 still near their initial values after a short run (its
    eval-mode accuracy on digits was 10% against 92% in training mode). Models without BatchNorm are untouched."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    batches = (inputs.to(device) for inputs in data.inputs.split(batch_size))  # one batch on the device at a time
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(batches, model)


def _l2_term(model: nn.Module, weight_decay: float) -> float:
    with torch.no_grad():
        return float(l2_penalty(model.parameters(), weight_decay))


def build_and_train(
    arch: str,
    bundle: DataBundle,
    recipe: Recipe,
    *,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    show_bar: bool = True,
    initial: Callable[[], nn.Module] | None = None,
) -> tuple[nn.Module, TrainReport]:
    """Build ``arch`` for ``bundle`` with initial weights seeded by ``recipe.seed``, and train it on
    ``bundle.train``; ``initial`` (called under the same seed) builds the freshly initialised model instead, for an
    architecture that is not built by name (an exported program: :func:`gif_core.exported.reinitialised`). The same recipe gives bit-identical weights on the same hardware and thread count (other
    thread counts or GPU kernels round differently in the last bits). The caller's global random state is left
    untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = initial() if initial is not None else build_model(arch, bundle.input_shape, bundle.num_classes)
    report = train_model(model, bundle.train, recipe, device=device, progress=progress, show_bar=show_bar)
    return model, report
