"""Layer-wise closed-form and hyperpower inverses of the curvature: DataInf and HyperINF.

Both replace H⁻¹ by a block-diagonal inverse over *layers* (each Linear/Conv module's weight and bias together, every
other trainable tensor a layer of its own; :func:`layer_groups`) built from the per-sample gradients g_i of the data
loss (no weight-decay term) over the Hessian sample, n samples. Δ_l = M_l⁻¹ v_l for the vector v = g of the request,
so an editor's Δ has the sign of IF's: H⁻¹g with H replaced by the block-diagonal M. Neither needs a Hessian-vector
product; their cost is passes over the n per-sample gradients (two for DataInf, one for HyperINF) and, for
HyperINF, matrix products of the factor's size.

* **DataInf** (Kwon et al. 2024, "DataInf: Efficiently Estimating Data Influence in LoRA-tuned LLMs and Diffusion
  Models"), with the layer's empirical Fisher G_l = (1/n)·Σ_i g_il g_ilᵀ and damping λ_l, swaps the inverse and
  the average (exact for n = 1):
  (G_l + λ_l I)⁻¹ v_l ≈ (1/n)·Σ_i (g_il g_ilᵀ + λ_l I)⁻¹ v_l = (1/λ_l)·[v_l − (1/n)·Σ_i g_il·(g_ilᵀv_l)/(λ_l + ‖g_il‖²)]
  (Sherman–Morrison on each rank-one term). λ_l = ``damping_ratio``·(1/(n·d_l))·Σ_i ‖g_il‖² (the paper's rule:
  0.1 × the mean diagonal of G_l, d_l the layer's size).
* **HyperINF** (Zhou, Fan & Jaggi 2024, "HyperINF: Unleashing the HyperPower of the Schulz's Method for Data
  Influence Estimation"): each layer's gradient taken as its weight matrix, M_i = [∇W_i | ∇b_i] ∈ R^{out×(fan_in+1)}
  (a conv kernel flattened per output channel; a tensor outside Linear/Conv as one column), the generalized Fisher
  (GFIM) G_l = (1/(n·c))·Σ_i M_i M_iᵀ ∈ R^{out×out} with c the matrix's number of columns, which stands for the
  Fisher block G_l ⊗ I_c; Δ_l = (G_l + λ_l I)⁻¹ V_l with V_l the request's vector in the same matrix form, the
  inverse by Schulz's hyperpower iteration (:func:`schulz_inverse`). λ_l = ``damping_ratio``·tr(G_l)/out (the same
  0.1 × mean eigenvalue rule). The 1/c keeps tr(G_l ⊗ I_c) equal to the trace of the layer's Fisher block, so layers
  of different widths keep their relative scale under one step α (the paper's LoRA matrices share one shape, where
  the factor is a common constant).

The factors, damping and inverses are computed in float64 whatever the model's precision (Schulz's residual in
float32 stalls near 1e-6); Δ is returned in the curvature's dtype. Sharded (:mod:`gif_core.distributed`), each rank sums over its rows of the Hessian sample and the sums are
all-reduced, so every rank gets the same Δ.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from gif_core.constraints import Alternatives, Interval, validate
from gif_core.curvature import Curvature
from gif_core.params import ParamSpace
from gif_core.solvers import SolveReport

HYPERINF_MAX_SIDE = 4096
"""The largest GFIM HyperINF inverts (out × out entries): above it a Schulz iteration costs minutes on a CPU."""


@dataclass(frozen=True)
class LayerwiseConfig:
    """Damping of every layer: ``damping_ratio`` × the mean eigenvalue of the matrix inverted; and the Schulz
    iteration's limits (HyperINF): at most ``schulz_iterations``, stopped once ‖I − A X‖_F ≤ ``schulz_tolerance``."""

    damping_ratio: float = 0.1
    schulz_iterations: int = 100
    schulz_tolerance: float = 1e-8

    CONSTRAINTS: ClassVar[dict[str, Alternatives]] = {
        "damping_ratio": (Interval(0, None, closed="neither"),),
        "schulz_iterations": (Interval(1, None, integer=True),),
        "schulz_tolerance": (Interval(0, 1, closed="neither"),),
    }

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class LayerGroup:
    """One layer's flat indices laid out as its matrix: ``index[r, c]`` is the flat coordinate of row r (an output
    neuron), column c (a fan-in entry; the last column the bias, when there is one)."""

    name: str
    index: torch.Tensor

    @property
    def flat(self) -> torch.Tensor:
        return self.index.reshape(-1)


