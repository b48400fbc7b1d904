import pytest
import torch
from conftest import rel_err

from gif_core.operators import DenseMatrix
from gif_core.solvers import SolverConfig, solve_least_squares, solve_symmetric


def _matrix(n: int, eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(eigenvalues) @ q.T


@pytest.mark.parametrize("method", ["minres", "cg", "minres-torch", "cg-torch"])
def test_symmetric_positive_definite(method):
    A = _matrix(30, torch.linspace(0.5, 10, 30, dtype=torch.float64))
    b = torch.randn(30, dtype=torch.float64)
    x, report = solve_symmetric(DenseMatrix(A), b, method, SolverConfig(rtol=1e-10))
    assert rel_err(x, torch.linalg.solve(A, b)) < 1e-8
    assert report.converged and report.rel_residual <= 1e-10 and report.hvps >= report.iterations > 0


@pytest.mark.parametrize("method", ["minres", "minres-torch"])
def test_minres_on_indefinite_system(method):
    A = _matrix(30, torch.cat([torch.linspace(-3, -0.5, 10), torch.linspace(0.5, 5, 20)]).double())
    b = torch.randn(30, dtype=torch.float64)
    x, report = solve_symmetric(DenseMatrix(A), b, method, SolverConfig(rtol=1e-10))
    assert rel_err(x, torch.linalg.solve(A, b)) < 1e-8 and report.converged


def test_non_convergence_is_reported_not_hidden():
    A = _matrix(50, torch.logspace(-6, 2, 50, dtype=torch.float64))
    b = torch.randn(50, dtype=torch.float64)
    _, report = solve_symmetric(DenseMatrix(A), b, "cg", SolverConfig(rtol=1e-12, maxiter=3))
    assert not report.converged and report.rel_residual > 1e-12 and report.iterations == 3


@pytest.mark.parametrize("method", ["cgls", "lsmr", "lsmr-torch", "cgls-torch", "richardson"])
def test_least_squares_matches_lstsq(method):
    A = torch.randn(40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    b = torch.randn(40, dtype=torch.float64)
    config = SolverConfig(rtol=1e-9, maxiter=20000, richardson_scale=1.0, richardson_scale_step=2.0)
    x, report = solve_least_squares(DenseMatrix(A), b, method, config=config)
    assert rel_err(x, torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1)) < 1e-6
    assert report.converged
    if method == "richardson":  # the scale had to grow from c = 1 past ‖A‖ before the iteration converged
        assert "restarts" in report.note and "c = 1 " not in report.note


@pytest.mark.parametrize("method", ["cgls", "lsmr-torch"])
def test_least_squares_with_tikhonov_damping(method):
    A = torch.randn(30, 10, dtype=torch.float64)
    b = torch.randn(30, dtype=torch.float64)
    x, report = solve_least_squares(DenseMatrix(A), b, method, 0.5, SolverConfig(rtol=1e-10))
    expected = torch.linalg.solve(A.T @ A + 0.5 * torch.eye(10, dtype=torch.float64), A.T @ b)
    assert rel_err(x, expected) < 1e-8 and report.converged


def test_nan_raises_and_bad_names():
    b = torch.ones(3, dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="NaN"):
        solve_symmetric(DenseMatrix(torch.full((3, 3), float("nan"), dtype=torch.float64)), b)
    with pytest.raises(ValueError, match="minres, cg"):
        solve_symmetric(DenseMatrix(torch.eye(3, dtype=torch.float64)), b, "gmres")
    with pytest.raises(ValueError, match="cgls, lsmr, lsmr-torch, cgls-torch, richardson"):
        solve_least_squares(DenseMatrix(torch.eye(3, dtype=torch.float64)), b, "qr")
    with pytest.raises(ValueError, match="rtol"):
        SolverConfig(rtol=2.0)


def test_residual_history_is_tracked_without_counting_as_solve_products():
    A = _matrix(20, torch.linspace(1, 20, 20, dtype=torch.float64))
    b = torch.randn(20, dtype=torch.float64)
    _, plain = solve_symmetric(DenseMatrix(A), b, "cg", SolverConfig(rtol=1e-8))
    _, traced = solve_symmetric(DenseMatrix(A), b, "cg", SolverConfig(rtol=1e-8, track_residuals=True))
    assert len(traced.residual_history) == traced.iterations and traced.hvps == plain.hvps
    assert traced.trace_hvps == traced.iterations and traced.residual_history[-1] <= 1e-8


@pytest.mark.parametrize("method", ["lissa", "plissa"])
def test_lissa_baselines_reach_the_solution_of_a_positive_definite_system(method):
    """Eigenvalues in [0.5, 8]: LiSSA's scale 10 > λ_max/2 converges, and P-LiSSA's power-iteration scale too;
    every product is counted (P-LiSSA's power iterations included) and the residual is the explicit one."""
    A = _matrix(30, torch.linspace(0.5, 8, 30, dtype=torch.float64))
    b = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    config = SolverConfig(rtol=1e-8, maxiter=5000, lissa_patience=50)
    x, report = solve_symmetric(DenseMatrix(A), b, method, config)
    assert rel_err(x, torch.linalg.solve(A, b)) < 1e-6
    assert report.converged and report.rel_residual == pytest.approx(float((b - A @ x).norm() / b.norm()))
    assert report.hvps == report.iterations + 1 + (
        int(report.note.split(" in ")[1].split()[0]) if method == "plissa" else 0
    )
    if method == "plissa":
        top = float(report.note.split("|λ|max ≈ ")[1].split()[0])
        assert 7.0 < top <= 8.0  # power iteration approaches λ_max = 8 from below (to 0.1% change per product)


def test_lissa_with_a_scale_below_half_the_largest_eigenvalue_diverges_with_a_clear_error():
    A = _matrix(20, torch.linspace(1.0, 30.0, 20, dtype=torch.float64))  # λ_max = 30 > 2 · 10
    b = torch.randn(20, dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="LiSSA diverged at scale s = 10"):
        solve_symmetric(DenseMatrix(A), b, "lissa", SolverConfig(maxiter=5000))
    x, report = solve_symmetric(DenseMatrix(A), b, "plissa", SolverConfig(rtol=1e-8, maxiter=5000, lissa_patience=50))
    assert report.converged and rel_err(x, torch.linalg.solve(A, b)) < 1e-6  # its own scale adapts


def test_plissa_on_an_indefinite_system_returns_its_best_iterate_and_says_it_did_not_converge():
    """A negative eigenvalue makes the series grow at every scale: P-LiSSA restarts, then stops and returns the
    iterate with the smallest residual, never one that grew, and reports it as not converged."""
    A = _matrix(20, torch.cat([torch.tensor([-2.0]), torch.linspace(0.5, 5, 19)]).double())
    b = torch.randn(20, dtype=torch.float64)
    x, report = solve_symmetric(
        DenseMatrix(A), b, "plissa", SolverConfig(rtol=1e-10, maxiter=2000, track_residuals=True)
    )
    assert not report.converged and torch.isfinite(x).all()
    assert report.rel_residual == pytest.approx(min(report.residual_history), rel=1e-9)
    assert "restart" in report.note and report.rel_residual < 1.0


def test_power_iteration_estimates_the_largest_magnitude_eigenvalue():
    from gif_core.solvers import largest_magnitude_eigenvalue

    A = _matrix(25, torch.cat([torch.tensor([-6.0]), torch.linspace(0.1, 3, 24)]).double())
    estimate = largest_magnitude_eigenvalue(DenseMatrix(A), torch.zeros(25, dtype=torch.float64), 500)
    assert estimate == pytest.approx(6.0, rel=1e-2)


def test_plissa_keeps_going_while_a_slow_series_gains_and_converges():
    """κ = 200: with s = 1.1·λ_max the slow mode shrinks by under 1% per iteration; the stall clock counts from the
    last 1% gain of the best residual, so P-LiSSA runs on and converges (it stopped at residual 0.12 before)."""
    A = torch.diag(torch.linspace(1.0, 200.0, 40, dtype=torch.float64))
    b = torch.ones(40, dtype=torch.float64)
    x, report = solve_symmetric(DenseMatrix(A), b, "plissa", SolverConfig(rtol=1e-4, maxiter=5000))
    assert report.converged and rel_err(x, torch.linalg.solve(A, b)) < 1e-3 and "stalled" not in report.note


def test_plissa_that_never_beats_zero_is_an_error_not_a_zero_edit():
    A = torch.diag(torch.tensor([-5.0, 1.0, 2.0], dtype=torch.float64))
    b = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # along the negative eigenvalue: every step grows
    with pytest.raises(FloatingPointError, match="no iterate better than x = 0"):
        solve_symmetric(DenseMatrix(A), b, "plissa", SolverConfig(maxiter=200))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_native_solvers_take_scipys_iterates_and_stop_where_they_stop(dtype):
    """The GPU path (recurrences in torch on the operator's device) against scipy's answers on the CPU: the same
    iterates at every early-stopped iteration count (GIF stops early by design), the same products counted, and
    its result on the operator's dtype and device."""
    A = _matrix(40, torch.linspace(0.1, 20, 40, dtype=torch.float64)).to(dtype)
    J = torch.randn(60, 25, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(dtype)
    b, c = torch.randn(40, dtype=dtype), torch.randn(60, dtype=dtype)
    tolerance = 1e-9 if dtype == torch.float64 else 2e-4
    for maxiter in (1, 3, 10, 200) if dtype == torch.float64 else (1, 3, 10):  # float32 cannot reach 1e-8
        config = SolverConfig(rtol=1e-8, maxiter=maxiter)
        ours, ours_report = solve_symmetric(DenseMatrix(A), b, "cg-torch", config)
        theirs, theirs_report = solve_symmetric(DenseMatrix(A), b, "cg", config)
        assert ours.dtype == dtype and ours.device == b.device
        assert rel_err(ours, theirs) < tolerance and ours_report.iterations == theirs_report.iterations
        ours, ours_report = solve_least_squares(DenseMatrix(J), c, "cgls-torch", 0.1, config)
        theirs, theirs_report = solve_least_squares(DenseMatrix(J), c, "cgls", 0.1, config)
        assert rel_err(ours, theirs) < tolerance and ours_report.hvps == theirs_report.hvps
        assert ours_report.converged == theirs_report.converged
    reachable = SolverConfig(rtol=1e-5, maxiter=500)
    for x, report in (
        solve_symmetric(DenseMatrix(A), b, "cg-torch", reachable),
        solve_least_squares(DenseMatrix(J), c, "cgls-torch", 0.1, reachable),
    ):
        assert report.converged and report.rel_residual <= 1e-5 and x.dtype == dtype


def test_torch_cg_on_an_indefinite_operator_stops_and_says_why():
    A = _matrix(20, torch.cat([torch.linspace(-3, -1, 5), torch.linspace(1, 5, 15)]).double())
    b = torch.randn(20, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x, report = solve_symmetric(DenseMatrix(A), b, "cg-torch", SolverConfig(rtol=1e-10, maxiter=100))
    if not report.converged:  # CG may still converge on an indefinite system; when it breaks down it says so
        assert "not positive definite" in report.note or report.iterations == 100
    assert bool(torch.isfinite(x).all())


def _scipy_iterate(method: str, A: torch.Tensor, b: torch.Tensor, iterations: int, damp: float = 0.0) -> torch.Tensor:
    """scipy's own iterate after exactly ``iterations`` steps from x₀ = 0 (its stopping tests switched off)."""
    from scipy.sparse import linalg as spla

    a, rhs = A.numpy(), b.numpy()
    if method == "minres":
        x = spla.minres(a, rhs, rtol=0.0, maxiter=iterations)[0]
    else:
        x = spla.lsmr(a, rhs, damp=damp, atol=0.0, btol=0.0, conlim=0.0, maxiter=iterations)[0]
    return torch.from_numpy(x)


def test_torch_minres_and_lsmr_take_scipys_iterates_at_every_iteration_count():
    """The GPU path's MINRES (on an indefinite H, as IF's solve meets it) and LSMR (damped, as GIF's restricted
    least squares) against scipy's own iterates after k = 1 … 25 steps, and against the exact answers once they
    converge; Aᵀb is reused, so LSMR spends exactly two products per iteration (scipy's spends one more)."""
    A = _matrix(40, torch.cat([torch.linspace(-4, -0.2, 12), torch.linspace(0.3, 9, 28)]).double())
    J = torch.randn(60, 25, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    b = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    c = torch.randn(60, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for k in range(1, 26):
        config = SolverConfig(rtol=1e-14, maxiter=k)
        x, report = solve_symmetric(DenseMatrix(A), b, "minres-torch", config)
        assert report.iterations == k and rel_err(x, _scipy_iterate("minres", A, b, k)) < 1e-9
        y, report = solve_least_squares(DenseMatrix(J), c, "lsmr-torch", 0.3, config)
        assert report.iterations == k and rel_err(y, _scipy_iterate("lsmr", J, c, k, damp=0.3**0.5)) < 1e-9
        assert report.hvps == 1 + 2 * k + 2  # Aᵀb, two per iteration, two for the reported residual
    x, report = solve_symmetric(DenseMatrix(A), b, "minres-torch", SolverConfig(rtol=1e-10, maxiter=200))
    assert report.converged and rel_err(x, torch.linalg.solve(A, b)) < 1e-8
    expected = torch.linalg.solve(J.T @ J + 0.3 * torch.eye(25, dtype=torch.float64), J.T @ c)
    y, report = solve_least_squares(DenseMatrix(J), c, "lsmr-torch", 0.3, SolverConfig(rtol=1e-10, maxiter=200))
    assert report.converged and rel_err(y, expected) < 1e-8 and report.rel_residual <= 1e-10


def test_torch_minres_and_lsmr_in_float32_reach_a_reachable_tolerance_and_stay_in_float32():
    A = _matrix(40, torch.cat([torch.linspace(-4, -0.2, 12), torch.linspace(0.3, 9, 28)]).double()).float()
    J = torch.randn(60, 25, generator=torch.Generator().manual_seed(5))
    b, c = torch.randn(40), torch.randn(60)
    x, report = solve_symmetric(DenseMatrix(A), b, "minres-torch", SolverConfig(rtol=1e-5, maxiter=500))
    assert x.dtype == torch.float32 and report.converged and report.rel_residual <= 1e-5
    assert rel_err(x.double(), torch.linalg.solve(A.double(), b.double())) < 1e-3
    y, report = solve_least_squares(DenseMatrix(J), c, "lsmr-torch", 0.1, SolverConfig(rtol=1e-5, maxiter=500))
    assert y.dtype == torch.float32 and report.converged and report.rel_residual <= 1e-5


def test_torch_minres_ends_on_an_invariant_krylov_space_with_the_exact_answer():
    """b in a 3-dimensional eigenspace: the Lanczos basis ends after 3 steps (β = 0) at the exact solution,
    with no division by zero."""
    A = torch.diag(torch.tensor([-2.0, 1.0, 3.0, 5.0, 7.0], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    x, report = solve_symmetric(DenseMatrix(A), b, "minres-torch", SolverConfig(rtol=1e-14, maxiter=50))
    assert report.iterations == 3 and rel_err(x, torch.linalg.solve(A, b)) < 1e-12


def test_scipy_solvers_run_as_their_torch_twins_off_the_cpu():
    from gif_core.solvers import TORCH_TWINS, method_on

    assert {method_on(m, torch.device("cuda", 0)) for m in TORCH_TWINS} == set(TORCH_TWINS.values())
    assert method_on("lsmr", torch.device("cpu")) == "lsmr" and method_on("lissa", torch.device("cuda")) == "lissa"
