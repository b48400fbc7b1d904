"""Agreement between influence methods (Spearman, top-k overlap), influence on a set of test points (linearity) and
the full ranking table (signs, relative scores, class names)."""

import math

import pytest
import torch
from conftest import blobs
from conftest import fit_logreg as _fit_logreg

from gif_core.agreement import pairwise_agreement, spearman, top_k, top_k_overlap
from gif_core.browse import SET_LIMIT, BrowserConfig, InfluenceBrowser, ranking_table, relative_scores, score_kinds
from gif_core.data import LabelledSet
from gif_core.scores import influence_scores
from gif_core.solvers import SolverConfig

# ---------------------------------------------------------------- Spearman and top-k overlap


def test_spearman_on_hand_ranked_examples():
    # d = rank differences (-1, 1, -1, 1, 0): ρ = 1 - 6·Σd² / (n(n²-1)) = 1 - 24/120
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([30.0, 20.0, 10.0])) == pytest.approx(-1.0)
    assert spearman([0.1, 0.2, 0.3], [1.0, 8.0, 27.0]) == pytest.approx(1.0)  # ranks, not values


def test_spearman_gives_ties_their_mean_rank():
    # ranks of b: 1, 2.5, 2.5, 4; Pearson of the ranks: 4.5 / √(5 · 4.5) = √0.9
    assert spearman([1, 2, 3, 4], [10, 20, 20, 40]) == pytest.approx(math.sqrt(0.9))


def test_spearman_undefined_or_refused():
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # a constant ranking has no order
    with pytest.raises(ValueError, match="one length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least two"):
        spearman([1.0], [2.0])


def test_top_k_overlap_of_helpful_and_harmful_samples():
    a = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    b = torch.tensor([5.0, 0.0, 4.0, 1.0, 3.0, 2.0])
    assert top_k(a, 3).tolist() == [0, 1, 2] and top_k(b, 3).tolist() == [0, 2, 4]
    assert top_k_overlap(a, b, 3) == pytest.approx(2 / 3)  # rows 0 and 2 in both
    assert top_k(b, 2, helpful=False).tolist() == [1, 3]
    assert top_k_overlap(a, b, 2, helpful=False) == 0.0  # a's most harmful are rows 5, 4
    assert top_k_overlap(a, a, 6) == 1.0 and top_k_overlap(a, -a, 3) == 0.0


def test_top_k_breaks_ties_by_row_and_refuses_k_outside_one_to_n():
    assert top_k([1.0, 1.0, 1.0, 0.0], 2).tolist() == [0, 1]
    assert top_k_overlap([1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0], 2) == 0.5  # {0, 1} ∩ {1, 2}
    with pytest.raises(ValueError, match=r"between 1 and the number of scores \(4\), got 5"):
        top_k_overlap([1, 2, 3, 4], [4, 3, 2, 1], 5)
    with pytest.raises(ValueError, match="got 0"):
        top_k([1, 2], 0)


def test_pairwise_agreement_covers_every_pair_once():
    scores = {"if": [3.0, 2.0, 1.0, 0.0], "tracin": [3.0, 1.0, 2.0, 0.0], "gif": [0.0, 1.0, 2.0, 3.0]}
    table = pairwise_agreement(scores, k=10)
    assert [(r.first, r.second) for r in table] == [("if", "tracin"), ("if", "gif"), ("tracin", "gif")]
    first = table[0]
    assert first.k == 4  # capped at n
    assert first.spearman == pytest.approx(0.8)  # d = (0, 1, -1, 0): 1 - 6·2/60
    assert table[1].spearman == pytest.approx(-1.0)
    small = pairwise_agreement(scores, k=1)[0]
    assert small.helpful_overlap == 1.0 and small.harmful_overlap == 1.0  # both rank row 0 first, row 3 last
    assert pairwise_agreement({"if": [1.0, 2.0]}, k=1) == ()


# ---------------------------------------------------------------- the ranking table


def test_ranking_table_ranks_every_sample_with_its_sign_class_and_relative_score():
    train = LabelledSet(torch.zeros(4, 2), torch.tensor([0, 1, 1, 0]), torch.tensor([10, 11, 12, 13]), images=None)
    scores = torch.tensor([0.5, -2.0, 1e-9, 2.0])
    table = ranking_table(scores, train, ("cat", "dog"))
    assert [r.row for r in table] == [3, 0, 2, 1] and [r.rank for r in table] == [1, 2, 3, 4]
    assert [r.source_index for r in table] == [13, 10, 12, 11]
    assert [r.label for r in table] == ["cat", "cat", "dog", "dog"]
    assert [r.kind for r in table] == ["helpful", "helpful", "tie", "harmful"]  # 1e-9 < 1e-6 · 2.0
    assert [r.relative_score for r in table] == pytest.approx([1.0, 0.25, 5e-10, -1.0])
    assert [r.score for r in table] == pytest.approx([2.0, 0.5, 1e-9, -2.0])
    with pytest.raises(ValueError, match="one score per training sample"):
        ranking_table(scores[:3], train, ("cat", "dog"))