@dataclass(frozen=True)
class LayerwiseReport:
    """What a layer-wise inverse cost and how exact its inverses were: per-sample gradient passes, the layers, the
    largest factor inverted, the worst Schulz residual ‖I − A X‖_F (0 for DataInf's closed form)."""

    gradient_passes: int
    layers: int
    largest_factor: int
    residual: float
    iterations: int


def layer_groups(space: ParamSpace) -> tuple[LayerGroup, ...]:
    """Every Linear/Conv module (weight and bias, neuron by neuron) and every other trainable tensor (one column)."""
    groups, covered = [], set()
    for layer in space.layers:
        weight = layer.weight.offset + torch.arange(layer.weight.numel).reshape(layer.n_rows, layer.fan_in)
        columns = [weight]
        covered.add(layer.weight.name)
        if layer.bias is not None:
            columns.append(layer.bias.offset + torch.arange(layer.n_rows).reshape(-1, 1))
            covered.add(layer.bias.name)
        groups.append(LayerGroup(layer.module or "(model)", torch.cat(columns, dim=1)))
    for block in space.blocks:
        if block.name not in covered:
            groups.append(LayerGroup(block.name, block.offset + torch.arange(block.numel).reshape(-1, 1)))
    return tuple(groups)


def _check_finite(delta: torch.Tensor, name: str) -> None:
    if not torch.isfinite(delta).all():
        raise FloatingPointError(f"{name}'s inverse produced NaN or inf: a layer's gradients are not finite.")


def _gradient_blocks(curvature: Curvature) -> Iterator[torch.Tensor]:
    """The data loss's per-sample gradients over this rank's rows of the Hessian sample, [batch, p] blocks."""
    return curvature.sample_gradients(regulariser=False)


def datainf_inverse(
    curvature: Curvature, vector: torch.Tensor, config: LayerwiseConfig | None = None
) -> tuple[torch.Tensor, LayerwiseReport]:
    """DataInf's block-diagonal approximation of H⁻¹ applied to ``vector`` (module docstring)."""
    config = config or LayerwiseConfig()
    groups = layer_groups(curvature.space)
    n = curvature.n_samples
    v = vector.to(curvature.device, torch.float64)
    squares = torch.zeros(len(groups), device=curvature.device, dtype=torch.float64)
    for block in _gradient_blocks(curvature):  # pass 1: Σ_i ‖g_il‖², for the damping
        squares += torch.stack([block[:, g.flat].double().square().sum() for g in groups])
    squares = curvature.sum_over_ranks(squares)
    sizes = torch.tensor([g.flat.numel() for g in groups], device=squares.device, dtype=squares.dtype)
    damping = config.damping_ratio * squares / (n * sizes)
    if not bool((damping > 0).all()):
        empty = [g.name for g, d in zip(groups, damping, strict=True) if not d > 0]
        raise ValueError(f"DataInf needs a non-zero gradient in every layer; zero over the Hessian sample in {empty}")
    correction = torch.zeros_like(v)
    for block in _gradient_blocks(curvature):  # pass 2: Σ_i g_il·(g_ilᵀv_l)/(λ_l + ‖g_il‖²)
        for group, lam in zip(groups, damping, strict=True):
            rows = block[:, group.flat].double()
            weights = (rows @ v[group.flat]) / (lam + rows.square().sum(1))
            correction[group.flat] += weights @ rows
    correction = curvature.sum_over_ranks(correction)
    out = torch.empty_like(v)
    for group, lam in zip(groups, damping, strict=True):
        out[group.flat] = (v[group.flat] - correction[group.flat] / n) / lam
    _check_finite(out, "DataInf")
    largest = max(int(g.flat.numel()) for g in groups)
    return out.to(curvature.dtype), LayerwiseReport(2, len(groups), largest, 0.0, 0)


