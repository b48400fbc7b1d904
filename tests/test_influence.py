"""Estimators against independent truth: dense closed forms on tiny models, exact retraining on a convex model."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from conftest import blobs, dense_gradient, dense_hessian, dense_objective, rel_err, tiny_convnet, tiny_mlp
from conftest import fit_logreg as _fit_logreg
from torch import nn
from torch.nn import functional as F

from gif_core.curvature import CurvatureConfig
from gif_core.influence import EstimatorConfig, estimate
from gif_core.params import apply_delta, flat_parameters, state_hash
from gif_core.problem import ProblemConfig, prepare
from gif_core.requests import ClassRemoval, LabelChange, SampleRemoval
from gif_core.selection import SelectionConfig, select

TIGHT = EstimatorConfig(gif_ridge=0.0, rtol=1e-9, maxiter=5000)


def _closed_forms(H: torch.Tensor, g: torch.Tensor, T: torch.Tensor) -> dict[str, torch.Tensor]:
    def on_T(values):
        out = torch.zeros_like(g)
        out[T] = values
        return out

    full = torch.linalg.solve(H, g)
    return {
        "if": full,
        "pif": on_T(full[T]),
        "fif": on_T(torch.linalg.solve(H[T][:, T], g[T])),
        "gif": on_T(torch.linalg.lstsq(H[:, T], g.unsqueeze(1)).solution.squeeze(1)),
    }


@pytest.mark.parametrize(
    ("make_model", "data", "weight_decay", "request_"),
    [
        (tiny_mlp, blobs(), 0.01, SampleRemoval([1, 5, 7, 30])),
        (tiny_mlp, blobs(), 0.01, ClassRemoval(2)),
        (tiny_convnet, blobs(image=True), 0.01, LabelChange([0, 4], [1, 2])),
    ],
)
def test_estimators_match_dense_closed_forms(make_model, data, weight_decay, request_):
    model = make_model()
    before = state_hash(model)
    problem = prepare(model, data, request_, 3, ProblemConfig(curvature=CurvatureConfig(weight_decay)))
    if isinstance(request_, LabelChange):  # H is the edited objective's: every sample, U with its new labels
        labels = data.labels.clone()
        labels[list(request_.indices)] = torch.tensor(request_.new_labels)
        H = dense_hessian(model, data.inputs, labels, weight_decay)
    else:
        keep = problem.retain_rows
        H = dense_hessian(model, data.inputs[keep], data.labels[keep], weight_decay)
    selection = select(problem, SelectionConfig("gradient", ratio=0.3))
    expected = _closed_forms(H, problem.g, selection.indices)
    for method, truth in expected.items():
        result = estimate(method, problem, selection, TIGHT)
        assert result.converged, method
        assert rel_err(result.delta, truth) < 1e-4, method
        assert (result.delta[~selection.mask] == 0).all() or method == "if"
    assert state_hash(model) == before


def test_gif_converges_on_an_indefinite_hessian_and_equals_least_squares():
    # Without weight decay a softmax model's H is exactly singular (adding a constant to every logit changes
    # nothing); a small λ removes that null direction and leaves the negative eigenvalues of the untrained net.
    model, data = tiny_mlp(seed=3), blobs(seed=3)
    config = ProblemConfig(curvature=CurvatureConfig(weight_decay=1e-3))
    problem = prepare(model, data, SampleRemoval([2, 9]), 3, config)
    H = dense_hessian(model, data.inputs[problem.retain_rows], data.labels[problem.retain_rows], 1e-3)
    eigenvalues = torch.linalg.eigvalsh(H)
    assert eigenvalues.min() < -1e-3 < 1e-3 < eigenvalues.max()  # genuinely indefinite
    selection = select(problem, SelectionConfig("output", ratio=0.4))
    T = selection.indices
    for solver in ("cgls", "lsmr"):
        config = EstimatorConfig(least_squares_solver=solver, gif_ridge=0.0, rtol=1e-10, maxiter=5000)
        result = estimate("gif", problem, selection, config)
        truth = torch.linalg.lstsq(H[:, T], problem.g.unsqueeze(1)).solution.squeeze(1)
        assert result.converged and rel_err(result.delta[T], truth) < 1e-4


def test_ekfac_preconditioned_gif_reaches_the_same_least_squares_solution():
    # x = M y with M = (EK-FAC⁻¹)_TT positive definite: min ‖H[:,T] M y − g‖ has the minimiser y = M⁻¹x*, so a
    # converged preconditioned solve returns GIF's least-squares solution itself, on an indefinite H.
    model, data = tiny_mlp(seed=3), blobs(seed=3)
    problem = prepare(
        model, data, SampleRemoval([2, 9]), 3, ProblemConfig(curvature=CurvatureConfig(weight_decay=1e-3))
    )
    H = dense_hessian(model, data.inputs[problem.retain_rows], data.labels[problem.retain_rows], 1e-3)
    selection = select(problem, SelectionConfig("output", ratio=0.4))
    T = selection.indices
    truth = torch.linalg.lstsq(H[:, T], problem.g.unsqueeze(1)).solution.squeeze(1)
    config = EstimatorConfig(gif_ridge=0.0, rtol=1e-10, maxiter=5000, gif_preconditioner="ekfac")
    result = estimate("gif", problem, selection, config)
    assert result.converged and rel_err(result.delta[T], truth) < 1e-4
    assert "EK-FAC" in result.solved and bool((result.delta[~selection.mask] == 0).all())
    plain = estimate("gif", problem, selection, dataclasses.replace(config, gif_preconditioner="none", maxiter=2))
    early = estimate("gif", problem, selection, dataclasses.replace(config, maxiter=2))
    assert rel_err(early.delta, plain.delta) > 1e-3  # early-stopped, the preconditioner changes the iterate


def test_richardson_baseline_and_krylov_reach_the_same_gif_solution():
    model, data = tiny_mlp(seed=1), blobs(seed=1)
    problem = prepare(model, data, SampleRemoval([0, 3]), 3, ProblemConfig(curvature=CurvatureConfig(damping=0.5)))
    selection = select(problem, SelectionConfig("gradient", ratio=0.2))
    krylov = estimate("gif", problem, selection, EstimatorConfig(gif_ridge=0.0, rtol=1e-6, maxiter=5000))
    baseline = estimate(
        "gif", problem, selection, EstimatorConfig("minres", "richardson", gif_ridge=0.0, rtol=1e-6, maxiter=5000)
    )
    assert krylov.converged and baseline.converged
    assert rel_err(baseline.delta, krylov.delta) < 1e-4
    print(f"GIF solve HVPs: Krylov {krylov.hvps}, Richardson {baseline.hvps}")
    assert krylov.hvps < baseline.hvps


def _retrained(model, inputs, labels, weight_decay):
    warm = nn.Linear(inputs.shape[1], model.out_features).double()
    warm.load_state_dict(model.state_dict())
    return flat_parameters(_fit_logreg(inputs, labels, weight_decay, warm))


@pytest.fixture(scope="module")
def logreg():
    torch.manual_seed(0)
    data = blobs(n=120, n_in=5, n_classes=3, seed=5)
    return _fit_logreg(data.inputs, data.labels, 0.05), data


def test_removal_influence_matches_exact_retraining(logreg):
    model, data = logreg
    problem = prepare(model, data, SampleRemoval([0, 7, 50]), 3, ProblemConfig(curvature=CurvatureConfig(0.05)))
    keep = problem.retain_rows
    truth = _retrained(model, data.inputs[keep], data.labels[keep], 0.05)
    theta = flat_parameters(model)
    moved = flat_parameters(apply_delta(model, problem.space, estimate("if", problem, config=TIGHT).delta))
    assert rel_err(moved - theta, truth - theta) < 0.02  # the update's direction and size match retraining
    assert rel_err(moved, truth) < 1e-3
    # at the exact optimum, the Newton variant of g equals the first-order one
    newton = prepare(
        model, data, SampleRemoval([0, 7, 50]), 3, ProblemConfig(gradient="newton", curvature=CurvatureConfig(0.05))
    )
    assert rel_err(newton.g, problem.g) < 1e-5


def test_label_change_influence_matches_exact_retraining(logreg):
    model, data = logreg
    rows = [3, 4, 10]
    new = [(int(data.labels[r]) + 1) % 3 for r in rows]
    problem = prepare(model, data, LabelChange(rows, new), 3, ProblemConfig(curvature=CurvatureConfig(0.05)))
    labels = data.labels.clone()
    labels[rows] = torch.tensor(new)
    truth = _retrained(model, data.inputs, labels, 0.05)
    change = truth - flat_parameters(model)
    delta = estimate("if", problem, config=TIGHT).delta
    # g is exactly −∇L'(θ) of the relabelled objective; flipping labels moves θ far (‖Δ‖ ≈ 16% of ‖θ‖), so one
    # linearised step gets the direction right but not all of the length (a Newton step with the new objective's
    # own Hessian misses by the same 26%).
    assert rel_err(problem.g, -dense_gradient(model, data.inputs, labels, 0.05)) < 1e-8
    assert float(F.cosine_similarity(delta, change, 0)) > 0.99
    assert rel_err(delta, change) < 0.3


def test_sif_lands_closer_than_if_for_a_large_group(logreg):
    model, data = logreg
    group = [int(i) for i in torch.nonzero(data.labels == 1).reshape(-1)[:30]]  # 30 of 120, all one class
    config = ProblemConfig(hessian_data="all", curvature=CurvatureConfig(0.05))
    problem = prepare(model, data, SampleRemoval(group), 3, config)
    keep = problem.retain_rows
    truth = _retrained(model, data.inputs[keep], data.labels[keep], 0.05) - flat_parameters(model)
    if_error = rel_err(estimate("if", problem, config=TIGHT).delta, truth)
    sif_error = rel_err(estimate("sif", problem, config=TIGHT).delta, truth)
    assert sif_error < 0.8 * if_error, (sif_error, if_error)


def test_sif_second_order_term_matches_dense_algebra(logreg):
    model, data = logreg
    rows = [1, 2, 3, 40, 41]
    problem = prepare(model, data, SampleRemoval(rows), 3, ProblemConfig(curvature=CurvatureConfig(0.05)))
    H_all = dense_hessian(model, data.inputs, data.labels, 0.05)
    H_u = dense_hessian(model, data.inputs[rows], data.labels[rows], 0.05)
    c = len(rows) / (len(data.labels) - len(rows))
    first = torch.linalg.solve(H_all, problem.g)
    expected = first - c * torch.linalg.solve(H_all, (H_all - H_u) @ first)
    assert rel_err(estimate("sif", problem, config=TIGHT).delta, expected) < 1e-6


def test_estimate_rejects_bad_calls(mlp_data):
    model, data = mlp_data
    problem = prepare(model, data, SampleRemoval([1]), 3)
    with pytest.raises(ValueError, match="needs a parameter selection"):
        estimate("gif", problem)
    with pytest.raises(ValueError, match="Unknown method"):
        estimate("gif2", problem)
    other = prepare(tiny_convnet(), blobs(image=True), SampleRemoval([1]), 3)
    with pytest.raises(ValueError, match="another model"):
        estimate("fif", problem, select(other, SelectionConfig(ratio=0.3)))


def test_result_reports_solver_diagnostics(mlp_data):
    model, data = mlp_data
    problem = prepare(model, data, SampleRemoval([1, 2]), 3, ProblemConfig(curvature=CurvatureConfig(0.01)))
    result = estimate("gif", problem, select(problem, SelectionConfig(ratio=0.3)), EstimatorConfig())
    summary = result.solver_summary()
    assert set(summary) == {"name", "iterations", "hvps", "rel_residual", "converged", "seconds"}
    assert summary["iterations"] > 0 and result.selection.n_selected > 0
    assert summary["hvps"] >= 2 * summary["iterations"] and summary["name"] == "lsmr"
    assert "least" not in result.solved and "min ‖H" in result.solved
    sif = estimate("sif", problem, config=TIGHT)
    assert len(sif.reports) == 2 and sif.solver_summary()["name"] == "minres+minres"


def test_backdoor_like_relabel_keeps_model_unchanged(mlp_data):
    model, data = mlp_data
    before = state_hash(model)
    config = ProblemConfig(curvature=CurvatureConfig(0.01))
    problem = prepare(model, SimpleNamespace(inputs=data.inputs, labels=data.labels), LabelChange([5], [0]), 3, config)
    for method in ("if", "pif", "fif", "gif", "sif"):
        estimate(method, problem, select(problem, SelectionConfig(ratio=0.5)))
    assert state_hash(model) == before


@pytest.fixture
def hvp_calls(monkeypatch):
    """Counts every Curvature.hvp call made after the fixture is requested: {"n": calls}."""
    from gif_core.curvature import Curvature

    calls = {"n": 0}
    original = Curvature.hvp

    def counted(self, v):
        calls["n"] += 1
        return original(self, v)

    monkeypatch.setattr(Curvature, "hvp", counted)
    return calls


@pytest.mark.parametrize("hessian_data", ["retained", "all"])
def test_sif_counts_every_hessian_vector_product(hvp_calls, hessian_data):
    model, data = tiny_mlp(), blobs()
    config = ProblemConfig(hessian_data=hessian_data, curvature=CurvatureConfig(0.01))
    problem = prepare(model, data, SampleRemoval([1, 2, 3]), 3, config)
    result = estimate("sif", problem, config=TIGHT)
    assert result.hvps == hvp_calls["n"]


def test_pif_at_every_ratio_reuses_one_influence_solve(hvp_calls, mlp_data):
    model, data = mlp_data
    problem = prepare(model, data, SampleRemoval([1, 2]), 3, ProblemConfig(curvature=CurvatureConfig(0.01)))
    full = estimate("if", problem, config=TIGHT)
    after_if = hvp_calls["n"]
    full.delta.zero_()  # a caller changing its result must not change the memo
    fresh = estimate("if", problem, config=TIGHT).delta
    for ratio in (0.1, 0.5):
        selection = select(problem, SelectionConfig("gradient", ratio=ratio))
        pif = estimate("pif", problem, selection, TIGHT)
        assert torch.equal(pif.delta, torch.where(selection.mask, fresh, torch.zeros_like(fresh)))
    assert hvp_calls["n"] == after_if > 0 and fresh.abs().sum() > 0
    looser = estimate("if", problem, config=EstimatorConfig(rtol=1e-3, maxiter=500))
    assert hvp_calls["n"] > after_if and looser.solver_summary()["rel_residual"] <= 1e-3  # other settings: a new solve


@pytest.mark.parametrize("hessian_data", ["retained", "all"])
def test_label_change_assembles_the_original_and_perturbation_hessians(hessian_data):
    """For a label change, H covers S' (U relabelled) by default; ∇²L of the ORIGINAL objective and ∇²D must still
    equal the dense Hessians, since SIF is built on them."""
    model, data = tiny_mlp(), blobs()
    rows, new = [0, 5, 9], [2, 0, 1]
    config = ProblemConfig(hessian_data=hessian_data, curvature=CurvatureConfig(0.01))
    problem = prepare(model, data, LabelChange(rows, new), 3, config)
    labels = data.labels.clone()
    labels[rows] = torch.tensor(new)
    H_old = dense_hessian(model, data.inputs, data.labels, 0.01)
    H_new = dense_hessian(model, data.inputs, labels, 0.01)
    v = torch.randn(problem.space.numel, dtype=torch.float64)
    assert rel_err(problem.full_hvp(v), H_old @ v) < 1e-8
    assert rel_err(problem.perturbation_hvp(v), (H_new - H_old) @ v) < 1e-8
    assert rel_err(problem.hessian.hvp(v), (H_new if hessian_data == "retained" else H_old) @ v) < 1e-8


def test_freezing_is_fif_the_if_of_the_model_with_its_other_parameters_frozen():
    """Schioppa et al.'s freezing: IF of the model whose unselected parameters are constants, with their damping λ,
    Δ_T = (∇²_T L + λI)⁻¹ g_T. Its Hessian is taken here on a function of θ_T alone (θ_F fixed), independently of
    gif_core, and equals FIF with the curvature's damping δ = λ."""
    model, data = tiny_mlp(seed=1), blobs(seed=1)
    damping, weight_decay = 0.05, 0.01
    curvature = CurvatureConfig(weight_decay, damping=damping)
    problem = prepare(model, data, ClassRemoval(1), 3, ProblemConfig(curvature=curvature))
    selection = select(problem, SelectionConfig("gradient", ratio=0.3))
    T = selection.indices
    keep = problem.retain_rows
    objective, theta = dense_objective(model, data.inputs[keep], data.labels[keep], weight_decay)

    def frozen(theta_t: torch.Tensor) -> torch.Tensor:
        return objective(theta.index_put((T,), theta_t))

    H_frozen = torch.autograd.functional.hessian(frozen, theta[T])
    truth = torch.linalg.solve(H_frozen + damping * torch.eye(len(T), dtype=H_frozen.dtype), problem.g[T])
    result = estimate("fif", problem, selection, TIGHT)
    assert result.converged and rel_err(result.delta[T], truth) < 1e-6
    assert (result.delta[~selection.mask] == 0).all()


