"""Cached per-sample gradients, low-rank and TracIn scores, Captum self-influence, and the influence browser."""

import numpy as np
import pytest
import torch
from conftest import blobs, dense_hessian, rel_err, tiny_convnet
from conftest import fit_logreg as _fit_logreg

from gif_core.browse import BrowserConfig, InfluenceBrowser
from gif_core.captum_baselines import CaptumConfig, captum_scores, captum_self_influence
from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.data import LabelledSet
from gif_core.gradient_store import gradient_store
from gif_core.params import state_hash
from gif_core.scores import influence_scores, lowrank_inverse, self_influence, training_gradients
from gif_core.selection import SelectionConfig
from gif_core.solvers import SolverConfig


@pytest.fixture
def logreg32():
    torch.manual_seed(0)
    data = blobs(n=90, n_in=5, n_classes=3, seed=11)
    model = _fit_logreg(data.inputs, data.labels, 0.05).float()
    return model, data.inputs.float(), data.labels


def test_gradient_store_equals_in_memory_gradients_and_is_reused(tmp_path, logreg32):
    model, x, y = logreg32
    curvature = Curvature(model, (x, y), CurvatureConfig(weight_decay=0.05, batch_size=16))
    expected = training_gradients(curvature, x, y)
    calls = []
    store = gradient_store(curvature, x, y, tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert not store.from_cache and calls[-1] == (90, 90)
    assert torch.equal(store.rows(torch.arange(90)), expected)
    tiny_blocks = type(store)(store.path, False, 0.0, block_bytes=4 * 18 * 7)  # 7 rows per block
    v = torch.randn(18, 3, dtype=torch.float64)
    assert torch.allclose(tiny_blocks.matmul(v), expected.double() @ v)
    assert torch.allclose(tiny_blocks.square_norms(), expected.double().square().sum(1))
    assert torch.equal(store.rows(torch.tensor([4, 2])), expected[[4, 2]])
    again = gradient_store(Curvature(model, (x[:10], y[:10]), CurvatureConfig(weight_decay=0.05)), x, y, tmp_path)
    assert again.from_cache and again.path == store.path
    assert [p.name for p in tmp_path.iterdir()] == [store.path.name]  # no partial file left behind
    # a different model, weight decay or labelling never reuses these gradients
    other_labels = gradient_store(curvature, x, (y + 1) % 3, tmp_path)
    other_decay = gradient_store(Curvature(model, (x, y), CurvatureConfig(weight_decay=0.1)), x, y, tmp_path)
    changed = _fit_logreg(x.double(), y, 0.2).float()
    other_model = gradient_store(Curvature(changed, (x, y), CurvatureConfig(weight_decay=0.05)), x, y, tmp_path)
    assert len({store.path, other_labels.path, other_decay.path, other_model.path}) == 4


def test_scores_from_the_store_match_in_memory_scores(tmp_path, logreg32):
    model, x, y = logreg32
    curvature = Curvature(model, (x, y), CurvatureConfig(weight_decay=0.05))
    store = gradient_store(curvature, x, y, tmp_path)
    grads = training_gradients(curvature, x, y)
    for method in ("if", "tracin"):
        a = influence_scores(curvature, store, x[:2] * 0.5, y[:2], method).scores
        b = influence_scores(curvature, grads, x[:2] * 0.5, y[:2], method).scores
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)
    assert torch.allclose(self_influence(store, "tracin").values, self_influence(grads, "tracin").values)
    with pytest.raises(ValueError, match="if-lowrank"):
        self_influence(store, "if", curvature)


