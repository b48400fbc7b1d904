"""The EK-FAC inverse of the curvature (George et al. 2018; the influence form of Grosse et al. 2023), by
``curvlinops-for-pytorch``.

Δ = (EK-FAC(G) + (λ + δ)·I)⁻¹ g, where G is the generalized Gauss-Newton matrix of the mean cross-entropy over the
Hessian sample (curvlinops' type-2 Fisher, which equals the GGN for softmax cross-entropy), λ the weight decay (its
λI is exact in H) and δ the curvature's damping. EK-FAC takes, per Linear/Conv2d module, the eigenbasis of the
Kronecker factors A = E[a aᵀ] (inputs, a 1 appended for the bias: weight and bias together) and B = E[s sᵀ] (output
gradients), and corrects the eigenvalues to the second moments of the per-sample gradients in that basis; the
damping is added to those eigenvalues exactly (Grosse et al. 2023, eq. 21). For a single Linear layer and one sample
the GGN is itself a Kronecker product and EK-FAC is exact (tests/test_ekfac.py).

Why curvlinops: it is maintained, computes EK-FAC as a linear operator with an exactly damped inverse, and takes our
model and batches as they are; Kronfluence computes and stores EK-FAC factors too, but around its own analysis of
pairwise scores (a task per model and factor files on disk), not as an operator applied to one vector, which is
what an editor needs. Cost: the factors' passes over the Hessian sample (one backward per class, type-2) and their
eigendecompositions; no Hessian-vector product. Every trainable parameter must belong to a Linear or Conv2d module
(curvlinops' EK-FAC supports those only); a sharded curvature is refused (curvlinops sums over one process's data).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from torch import nn

from gif_core.curvature import Curvature
from gif_core.operators import SymmetricOperator
from gif_core.solvers import SolveReport

SUPPORTED_MODULES = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class EkfacReport:
    """What the EK-FAC inverse cost: seconds for the factors and eigen-corrections, the modules, the damping."""

    seconds: float
    modules: int
    damping: float


def _check_modules(model: nn.Module) -> int:
    covered: set[int] = set()
    modules = 0
    for module in model.modules():
        if isinstance(module, SUPPORTED_MODULES):
            modules += 1
            covered.update(id(p) for p in module.parameters(recurse=False) if p.requires_grad)
    others = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if others:
        raise ValueError(
            f"EK-FAC covers Linear and Conv2d modules only; these trainable parameters are outside them: "
            f"{', '.join(others[:5])}{' …' if len(others) > 5 else ''}. Choose another method for this model."
        )
    return modules


def ekfac_inverse_operator(curvature: Curvature) -> tuple[SymmetricOperator, EkfacReport]:
    """The p×p operator v ↦ (EK-FAC(G) + (λ + δ)·I)⁻¹ v over ``curvature``'s Hessian sample (module docstring),
    factors computed once, at the first product (curvlinops computes them lazily: the report's seconds cover the
    construction only); each product afterwards is two eigenbasis rotations per module and no pass over
    the data. Symmetric positive definite, so it restricts to rows and columns like H (a preconditioner for the
    GIF solve: ``operator.restrict(index, index)``)."""
    from curvlinops import EKFACLinearOperator, KFACInverseLinearOperator

    if curvature.sharded:
        raise ValueError("EK-FAC does not run sharded: launch this edit in one process.")
    model = curvature.module
    modules = _check_modules(model)
    damping = curvature.config.weight_decay + curvature.config.damping
    if damping <= 0:
        raise ValueError(
            "EK-FAC's inverse needs λ + δ > 0 (weight decay plus damping): the GGN of a softmax is singular. "
            "Add damping (--damping)."
        )
    start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    batches = list(curvature.batches())
    ekfac = EKFACLinearOperator(
        model,
        nn.CrossEntropyLoss(),
        params,
        batches,
        check_deterministic=False,
        fisher_type="type-2",
        separate_weight_and_bias=False,
        num_data=curvature.n_samples,
    )
    inverse = KFACInverseLinearOperator(ekfac, damping=damping, use_exact_damping=True)

    def product(vector: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            out = inverse @ vector.to(curvature.device, curvature.dtype)
        if not torch.isfinite(out).all():
            raise FloatingPointError("EK-FAC's inverse produced NaN or inf: add damping.")
        return out

    operator = SymmetricOperator(product, curvature.space.numel, curvature.device, curvature.dtype)
    return operator, EkfacReport(time.perf_counter() - start, modules, damping)


def ekfac_inverse(curvature: Curvature, vector: torch.Tensor) -> tuple[torch.Tensor, EkfacReport]:
    """(EK-FAC(G) + (λ + δ)·I)⁻¹ ``vector`` over ``curvature``'s Hessian sample (module docstring)."""
    start = time.perf_counter()
    operator, report = ekfac_inverse_operator(curvature)
    out = operator @ vector
    return out, dataclasses.replace(report, seconds=time.perf_counter() - start)


def ekfac_solve(curvature: Curvature, vector: torch.Tensor) -> tuple[torch.Tensor, SolveReport]:
    """:func:`ekfac_inverse` with its cost as a solver report (an exact inverse of the approximation: converged)."""
    out, ekfac = ekfac_inverse(curvature, vector)
    note = f"curvlinops EK-FAC over {ekfac.modules} Linear/Conv2d modules, exact damping {ekfac.damping:g}"
    return out, SolveReport("ekfac", 0, 0, 0.0, True, ekfac.seconds, note)