def test_tracin_editor_is_the_request_vector_and_raises_the_removed_samples_loss():
    model, data = tiny_mlp(seed=2), blobs(seed=2)
    problem = prepare(model, data, ClassRemoval(0), 3, ProblemConfig(curvature=CurvatureConfig(0.01)))
    result = estimate("tracin", problem)
    assert (
        torch.equal(result.delta, problem.g) and result.hvps == 0 and result.selection.n_selected == problem.space.numel
    )
    removed = data.labels == 0
    before = F.cross_entropy(model(data.inputs[removed]), data.labels[removed])
    edited = apply_delta(model, problem.space, result.delta, 0.5)
    assert F.cross_entropy(edited(data.inputs[removed]), data.labels[removed]) > before  # the sign: forget U


@pytest.mark.parametrize("method", ["datainf", "hyperinf"])
def test_layerwise_editors_are_descent_directions_with_no_hessian_product(method):
    """M⁻¹ is positive definite, so gᵀΔ > 0, Δ has IF's sign; and their reports count no Hessian-vector product."""
    model, data = tiny_convnet(), blobs(image=True)
    problem = prepare(model, data, SampleRemoval([1, 4, 8]), 3, ProblemConfig(curvature=CurvatureConfig(0.01)))
    result = estimate(method, problem)
    assert float(problem.g @ result.delta) > 0 and result.hvps == 0 and result.converged
    assert torch.isfinite(result.delta).all() and result.reports[0].note.startswith(("2 pass", "1 pass"))


@pytest.mark.parametrize("solver", ["lissa", "plissa"])
def test_if_with_the_lissa_baselines_matches_the_dense_solution(solver):
    model, data = tiny_mlp(), blobs()
    curvature = CurvatureConfig(weight_decay=0.1, damping=1.0)  # λ_min(H) ≈ 0.17 > 0: LiSSA's domain
    problem = prepare(model, data, SampleRemoval([3, 7]), 3, ProblemConfig(curvature=curvature))
    keep = problem.retain_rows
    H = dense_hessian(model, data.inputs[keep], data.labels[keep], 0.1) + torch.eye(problem.space.numel).double()
    assert torch.linalg.eigvalsh(H).min() > 0.1
    config = EstimatorConfig(symmetric_solver=solver, rtol=1e-8, maxiter=20000)
    result = estimate("if", problem, config=config)
    assert result.converged and rel_err(result.delta, torch.linalg.solve(H, problem.g)) < 1e-6
