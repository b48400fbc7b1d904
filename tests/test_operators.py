"""The Hessian operator and its restrictions, transposes and scipy form, against the dense Hessian of a tiny model."""

import numpy as np
import pytest
import torch
from conftest import blobs, dense_hessian, rel_err, tiny_mlp

from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.operators import Counted, DenseMatrix, HessianOperator, Normal

WD = 0.01


@pytest.fixture(scope="module")
def truth():
    model, data = tiny_mlp(), blobs(n=40)
    curvature = Curvature(model, (data.inputs, data.labels), CurvatureConfig(weight_decay=WD, dtype=torch.float64))
    return HessianOperator(curvature), dense_hessian(model, data.inputs, data.labels, WD)


def test_products_restrictions_and_transposes_match_the_dense_hessian(truth):
    H, dense = truth
    p = dense.shape[0]
    generator = torch.Generator().manual_seed(0)
    rows, cols = torch.randperm(p, generator=generator)[:7], torch.randperm(p, generator=generator)[:5]
    v = torch.randn(p, dtype=torch.float64, generator=generator)
    assert H.shape == (p, p) and rel_err(H @ v, dense @ v) < 1e-10 and H.T is H
    block = H.restrict(rows, cols)
    x, y = torch.randn(5, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    assert block.shape == (7, 5)
    assert rel_err(block @ x, dense[rows][:, cols] @ x) < 1e-10
    assert rel_err(block.rmatvec(y), dense[rows][:, cols].T @ y) < 1e-10
    assert rel_err(block.T @ y, dense[cols][:, rows] @ y) < 1e-10 and block.T.T is block
    assert rel_err(H.restrict(cols=cols) @ x, dense[:, cols] @ x) < 1e-10  # GIF's H[:, T]
    assert rel_err(H.restrict(rows=rows) @ v, dense[rows] @ v) < 1e-10  # H[T, :]


def test_scipy_form_normal_operator_and_counting(truth):
    H, dense = truth
    cols = torch.arange(0, dense.shape[0], 3)
    counted = Counted(H.restrict(cols=cols))
    scipy_form = counted.to_scipy()
    x = np.random.default_rng(0).standard_normal(len(cols))
    expected = (dense[:, cols] @ torch.from_numpy(x)).numpy()
    assert scipy_form.shape == (dense.shape[0], len(cols)) and scipy_form.dtype == np.float64
    assert np.allclose(scipy_form.matvec(x), expected, rtol=1e-10, atol=1e-12)
    assert np.allclose(scipy_form.rmatvec(expected), (dense[:, cols].T @ torch.from_numpy(expected)).numpy())
    assert counted.calls == 2  # one Hessian-vector product each way
    normal = Normal(DenseMatrix(dense[:, cols]), damping=0.5)
    xt = torch.from_numpy(x)
    assert rel_err(normal @ xt, dense[:, cols].T @ dense[:, cols] @ xt + 0.5 * xt) < 1e-12
