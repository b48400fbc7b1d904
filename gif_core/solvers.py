"""Linear solvers over Hessian-vector products, each returning the solution and a :class:`SolveReport`.

Two problem shapes occur (DESIGN.md section 2):

* symmetric systems ``A x = b`` (IF, FIF, SIF), A = H or H_TT, possibly indefinite:
  ``minres`` (default; handles indefinite A) or ``cg`` (A positive definite), both from ``scipy.sparse.linalg``;
  and two named baselines of the influence literature, both the Neumann series of A⁻¹ with a scale s,
  x_{j+1} = x_j + (b − A x_j)/s (LiSSA's recursion h_j = b + (I − A/s) h_{j−1} with x = h/s; one product per
  iteration, and its residual b − A x_j comes with that product). It converges only when A is positive definite
  and s > λ_max(A)/2 (the iteration matrix I − A/s then has spectral radius below one):

  - ``lissa`` (Agarwal et al. 2017, as Koh & Liang use it): a fixed scale s (``lissa_scale``), deterministic here
    (every product covers the whole Hessian sample, so the stochastic version's repeats are not needed; LiSSA's own
    damping is δ of H). A residual that grows from one iteration to the next, or is not finite, is an error: the
    iteration matrix I − A/s is symmetric, so one growth proves its spectral radius exceeds one.
  - ``plissa`` (the GIF authors' P-LiSSA, as their paper describes it): s = 1.1·|λ|_max(A), |λ|_max estimated by
    power iteration (``lissa_power_iterations`` products at most, stopped when the estimate changes by less than
    0.1%); the iterate with the smallest residual is kept; a residual that grows to twice the smallest restarts
    from the kept iterate with s doubled (``lissa_restarts`` times at most: a negative eigenvalue of A makes the
    series grow at every scale); and it stops when the smallest residual has not fallen by 1% in
    ``lissa_patience`` iterations (a stall). Every product, power iterations included, is counted. No iterate
    better than x = 0 is an error (the series diverged from its first step).
* the torch-native twins ``minres-torch``, ``cg-torch``, ``lsmr-torch`` and ``cgls-torch``
  (:mod:`gif_core.torch_krylov`): the same algorithms written in torch so that every vector stays on the
  operator's device (float64 recurrences, products in the operator's own dtype): on a GPU no iterate crosses to the
  host. They take scipy's iterates (tested at every iteration count) and stop on the residual this module reports
  (‖r‖ ≤ rtol·‖b‖; the normal residual ≤ rtol·‖Aᵀb‖), which scipy's ``minres`` and ``lsmr`` approximate by their
  own rules. An operator that is not on the CPU runs ``minres``, ``cg``, ``lsmr`` and ``cgls`` as their twins (the
  report's name says which ran): scipy would move every vector to the host and back at each product.
* the GIF least-squares problem ``min_x ‖A x − b‖² + δ‖x‖²`` with A = H_{:,T} (a p×k operator whose ``matvec``
  and ``rmatvec`` each cost one Hessian-vector product): ``cgls`` (scipy's CG on the normal equations
  (AᵀA + δI) x = Aᵀb, which stop exactly on the normal residual reported here), ``lsmr`` (scipy), or
  ``richardson``, the reference implementation's scheme kept as the named baseline:
  x ← v + x − A_c x with A_c = (AᵀA)/c², v = Aᵀb/c², starting at c = 1 and raising c by a fixed step (and
  restarting) whenever the distance between iterates grows, checked every second iteration, with a bounded
  number of restarts.

The relative residual reported is ‖b − A x‖/‖b‖ for symmetric systems and the normal-equation residual
‖Aᵀ(b − A x) − δx‖/‖Aᵀb‖ for least squares (the least-squares residual ‖A x − b‖ does not vanish when k < p).
It is computed explicitly after the solve, and its products are counted in ``hvps``. A solve that does not reach
``rtol`` reports ``converged=False``; a NaN or inf raises ``FloatingPointError``.

The solvers run with numpy/scipy's OpenBLAS limited to one thread (``threadpoolctl``): their recurrences are
vector operations too small to gain from threads, while OpenBLAS's idle threads keep spinning after each call and
take the cores from torch's threads in the next Hessian-vector product — on the bundled CNN that doubled every
second product of an LSMR solve (benchmarks/results/profile_edit.md).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
import torch
from scipy.sparse import linalg as spla
from threadpoolctl import threadpool_limits

from gif_core import torch_krylov
from gif_core.constraints import Alternatives, InstanceOf, Interval, validate
from gif_core.operators import Counted, LinearMap, Normal, to_numpy

SYMMETRIC_METHODS = ("minres", "cg", "minres-torch", "cg-torch", "lissa", "plissa")
LISSA_METHODS = ("lissa", "plissa")
LEAST_SQUARES_METHODS = ("cgls", "lsmr", "lsmr-torch", "cgls-torch", "richardson")
TORCH_TWINS = {"minres": "minres-torch", "cg": "cg-torch", "lsmr": "lsmr-torch", "cgls": "cgls-torch"}
"""Each scipy-backed solver and its torch-native twin (:mod:`gif_core.torch_krylov`): recurrences in torch on the
operator's device (float64 vectors there), no host round trip per product: the GPU path. Same iterates (tested)."""
TORCH_METHODS = tuple(TORCH_TWINS.values())


