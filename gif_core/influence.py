"""The edit estimators of DESIGN.md section 2. Each returns Δ over the flat parameter space; the edited
model is θ + α·Δ (:func:`gif_core.params.apply_delta`). H is the (damped) Hessian of the problem's Hessian sample,
g the vector of the request (:mod:`gif_core.problem`), T the selected coordinates, Δ_F = 0 outside T.

* ``if``   (Koh & Liang)   Δ = H⁻¹ g over all parameters (MINRES: H may be indefinite; add damping δ for H + δI).
* ``pif``  (projected IF)  Δ_T = (H⁻¹ g)_T: the full IF truncated to T.
* ``fif``  (frozen IF)     Δ_T = H_TT⁻¹ g_T: the sub-network's own IF with everything else frozen.
* ``gif``  (generalized IF, Lyu et al. 2023)  Δ_T = argmin_x ‖H_{:,T} x − g‖² + ρ‖x‖²: the update of T cancels, in
  least squares, the gradient change on ALL coordinates, fixed ones included. Its normal operator H_{:,T}ᵀH_{:,T}
  is positive semi-definite even when H is indefinite, so the solve converges.
* ``tracin`` (the reference's TracIn row, Pruthi et al. 2020 as an editor)  Δ = g over all parameters: H replaced
  by I, so θ + α·g ascends the loss of the removed samples (descends that of their new labels); no solve.
* ``datainf`` (Kwon et al. 2024)  Δ = M⁻¹g with M the layer-wise DataInf inverse of the empirical Fisher
  (:mod:`gif_core.layerwise`): a closed form, no Hessian-vector product.
* ``hyperinf`` (Zhou et al. 2024)  Δ = M⁻¹g with M the layer-wise generalized Fisher, inverted by Schulz's
  iteration (:mod:`gif_core.layerwise`); no Hessian-vector product.
* ``ekfac`` (George et al. 2018; Grosse et al. 2023)  Δ = (EK-FAC(G) + (λ + δ)I)⁻¹ g, the eigenvalue-corrected
  Kronecker-factored GGN over every Linear/Conv2d module, by curvlinops (:mod:`gif_core.ekfac`); no Hessian-vector
  product.
* Freezing (Schioppa et al. 2024: IF with the unselected parameters frozen, H_TT + λI for their damping λ) is
  ``fif`` with the curvature's damping δ = λ: H_TT is the Hessian of the frozen model, so the two are one estimator
  (tests/test_influence.py checks it against the Hessian of a model whose other parameters are really frozen).
* ``sif``  (second-order group IF, Basu et al. 2020)  with the request's scale c and perturbation D
  (L ↦ L + c·D; c = r/(1−r) and D = L − L_U for removals):
  I1 = H_L⁻¹ g,  I2 = −c·H_L⁻¹(∇²D · I1),  Δ = I1 + I2 (third derivatives neglected), where H_L is the Hessian of
  the full training objective (the expansion point of the perturbation).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from gif_core.constraints import MAX_REGULARISER, Alternatives, Interval, OneOf, validate
from gif_core.ekfac import ekfac_inverse_operator, ekfac_solve
from gif_core.layerwise import LayerwiseConfig, datainf_solve, hyperinf_solve
from gif_core.operators import Composed, HessianOperator
from gif_core.params import embed
from gif_core.problem import EditProblem
from gif_core.selection import Selection, select_all
from gif_core.solvers import (
    LEAST_SQUARES_METHODS,
    SYMMETRIC_METHODS,
    SolverConfig,
    SolveReport,
    solve_least_squares,
    solve_symmetric,
)

METHODS = ("gif", "fif", "pif", "if", "sif", "tracin", "datainf", "hyperinf", "ekfac")
SELECTIVE_METHODS = ("gif", "fif", "pif")
METHOD_LABELS = {
    "gif": "GIF",
    "fif": "FIF",
    "pif": "PIF",
    "if": "IF",
    "sif": "SIF",
    "tracin": "TracIn",
    "datainf": "DataInf",
    "hyperinf": "HyperINF",
    "ekfac": "EK-FAC",
}
"""Each estimator's name in tables, charts and reports."""
METHOD_SUMMARIES = {
    "gif": "selected parameters T only, Δ_T = argmin ‖H[:,T]x − g‖² + ρ‖x‖²: cancels g on every coordinate",
    "fif": "selected parameters T only, Δ_T = H_TT⁻¹g_T: the IF of the sub-network, the rest frozen (= freezing)",
    "pif": "selected parameters T only, Δ_T = (H⁻¹g)_T: the full IF cut to T",
    "if": "all parameters, Δ = H⁻¹g: one Newton step on the edited objective (Koh & Liang)",
    "sif": "all parameters, Δ = I1 + I2: IF plus the second-order group correction (Basu et al.)",
    "tracin": "all parameters, Δ = g: no curvature, the first-order step that raises the forgotten samples' loss",
    "datainf": "all parameters, Δ = M⁻¹g, M⁻¹ DataInf's closed-form layer-wise inverse of the Fisher (Kwon et al.)",
    "hyperinf": "all parameters, Δ = M⁻¹g, M the layer-wise generalized Fisher inverted by Schulz (Zhou et al.)",
    "ekfac": "all parameters, Δ = (EK-FAC + (λ+δ)I)⁻¹g: the Kronecker-factored, eigenvalue-corrected GGN (George et al.)",
}
"""One line per estimator: what it moves and its formula; every Δ has the sign of H⁻¹g (θ + α·Δ, α > 0, forgets)."""


