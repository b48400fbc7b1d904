"""DataInf and HyperINF against independent truth: per-sample gradients taken one sample at a time with autograd,
the layers' inverses with torch.linalg, and the Sherman–Morrison identity on a rank-one Fisher."""

import pytest
import torch
from conftest import blobs, rel_err, tiny_convnet, tiny_mlp
from torch.nn import functional as F

from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.layerwise import LayerwiseConfig, datainf_inverse, hyperinf_inverse, layer_groups, schulz_inverse
from gif_core.params import ParamSpace


def _per_sample_gradients(model, inputs, labels) -> torch.Tensor:
    """[n, p]: ∇ CE(model(x_i), y_i) one sample at a time (no weight decay), in named_parameters() order."""
    rows = []
    for x, y in zip(inputs, labels, strict=True):
        loss = F.cross_entropy(model(x.unsqueeze(0)), y.unsqueeze(0))
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
    return torch.stack(rows)


def _setting(make, image, n):
    model, data = make(), blobs(n, image=image)
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(weight_decay=0.01, batch_size=7))
    v = torch.randn(curvature.space.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return model, data, curvature, v


@pytest.mark.parametrize(("make", "image"), [(tiny_mlp, False), (tiny_convnet, True)])
def test_layer_groups_cover_every_parameter_once_neuron_by_neuron(make, image):
    space = ParamSpace.from_model(make())
    groups = layer_groups(space)
    flat = torch.cat([g.flat for g in groups]).sort().values
    assert torch.equal(flat, torch.arange(space.numel))
    for group, layer in zip(groups, space.layers, strict=True):  # row j: neuron j's fan-in, then its bias
        assert group.index.shape == (layer.n_neurons, layer.neuron_size)
        assert torch.equal(group.index[1].sort().values, layer.neuron_indices(torch.tensor([1])).sort().values)


@pytest.mark.parametrize(("make", "image"), [(tiny_mlp, False), (tiny_convnet, True)])
def test_datainf_is_the_mean_of_exact_rank_one_inverses(make, image):
    """(1/n) Σ_i (g_il g_ilᵀ + λ_l I)⁻¹ v_l per layer, each inverse by torch.linalg.solve; λ_l = 0.1·mean ‖g_il‖²/d_l.
    With one sample it is the exact inverse of the damped rank-one Fisher (Sherman–Morrison)."""
    for n in (1, 13):
        model, data, curvature, v = _setting(make, image, n)
        grads = _per_sample_gradients(model, data.inputs, data.labels)
        expected = torch.zeros_like(v)
        for group in layer_groups(curvature.space):
            g, d = grads[:, group.flat], group.flat.numel()
            lam = 0.1 * g.square().sum() / (n * d)
            inverses = [
                torch.linalg.solve(torch.outer(gi, gi) + lam * torch.eye(d, dtype=g.dtype), v[group.flat]) for gi in g
            ]
            expected[group.flat] = torch.stack(inverses).mean(0)
        delta, report = datainf_inverse(curvature, v)
        assert rel_err(delta, expected) < 1e-10, n
        assert report.gradient_passes == 2 and report.layers == len(curvature.space.layers)


@pytest.mark.parametrize(("make", "image"), [(tiny_mlp, False), (tiny_convnet, True)])
def test_hyperinf_is_the_damped_gfim_inverse_per_layer(make, image):
    model, data, curvature, v = _setting(make, image, 20)
    grads = _per_sample_gradients(model, data.inputs, data.labels)
    expected = torch.zeros_like(v)
    for group in layer_groups(curvature.space):
        matrices = grads[:, group.index]  # [n, out, fan_in + 1]
        gfim = sum(m @ m.T for m in matrices) / (len(matrices) * matrices.shape[2])  # trace of the Fisher block
        lam = 0.1 * torch.trace(gfim) / gfim.shape[0]
        damped = gfim + lam * torch.eye(gfim.shape[0], dtype=gfim.dtype)
        expected[group.flat] = torch.linalg.solve(damped, v[group.index]).reshape(-1)
    delta, report = hyperinf_inverse(curvature, v)
    assert rel_err(delta, expected) < 1e-7 and report.residual <= LayerwiseConfig().schulz_tolerance


def test_schulz_iteration_inverts_any_non_singular_matrix():
    generator = torch.Generator().manual_seed(0)
    for matrix in (
        (lambda q: q @ torch.diag(torch.logspace(-3, 2, 12, dtype=torch.float64)) @ q.T)(
            torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64, generator=generator))[0]
        ),
        torch.randn(9, 9, dtype=torch.float64, generator=generator) + 3 * torch.eye(9, dtype=torch.float64),
    ):
        inverse, residual, iterations = schulz_inverse(matrix, 200, 1e-10)
        assert rel_err(inverse, torch.linalg.inv(matrix)) < 1e-8 and residual <= 1e-10 and iterations > 0


def test_schulz_reports_its_residual_when_stopped_early():
    matrix = torch.diag(torch.logspace(-4, 0, 10, dtype=torch.float64))
    _, residual, iterations = schulz_inverse(matrix, 3, 1e-12)
    assert iterations == 3 and residual > 1e-12


def test_a_layer_without_gradient_is_a_clear_error():
    model, data, curvature, v = _setting(tiny_mlp, False, 5)
    with torch.no_grad():
        model[2].weight.zero_()  # the hidden layer's gradients vanish with the weights after it
        model[2].bias.zero_()
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(weight_decay=0.01))
    with pytest.raises(ValueError, match="non-zero gradient in every layer"):
        datainf_inverse(curvature, v)
    with pytest.raises(ValueError, match="non-zero gradient in every layer"):
        hyperinf_inverse(curvature, v)