def method_on(method: str, device: torch.device) -> str:
    """The solver that runs ``method`` for an operator on ``device``: its torch-native twin off the CPU (scipy
    would move each vector to the host and back at every product), ``method`` itself otherwise."""
    return TORCH_TWINS.get(method, method) if torch.device(device).type != "cpu" else method


@dataclass(frozen=True)
class SolverConfig:
    """Stopping rule and limits. ``richardson_*`` only concern the Richardson baseline, ``lissa_*`` the LiSSA
    baselines (see the module docstring)."""

    rtol: float = 1e-4
    maxiter: int = 500
    track_residuals: bool = False
    richardson_scale: float = 1.0
    richardson_scale_step: float = 0.5
    richardson_restarts: int = 100
    lissa_scale: float = 10.0
    lissa_power_iterations: int = 20
    lissa_restarts: int = 3
    lissa_patience: int = 10

    CONSTRAINTS: ClassVar[dict[str, Alternatives]] = {
        "rtol": (Interval(0, 1, closed="neither"),),
        "maxiter": (Interval(1, None, integer=True),),
        "track_residuals": (InstanceOf(bool),),
        "richardson_scale": (Interval(0, None, closed="neither"),),
        "richardson_scale_step": (Interval(0, None, closed="neither"),),
        "richardson_restarts": (Interval(0, None, integer=True),),
        "lissa_scale": (Interval(0, None, closed="neither"),),
        "lissa_power_iterations": (Interval(1, None, integer=True),),
        "lissa_restarts": (Interval(0, None, integer=True),),
        "lissa_patience": (Interval(1, None, integer=True),),
    }

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class SolveReport:
    """Diagnostics of one solve. ``residual_history`` (optional) is the relative residual after each iteration;
    when tracked for the scipy solvers it costs extra products that are counted in ``trace_hvps``, not ``hvps``."""

    name: str
    iterations: int
    hvps: int
    rel_residual: float
    converged: bool
    seconds: float
    note: str = ""
    residual_history: tuple[float, ...] = field(default=(), repr=False)
    trace_hvps: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _check(x: torch.Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        raise FloatingPointError(
            f"Solver {name} produced NaN or inf: the problem is ill-posed at this scale "
            "(add damping, or use the least-squares/minres solver)."
        )


def _norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x.to(torch.float64)))


