"""The Learn page's examples against independent dense computations (conftest's autograd Hessians, closed forms)."""

from __future__ import annotations

import pytest
import torch
from conftest import dense_gradient, dense_hessian, dense_objective

from gif_core import teaching
from gif_core.influence import METHODS
from gif_core.scores import SCORE_FORMULA, SCORE_MEANING


@pytest.fixture(scope="module")
def toy() -> teaching.ToyResult:
    return teaching.toy_example(teaching.ToyConfig(removed_cluster=0, removed_fraction=0.8, weight_decay=0.01))


def _retained(result: teaching.ToyResult) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.ones(len(result.data.labels), dtype=torch.bool)
    keep[result.removed_rows] = False
    return result.data.inputs[keep], result.data.labels[keep]


def _closed_forms(result: teaching.ToyResult) -> tuple[torch.Tensor, torch.Tensor]:
    """H of the retained objective at θ*, and g = (m/(n−m))·mean_{i∈U} ∇ℓ_i(θ*) (ℓ_i carries the λ/2|θ|² term)."""
    model = teaching.toy_model(result.theta_star)
    wd = result.config.weight_decay
    inputs, labels = _retained(result)
    hessian = dense_hessian(model, inputs, labels, wd)
    removed = result.removed_rows
    n, m = len(result.data.labels), len(removed)
    g = (m / (n - m)) * dense_gradient(model, result.data.inputs[removed], result.data.labels[removed], wd)
    return hessian, g


def test_theta_star_is_stationary(toy):
    model = teaching.toy_model(toy.theta_star)
    gradient = dense_gradient(model, toy.data.inputs, toy.data.labels, toy.config.weight_decay)
    assert float(gradient.norm()) < 1e-8


def test_removed_rows_are_the_asked_fraction_of_one_cluster(toy):
    cluster_rows = torch.nonzero(toy.data.cluster == 0).reshape(-1)
    assert set(toy.removed_rows.tolist()) <= set(cluster_rows.tolist())
    assert len(cluster_rows) == 25 and len(toy.data.labels) == 100  # 4 clusters of 25 points
    assert len(toy.removed_rows) == round(0.8 * len(cluster_rows)) == 20  # 0.8 · 25
    assert len(set(toy.removed_rows.tolist())) == 20 and toy.removed_rows.tolist() == sorted(toy.removed_rows.tolist())


def test_if_update_is_the_newton_step_of_the_retained_objective(toy):
    hessian, g = _closed_forms(toy)
    inputs, labels = _retained(toy)
    model = teaching.toy_model(toy.theta_star)
    # at a stationary θ*, g equals −∇L_{S∖U}(θ*): IF is one Newton step on the retained objective
    torch.testing.assert_close(g, -dense_gradient(model, inputs, labels, toy.config.weight_decay), atol=1e-9, rtol=0)
    expected = toy.theta_star + torch.linalg.solve(hessian, g)
    torch.testing.assert_close(toy.updates["if"], expected, atol=1e-6, rtol=0)


def test_selective_updates_match_their_closed_forms(toy):
    hessian, g = _closed_forms(toy)
    t, f = toy.selected, 1 - toy.selected
    column = hessian[:, t]
    expected = {
        "gif": float(column @ g / (column @ column)),  # argmin_x ‖H[:, T] x − g‖²
        "fif": float(g[t] / hessian[t, t]),
        "pif": float(torch.linalg.solve(hessian, g)[t]),
    }
    for method, step in expected.items():
        point = toy.updates[method]
        assert float(point[f]) == float(toy.theta_star[f]), f"{method} moved the frozen parameter"
        assert float(point[t] - toy.theta_star[t]) == pytest.approx(step, abs=1e-6)


def test_default_selection_is_the_parameter_with_the_largest_gradient(toy):
    _, g = _closed_forms(toy)
    assert toy.selected == int(g.abs().argmax())


@pytest.mark.parametrize("selected", [0, 1])
def test_gif_moves_only_the_chosen_parameter(selected):
    result = teaching.toy_example(teaching.ToyConfig(removed_cluster=3, selected=selected, grid_size=5))
    assert result.selected == selected
    moved = result.updates["gif"] - result.theta_star
    assert float(moved[1 - selected]) == 0.0
    assert float(moved[selected]) != 0.0
    hessian, g = _closed_forms(result)
    column = hessian[:, selected]  # argmin_x ‖H[:, t] x − g‖² of one column t: x = H[:, t]·g / |H[:, t]|²
    assert float(moved[selected]) == pytest.approx(float(column @ g / (column @ column)), abs=1e-6)


