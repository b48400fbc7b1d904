"""Per-sample influence scores: dense closed forms on a tiny model, and the sign and ranking of real
leave-one-out retraining on L2-regularised logistic regression."""

from pathlib import Path

import torch
from conftest import blobs, dense_hessian, rel_err, tiny_mlp
from conftest import fit_logreg as _fit_logreg
from scipy.stats import spearmanr
from torch import nn
from torch.nn import functional as F

from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.problem import prepare
from gif_core.requests import SampleRemoval
from gif_core.scores import influence_scores, training_gradients
from gif_core.selection import SelectionConfig, select
from gif_core.solvers import SolverConfig

TIGHT = SolverConfig(rtol=1e-10, maxiter=5000)


def _per_sample_gradients_by_hand(model, inputs, labels, weight_decay):
    rows = []
    for x, y in zip(inputs, labels, strict=True):
        model.zero_grad()
        theta = torch.cat([p.reshape(-1) for p in model.parameters()])
        (F.cross_entropy(model(x[None]), y[None]) + 0.5 * weight_decay * theta.square().sum()).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
    return torch.stack(rows)


def test_scores_match_the_dense_formulas():
    model, data = tiny_mlp(), blobs()
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(weight_decay=0.01))
    grads = training_gradients(curvature, data.inputs, data.labels)
    by_hand = _per_sample_gradients_by_hand(model, data.inputs, data.labels, 0.01)
    assert rel_err(grads.double(), by_hand) < 1e-5
    H = dense_hessian(model, data.inputs, data.labels, 0.01)
    test_x, test_y = data.inputs[:2] + 0.1, data.labels[:2]
    test_grads = _per_sample_gradients_by_hand(model, test_x, test_y, 0.0)
    n = len(data.labels)

    result = influence_scores(curvature, grads, test_x, test_y, "if", solver=TIGHT)
    expected = (by_hand @ torch.linalg.solve(H, test_grads.T)).T / n
    assert result.scores.shape == (2, n) and rel_err(result.scores.double(), expected) < 1e-4

    selection = select(prepare(model, data, SampleRemoval([0]), 3), SelectionConfig(ratio=0.4))
    T = selection.indices
    A = H[:, T]
    s = A @ torch.linalg.solve(A.T @ A, test_grads[:, T].T)
    gif = influence_scores(curvature, grads, test_x, test_y, "gif", selection, TIGHT)
    assert rel_err(gif.scores.double(), (by_hand @ s).T / n) < 1e-4
    assert all(r.converged for r in gif.reports)


def test_sign_and_ranking_agree_with_leave_one_out_retraining():
    torch.manual_seed(0)
    data = blobs(n=120, n_in=5, n_classes=3, seed=7)
    weight_decay = 0.05
    model = _fit_logreg(data.inputs, data.labels, weight_decay)
    test_x, test_y = data.inputs[:1] * 0.5, torch.tensor([1])  # a point the model finds hard

    def test_loss(m):
        return float(F.cross_entropy(m(test_x), test_y))

    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(weight_decay=weight_decay))
    grads = training_gradients(curvature, data.inputs, data.labels)
    predicted = influence_scores(curvature, grads, test_x, test_y, "if", solver=TIGHT).scores[0].double()
    candidates = torch.argsort(predicted.abs(), descending=True)[:25]  # Basu et al.: the most influential samples
    actual = []
    for z in candidates.tolist():
        keep = torch.ones(len(data.labels), dtype=torch.bool)
        keep[z] = False
        warm = nn.Linear(5, 3).double()
        warm.load_state_dict(model.state_dict())
        retrained = _fit_logreg(data.inputs[keep], data.labels[keep], weight_decay, warm)
        actual.append(test_loss(retrained) - test_loss(model))
    actual = torch.tensor(actual)
    rho = spearmanr(predicted[candidates].numpy(), actual.numpy()).statistic
    print(
        f"LOO: Spearman {rho:.3f}, sign agreement {float((torch.sign(predicted[candidates]) == torch.sign(actual)).float().mean()):.2f}, rel err {rel_err(predicted[candidates], actual):.3f}"
    )
    assert rho >= 0.95, rho
    assert (torch.sign(predicted[candidates]) == torch.sign(actual)).float().mean() >= 0.95  # positive = helpful
    assert rel_err(predicted[candidates], actual) < 0.2