def _residual(op: Counted, x: torch.Tensor, b: torch.Tensor, b_norm: float, method: str) -> float:
    """‖b − A x‖/‖b‖ by one counted product, after checking x; a non-finite residual raises."""
    _check(x, method)
    rel = _norm(b - op @ x) / b_norm
    if not np.isfinite(rel):
        raise FloatingPointError(f"Solver {method}: the residual of its solution is not finite.")
    return rel


_ONE_BLAS_THREAD = threadpool_limits.wrap(limits=1, user_api="blas")


@_ONE_BLAS_THREAD
def solve_symmetric(
    operator: LinearMap, b: torch.Tensor, method: str = "minres", config: SolverConfig | None = None
) -> tuple[torch.Tensor, SolveReport]:
    """Solve A x = b for a symmetric operator A (``minres`` or ``cg``, scipy; ``lissa`` or ``plissa``, the
    Neumann-series baselines of the module docstring)."""
    config = config or SolverConfig()
    if method not in SYMMETRIC_METHODS:
        raise ValueError(f"Unknown symmetric solver {method!r}; choose one of {', '.join(SYMMETRIC_METHODS)}")
    method = method_on(method, operator.device)
    _check(b, method)
    start = time.perf_counter()
    op, trace_op = Counted(operator), Counted(operator)
    b_norm = _norm(b)
    if b_norm == 0:
        return torch.zeros_like(b), SolveReport(method, 0, 0, 0.0, True, time.perf_counter() - start, "b = 0")
    if method in LISSA_METHODS or method in TORCH_METHODS:
        solve = {"lissa": _lissa, "plissa": _plissa, "cg-torch": _torch_cg, "minres-torch": _torch_minres}[method]
        x, iterations, lissa_history, note = solve(op, b, config)
        rel = _residual(op, x, b, b_norm, method)
        return x, SolveReport(
            method,
            iterations,
            op.calls,
            rel,
            rel <= config.rtol,
            time.perf_counter() - start,
            note,
            tuple(lissa_history) if config.track_residuals else (),
        )
    linop = op.to_scipy()
    iterations, history = 0, []

    def callback(xk: np.ndarray) -> None:
        nonlocal iterations
        iterations += 1
        if config.track_residuals:
            history.append(_norm(b - trace_op @ op.to_torch(xk)) / b_norm)

    solver = spla.minres if method == "minres" else spla.cg
    # scipy's MINRES stops on ‖r‖ ≤ rtol·‖A‖·‖x‖, looser than ‖r‖ ≤ rtol·‖b‖: warm-restart with a tightened
    # tolerance until the residual reported here meets rtol or the iteration budget is spent.
    x_np, inner_rtol, rel = None, config.rtol, float("inf")
    while iterations < config.maxiter:
        x_np, _ = solver(
            linop, to_numpy(b), x0=x_np, rtol=inner_rtol, maxiter=config.maxiter - iterations, callback=callback
        )
        x = op.to_torch(x_np)
        rel = _residual(op, x, b, b_norm, method)
        if rel <= config.rtol or inner_rtol < 1e-15:
            break
        inner_rtol *= max(config.rtol / rel, 1e-3)
    return x, SolveReport(
        method,
        iterations,
        op.calls,
        rel,
        rel <= config.rtol,
        time.perf_counter() - start,
        residual_history=tuple(history),
        trace_hvps=trace_op.calls,
    )