GIF_PRECONDITIONERS = ("none", "ekfac")


@dataclass(frozen=True)
class EstimatorConfig:
    """How the estimators solve (``EditConfig.solver``): ``symmetric_solver`` for IF/PIF/FIF/SIF,
    ``least_squares_solver`` for GIF, GIF's Tikhonov weight ρ (``gif_ridge``), and the stopping rule of every solve
    (``rtol``, ``maxiter``, ``track_residuals``, ``richardson_restarts``, LiSSA's fixed scale ``lissa_scale``:
    :attr:`stopping`; the baselines' other constants keep :class:`~gif_core.solvers.SolverConfig`'s values), and
    DataInf's and HyperINF's layer damping (``layer_damping``: × the mean eigenvalue of each layer's factor,
    :class:`~gif_core.layerwise.LayerwiseConfig`), and GIF's right preconditioner (``gif_preconditioner``: ``none``,
    or ``ekfac``: x = M y with M = ((EK-FAC + (λ+δ)I)⁻¹)_TT, the EK-FAC inverse restricted to T, and LSMR on
    min ‖H[:,T] M y − g‖² + ρ‖y‖²; M costs EK-FAC's factors once and no Hessian-vector product;
    benchmarks/results/gif_preconditioner.md measures it). Damping of H itself is a curvature setting
    (:class:`~gif_core.problem.HessianConfig`).

    The defaults are an edit's, chosen by ``benchmarks/defaults.py`` (see :class:`gif_core.experiment.EditConfig`):
    ρ = 0.01 and at most 3 iterations, early-stopped by design; give a tight ``rtol`` and a large ``maxiter`` (and
    ρ = 0) for a converged solve."""

    symmetric_solver: str = "minres"
    least_squares_solver: str = "lsmr"
    gif_ridge: float = 0.01
    rtol: float = 1e-4
    maxiter: int = 3
    track_residuals: bool = False
    richardson_restarts: int = 100
    lissa_scale: float = 10.0
    layer_damping: float = 0.1
    gif_preconditioner: str = "none"

    CONSTRAINTS: ClassVar[dict[str, Alternatives]] = {
        "symmetric_solver": (OneOf(SYMMETRIC_METHODS),),
        "gif_preconditioner": (OneOf(GIF_PRECONDITIONERS),),
        "least_squares_solver": (OneOf(LEAST_SQUARES_METHODS),),
        "gif_ridge": (Interval(0, MAX_REGULARISER),),
    }

    def __post_init__(self) -> None:
        validate(self)
        self.stopping  # noqa: B018 (validates the stopping rule by SolverConfig's declared constraints)
        self.layerwise  # noqa: B018 (validates the layer damping by LayerwiseConfig's)

    @property
    def layerwise(self) -> LayerwiseConfig:
        """DataInf's and HyperINF's settings."""
        return LayerwiseConfig(damping_ratio=self.layer_damping)

    @property
    def stopping(self) -> SolverConfig:
        """The stopping rule every solve of the estimators runs under."""
        return SolverConfig(
            rtol=self.rtol,
            maxiter=self.maxiter,
            track_residuals=self.track_residuals,
            richardson_restarts=self.richardson_restarts,
            lissa_scale=self.lissa_scale,
        )