def schulz_inverse(matrix: torch.Tensor, iterations: int, tolerance: float) -> tuple[torch.Tensor, float, int]:
    """A⁻¹ by Schulz's iteration X_{k+1} = X_k(2I − A X_k) from X_0 = Aᵀ/(‖A‖_1‖A‖_∞), which converges
    (quadratically, once ‖I − A X_k‖ < 1) for every non-singular A. Returns X, ‖I − A X‖_F and the iterations."""
    eye = torch.eye(matrix.shape[0], device=matrix.device, dtype=matrix.dtype)
    norm_1 = matrix.abs().sum(0).max()
    norm_inf = matrix.abs().sum(1).max()
    x = matrix.T / (norm_1 * norm_inf)
    residual = float(torch.linalg.matrix_norm(eye - matrix @ x))
    if not math.isfinite(residual):
        raise FloatingPointError("Schulz's iteration got a matrix with NaN or inf entries.")
    done = 0
    while done < iterations and residual > tolerance:
        x = x @ (2 * eye - matrix @ x)
        done += 1
        residual = float(torch.linalg.matrix_norm(eye - matrix @ x))
        if not math.isfinite(residual):
            raise FloatingPointError("Schulz's iteration produced NaN or inf: the factor is singular or ill-scaled.")
    return x, residual, done


def hyperinf_inverse(
    curvature: Curvature, vector: torch.Tensor, config: LayerwiseConfig | None = None
) -> tuple[torch.Tensor, LayerwiseReport]:
    """HyperINF's block-diagonal GFIM inverse applied to ``vector`` (module docstring)."""
    config = config or LayerwiseConfig()
    groups = layer_groups(curvature.space)
    too_big = [f"{g.name} ({g.index.shape[0]} rows)" for g in groups if g.index.shape[0] > HYPERINF_MAX_SIDE]
    if too_big:
        raise ValueError(
            f"HyperINF inverts an out × out factor per layer; {', '.join(too_big)} exceed {HYPERINF_MAX_SIDE}: "
            "choose another method for this model."
        )
    v = vector.to(curvature.device, torch.float64)
    factors = [torch.zeros(g.index.shape[0], g.index.shape[0], device=v.device, dtype=v.dtype) for g in groups]
    for block in _gradient_blocks(curvature):
        for group, factor in zip(groups, factors, strict=True):
            matrices = block[:, group.index].double()  # [batch, out, columns]
            factor += torch.einsum("brc,bsc->rs", matrices, matrices)
    out = torch.empty_like(v)
    worst, most = 0.0, 0
    for group, factor in zip(groups, factors, strict=True):
        gfim = curvature.sum_over_ranks(factor) / (curvature.n_samples * group.index.shape[1])
        lam = config.damping_ratio * float(torch.trace(gfim)) / gfim.shape[0]
        if not lam > 0:
            raise ValueError(f"HyperINF needs a non-zero gradient in every layer; zero in {group.name}")
        damped = gfim + lam * torch.eye(gfim.shape[0], device=v.device, dtype=v.dtype)
        inverse, residual, iterations = schulz_inverse(damped, config.schulz_iterations, config.schulz_tolerance)
        out[group.flat] = (inverse @ v[group.index]).reshape(-1)
        worst, most = max(worst, residual), max(most, iterations)
    _check_finite(out, "HyperINF")
    largest = max(int(g.index.shape[0]) for g in groups)
    return out.to(curvature.dtype), LayerwiseReport(1, len(groups), largest, worst, most)


def _solve_report(name: str, layerwise: LayerwiseReport, seconds: float, converged: bool) -> SolveReport:
    note = (
        f"{layerwise.gradient_passes} pass(es) over the Hessian sample's per-sample gradients; {layerwise.layers} "
        f"layers, the largest factor {layerwise.largest_factor}"
    )
    return SolveReport(name, layerwise.iterations, 0, layerwise.residual, converged, seconds, note)


def datainf_solve(
    curvature: Curvature, vector: torch.Tensor, config: LayerwiseConfig | None = None
) -> tuple[torch.Tensor, SolveReport]:
    """:func:`datainf_inverse` with its cost as a solver report (closed form: always converged)."""
    start = time.perf_counter()
    out, layerwise = datainf_inverse(curvature, vector, config)
    return out, _solve_report("datainf", layerwise, time.perf_counter() - start, True)


def hyperinf_solve(
    curvature: Curvature, vector: torch.Tensor, config: LayerwiseConfig | None = None
) -> tuple[torch.Tensor, SolveReport]:
    """:func:`hyperinf_inverse` with its cost as a solver report (converged when every layer's Schulz residual
    ‖I − AX‖_F reached the tolerance)."""
    config = config or LayerwiseConfig()
    start = time.perf_counter()
    out, layerwise = hyperinf_inverse(curvature, vector, config)
    converged = layerwise.residual <= config.schulz_tolerance
    return out, _solve_report("hyperinf (Schulz)", layerwise, time.perf_counter() - start, converged)
