"""Edit requests — "what if this data had not been there?" — and the vector g each one asks the model to absorb.

Training set S with n samples, questioned set U ⊂ S with m samples, per-sample loss ℓ_i (weight decay included,
see :mod:`gif_core.curvature`). Every request is a perturbation of the objective, L ↦ L + c·D, and the first-order
edit is θ ↦ θ + Δ with H Δ = g, g = −c·∇D(θ) (DESIGN.md section 2):

* :class:`ClassRemoval` / :class:`SampleRemoval` — remove U:  c = m/(n−m), D = L − L_U,
  g = (m/(n−m))·mean_{i∈U} ∇ℓ_i(θ)  (equal to −∇L_{S∖U}(θ) at a stationary θ).
  ``gradient="newton"`` uses g = −∇L_{S∖U}(θ) exactly, for models not at a stationary point.
* :class:`LabelChange` — relabel U from y to y':  c = 1, D = (1/n)·Σ_{i∈U} [ℓ(x_i, y'_i) − ℓ(x_i, y_i)],
  g = (1/n)·Σ_{i∈U} [∇ℓ(x_i, y_i) − ∇ℓ(x_i, y'_i)]  (equal to −∇L_{S'}(θ) at a stationary θ, S' = S relabelled).
  ``gradient="newton"`` uses g = −∇L_{S'}(θ) = −(1/n)·[Σ_{i∉U} ∇ℓ(x_i, y_i) + Σ_{i∈U} ∇ℓ(x_i, y'_i)] exactly.
* :func:`backdoor_relabel` — undo a backdoor: U = poisoned samples, y = the attacker's label, y' = the true label.

The Hessian H of every estimator is taken over the *Hessian sample*: a fixed, seeded subset of the EDITED training
set by default (``hessian_data="retained"``: S∖U for a removal, S' — every sample, U with its new labels — for a label
change; IF is then one Newton step on the edited objective), or of S as it was (``hessian_data="all"``: the classic
Koh & Liang IF, expanded around the original objective). SIF's second-order term needs the original objective's
Hessian ∇²L and ∇²D, which :class:`EditProblem` assembles from H and Hessians over U (r = m/n):
∇²L = H when H covers S as it was; (1−r)·H_{S∖U} + r·H_U for a removal; H_{S'} − ∇²D for a label change;
∇²D = ∇²L − H_U for removals,  ∇²D = r·(H_{U,y'} − H_{U,y}) for label changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import torch
from torch import nn

from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.data import seeded_subset
from gif_core.params import ParamSpace

GRADIENT_MODES = ("first-order", "newton")
HESSIAN_DATA = ("retained", "all")


class LabelledData(Protocol):
    """What a request reads of a training set (``gif_core.data.LabelledSet`` satisfies it)."""

    inputs: torch.Tensor
    labels: torch.Tensor


def _as_index_tuple(values: object, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in torch.as_tensor(values).reshape(-1).tolist())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a list of integers, got {values!r}") from exc


@dataclass(frozen=True)
class ClassRemoval:
    """Remove every training sample of class ``cls``."""

    cls: int
    kind: str = field(default="class-removal", init=False)

    def forget_rows(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        if not 0 <= self.cls < num_classes:
            raise ValueError(f"Unknown class {self.cls}: the model has classes 0 … {num_classes - 1}.")
        rows = torch.nonzero(labels == self.cls).reshape(-1)
        if len(rows) == 0:
            raise ValueError(f"Class {self.cls} has no training sample: there is nothing to remove.")
        if len(rows) == len(labels):
            raise ValueError("Removing this class would remove every training sample; keep at least one.")
        return rows

    def describe(self) -> dict:
        return {"kind": self.kind, "class": self.cls}


@dataclass(frozen=True)
class SampleRemoval:
    """Remove the training samples at the given rows of the training split."""

    indices: tuple[int, ...]
    kind: str = field(default="sample-removal", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", _as_index_tuple(self.indices, "indices"))

    def forget_rows(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        _check_rows(self.indices, len(labels))
        if len(self.indices) == len(labels):
            raise ValueError("Removing every training sample leaves nothing to learn from; keep at least one.")
        return torch.tensor(sorted(self.indices), dtype=torch.long)

    def describe(self) -> dict:
        return {"kind": self.kind, "indices": list(self.indices)}


@dataclass(frozen=True)
class LabelChange:
    """Change the labels of the training samples at ``indices`` to ``new_labels`` (same order)."""

    indices: tuple[int, ...]
    new_labels: tuple[int, ...]
    kind: str = field(default="label-change", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", _as_index_tuple(self.indices, "indices"))
        object.__setattr__(self, "new_labels", _as_index_tuple(self.new_labels, "new_labels"))
        if len(self.indices) != len(self.new_labels):
            raise ValueError(
                f"Give one new label per index: {len(self.indices)} indices but {len(self.new_labels)} labels."
            )

    def forget_rows(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        _check_rows(self.indices, len(labels))
        for row, new in zip(self.indices, self.new_labels, strict=True):
            if not 0 <= new < num_classes:
                raise ValueError(f"New label {new} for sample {row} is not a class (0 … {num_classes - 1}).")
            if int(labels[row]) == new:
                raise ValueError(f"Sample {row} already has label {new}: a label change must change the label.")
        return torch.tensor(self.indices, dtype=torch.long)

    def targets(self) -> torch.Tensor:
        return torch.tensor(self.new_labels, dtype=torch.long)

    def describe(self) -> dict:
        return {"kind": self.kind, "indices": list(self.indices), "new_labels": list(self.new_labels)}


EditRequest = ClassRemoval | SampleRemoval | LabelChange


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from exc


def parse_sample_removal(text: str) -> SampleRemoval:
    """``"10,42,77"`` → SampleRemoval of those training rows."""
    return SampleRemoval(_parse_ints(text, "Sample indices"))


def parse_label_change(text: str) -> LabelChange:
    """``"5:3,9:1"`` (ROW:NEW_LABEL pairs) → LabelChange."""
    pairs = [p.split(":") for p in text.split(",") if p.strip()]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"Label changes are ROW:LABEL pairs separated by commas (e.g. 5:3,9:1), got {text!r}")
    rows = _parse_ints(",".join(p[0] for p in pairs), "Relabel rows")
    labels = _parse_ints(",".join(p[1] for p in pairs), "Relabel labels")
    return LabelChange(rows, labels)


def backdoor_relabel(poisoned_rows: torch.Tensor, true_labels: torch.Tensor) -> LabelChange:
    """Undo a backdoor: relabel the poisoned training samples (now carrying the attacker's label) to their true
    labels. A row whose true label equals its current label is no poisoned sample: :func:`prepare` rejects it."""
    rows = _as_index_tuple(poisoned_rows, "poisoned_rows")
    labels = _as_index_tuple(true_labels, "true_labels")
    if not rows:
        raise ValueError("No poisoned samples given: a backdoor relabel needs at least one.")
    return LabelChange(rows, labels)


def _check_rows(indices: tuple[int, ...], n: int) -> None:
    if not indices:
        raise ValueError("No training samples given: pick at least one index.")
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ValueError(f"Indices out of range {bad[:5]}: the training split has rows 0 … {n - 1}.")
    if len(set(indices)) != len(indices):
        raise ValueError("Indices repeat: give each training sample once.")


@dataclass(frozen=True)
class ProblemConfig:
    """How an :class:`EditProblem` is set up: which data H covers (S∖U or S), the Hessian sample size (None = all
    of it), its seed, the g variant and the curvature options."""

    hessian_data: str = "retained"
    hessian_samples: int | None = None
    seed: int = 0
    gradient: str = "first-order"
    curvature: CurvatureConfig = field(default_factory=CurvatureConfig)

    def __post_init__(self) -> None:
        if self.gradient not in GRADIENT_MODES:
            raise ValueError(f"gradient must be one of {', '.join(GRADIENT_MODES)}, got {self.gradient!r}")
        if self.hessian_data not in HESSIAN_DATA:
            raise ValueError(f"hessian_data must be one of {', '.join(HESSIAN_DATA)}, got {self.hessian_data!r}")
        if self.hessian_samples is not None and self.hessian_samples < 1:
            raise ValueError("hessian_samples must be ≥ 1 (or None for all retained samples)")


@dataclass(frozen=True)
class EditProblem:
    """Everything an estimator needs for one request on one model: g, the Hessian operator and the data of U.

    ``model`` is the caller's model; nothing here modifies it (the curvature works on a private copy).
    """

    request: EditRequest
    model: nn.Module
    space: ParamSpace
    n: int
    forget_rows: torch.Tensor
    retain_rows: torch.Tensor
    forget_inputs: torch.Tensor
    forget_labels: torch.Tensor
    new_labels: torch.Tensor | None
    g: torch.Tensor
    scale: float
    hessian: Curvature
    hessian_data: str
    hessian_retained_rows: torch.Tensor
    train: LabelledData
    influence_solutions: dict = field(default_factory=dict, repr=False, compare=False)
    """Memo of full solves H x = g by solver settings, shared by IF and PIF at every ratio (filled by
    :mod:`gif_core.influence`; the problem's g and H never change, so a solve is valid for its lifetime)."""

    @property
    def m(self) -> int:
        return len(self.forget_rows)

    @property
    def r(self) -> float:
        return self.m / self.n

    @property
    def full_hvp_products(self) -> int:
        """Hessian-vector products one :meth:`full_hvp` costs."""
        if self.hessian_data == "all":
            return 1
        return 3 if self.new_labels is not None else 2

    @property
    def perturbation_hvp_products(self) -> int:
        """Hessian-vector products one :meth:`perturbation_hvp` costs."""
        return 2 if self.new_labels is not None else self.full_hvp_products + 1

    def retained_fisher(self) -> torch.Tensor:
        """Diagonal empirical Fisher over the Hessian sample's rows that are NOT in U (mean of squared gradients)."""
        if self.hessian_data == "retained" and self.new_labels is None:  # the sample is all of S∖U already
            return self.hessian.fisher_diagonal()
        rows = self.hessian_retained_rows
        return self.hessian.with_sample((self.train.inputs[rows], self.train.labels[rows])).fisher_diagonal()

    @cached_property
    def _hessian_forget(self) -> Curvature:
        return self.hessian.with_sample((self.forget_inputs, self.forget_labels))

    @cached_property
    def _hessian_forget_new(self) -> Curvature:
        assert self.new_labels is not None
        return self.hessian.with_sample((self.forget_inputs, self.new_labels))

    def full_hvp(self, v: torch.Tensor) -> torch.Tensor:
        """∇²L·v for the ORIGINAL objective (see module docstring for how it is assembled from H)."""
        if self.hessian_data == "all":
            return self.hessian.hvp(v)
        if self.new_labels is not None:
            return self.hessian.hvp(v) - self.perturbation_hvp(v)
        return (1 - self.r) * self.hessian.hvp(v) + self.r * self._hessian_forget.hvp(v)

    def perturbation_hvp(self, v: torch.Tensor) -> torch.Tensor:
        """∇²D·v for the perturbation D of this request (see module docstring)."""
        if self.new_labels is None:
            return self.full_hvp(v) - self._hessian_forget.hvp(v)
        return self.r * (self._hessian_forget_new.hvp(v) - self._hessian_forget.hvp(v))

    def describe(self) -> dict:
        return {**self.request.describe(), "n_train": self.n, "n_questioned": self.m}


def prepare(
    model: nn.Module,
    train: LabelledData,
    request: EditRequest,
    num_classes: int,
    config: ProblemConfig | None = None,
) -> EditProblem:
    """Validate ``request`` against the training set and build its :class:`EditProblem` (g and the Hessian).

    Under a torch.distributed process group (e.g. ``torchrun``) every rank must call it with the same arguments: the
    Hessian sample and the rows of g are then sharded over the ranks and their sums all-reduced
    (:class:`~gif_core.curvature.Curvature`), so every rank gets the same problem."""
    config = config or ProblemConfig()
    labels = train.labels
    n = len(labels)
    forget = request.forget_rows(labels, num_classes)
    keep = torch.ones(n, dtype=torch.bool)
    keep[forget] = False
    retain = torch.nonzero(keep).reshape(-1)
    relabels = isinstance(request, LabelChange)
    sample_labels = labels
    if relabels and config.hessian_data == "retained":  # the edited objective keeps U, with its new labels
        sample_labels = labels.clone()
        sample_labels[forget] = request.targets()
    sample_rows = retain if config.hessian_data == "retained" and not relabels else torch.arange(n)
    if config.hessian_samples is not None and config.hessian_samples < len(sample_rows):
        sample_rows = seeded_subset(sample_rows, config.hessian_samples, config.seed)
    hessian = Curvature(model, (train.inputs[sample_rows], sample_labels[sample_rows]), config.curvature)
    forget_inputs, forget_labels = train.inputs[forget], labels[forget]
    m = len(forget)
    if isinstance(request, LabelChange):
        new_labels = request.targets()
        scale = 1.0
        if config.gradient == "newton":
            retained = hessian.gradient(train.inputs[retain], labels[retain]) if len(retain) else 0.0
            g = -((n - m) / n * retained + (m / n) * hessian.gradient(forget_inputs, new_labels))
        else:
            g = (m / n) * (hessian.gradient(forget_inputs, forget_labels) - hessian.gradient(forget_inputs, new_labels))
    else:
        new_labels = None
        scale = m / (n - m)
        if config.gradient == "newton":
            g = -hessian.gradient(train.inputs[retain], labels[retain])
        else:
            g = scale * hessian.gradient(forget_inputs, forget_labels)
    return EditProblem(
        request=request,
        model=model,
        space=hessian.space,
        n=n,
        forget_rows=forget,
        retain_rows=retain,
        forget_inputs=forget_inputs,
        forget_labels=forget_labels,
        new_labels=new_labels,
        g=g,
        scale=scale,
        hessian=hessian,
        hessian_data=config.hessian_data,
        hessian_retained_rows=sample_rows[keep[sample_rows]],
        train=train,
    )