@dataclass(frozen=True)
class InfluenceResult:
    """Δ (flat, zero outside the selection), the selection used, and every solve's diagnostics."""

    method: str
    delta: torch.Tensor
    selection: Selection
    reports: tuple[SolveReport, ...]
    problem: EditProblem
    solved: str

    @property
    def converged(self) -> bool:
        return all(r.converged for r in self.reports)

    @property
    def hvps(self) -> int:
        return sum(r.hvps for r in self.reports)

    def solver_summary(self) -> dict:
        """One record for reports: totals over the solves, the worst residual, and whether all converged."""
        return {
            "name": "+".join(r.name for r in self.reports),
            "iterations": sum(r.iterations for r in self.reports),
            "hvps": self.hvps,
            "rel_residual": max(r.rel_residual for r in self.reports),
            "converged": self.converged,
            "seconds": sum(r.seconds for r in self.reports),
        }


def estimate(
    method: str, problem: EditProblem, selection: Selection | None = None, config: EstimatorConfig | None = None
) -> InfluenceResult:
    """Run estimator ``method`` on ``problem``. GIF/FIF/PIF need a ``selection``; the others use all parameters."""
    config = config or EstimatorConfig()
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method in SELECTIVE_METHODS:
        if selection is None:
            raise ValueError(f"{method.upper()} needs a parameter selection (see gif_core.selection.select).")
        if selection.mask.numel() != problem.space.numel:
            raise ValueError("The selection was made for another model: its mask does not match the parameters.")
        if selection.n_selected == 0:
            raise ValueError(f"{method.upper()} got an empty selection: there is no parameter to update.")
    else:
        selection = select_all(problem.space)
    runner = {
        "if": _influence,
        "pif": _projected,
        "fif": _frozen,
        "gif": _generalized,
        "sif": _second_order,
        "tracin": _gradient_direction,
        "datainf": _datainf,
        "hyperinf": _hyperinf,
        "ekfac": _ekfac,
    }
    delta, reports, solved = runner[method](problem, selection, config)
    return InfluenceResult(method, delta, selection, tuple(reports), problem, solved)


def _damping_note(problem: EditProblem) -> str:
    d = problem.hessian.config.damping
    return f"H + {d:g}·I" if d else "H (undamped)"


def _influence(problem: EditProblem, selection: Selection, config: EstimatorConfig):
    """Δ = H⁻¹g, solved once per problem and solver settings (PIF at any ratio reuses it: its report then
    shows the products of that one solve, which were spent once)."""
    key = (config.symmetric_solver, config.stopping)
    if key not in problem.memo.solutions:
        problem.memo.solutions[key] = solve_symmetric(
            HessianOperator(problem.hessian), problem.g, config.symmetric_solver, config.stopping
        )
    x, report = problem.memo.solutions[key]
    return x.clone(), [report], f"{_damping_note(problem)} x = g by {report.name}"


def _projected(problem: EditProblem, selection: Selection, config: EstimatorConfig):
    x, reports, solved = _influence(problem, selection, config)
    mask = selection.mask.to(x.device)
    return torch.where(mask, x, torch.zeros_like(x)), reports, f"({solved}) restricted to T"


