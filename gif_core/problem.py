"""The problem an edit request poses on one model: the vector g the model must absorb, the Hessian H of the
estimators, and the second-order terms of SIF.

Training set S with n samples, questioned set U ⊂ S with m samples (:mod:`gif_core.requests`), per-sample loss ℓ_i
(weight decay included, see :mod:`gif_core.curvature`). Every request is a perturbation of the objective,
L ↦ L + c·D, and the first-order edit is θ ↦ θ + Δ with H Δ = g, g = −c·∇D(θ) (DESIGN.md section 2):

* removal (:class:`~gif_core.requests.ClassRemoval`, :class:`~gif_core.requests.SampleRemoval`):
  c = m/(n−m), D = L − L_U, g = (m/(n−m))·mean_{i∈U} ∇ℓ_i(θ)  (equal to −∇L_{S∖U}(θ) at a stationary θ).
* label change (:class:`~gif_core.requests.LabelChange`), U relabelled from y to y': c = 1,
  D = (1/n)·Σ_{i∈U} [ℓ(x_i, y'_i) − ℓ(x_i, y_i)], g = (1/n)·Σ_{i∈U} [∇ℓ(x_i, y_i) − ∇ℓ(x_i, y'_i)]
  (equal to −∇L_{S'}(θ) at a stationary θ, S' = S relabelled).
* ``gradient="newton"`` uses g = −∇L_E(θ) exactly, E the edited training set (S∖U, or S'), for models not at a
  stationary point.

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
from typing import ClassVar

import torch
from torch import nn

from gif_core.constraints import MAX_REGULARISER, Alternatives, InstanceOf, Interval, OneOf, validate
from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.data import seeded_subset
from gif_core.evaluate import LabelledData
from gif_core.operators import SymmetricOperator
from gif_core.params import ParamSpace
from gif_core.requests import DataEdit, EditRequest

GRADIENT_MODES = ("first-order", "newton")
HESSIAN_DATA = ("retained", "all")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class ProblemConfig:
    """How an :class:`EditProblem` is set up: which data H covers (S∖U or S), the Hessian sample size (None = all
    of it), its seed, the g variant and the curvature options. Its defaults are the exact problem (every sample, no
    damping), as the tests against dense Hessians need it; an edit's chosen defaults are :class:`HessianConfig`'s."""

    hessian_data: str = "retained"
    hessian_samples: int | None = None
    seed: int = 0
    gradient: str = "first-order"
    curvature: CurvatureConfig = field(default_factory=CurvatureConfig)

    CONSTRAINTS: ClassVar[dict[str, Alternatives]] = {
        "hessian_data": (OneOf(HESSIAN_DATA),),
        "hessian_samples": (Interval(1, None, integer=True), None),
        "seed": (Interval(0, None, integer=True),),
        "gradient": (OneOf(GRADIENT_MODES),),
        "curvature": (InstanceOf(CurvatureConfig),),
    }

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class HessianConfig:
    """The curvature settings of an edit, as a person chooses them (``EditConfig.curvature``): which data H covers
    (``data``: "retained" = the edited training set, "all" = S as it was), how many of its samples (``samples``;
    None = all), the sample's ``seed``, the damping δ of H + δI, Gauss-Newton instead of the exact Hessian, the
    precision of the products (``dtype``: "float32", "float64" or None = the model's own) and whether the products
    are traced once (``linearize``). The weight decay λ of the objective is not chosen here: it is the model's own,
    from its training recipe (:meth:`problem_config`).

    The defaults were chosen by ``benchmarks/defaults.py`` (see :class:`gif_core.experiment.EditConfig`)."""

    data: str = "retained"
    samples: int | None = 200
    seed: int = 0
    damping: float = 0.03
    gauss_newton: bool = False
    dtype: str | None = None
    linearize: bool = False

    CONSTRAINTS: ClassVar[dict[str, Alternatives]] = {
        "data": (OneOf(HESSIAN_DATA),),
        "samples": (Interval(1, None, integer=True), None),
        "seed": (Interval(0, None, integer=True),),
        "damping": (Interval(0, MAX_REGULARISER),),
        "gauss_newton": (InstanceOf(bool),),
        "dtype": (OneOf(DTYPES), None),
        "linearize": (InstanceOf(bool),),
    }

    def __post_init__(self) -> None:
        validate(self)

    def problem_config(self, weight_decay: float, gradient: str = "first-order") -> ProblemConfig:
        """The :class:`ProblemConfig` of these settings for a model trained with weight decay λ = ``weight_decay``."""
        curvature = CurvatureConfig(
            weight_decay=weight_decay,
            damping=self.damping,
            gauss_newton=self.gauss_newton,
            dtype=getattr(torch, self.dtype) if self.dtype is not None else None,
            linearize=self.linearize,
        )
        return ProblemConfig(self.data, self.samples, self.seed, gradient, curvature)


@dataclass
class ProblemMemo:
    """What an :class:`EditProblem` computes once and reuses for its lifetime (its g and H never change):
    ``solutions``, full solves H x = g by solver settings, shared by IF and PIF at every ratio (filled by
    :mod:`gif_core.influence`); ``forget_hessians``, the Hessians over U with its old and new labels (SIF)."""

    solutions: dict = field(default_factory=dict)
    forget_hessians: dict[str, Curvature] = field(default_factory=dict)


@dataclass(frozen=True)
class EditProblem:
    """Everything an estimator needs for one request on one model: g, the Hessian operator and the data of U.

    ``model`` is the caller's model; nothing here modifies it (the curvature works on a private copy).
    """

    request: EditRequest
    edit: DataEdit
    model: nn.Module
    space: ParamSpace
    forget_inputs: torch.Tensor
    forget_labels: torch.Tensor
    g: torch.Tensor
    scale: float
    hessian: Curvature
    hessian_data: str
    hessian_retained_rows: torch.Tensor
    train: LabelledData
    memo: ProblemMemo = field(default_factory=ProblemMemo, repr=False, compare=False)

    @property
    def n(self) -> int:
        return len(self.edit.in_u)

    @property
    def m(self) -> int:
        return len(self.edit.rows)

    @property
    def r(self) -> float:
        return self.m / self.n

    @property
    def forget_rows(self) -> torch.Tensor:
        return self.edit.rows

    @property
    def retain_rows(self) -> torch.Tensor:
        return self.edit.retain_rows

    @property
    def new_labels(self) -> torch.Tensor | None:
        return self.edit.new_labels

    @property
    def full_hvp_products(self) -> int:
        """Hessian-vector products one :meth:`full_hvp` costs."""
        if self.hessian_data == "all":
            return 1
        return 3 if self.edit.relabels else 2

    @property
    def perturbation_hvp_products(self) -> int:
        """Hessian-vector products one :meth:`perturbation_hvp` costs."""
        return 2 if self.edit.relabels else self.full_hvp_products + 1

    def retained_fisher(self) -> torch.Tensor:
        """Diagonal empirical Fisher over the Hessian sample's rows that are NOT in U (mean of squared gradients)."""
        if self.hessian_data == "retained" and not self.edit.relabels:  # the sample is all of S∖U already
            return self.hessian.fisher_diagonal()
        rows = self.hessian_retained_rows
        return self.hessian.with_sample((self.train.inputs[rows], self.train.labels[rows])).fisher_diagonal()

    def _forget_hessian(self, labels: str) -> Curvature:
        """H over U with its ``"old"`` or ``"new"`` labels, built on first use."""
        if labels not in self.memo.forget_hessians:
            targets = self.forget_labels if labels == "old" else self.edit.new_labels
            assert targets is not None, "only a label change has new labels"
            self.memo.forget_hessians[labels] = self.hessian.with_sample((self.forget_inputs, targets))
        return self.memo.forget_hessians[labels]

    def full_hvp(self, v: torch.Tensor) -> torch.Tensor:
        """∇²L·v for the ORIGINAL objective (see module docstring for how it is assembled from H)."""
        if self.hessian_data == "all":
            return self.hessian.hvp(v)
        if self.edit.relabels:
            return self.hessian.hvp(v) - self.perturbation_hvp(v)
        return (1 - self.r) * self.hessian.hvp(v) + self.r * self._forget_hessian("old").hvp(v)

    def full_hessian(self) -> SymmetricOperator:
        """∇²L of the original objective as an operator (:meth:`full_hvp`; :attr:`full_hvp_products` each)."""
        return SymmetricOperator(self.full_hvp, self.space.numel, self.hessian.device, self.hessian.dtype)

    def perturbation_hvp(self, v: torch.Tensor) -> torch.Tensor:
        """∇²D·v for the perturbation D of this request (see module docstring)."""
        if not self.edit.relabels:
            return self.full_hvp(v) - self._forget_hessian("old").hvp(v)
        return self.r * (self._forget_hessian("new").hvp(v) - self._forget_hessian("old").hvp(v))

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
    edit = request.edit(labels, num_classes)
    retained = config.hessian_data == "retained"
    sample_rows = edit.edited_rows if retained else torch.arange(n)
    sample_labels = edit.labels if retained else labels
    if config.hessian_samples is not None and config.hessian_samples < len(sample_rows):
        sample_rows = seeded_subset(sample_rows, config.hessian_samples, config.seed)
    hessian = Curvature(model, (train.inputs[sample_rows], sample_labels[sample_rows]), config.curvature)
    forget_inputs, forget_labels = train.inputs[edit.rows], labels[edit.rows]
    m = len(edit.rows)
    if config.gradient == "newton":
        rows = edit.edited_rows
        scale = 1.0 if edit.relabels else m / (n - m)
        g = -hessian.gradient(train.inputs[rows], edit.labels[rows])
    elif edit.new_labels is not None:
        scale = 1.0
        g = (m / n) * (
            hessian.gradient(forget_inputs, forget_labels) - hessian.gradient(forget_inputs, edit.new_labels)
        )
    else:
        scale = m / (n - m)
        g = scale * hessian.gradient(forget_inputs, forget_labels)
    return EditProblem(
        request=request,
        edit=edit,
        model=model,
        space=hessian.space,
        forget_inputs=forget_inputs,
        forget_labels=forget_labels,
        g=g,
        scale=scale,
        hessian=hessian,
        hessian_data=config.hessian_data,
        hessian_retained_rows=sample_rows[~edit.in_u[sample_rows]],
        train=train,
    )
