import pytest
import torch
from conftest import dense_gradient, dense_hessian, rel_err
from torch.utils.data import DataLoader, TensorDataset

from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.params import state_hash


@pytest.mark.parametrize("fixture", ["mlp_data", "conv_data"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("linearize", [False, True])
def test_hvp_matches_dense_hessian(request, fixture, weight_decay, linearize):
    model, data = request.getfixturevalue(fixture)
    before = state_hash(model)
    config = CurvatureConfig(weight_decay, batch_size=7, linearize=linearize)
    curvature = Curvature(model, (data.inputs, data.labels), config)
    assert curvature.linearizes == linearize
    H = dense_hessian(model, data.inputs, data.labels, weight_decay)
    for seed in range(3):
        v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        assert rel_err(curvature.hvp(v), H @ v) < 1e-5
    assert state_hash(model) == before


def test_linearized_products_equal_plain_ones_and_trace_once(conv_data):
    model, data = conv_data
    sample = (data.inputs, data.labels)
    plain = Curvature(model, sample, CurvatureConfig(0.01, damping=0.1, batch_size=16))
    traced = Curvature(model, sample, CurvatureConfig(0.01, damping=0.1, batch_size=16, linearize=True)).warm()
    maps = traced._linearized
    assert len(maps) == -(-len(data.labels) // 16)
    for seed in range(3):
        v = torch.randn(plain.space.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        assert rel_err(traced.hvp(v), plain.hvp(v)) < 1e-12
    assert traced._linearized is maps  # traced once, reused by every product


@pytest.mark.parametrize("linearize", [False, True])
def test_products_in_two_threads_at_once_are_right(conv_data, linearize):
    """torch's forward-mode AD levels are per process: unguarded jvps in two threads fail (a dashboard session and
    its background preparation, or two sessions)."""
    from concurrent.futures import ThreadPoolExecutor

    model, data = conv_data
    config = CurvatureConfig(0.01, batch_size=8, linearize=linearize)
    curvatures = [Curvature(model, (data.inputs, data.labels), config) for _ in range(2)]
    v = torch.randn(curvatures[0].space.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = Curvature(model, (data.inputs, data.labels), CurvatureConfig(0.01, batch_size=8)).hvp(v)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: [c.hvp(v) for _ in range(10)], curvatures))
    assert all(rel_err(r, expected) < 1e-10 for products in results for r in products)


def test_linearize_is_ignored_where_it_cannot_apply(mlp_data):
    model, data = mlp_data
    loader = DataLoader(TensorDataset(data.inputs, data.labels), batch_size=8)
    assert not Curvature(model, loader, CurvatureConfig(linearize=True)).linearizes
    assert not Curvature(
        model, (data.inputs, data.labels), CurvatureConfig(gauss_newton=True, linearize=True)
    ).linearizes


def test_damping_adds_multiple_of_identity(mlp_data):
    model, data = mlp_data
    plain = Curvature(model, (data.inputs, data.labels))
    damped = Curvature(model, (data.inputs, data.labels), CurvatureConfig(damping=0.3))
    v = torch.randn(plain.space.numel, dtype=torch.float64)
    assert rel_err(damped.hvp(v), plain.hvp(v) + 0.3 * v) < 1e-12


def test_gradient_matches_dense_and_includes_weight_decay(conv_data):
    model, data = conv_data
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(weight_decay=0.05, batch_size=16))
    assert (
        rel_err(curvature.gradient(data.inputs, data.labels), dense_gradient(model, data.inputs, data.labels, 0.05))
        < 1e-10
    )
    no_reg = curvature.gradient(data.inputs, data.labels, regulariser=False)
    assert rel_err(no_reg, dense_gradient(model, data.inputs, data.labels, 0.0)) < 1e-10


def test_per_sample_gradients_average_to_the_mean_gradient(mlp_data):
    model, data = mlp_data
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(weight_decay=0.01, batch_size=16))
    per_sample = torch.cat(list(curvature.per_sample_gradients(data.inputs, data.labels)))
    assert per_sample.shape == (len(data.labels), curvature.space.numel)
    assert rel_err(per_sample.mean(0), curvature.gradient(data.inputs, data.labels)) < 1e-12
    one = dense_gradient(model, data.inputs[3:4], data.labels[3:4], 0.01)
    assert rel_err(per_sample[3], one) < 1e-10


def test_gauss_newton_matches_dense_ggn(mlp_data):
    model, data = mlp_data
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(gauss_newton=True, batch_size=9))
    theta = curvature.theta
    space = curvature.space

    def logits(flat):
        return torch.func.functional_call(model, space.unflatten(flat), (data.inputs,))

    J = torch.autograd.functional.jacobian(logits, theta)  # [N, K, p]
    probs = torch.softmax(logits(theta), -1)
    h_out = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    ggn = torch.einsum("nkp,nkl,nlq->pq", J, h_out, J) / len(data.labels)
    assert torch.linalg.eigvalsh(ggn).min() > -1e-10
    v = torch.randn(space.numel, dtype=torch.float64)
    assert rel_err(curvature.hvp(v), ggn @ v) < 1e-8


def test_dataloader_sample_equals_tensor_sample(mlp_data):
    model, data = mlp_data
    loader = DataLoader(TensorDataset(data.inputs, data.labels), batch_size=11)
    from_loader = Curvature(model, loader)
    from_tensors = Curvature(model, (data.inputs, data.labels))
    assert from_loader.n_samples == len(data.labels)
    v = torch.randn(from_tensors.space.numel, dtype=torch.float64)
    assert rel_err(from_loader.hvp(v), from_tensors.hvp(v)) < 1e-12


def test_non_finite_values_raise(mlp_data):
    model, data = mlp_data
    inputs = data.inputs.clone()
    inputs[0, 0] = float("nan")
    curvature = Curvature(model, (inputs, data.labels))
    with pytest.raises(FloatingPointError, match="NaN"):
        curvature.hvp(torch.ones(curvature.space.numel, dtype=torch.float64))


def test_invalid_configuration_and_empty_sample(mlp_data):
    model, data = mlp_data
    with pytest.raises(ValueError, match=r"damping must be a finite number in \[0, 1e\+06\], got -1"):
        CurvatureConfig(damping=-1)
    with pytest.raises(ValueError, match="empty"):
        Curvature(model, (data.inputs[:0], data.labels[:0]))


def test_eval_mode_and_caller_mode_untouched():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).double()
    model.train()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    before = state_hash(model)
    Curvature(model, (x, y)).hvp(torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64))
    assert model.training and state_hash(model) == before  # running stats untouched: eval-mode evaluation