def test_retrained_point_is_the_optimum_of_the_retained_objective(toy):
    inputs, labels = _retained(toy)
    model = teaching.toy_model(toy.retrained)
    wd = toy.config.weight_decay
    assert float(dense_gradient(model, inputs, labels, wd).norm()) < 1e-8
    assert float(torch.linalg.eigvalsh(dense_hessian(model, inputs, labels, wd)).min()) > 0  # convex: global minimum
    assert toy.retained_loss_at_retrained < toy.retained_loss_at_star
    for point in toy.updates.values():
        objective, _ = dense_objective(teaching.toy_model(point), inputs, labels, wd)
        assert toy.retained_loss_at_retrained <= float(objective(point)) + 1e-12


def test_loss_grid_is_the_retained_objective_and_covers_every_point(toy):
    inputs, labels = _retained(toy)
    objective, _ = dense_objective(teaching.toy_model(), inputs, labels, toy.config.weight_decay)
    size = toy.config.grid_size
    assert toy.loss.shape == (size, size)
    for i, j in [(0, 0), (3, size - 1), (size // 2, 7)]:
        theta = torch.stack([toy.grid_x[j], toy.grid_y[i]])
        assert float(toy.loss[i, j]) == pytest.approx(float(objective(theta)), rel=1e-12)
    for point in [toy.theta_star, toy.retrained, *toy.updates.values()]:
        assert toy.grid_x[0] < point[0] < toy.grid_x[-1]
        assert toy.grid_y[0] < point[1] < toy.grid_y[-1]


def test_per_method_summaries_are_distance_loss_and_gradient_at_the_edited_point(toy):
    assert set(toy.updates) == set(METHODS)
    inputs, labels = _retained(toy)
    wd = toy.config.weight_decay
    for method, point in toy.updates.items():
        assert toy.distances[method] == pytest.approx(float((point - toy.retrained).norm()), abs=1e-15)
        model = teaching.toy_model(point)
        objective, _ = dense_objective(model, inputs, labels, wd)
        assert toy.retained_losses[method] == pytest.approx(float(objective(point)), rel=1e-12)
        gradient = dense_gradient(model, inputs, labels, wd)
        assert toy.gradient_norms[method] == pytest.approx(float(gradient.norm()), rel=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [{"removed_cluster": 4}, {"removed_fraction": 0.0}, {"weight_decay": -1.0}, {"selected": 2}, {"grid_size": 1}],
)
def test_toy_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        teaching.ToyConfig(**kwargs)


@pytest.fixture(scope="module")
def spectra() -> tuple[teaching.Spectrum, ...]:
    return teaching.hessian_spectra([0.0, 0.1])


def test_spectrum_is_the_eigenvalues_of_an_independent_dense_hessian(spectra):
    config = teaching.SpectrumConfig()
    data = teaching.spectrum_data(config.data_seed)
    for spectrum in spectra:
        model = teaching.spectrum_network(config.hidden, config.recipe.seed)
        torch.nn.utils.vector_to_parameters(spectrum.theta, model.parameters())
        hessian = dense_hessian(model, data.inputs, data.labels, spectrum.weight_decay)
        expected = torch.linalg.eigvalsh(0.5 * (hessian + hessian.T))
        torch.testing.assert_close(spectrum.eigenvalues, expected, atol=1e-10, rtol=1e-8)
        threshold = config.negative_tolerance * float(expected.abs().max())
        assert 0.0 <= spectrum.negative_share <= 1.0
        assert spectrum.negative_share == float((expected < -threshold).double().mean())
        objective, _ = dense_objective(model, data.inputs, data.labels, spectrum.weight_decay)
        assert spectrum.objective == pytest.approx(float(objective(spectrum.theta)), rel=1e-12)


def test_weight_decay_shifts_the_spectrum_at_a_fixed_theta(spectra):
    config = teaching.SpectrumConfig()
    data = teaching.spectrum_data(config.data_seed)
    model = teaching.spectrum_network(config.hidden, config.recipe.seed)
    torch.nn.utils.vector_to_parameters(spectra[0].theta, model.parameters())  # trained without weight decay
    base = torch.linalg.eigvalsh(teaching.dense_hessian(model, data.inputs, data.labels, 0.0))
    shares = []
    for wd in (0.0, 0.01, 0.1, 1.0):
        shifted = torch.linalg.eigvalsh(teaching.dense_hessian(model, data.inputs, data.labels, wd))
        torch.testing.assert_close(shifted, base + wd, atol=1e-10, rtol=0)
        shares.append(teaching.negative_share(shifted, config.negative_tolerance))
    assert shares == sorted(shares, reverse=True)
    assert shares[0] > 0  # a briefly trained network is not at a minimum: H has negative eigenvalues


def test_spectra_reject_bad_weight_decays():
    with pytest.raises(ValueError):
        teaching.hessian_spectra([])
    with pytest.raises(ValueError):
        teaching.hessian_spectra([-0.1])


# What each estimator's formula must state: the closed forms test_if_update_is_the_newton_step_of_the_retained_objective
# and test_selective_updates_match_their_closed_forms check numerically (Δ solves H·Δ ≈ +g; T selected, F frozen).
FORMULA_PARTS = {
    "if": [r"\Delta = H^{-1} g"],
    "pif": [r"\Delta_T = \left(H^{-1} g\right)_T", r"\Delta_F = 0"],
    "fif": [r"\Delta_T = H_{TT}^{-1}\, g_T", r"\Delta_F = 0"],
    "gif": [
        r"\arg\min_x \left\lVert H_{:,T}\, x - g \right\rVert^2",
        r"H_{:,T}^\top H_{:,T}\, \Delta_T = H_{:,T}^\top g",
    ],
    "sif": [r"I_1 = H_L^{-1} g", r"\Delta = I_1 + I_2", r"c = \tfrac{r}{1-r}"],
    "tracin": [r"\Delta = g"],
    "datainf": [r"\lambda_l + \lVert g_{il}\rVert^2"],
    "hyperinf": [r"\left(G_l + \lambda_l I\right)^{-1} V_l", r"X_{k+1} = X_k\left(2I - A X_k\right)"],
    "ekfac": [r"\mathrm{EKFAC}(G) + (\lambda + \delta) I"],
}


def test_explanations_cover_every_estimator():
    assert set(teaching.EXPLANATIONS) == set(METHODS) == set(FORMULA_PARTS)
    for method, explanation in teaching.EXPLANATIONS.items():
        assert f"({method.upper()}" in explanation.name  # "Generalized influence function (GIF, Lyu et al. 2023)"
        for part in FORMULA_PARTS[method]:
            assert part in explanation.formula, (method, part)
        # Only the selective estimators freeze F; IF and SIF move every parameter
        assert (r"\Delta_F = 0" in explanation.formula) == (method in ("pif", "fif", "gif")), method
        assert explanation.formula.count("{") == explanation.formula.count("}") and explanation.formula.count(
            r"\left"
        ) == explanation.formula.count(r"\right"), f"{method}: unbalanced LaTeX"
        assert len(explanation.idea.split()) >= 10 and len(explanation.sign.split()) >= 10  # sentences, not labels
    assert "every parameter moves" in teaching.EXPLANATIONS["if"].idea.lower()
    assert SCORE_FORMULA in teaching.EXPLANATIONS["if"].sign and SCORE_MEANING in teaching.EXPLANATIONS["if"].sign
    assert "r = m/n" in teaching.EXPLANATIONS["sif"].sign  # c = r/(1−r) = m/(n−m): the scale of g
    for part in ("θ + Δ", "g = m/(n−m) · mean of their gradients", "H·Δ ≈ +g"):
        assert part in teaching.SIGN_CONVENTION, part


def test_dense_hessian_beside_a_thread_of_hessian_products(mlp_data):
    """torch.func.hessian is forward-mode AD, whose levels torch keeps per process: beside the dashboard's background
    preparation (jvps in another thread) it failed until both held gif_core.curvature.FORWARD_MODE."""
    from concurrent.futures import ThreadPoolExecutor

    from gif_core.curvature import Curvature

    model, data = mlp_data
    curvature = Curvature(model, (data.inputs, data.labels))
    v = torch.randn(curvature.space.numel, dtype=torch.float64)
    expected = dense_hessian(model, data.inputs, data.labels, 0.0)
    with ThreadPoolExecutor(1) as pool:
        products = pool.submit(lambda: [curvature.hvp(v) for _ in range(40)])
        hessians = [teaching.dense_hessian(model, data.inputs, data.labels, 0.0) for _ in range(5)]
        products.result()
    assert all(torch.allclose(h, expected, atol=1e-8) for h in hessians)


def test_the_toys_newton_steps_beside_a_thread_of_hessian_products(mlp_data, toy):
    """The toy's fit ends with Newton steps on torch.func.hessian (forward mode): beside a background thread of
    Hessian-vector products it failed ("Nested forward mode AD is not supported") until it held FORWARD_MODE."""
    from concurrent.futures import ThreadPoolExecutor

    from gif_core.curvature import Curvature

    model, data = mlp_data
    curvature = Curvature(model, (data.inputs, data.labels))
    v = torch.randn(curvature.space.numel, dtype=torch.float64)
    with ThreadPoolExecutor(1) as pool:
        products = pool.submit(lambda: [curvature.hvp(v) for _ in range(40)])
        fits = [teaching.fit_toy(toy.data.inputs, toy.data.labels, 0.01) for _ in range(5)]
        products.result()
    assert all(torch.equal(theta, fits[0]) for theta in fits)
    assert torch.allclose(fits[0], toy.theta_star, atol=1e-9)
