"""Krylov solvers written in torch, so that every vector stays on the operator's device (the GPU path).

Vectors and recurrences are float64 on the right-hand side's device; each product runs in the operator's own dtype
(float32 on a GPU, usually) and is promoted back. Only scalars (norms, inner products) reach the host, one or two per
iteration; no iterate crosses to the host, unlike scipy's solvers, which take numpy vectors.

* :func:`conjugate_gradients` — CG on A x = b for a positive definite A, x₀ = 0: α = ‖r‖²/pᵀAp, x ← x + αp,
  r ← r − αAp, p ← r + (‖r_new‖²/‖r‖²)p. A curvature pᵀAp ≤ 0 stops it with a note (A is not positive definite).
* :func:`minres` — Paige & Saunders' MINRES on A x = b for a symmetric, possibly indefinite A, x₀ = 0: the Lanczos
  basis of the Krylov space K_k(A, b), and x_k = argmin over K_k of ‖b − A x‖, updated by Givens rotations; the
  residual norm ‖b − A x_k‖ comes with the recurrence (φ̄_k), exact in exact arithmetic. One product per iteration.
* :func:`lsmr` — Fong & Saunders' LSMR on min ‖A x − b‖² + δ‖x‖² (damp = √δ), x₀ = 0: Golub–Kahan
  bidiagonalisation, and x_k = argmin over K_k(AᵀA, Aᵀb) of ‖Aᵀ(b − A x) − δx‖, the normal residual, whose norm
  the recurrence carries (|ζ̄_k|). One product of A and one of Aᵀ per iteration; Aᵀb is given (the caller already
  has it), so it costs none.

The stopping rule is the one :mod:`gif_core.solvers` reports: the recurrence's residual ≤ ``target`` (an absolute
norm: rtol·‖b‖ for A x = b, rtol·‖Aᵀb‖ for least squares). In exact arithmetic these iterates are scipy's
``cg``, ``minres`` and ``lsmr`` iterates (tests/test_solvers.py checks them at every iteration count).

When the products are not float64, the recurrence's residual drifts away from the true one. CG and MINRES then
restart (:func:`restarted`): the true residual r = b − A x is computed by one more product, and if it misses the
target the solver runs again on A d = r and x ← x + d, as long as a restart still reduces the true residual.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Product = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class KrylovResult:
    """A solution (float64, on the right-hand side's device), its iteration count, the recurrence's residual after
    each iteration (absolute norms), and a note (why it stopped early, or restarts)."""

    x: torch.Tensor
    iterations: int
    residuals: tuple[float, ...]
    note: str = ""


Inner = Callable[[Product, torch.Tensor, float, int], KrylovResult]


def in_dtype(product: Product, dtype: torch.dtype) -> Product:
    """``product`` applied to a float64 vector in ``dtype``, its result promoted back to float64."""
    return lambda v: product(v.to(dtype)).to(torch.float64)


def conjugate_gradients(product: Product, rhs: torch.Tensor, target: float, maxiter: int) -> KrylovResult:
    """CG from x₀ = 0 on float64 vectors (``product`` takes and returns float64), stopped at ‖r‖ ≤ ``target``."""
    x, r = torch.zeros_like(rhs), rhs.clone()
    p, gamma = r.clone(), float(r @ r)
    residuals: list[float] = []
    while len(residuals) < maxiter and math.sqrt(gamma) > target:
        q = product(p)
        curvature = float(p @ q)
        if not math.isfinite(curvature) or curvature <= 0:
            note = f"stopped at iteration {len(residuals) + 1}: pᵀAp = {curvature:.3g} (not positive definite)"
            return KrylovResult(x, len(residuals), tuple(residuals), note)
        alpha = gamma / curvature
        x.add_(p, alpha=alpha)
        r.sub_(q, alpha=alpha)
        new_gamma = float(r @ r)
        residuals.append(math.sqrt(new_gamma))
        p.mul_(new_gamma / gamma).add_(r)
        gamma = new_gamma
    return KrylovResult(x, len(residuals), tuple(residuals))


def _givens(a: float, b: float) -> tuple[float, float, float]:
    """The plane rotation (c, s, r) with [c s; −s c]·[a; b] = [r; 0] and r = ‖(a, b)‖ ≥ 0."""
    if b == 0:
        return math.copysign(1.0, a), 0.0, abs(a)
    if a == 0:
        return 0.0, math.copysign(1.0, b), abs(b)
    r = math.hypot(a, b)
    return a / r, b / r, r


def minres(product: Product, rhs: torch.Tensor, target: float, maxiter: int) -> KrylovResult:
    """MINRES from x₀ = 0 on float64 vectors (module docstring), stopped at φ̄ = ‖b − A x‖ ≤ ``target``.

    Lanczos: β₁v₁ = b, β_{k+1}v_{k+1} = A v_k − α_k v_k − β_k v_{k−1} with α_k = v_kᵀA v_k. The tridiagonal
    T_k is reduced by Givens rotations (c_k, s_k); φ̄ starts at β₁ and is multiplied by s_k each iteration, and
    x ← x + c_k φ̄_{k−1} w_k with the search directions w_k = (v_k − ε_k w_{k−2} − δ_k w_{k−1})/γ_k.
    A Lanczos breakdown (β_{k+1} = 0: the Krylov space is invariant) ends it with the exact minimiser."""
    x = torch.zeros_like(rhs)
    beta1 = float(torch.linalg.vector_norm(rhs))
    residuals: list[float] = []
    if beta1 == 0:
        return KrylovResult(x, 0, ())
    v_old, v = torch.zeros_like(rhs), rhs / beta1
    w_old, w = torch.zeros_like(rhs), torch.zeros_like(rhs)
    beta, phibar = beta1, beta1
    cs, sn, dbar, epsilon = -1.0, 0.0, 0.0, 0.0
    note = ""
    while len(residuals) < maxiter and phibar > target:
        y = product(v)
        alpha = float(v @ y)
        y = y - alpha * v - beta * v_old  # v₀ = 0
        beta_next = float(torch.linalg.vector_norm(y))
        # Apply the previous rotation to the new column of T_k, then make this one.
        old_epsilon = epsilon
        delta = cs * dbar + sn * alpha
        gbar = sn * dbar - cs * alpha
        epsilon, dbar = sn * beta_next, -cs * beta_next
        cs, sn, gamma = _givens(gbar, beta_next)
        if gamma == 0:
            note = f"stopped at iteration {len(residuals) + 1}: T_k is singular (A x = b has no solution in K_k)"
            break
        phi, phibar = cs * phibar, sn * phibar
        w_new = (v - old_epsilon * w_old - delta * w) / gamma
        w_old, w = w, w_new
        x.add_(w, alpha=phi)
        residuals.append(phibar)
        if beta_next == 0:
            break
        v_old, v = v, y / beta_next
        beta = beta_next
    return KrylovResult(x, len(residuals), tuple(residuals), note)


def lsmr(
    matvec: Product, rmatvec: Product, b: torch.Tensor, atb: torch.Tensor, damp: float, target: float, maxiter: int
) -> KrylovResult:
    """LSMR from x₀ = 0 on float64 vectors (module docstring) for min ‖A x − b‖² + damp²‖x‖², stopped at
    |ζ̄| = ‖Aᵀ(b − A x) − damp² x‖ ≤ ``target``.

    Golub–Kahan: β₁u₁ = b, α₁v₁ = Aᵀu₁ (= Aᵀb/β₁), β_{k+1}u_{k+1} = A v_k − α_k u_k,
    α_{k+1}v_{k+1} = Aᵀu_{k+1} − β_{k+1}v_k. The damped lower bidiagonal system is reduced by a rotation
    (ĉ, ŝ) that folds damp in, a rotation P_k (c, s), and a second rotation P̄_k (c̄, s̄) of LSMR's two-step QR;
    x ← x + ζ_k/(ρ_k ρ̄_k)·h̄_k."""
    n = atb.shape[0]
    x = torch.zeros(n, dtype=torch.float64, device=atb.device)
    beta = float(torch.linalg.vector_norm(b))
    residuals: list[float] = []
    if beta == 0:
        return KrylovResult(x, 0, ())
    u = b / beta
    v = atb / beta
    alpha = float(torch.linalg.vector_norm(v))
    if alpha == 0:
        return KrylovResult(x, 0, ())
    v = v / alpha
    zetabar, alphabar = alpha * beta, alpha
    rho, rhobar, cbar, sbar = 1.0, 1.0, 1.0, 0.0
    h, hbar = v.clone(), torch.zeros_like(v)
    while len(residuals) < maxiter and abs(zetabar) > target:
        u = matvec(v) - alpha * u
        beta = float(torch.linalg.vector_norm(u))
        if beta > 0:
            u = u / beta
            v = rmatvec(u) - beta * v
            alpha = float(torch.linalg.vector_norm(v))
            if alpha > 0:
                v = v / alpha
        # Fold the damping into the bidiagonal (rotation Q̂), then the rotation P_k.
        _, _, alphahat = _givens(alphabar, damp)
        rho_old = rho
        c, s, rho = _givens(alphahat, beta)
        theta_new, alphabar = s * alpha, c * alpha
        # Rotation P̄_k.
        rhobar_old = rhobar
        thetabar, rho_temp = sbar * rho, cbar * rho
        cbar, sbar, rhobar = _givens(rho_temp, theta_new)
        zeta, zetabar = cbar * zetabar, -sbar * zetabar
        hbar = h - (thetabar * rho / (rho_old * rhobar_old)) * hbar
        x.add_(hbar, alpha=zeta / (rho * rhobar))
        h = v - (theta_new / rho) * h
        residuals.append(abs(zetabar))
        if beta == 0 or alpha == 0:  # the bidiagonalisation ended: x is the exact minimiser
            break
    return KrylovResult(x, len(residuals), tuple(residuals))


def restarted(
    inner: Inner, product: Product, rhs: torch.Tensor, target: float, maxiter: int, exact: bool
) -> KrylovResult:
    """``inner`` on A x = ``rhs``, then (unless ``exact``: float64 products, where the recurrence's residual is the
    true one) restarts on the true residual while it misses ``target`` and a restart reduces it by at least 0.1%.
    Every restart's product and iterations are within ``maxiter`` in total."""
    result = inner(product, rhs, target, maxiter)
    x, iterations, residuals = result.x, result.iterations, list(result.residuals)
    restarts, previous = 0, math.inf
    while not (exact or result.note or iterations >= maxiter):
        r = rhs - product(x)
        true_norm = float(torch.linalg.vector_norm(r))
        if true_norm <= target or true_norm >= 0.999 * previous:
            break
        previous, restarts = true_norm, restarts + 1
        result = inner(product, r, target, maxiter - iterations)
        x = x + result.x
        iterations += result.iterations
        residuals.extend(result.residuals)
    note = "; ".join(filter(None, [result.note, f"{restarts} restart(s) on the true residual" if restarts else ""]))
    return KrylovResult(x, iterations, tuple(residuals), note)
