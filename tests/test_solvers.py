import pytest
import torch
from conftest import rel_err

from gif_core.operators import DenseMatrix
from gif_core.solvers import SolverConfig, solve_least_squares, solve_symmetric


def _matrix(n: int, eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(eigenvalues) @ q.T


@pytest.mark.parametrize("method", ["minres", "cg"])
def test_symmetric_positive_definite(method):
    A = _matrix(30, torch.linspace(0.5, 10, 30, dtype=torch.float64))
    b = torch.randn(30, dtype=torch.float64)
    x, report = solve_symmetric(DenseMatrix(A), b, method, SolverConfig(rtol=1e-10))
    assert rel_err(x, torch.linalg.solve(A, b)) < 1e-8
    assert report.converged and report.rel_residual <= 1e-10 and report.hvps >= report.iterations > 0


def test_minres_on_indefinite_system():
    A = _matrix(30, torch.cat([torch.linspace(-3, -0.5, 10), torch.linspace(0.5, 5, 20)]).double())
    b = torch.randn(30, dtype=torch.float64)
    x, report = solve_symmetric(DenseMatrix(A), b, "minres", SolverConfig(rtol=1e-10))
    assert rel_err(x, torch.linalg.solve(A, b)) < 1e-8 and report.converged


def test_non_convergence_is_reported_not_hidden():
    A = _matrix(50, torch.logspace(-6, 2, 50, dtype=torch.float64))
    b = torch.randn(50, dtype=torch.float64)
    _, report = solve_symmetric(DenseMatrix(A), b, "cg", SolverConfig(rtol=1e-12, maxiter=3))
    assert not report.converged and report.rel_residual > 1e-12 and report.iterations == 3


@pytest.mark.parametrize("method", ["cgls", "lsmr", "richardson"])
def test_least_squares_matches_lstsq(method):
    A = torch.randn(40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    b = torch.randn(40, dtype=torch.float64)
    config = SolverConfig(rtol=1e-9, maxiter=20000, richardson_scale=1.0, richardson_scale_step=2.0)
    x, report = solve_least_squares(DenseMatrix(A), b, method, config=config)
    assert rel_err(x, torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1)) < 1e-6
    assert report.converged
    if method == "richardson":  # the scale had to grow from c = 1 past ‖A‖ before the iteration converged
        assert "restarts" in report.note and "c = 1 " not in report.note


def test_least_squares_with_tikhonov_damping():
    A = torch.randn(30, 10, dtype=torch.float64)
    b = torch.randn(30, dtype=torch.float64)
    x, report = solve_least_squares(DenseMatrix(A), b, "cgls", 0.5, SolverConfig(rtol=1e-10))
    expected = torch.linalg.solve(A.T @ A + 0.5 * torch.eye(10, dtype=torch.float64), A.T @ b)
    assert rel_err(x, expected) < 1e-8 and report.converged


def test_nan_raises_and_bad_names():
    b = torch.ones(3, dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="NaN"):
        solve_symmetric(DenseMatrix(torch.full((3, 3), float("nan"), dtype=torch.float64)), b)
    with pytest.raises(ValueError, match="minres, cg"):
        solve_symmetric(DenseMatrix(torch.eye(3, dtype=torch.float64)), b, "gmres")
    with pytest.raises(ValueError, match="cgls, lsmr, richardson"):
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