@_ONE_BLAS_THREAD
def solve_least_squares(
    operator: LinearMap,
    b: torch.Tensor,
    method: str = "cgls",
    damping: float = 0.0,
    config: SolverConfig | None = None,
) -> tuple[torch.Tensor, SolveReport]:
    """Solve min_x ‖A x − b‖² + δ‖x‖² for an operator A: R^k → R^p.

    Each product of A or Aᵀ counts as one Hessian-vector product.
    """
    config = config or SolverConfig()
    if method not in LEAST_SQUARES_METHODS:
        raise ValueError(f"Unknown least-squares solver {method!r}; choose one of {', '.join(LEAST_SQUARES_METHODS)}")
    method = method_on(method, operator.device)
    if damping < 0:
        raise ValueError("damping must be ≥ 0")
    _check(b, method)
    start = time.perf_counter()
    counted = Counted(operator)
    atb = counted.rmatvec(b)
    atb_norm = _norm(atb)
    if atb_norm == 0:
        x = torch.zeros(operator.shape[1], device=b.device, dtype=b.dtype)
        return x, SolveReport(method, 0, counted.calls, 0.0, True, time.perf_counter() - start, "Aᵀb = 0")
    normal = Normal(counted, damping)
    if method == "richardson":
        x, iterations, history, note = _richardson(normal, atb, config)
        trace_calls = 0
    elif method in TORCH_METHODS:
        solve = {"cgls-torch": _torch_cgls, "lsmr-torch": _torch_lsmr}[method]
        x, iterations, history, note = solve(counted, b, atb, damping, config)
        trace_calls = 0
    else:
        x, iterations, history, trace_calls = _scipy_least_squares(counted, b, atb, method, damping, config)
        note = ""
    _check(x, method)
    rel = _norm(atb - normal @ x) / atb_norm
    return x, SolveReport(
        method,
        iterations,
        counted.calls,
        rel,
        rel <= config.rtol,
        time.perf_counter() - start,
        note,
        tuple(history),
        trace_calls,
    )


def _scipy_least_squares(
    counted: Counted, b: torch.Tensor, atb: torch.Tensor, method: str, damping: float, config: SolverConfig
) -> tuple[torch.Tensor, int, list[float], int]:
    history: list[float] = []
    if method == "lsmr":
        out = spla.lsmr(
            counted.to_scipy(), to_numpy(b), damp=damping**0.5, atol=0.1 * config.rtol, btol=0.0, maxiter=config.maxiter
        )
        return counted.to_torch(out[0]), int(out[2]), history, 0
    # cgls: CG on the normal equations (AᵀA + δI) x = Aᵀb.
    trace_counter = Counted(counted.operator)
    normal, trace = Normal(counted, damping), Normal(trace_counter, damping)
    atb_norm = _norm(atb)
    iterations = 0

    def callback(xk: np.ndarray) -> None:
        nonlocal iterations
        iterations += 1
        if config.track_residuals:
            history.append(_norm(atb - trace @ counted.to_torch(xk)) / atb_norm)

    x_np, _ = spla.cg(normal.to_scipy(), to_numpy(atb), rtol=config.rtol, maxiter=config.maxiter, callback=callback)
    return counted.to_torch(x_np), iterations, history, trace_counter.calls


def _torch_symmetric(
    inner: torch_krylov.Inner, op: LinearMap, b: torch.Tensor, config: SolverConfig
) -> tuple[torch.Tensor, int, list[float], str]:
    """``inner`` (:mod:`gif_core.torch_krylov`) on A x = b, stopped at ‖r‖ ≤ rtol·‖b‖, restarted on the true
    residual when the products are not float64."""
    rhs = b.to(torch.float64)
    b_norm = _norm(b)
    product = torch_krylov.in_dtype(lambda v: op @ v, b.dtype)
    result = torch_krylov.restarted(
        inner, product, rhs, config.rtol * b_norm, config.maxiter, exact=b.dtype == torch.float64
    )
    history = [r / b_norm for r in result.residuals] if config.track_residuals else []
    return result.x.to(b.dtype), result.iterations, history, result.note


def _torch_cg(op: Counted, b: torch.Tensor, config: SolverConfig) -> tuple[torch.Tensor, int, list[float], str]:
    """Conjugate gradients on A x = b in torch (one product per iteration; A must be positive definite, as for
    scipy's ``cg``; a curvature pᵀAp ≤ 0 stops it with a note)."""
    return _torch_symmetric(torch_krylov.conjugate_gradients, op, b, config)