def _frozen(problem: EditProblem, selection: Selection, config: EstimatorConfig):
    index = selection.indices.to(problem.g.device)
    block = HessianOperator(problem.hessian).restrict(index, index)  # H_TT
    x, report = solve_symmetric(block, problem.g[index], config.symmetric_solver, config.stopping)
    return embed(x, index, problem.space.numel), [report], f"{_damping_note(problem)}_TT x = g_T by {report.name}"


def _generalized(problem: EditProblem, selection: Selection, config: EstimatorConfig):
    index = selection.indices.to(problem.g.device)
    columns = HessianOperator(problem.hessian).restrict(cols=index)  # H_{:,T}; its transpose y ↦ (H y)_T
    ridge = f" + {config.gif_ridge:g}‖x‖²" if config.gif_ridge else ""
    damped = _damping_note(problem)
    if config.gif_preconditioner == "ekfac":
        inverse, ekfac = ekfac_inverse_operator(problem.hessian)
        right = inverse.restrict(index, index)  # M = ((EK-FAC + (λ+δ)I)⁻¹)_TT
        y, report = solve_least_squares(
            Composed(columns, right), problem.g, config.least_squares_solver, config.gif_ridge, config.stopping
        )
        report = replace(report, seconds=report.seconds + ekfac.seconds)
        solved = f"x = M y, min ‖{damped}[:, T] M y − g‖²{ridge.replace('x', 'y')} by {report.name}, M the EK-FAC inverse on T"
        return embed(right @ y, index, problem.space.numel), [report], solved
    x, report = solve_least_squares(columns, problem.g, config.least_squares_solver, config.gif_ridge, config.stopping)
    return embed(x, index, problem.space.numel), [report], f"min ‖{damped}[:, T] x − g‖²{ridge} by {report.name}"


def _second_order(problem: EditProblem, selection: Selection, config: EstimatorConfig):
    full = problem.full_hessian()
    first, report1 = solve_symmetric(full, problem.g, config.symmetric_solver, config.stopping)
    rhs = -problem.scale * problem.perturbation_hvp(first)
    second, report2 = solve_symmetric(full, rhs, config.symmetric_solver, config.stopping)
    # Count Hessian-vector products, not operator calls: one H_L product may combine two Hessians, and the
    # right-hand side of the second solve needed one ∇²D product.
    per_call = problem.full_hvp_products
    report1 = replace(report1, hvps=report1.hvps * per_call)
    report2 = replace(report2, hvps=report2.hvps * per_call + problem.perturbation_hvp_products)
    return first + second, [report1, report2], "I1 = H_L⁻¹g, I2 = −c·H_L⁻¹(∇²D·I1), Δ = I1 + I2"


def _gradient_direction(problem: EditProblem, selection: Selection, config: EstimatorConfig):
    """TracIn's editor: Δ = g, no curvature and no solve."""
    report = SolveReport("none", 0, 0, 0.0, True, 0.0, "Δ = g: no solve")
    return problem.g.clone(), [report], "Δ = g (H replaced by I)"


def _datainf(problem: EditProblem, selection: Selection, config: EstimatorConfig):
    delta, report = datainf_solve(problem.hessian, problem.g, config.layerwise)
    return delta.to(problem.g.dtype), [report], "Δ_l = (1/λ_l)[g_l − mean_i g_il (g_ilᵀg_l)/(λ_l + ‖g_il‖²)] per layer"


def _hyperinf(problem: EditProblem, selection: Selection, config: EstimatorConfig):
    delta, report = hyperinf_solve(problem.hessian, problem.g, config.layerwise)
    return (
        delta.to(problem.g.dtype),
        [report],
        "Δ_l = (G_l + λ_l I)⁻¹ V_l per layer (G_l the GFIM, V_l = g_l as a matrix) by Schulz",
    )


def _ekfac(problem: EditProblem, selection: Selection, config: EstimatorConfig):
    delta, report = ekfac_solve(problem.hessian, problem.g)
    damping = problem.hessian.config.weight_decay + problem.hessian.config.damping
    return delta.to(problem.g.dtype), [report], f"(EK-FAC(G) + {damping:g}·I) x = g"