def test_all_zero_scores_are_ties_with_zero_relative_score():
    assert score_kinds(torch.zeros(3)) == ["tie"] * 3
    assert torch.equal(relative_scores(torch.zeros(3)), torch.zeros(3))


# ---------------------------------------------------------------- influence on a set of test points


@pytest.fixture(scope="module")
def logreg_browser(tmp_path_factory):
    """A float64 logistic regression at its optimum, browsed with a tight solver (so two solves agree to ~1e-10)."""
    torch.manual_seed(0)
    data = blobs(n=60, n_in=4, n_classes=3, seed=5)
    model = _fit_logreg(data.inputs, data.labels, 0.05)
    train = LabelledSet(data.inputs, data.labels, torch.arange(60))
    config = BrowserConfig(
        hessian_samples=60,
        cache_dir=tmp_path_factory.mktemp("gradients"),
        lowrank_rank=6,
        solver=SolverConfig(rtol=1e-10, maxiter=1000),
    )
    browser = InfluenceBrowser(model, train, 0.05, config)
    test = blobs(n=6, n_in=4, n_classes=3, seed=5)  # the same centres, fresh noise
    return browser, test.inputs, test.labels


@pytest.mark.parametrize("method", ["if", "if-lowrank", "tracin", "captum-tracincp", "captum-naive"])
def test_explain_set_is_the_mean_of_per_point_explanations(logreg_browser, method):
    browser, x, y = logreg_browser
    per_point = torch.stack([browser.explain(x[i : i + 1], int(y[i]), method).scores for i in range(len(y))])
    mean = per_point.mean(0)
    got = browser.explain_set(x, y, method, k=4)
    assert got.scores.shape == mean.shape
    assert (got.scores - mean).abs().max() <= 1e-5 * mean.abs().max()
    assert (got.report is not None) == (method == "if") and (got.report is None or got.report.converged)
    assert [r.row for r in got.helpful] == torch.argsort(mean, descending=True)[: len(got.helpful)].tolist()
    assert all(r.score > 0 for r in got.helpful) and all(r.score < 0 for r in got.harmful)
    assert got.labels == tuple(y.tolist()) and 0 <= got.accuracy <= 100


def test_explain_set_of_one_point_is_that_point(logreg_browser):
    browser, x, y = logreg_browser
    one = browser.explain_set(x[2:3], y[2:3], "if").scores
    assert torch.allclose(one, browser.explain(x[2:3], int(y[2]), "if").scores, rtol=1e-6, atol=1e-12)


def test_gif_on_a_set_selects_on_the_set_and_averages_its_rows(logreg_browser):
    """GIF-restricted on a set uses one selection T (chosen on the set); with that T it is the mean of the points'
    GIF-restricted scores."""
    browser, x, y = logreg_browser
    got = browser.explain_set(x, y, "gif")
    assert got.selection is not None and got.selection.n_selected > 0
    rows = influence_scores(
        browser.curvature, browser.gradients, x, y, "gif", got.selection, browser.config.solver
    ).scores
    assert (got.scores - rows.mean(0)).abs().max() <= 1e-5 * rows.abs().max()


def test_explain_set_refuses_empty_oversized_or_mislabelled_sets(logreg_browser):
    browser, x, y = logreg_browser
    with pytest.raises(ValueError, match=f"1 … {SET_LIMIT} test inputs"):
        browser.explain_set(x[:0], y[:0])
    with pytest.raises(ValueError, match="one label each"):
        browser.explain_set(x, y[:2])
    with pytest.raises(ValueError, match="class indices 0 … 2"):
        browser.explain_set(x, torch.full_like(y, 3))
    with pytest.raises(ValueError, match="choose one of"):
        browser.explain_set(x, y, "lissa")
    with pytest.raises(ValueError, match=f"1 … {SET_LIMIT}"):
        browser.explain_set(x.repeat(SET_LIMIT, 1)[: SET_LIMIT + 1], y.repeat(SET_LIMIT)[: SET_LIMIT + 1])