def test_lowrank_and_tracin_scores_against_dense_algebra():
    torch.manual_seed(0)
    data = blobs(n=60, n_in=5, n_classes=3, seed=3)
    model = _fit_logreg(data.inputs, data.labels, 0.05)
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(weight_decay=0.05))
    grads = training_gradients(curvature, data.inputs, data.labels).double()
    test_x, test_y = data.inputs[:2] * 0.5, torch.tensor([1, 2])
    test_grads = torch.stack(
        [curvature.gradient(test_x[i : i + 1], test_y[i : i + 1], regulariser=False) for i in (0, 1)]
    )
    w, V = torch.linalg.eigh(dense_hessian(model, data.inputs, data.labels, 0.05))
    top_w, top_V = w[-8:], V[:, -8:]
    expected = (grads @ top_V @ torch.diag(1 / top_w) @ top_V.T @ test_grads.T).T / 60
    lowrank = lowrank_inverse(curvature, 8)
    got = influence_scores(curvature, grads, test_x, test_y, "if-lowrank", lowrank=lowrank).scores
    assert rel_err(got.double(), expected) < 1e-4
    tracin = influence_scores(curvature, grads, test_x, test_y, "tracin").scores
    assert rel_err(tracin.double(), (grads @ test_grads.T).T) < 1e-5
    with pytest.raises(ValueError, match="lowrank=lowrank_inverse"):
        influence_scores(curvature, grads, test_x, test_y, "if-lowrank")


def test_tracin_and_captum_tracincp_agree_exactly_without_weight_decay(logreg32):
    model, x, y = logreg32
    curvature = Curvature(model, (x, y))  # λ = 0: ∇ℓ_z is the bare loss gradient, as in Captum
    grads = training_gradients(curvature, x, y)
    ours = influence_scores(curvature, grads, x[:3], y[:3], "tracin").scores
    theirs = captum_scores("tracincp", model, x, y, x[:3], y[:3], CaptumConfig(batch_size=32))
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    captum_self = captum_self_influence("tracincp", model, x, y, CaptumConfig(batch_size=32))
    assert torch.allclose(captum_self, self_influence(grads, "tracin").values, rtol=1e-4, atol=1e-7)


def test_captum_arnoldi_self_influence_ranks_like_ours(logreg32):
    from scipy.stats import spearmanr

    model, x, y = logreg32
    curvature = Curvature(model, (x, y), CurvatureConfig(weight_decay=0.05))
    ours = self_influence(training_gradients(curvature, x, y), "if-lowrank", curvature, rank=17).values
    config = CaptumConfig(weight_decay=0.05, batch_size=30, projection_dim=17, arnoldi_dim=18)
    theirs = captum_self_influence("arnoldi", model, x, y, config)
    assert theirs.shape == ours.shape and spearmanr(theirs.numpy(), ours.numpy()).statistic > 0.9


def _image_set(n: int = 48, seed: int = 2) -> LabelledSet:
    data = blobs(n=n, seed=seed, image=True)
    images = (data.inputs[:, 0].clamp(-2, 2) * 60 + 128).to(torch.uint8)
    return LabelledSet(data.inputs.float(), data.labels, torch.arange(100, 100 + n), images)