def _torch_minres(op: Counted, b: torch.Tensor, config: SolverConfig) -> tuple[torch.Tensor, int, list[float], str]:
    """MINRES on A x = b in torch (one product per iteration; A symmetric, possibly indefinite)."""
    return _torch_symmetric(torch_krylov.minres, op, b, config)


def _torch_cgls(
    counted: Counted, b: torch.Tensor, atb: torch.Tensor, damping: float, config: SolverConfig
) -> tuple[torch.Tensor, int, list[float], str]:
    """CGLS in torch: conjugate gradients on (AᵀA + δI) x = Aᵀb, x₀ = 0, stopped when the normal residual
    ‖Aᵀb − (AᵀA + δI) x‖ ≤ rtol·‖Aᵀb‖ (two products per iteration, A p and Aᵀ(A p))."""
    del b  # the normal equations need only Aᵀb
    return _torch_symmetric(torch_krylov.conjugate_gradients, Normal(counted, damping), atb, config)


def _torch_lsmr(
    counted: Counted, b: torch.Tensor, atb: torch.Tensor, damping: float, config: SolverConfig
) -> tuple[torch.Tensor, int, list[float], str]:
    """LSMR in torch on min ‖A x − b‖² + δ‖x‖², x₀ = 0, stopped when its normal residual
    ‖Aᵀ(b − A x) − δx‖ ≤ rtol·‖Aᵀb‖ (two products per iteration, A v and Aᵀu; Aᵀb is reused, not recomputed).
    It does not restart when the products are float32: a warm start would change the damped problem; the reported
    residual is the explicit one either way."""
    atb_norm = _norm(atb)
    result = torch_krylov.lsmr(
        torch_krylov.in_dtype(counted.matvec, b.dtype),
        torch_krylov.in_dtype(counted.rmatvec, b.dtype),
        b.to(torch.float64),
        atb.to(torch.float64),
        damping**0.5,
        config.rtol * atb_norm,
        config.maxiter,
    )
    history = [r / atb_norm for r in result.residuals] if config.track_residuals else []
    return result.x.to(b.dtype), result.iterations, history, result.note


def _richardson(normal: Normal, atb: torch.Tensor, config: SolverConfig) -> tuple[torch.Tensor, int, list[float], str]:
    """The reference implementation's Richardson/Neumann iteration on the scaled normal equations."""
    atb_norm = _norm(atb)
    scale = config.richardson_scale
    total_iterations = 0
    history: list[float] = []
    for restart in range(config.richardson_restarts + 1):
        c2 = scale * scale
        v = atb / c2
        x = v.clone()
        diff_old = float("inf")
        diverged = False
        for it in range(config.maxiter):
            step = v - (normal @ x) / c2  # = x_new − x = (Aᵀb − (AᵀA+δI)x)/c²
            total_iterations += 1
            rel = _norm(step) * c2 / atb_norm  # the normal residual at the current x, exactly
            history.append(rel)
            if not np.isfinite(rel):
                diverged = True
                break
            if rel <= config.rtol:
                return x, total_iterations, history, f"scale c = {scale:g} after {restart} restarts"
            x = x + step
            diff = _norm(step)
            if it % 2 == 0:
                if diff > diff_old:
                    diverged = True
                    break
                diff_old = diff
        if not diverged:
            return x, total_iterations, history, f"scale c = {scale:g}; hit maxiter"
        scale += config.richardson_scale_step
    return x, total_iterations, history, f"diverged at every scale up to c = {scale:g}"


