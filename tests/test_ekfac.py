"""EK-FAC against independent truth: exact on a single Linear layer with one sample (its GGN is a Kronecker product,
and for a linear model the GGN of cross-entropy is the Hessian), and an approximation elsewhere that keeps IF's sign."""

import pytest
import torch
from conftest import blobs, dense_hessian, rel_err, tiny_convnet, tiny_mlp
from torch import nn

from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.ekfac import ekfac_inverse


def _vector(n: int) -> torch.Tensor:
    return torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


def test_ekfac_is_exact_on_one_linear_layer_with_one_sample():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    data = blobs(1)
    weight_decay, damping = 0.01, 0.1
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(weight_decay, damping=damping))
    v = _vector(curvature.space.numel)
    H = dense_hessian(model, data.inputs, data.labels, weight_decay) + damping * torch.eye(15, dtype=torch.float64)
    delta, report = ekfac_inverse(curvature, v)
    assert rel_err(delta, torch.linalg.solve(H, v)) < 1e-10
    assert report.modules == 1 and report.damping == pytest.approx(weight_decay + damping)


def test_ekfac_keeps_the_trace_of_the_ggn_on_many_samples():
    """EK-FAC's eigenvalues are the GGN's second moments in the Kronecker eigenbasis, so its trace is the GGN's: on a
    linear model with 40 samples the inverse, inverted back, has trace tr(∇²CE) + p·(λ + δ) — the scale of the mean
    loss, not of the sum."""
    torch.manual_seed(1)
    model = nn.Linear(4, 3).double()
    data = blobs(40)
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(0.01, damping=0.1))
    p = curvature.space.numel
    columns = torch.stack([ekfac_inverse(curvature, e)[0] for e in torch.eye(p, dtype=torch.float64)], dim=1)
    ggn = dense_hessian(model, data.inputs, data.labels, 0.0)
    assert float(torch.trace(torch.linalg.inv(columns))) == pytest.approx(float(torch.trace(ggn)) + p * 0.11, rel=1e-9)


@pytest.mark.parametrize(("make", "image"), [(tiny_mlp, False), (tiny_convnet, True)])
def test_ekfac_on_deeper_models_is_a_positive_definite_inverse_close_to_the_ggn(make, image):
    """Not exact beyond one layer and one sample: gᵀΔ > 0 (a positive definite inverse), and Δ nearer the exactly
    damped H⁻¹g's direction than g itself is."""
    model, data = make(), blobs(40, image=image)
    config = CurvatureConfig(0.01, damping=0.1)
    curvature = Curvature(model, (data.inputs, data.labels), config)
    v = _vector(curvature.space.numel)
    delta, _ = ekfac_inverse(curvature, v)
    exact = torch.linalg.solve(
        dense_hessian(model, data.inputs, data.labels, 0.01) + 0.1 * torch.eye(len(v), dtype=torch.float64), v
    )
    cosine = torch.nn.functional.cosine_similarity
    assert float(v @ delta) > 0 and cosine(delta, exact, dim=0) > cosine(v, exact, dim=0)


def test_ekfac_refuses_models_it_cannot_factor_and_a_zero_damping():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)).double()
    data = blobs(10)
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(0.01))
    with pytest.raises(ValueError, match=r"Linear and Conv2d modules only.*1\.weight"):
        ekfac_inverse(curvature, _vector(curvature.space.numel))
    plain = Curvature(tiny_mlp(), (data.inputs, data.labels), CurvatureConfig(0.0))
    with pytest.raises(ValueError, match="needs λ \\+ δ > 0"):
        ekfac_inverse(plain, _vector(plain.space.numel))