def test_browser_top_k_are_the_extreme_scores_with_labels_and_images(tmp_path):
    model, train = tiny_convnet().float(), _image_set()
    before = state_hash(model)
    tight = SolverConfig(rtol=1e-5, maxiter=1000)  # float32 products reach ~1e-6
    config = BrowserConfig(
        hessian_samples=48, cache_dir=tmp_path, lowrank_rank=10, solver=tight, selection=SelectionConfig(ratio=0.3)
    )
    browser = InfluenceBrowser(model, train, 0.01, config)
    curvature = Curvature(model, (train.inputs, train.labels), CurvatureConfig(weight_decay=0.01))
    test_x = train.inputs[:1] * 0.8
    grads = training_gradients(curvature, train.inputs, train.labels)
    expected = influence_scores(curvature, grads, test_x, torch.tensor([1]), solver=tight)
    explanation = browser.explain(test_x, 1, "if", k=5)
    assert explanation.report.converged and rel_err(explanation.scores, expected.scores[0]) < 1e-3
    assert [s.row for s in explanation.helpful] == torch.argsort(expected.scores[0], descending=True)[:5].tolist()
    assert [s.row for s in explanation.harmful] == torch.argsort(expected.scores[0])[:5].tolist()
    first = explanation.helpful[0]
    assert first.label == int(train.labels[first.row]) and first.source_index == 100 + first.row
    assert np.array_equal(first.image, train.images[first.row].numpy())
    assert abs(sum(explanation.probabilities) - 1) < 1e-5 and explanation.report is not None
    for method in ("if-lowrank", "gif", "tracin", "captum-tracincp", "captum-naive", "captum-arnoldi"):
        result = browser.explain(test_x, 1, method, k=3)
        assert result.scores.shape == (48,) and torch.isfinite(result.scores).all(), method
        assert (result.selection is not None) == (method == "gif")
    assert len(browser.suspicious(4, "tracin")) == 4 and len(browser.suspicious(4, "if-lowrank")) == 4
    reopened = InfluenceBrowser(model, train, 0.01, config)  # gradients and eigenpairs come from the cache
    assert reopened.gradients.from_cache and torch.equal(reopened.lowrank.eigenvectors, browser.lowrank.eigenvectors)
    assert len(list(tmp_path.glob("eigenpairs-*.safetensors"))) == 1
    assert state_hash(model) == before


def test_browser_errors_say_what_to_do(tmp_path):
    browser = InfluenceBrowser(tiny_convnet().float(), _image_set(), 0.01, BrowserConfig(cache_dir=tmp_path))
    x = browser.train.inputs[:1]
    with pytest.raises(ValueError, match="choose one of"):
        browser.explain(x, 0, "lissa")
    with pytest.raises(ValueError, match="one test input at a time"):
        browser.explain(browser.train.inputs[:2], 0)
    with pytest.raises(ValueError, match="class index 0 … 2"):
        browser.explain(x, 3)
    no_decay = InfluenceBrowser(tiny_convnet().float(), _image_set(), 0.0, BrowserConfig(cache_dir=tmp_path))
    with pytest.raises(ValueError, match="hessian_reg > 0"):
        no_decay.explain(x, 0, "captum-naive")


def test_helpful_means_positive_and_ties_at_zero_are_neither():
    from gif_core.browse import helpful_and_harmful

    scores = torch.tensor([3e-2, -4.04e-14, 1e-2, 0.0, -2e-2, 5e-15, -1e-3])
    helpful, harmful = helpful_and_harmful(scores, k=8)
    assert helpful.tolist() == [0, 2] and harmful.tolist() == [4, 6]  # rows 1, 3, 5 tie at zero
    assert all(scores[helpful] > 0) and all(scores[harmful] < 0)
    assert helpful_and_harmful(scores, k=1)[0].tolist() == [0]
    nothing = helpful_and_harmful(torch.zeros(5), k=3)
    assert nothing[0].numel() == 0 and nothing[1].numel() == 0


def test_iris_tracin_helpful_list_holds_no_negative_score(tmp_path):
    """The case of issue 18: Iris MLP, test #0, TracIn, 8 samples ended the helpful list with −4.04e−14."""
    from gif_core.workspace import open_workspace_path
    from gif_core.zoo import bundled_model_path

    loaded = open_workspace_path(bundled_model_path("iris_mlp"))
    browser = InfluenceBrowser(loaded.model, loaded.train, loaded.weight_decay, BrowserConfig(cache_dir=tmp_path))
    test = loaded.bundle.test
    explanation = browser.explain(test.inputs[:1], int(test.labels[0]), "tracin", k=8)
    tie = 1e-6 * float(explanation.scores.abs().max())
    assert all(r.score > tie for r in explanation.helpful) and all(r.score < -tie for r in explanation.harmful)
    assert len(explanation.helpful) + len(explanation.harmful) >= 1