def test_top_helpful_and_harmful():
    model, data = tiny_mlp(), blobs()
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(weight_decay=0.01))
    grads = training_gradients(curvature, data.inputs, data.labels)
    result = influence_scores(curvature, grads, data.inputs[:1], data.labels[:1])
    helpful, values = result.top(0, 5)
    harmful, low = result.top(0, 5, helpful=False)
    assert values[0] == result.scores[0].max() and low[0] == result.scores[0].min()
    assert (values[:-1] >= values[1:]).all() and not set(helpful.tolist()) & set(harmful.tolist())


def test_captum_baselines_share_shape_and_orientation():
    from gif_core.captum_baselines import CaptumConfig, captum_scores
    from gif_core.params import state_hash

    torch.manual_seed(0)
    data = blobs(n=120, n_in=5, n_classes=3, seed=7)
    model = _fit_logreg(data.inputs, data.labels, 0.05).float()
    inputs = data.inputs.float()
    before = state_hash(model)
    curvature = Curvature(model, (inputs, data.labels), CurvatureConfig(weight_decay=0.05))
    test_x, test_y = inputs[:3] * 0.5, torch.tensor([1, 2, 0])
    ours = influence_scores(curvature, training_gradients(curvature, inputs, data.labels), test_x, test_y).scores
    config = CaptumConfig(weight_decay=0.05, batch_size=40, projection_dim=18, arnoldi_dim=18)
    for method, floor in (("naive", 0.99), ("arnoldi", 0.85), ("tracincp", 0.5)):
        theirs = captum_scores(method, model, inputs, data.labels, test_x, test_y, config)
        assert theirs.shape == ours.shape
        for i in range(3):  # same orientation: positive = helpful
            assert spearmanr(theirs[i].numpy(), ours[i].numpy()).statistic > floor, (method, i)
    assert state_hash(model) == before


def test_score_errors_say_what_to_do():
    import pytest

    from gif_core.captum_baselines import captum_scores

    model, data = tiny_mlp(), blobs()
    curvature = Curvature(model, (data.inputs, data.labels))
    grads = training_gradients(curvature, data.inputs, data.labels)
    with pytest.raises(ValueError, match="choose one of if, if-lowrank, gif, tracin"):
        influence_scores(curvature, grads, data.inputs[:1], data.labels[:1], "lissa")
    with pytest.raises(ValueError, match="non-empty parameter selection"):
        influence_scores(curvature, grads, data.inputs[:1], data.labels[:1], "gif")
    with pytest.raises(ValueError, match="hessian_reg > 0"):
        captum_scores(
            "naive", model.float(), data.inputs.float(), data.labels, data.inputs[:1].float(), data.labels[:1]
        )
    with pytest.raises(ValueError, match="tracincp, naive, arnoldi"):
        captum_scores("lissa", model, data.inputs, data.labels, data.inputs[:1], data.labels[:1])


def test_self_influence_against_dense_algebra():
    from gif_core.scores import detection_rate, self_influence

    torch.manual_seed(0)
    data = blobs(n=60, n_in=5, n_classes=3, seed=3)
    model = _fit_logreg(data.inputs, data.labels, 0.05)
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(weight_decay=0.05))
    grads = training_gradients(curvature, data.inputs, data.labels).double()
    H = dense_hessian(model, data.inputs, data.labels, 0.05)
    n = len(data.labels)
    exact = torch.einsum("np,np->n", grads, torch.linalg.solve(H, grads.T).T) / n
    assert rel_err(self_influence(grads, "if", curvature, solver=TIGHT).values.double(), exact) < 1e-4
    w, V = torch.linalg.eigh(H)
    top_w, top_V = w[-10:], V[:, -10:]
    expected = ((grads @ top_V).square() / top_w).sum(1) / n
    low_rank = self_influence(grads, "if-lowrank", curvature, rank=10)
    assert rel_err(low_rank.values.double(), expected) < 1e-4
    assert torch.allclose(low_rank.eigenvalues.sort().values, top_w, rtol=1e-6)
    tracin = self_influence(grads, "tracin")
    assert torch.allclose(tracin.values, grads.square().sum(1))
    ranking = tracin.ranking()
    assert detection_rate(ranking, ranking[:3], 0.05) == 100.0
    assert detection_rate(ranking, ranking[-3:], 0.5) == 0.0