def _lissa(op: Counted, b: torch.Tensor, config: SolverConfig) -> tuple[torch.Tensor, int, list[float], str]:
    """LiSSA with the fixed scale s = ``lissa_scale``: x_{j+1} = x_j + r_j/s, r_j = b − A x_j, from x_0 = 0."""
    scale, b_norm = config.lissa_scale, _norm(b)
    x, residual, history, previous = torch.zeros_like(b), b, [], 1.0
    for iteration in range(1, config.maxiter + 1):
        x = x + residual / scale
        residual = b - op @ x
        rel = _norm(residual) / b_norm
        history.append(rel)
        if not np.isfinite(rel) or rel > previous:
            raise FloatingPointError(
                f"LiSSA diverged at scale s = {scale:g} (the residual grew to {rel:.3g}·‖b‖ at iteration "
                f"{iteration}): the series converges only for a positive definite H with s above half its largest "
                "eigenvalue. Raise the scale, add damping, or use plissa or minres."
            )
        previous = rel
        if rel <= config.rtol:
            return x, iteration, history, f"scale s = {scale:g}"
    return x, config.maxiter, history, f"scale s = {scale:g}; hit maxiter"


def largest_magnitude_eigenvalue(op: LinearMap, like: torch.Tensor, iterations: int, seed: int = 0) -> float:
    """|λ|_max of a symmetric operator by power iteration from a seeded Gaussian vector (``like``'s shape, dtype
    and device): ‖A v‖ for the unit iterate v, at most ``iterations`` products, stopped once the estimate changes by
    less than 0.1%. For a symmetric A the estimate approaches |λ|_max from below."""
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(like.shape, generator=generator, dtype=torch.float64).to(like.device, like.dtype)
    v = v / _norm(v)
    estimate = 0.0
    for _ in range(iterations):
        w = op @ v
        previous, estimate = estimate, _norm(w)
        if estimate == 0.0 or not np.isfinite(estimate):
            break
        v = w / estimate
        if abs(estimate - previous) <= 1e-3 * estimate:
            break
    return estimate


def _plissa(op: Counted, b: torch.Tensor, config: SolverConfig) -> tuple[torch.Tensor, int, list[float], str]:
    """P-LiSSA (module docstring): a power-iteration scale, the best iterate kept, restarts, stall detection."""
    b_norm = _norm(b)
    top = largest_magnitude_eigenvalue(op, b, config.lissa_power_iterations)
    if not (np.isfinite(top) and top > 0):
        raise FloatingPointError(
            f"P-LiSSA's power iteration found |λ|max = {top:g}: the operator is zero or not finite."
        )
    power_products = op.calls
    scale = 1.1 * top
    best_x, best_rel = torch.zeros_like(b), 1.0
    x, residual, history = best_x, b, []
    anchor, since_anchor = best_rel, 0  # the stall clock runs from the last 1% gain of the best residual
    restarts, iterations, stop = 0, 0, "hit maxiter"
    while iterations < config.maxiter:
        iterations += 1
        x = x + residual / scale
        residual = b - op @ x
        rel = _norm(residual) / b_norm
        history.append(rel)
        if rel < best_rel:
            best_x, best_rel = x, rel
        if best_rel < 0.99 * anchor:
            anchor, since_anchor = best_rel, 0
        else:
            since_anchor += 1
        if best_rel <= config.rtol:
            stop = "converged"
            break
        if not np.isfinite(rel) or rel > 2 * best_rel:
            if restarts == config.lissa_restarts:
                stop = f"the series grew again after {restarts} restarts"
                break
            restarts, scale = restarts + 1, 2 * scale
            x, residual = best_x, b - op @ best_x
            anchor, since_anchor = best_rel, 0
            continue
        if since_anchor >= config.lissa_patience:
            stop = f"stalled: no 1% gain in {config.lissa_patience} iterations"
            break
    if best_rel >= 1.0:
        raise FloatingPointError(
            f"P-LiSSA found no iterate better than x = 0 ({stop}, scale s = {scale:g}): its series does not converge "
            "on this operator (H + δI is not positive definite, or too few iterations). Add damping or use minres."
        )
    note = (
        f"scale s = {scale:g} (power iteration: |λ|max ≈ {top:.4g} in {power_products} products); "
        f"{restarts} restart(s); {stop}; the best iterate returned"
    )
    return best_x, iterations, history, note