def test_the_shown_formula_has_the_sign_the_scores_have():
    """The formula the Learn page and the Influential samples page show is the one the code computes: evaluated with
    its own sign on dense algebra, it equals the IF scores (a leading minus in the text would fail here)."""
    from gif_core.scores import SCORE_FORMULA, SCORE_MEANING
    from gif_core.teaching import EXPLANATIONS

    assert SCORE_FORMULA in EXPLANATIONS["if"].sign and SCORE_MEANING in EXPLANATIONS["if"].sign
    page = (Path(__file__).parents[1] / "app" / "views" / "1_Influential_samples.py").read_text()
    assert "SCORE_FORMULA" in page and "−∇ℓ_test" not in page
    shown_sign = -1.0 if SCORE_FORMULA.lstrip().startswith(("−", "-")) else 1.0
    model, data = tiny_mlp(), blobs()
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(weight_decay=0.01))
    grads = _per_sample_gradients_by_hand(model, data.inputs, data.labels, 0.01)
    H = dense_hessian(model, data.inputs, data.labels, 0.01)
    test_x, test_y = data.inputs[:1] + 0.1, data.labels[:1]
    test_grad = _per_sample_gradients_by_hand(model, test_x, test_y, 0.0)[0]
    formula = shown_sign * (grads @ torch.linalg.solve(H, test_grad)) / len(data.labels)  # ∇ℓ_testᵀ H⁻¹ ∇ℓ_z / n
    result = influence_scores(curvature, grads.float(), test_x, test_y, "if", solver=TIGHT)
    assert rel_err(result.scores[0].double(), formula) < 1e-4
    assert "helpful" in SCORE_MEANING.split("negative")[0]  # the positive half of the sentence says helpful


def test_approximate_inverse_scores_match_their_dense_formulas():
    """DataInf, HyperINF and EK-FAC scores ∇ℓ_zᵀ M⁻¹ ∇ℓ_test / n on logistic regression (one layer, weight and bias
    together), each M built here from per-sample gradients taken one sample at a time: DataInf's mean of damped
    rank-one inverses, HyperINF's damped GFIM over the [W | b] matrices, and EK-FAC with a one-sample Hessian
    sample, where it is exact: (H + (λ + δ)I)⁻¹."""
    torch.manual_seed(0)
    model, data = nn.Linear(4, 3).double(), blobs(30)
    weight_decay, damping = 0.01, 0.1
    test_x, test_y = data.inputs[:2] + 0.1, data.labels[:2]
    test_grads = _per_sample_gradients_by_hand(model, test_x, test_y, 0.0)
    by_hand = _per_sample_gradients_by_hand(model, data.inputs, data.labels, weight_decay)
    n, p = len(data.labels), 15

    def scores(method, hessian_sample):
        curvature = Curvature(model, hessian_sample, CurvatureConfig(weight_decay, damping=damping))
        grads = training_gradients(curvature, data.inputs, data.labels)
        result = influence_scores(curvature, grads, test_x, test_y, method)
        assert len(result.reports) == 2 and all(r.converged for r in result.reports)
        return result.scores.double()

    sample = _per_sample_gradients_by_hand(model, data.inputs, data.labels, 0.0)  # the data loss's g_i
    lam = 0.1 * sample.square().sum() / (n * p)
    eye = torch.eye(p, dtype=torch.float64)
    datainf = torch.stack([torch.linalg.inv(torch.outer(g, g) + lam * eye) for g in sample]).mean(0)
    expected = (by_hand @ datainf @ test_grads.T).T / n
    assert rel_err(scores("datainf", (data.inputs, data.labels)), expected) < 1e-5

    def as_matrix(g):  # [W | b] ∈ R^{3×5}
        return torch.cat([g[:12].reshape(3, 4), g[12:, None]], dim=1)

    gfim = sum(as_matrix(g) @ as_matrix(g).T for g in sample) / (n * 5)
    damped = gfim + 0.1 * torch.trace(gfim) / 3 * torch.eye(3, dtype=torch.float64)
    directions = [torch.linalg.solve(damped, as_matrix(t)) for t in test_grads]
    flat = torch.stack([torch.cat([d[:, :4].reshape(-1), d[:, 4]]) for d in directions])
    assert rel_err(scores("hyperinf", (data.inputs, data.labels)), (by_hand @ flat.T).T / n) < 1e-5

    one = (data.inputs[:1], data.labels[:1])
    H = dense_hessian(model, *one, weight_decay) + damping * eye
    expected = (by_hand @ torch.linalg.solve(H, test_grads.T)).T / n
    assert rel_err(scores("ekfac", one), expected) < 1e-6  # G and the scores are float32
