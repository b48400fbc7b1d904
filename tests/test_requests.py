"""Requests build the g of DESIGN.md (checked against a hand computation) and reject bad input clearly."""

from types import SimpleNamespace

import pytest
import torch
from conftest import blobs, rel_err, tiny_mlp
from torch.nn import functional as F

from gif_core.curvature import CurvatureConfig
from gif_core.requests import (
    ClassRemoval,
    LabelChange,
    ProblemConfig,
    SampleRemoval,
    backdoor_relabel,
    prepare,
)

WD = 0.02


def _sample_gradient(model, x, y):
    """∇ of one sample's loss CE + (λ/2)|θ|², by plain autograd on the model itself."""
    model.zero_grad()
    theta = torch.cat([p.reshape(-1) for p in model.parameters()])
    (F.cross_entropy(model(x[None]), y[None]) + 0.5 * WD * theta.square().sum()).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()


@pytest.fixture
def setup():
    model, data = tiny_mlp(), blobs()
    return model, data, ProblemConfig(curvature=CurvatureConfig(weight_decay=WD))


def test_sample_removal_g_by_hand(setup):
    model, data, config = setup
    rows = [4, 11, 12]
    problem = prepare(model, data, SampleRemoval(rows), 3, config)
    n, m = len(data.labels), len(rows)
    by_hand = sum(_sample_gradient(model, data.inputs[i], data.labels[i]) for i in rows) / m * (m / (n - m))
    assert rel_err(problem.g, by_hand) < 1e-10
    assert problem.scale == m / (n - m) and problem.m == m and len(problem.retain_rows) == n - m


def test_class_removal_selects_the_class(setup):
    model, data, config = setup
    problem = prepare(model, data, ClassRemoval(1), 3, config)
    assert torch.equal(problem.forget_rows, torch.nonzero(data.labels == 1).reshape(-1))
    assert (data.labels[problem.retain_rows] != 1).all()


def test_label_change_g_by_hand(setup):
    model, data, config = setup
    rows, new = [0, 5], [2, 0]
    problem = prepare(model, data, LabelChange(rows, new), 3, config)
    n = len(data.labels)
    by_hand = (
        sum(
            _sample_gradient(model, data.inputs[i], data.labels[i])
            - _sample_gradient(model, data.inputs[i], torch.tensor(y))
            for i, y in zip(rows, new, strict=True)
        )
        / n
    )
    assert rel_err(problem.g, by_hand) < 1e-10 and problem.scale == 1.0


def test_newton_label_change_g_is_minus_the_relabelled_gradient(setup):
    model, data, config = setup
    rows, new = [0, 5], [2, 0]
    newton = ProblemConfig(curvature=config.curvature, gradient="newton")
    problem = prepare(model, data, LabelChange(rows, new), 3, newton)
    labels = data.labels.clone()
    labels[rows] = torch.tensor(new)
    by_hand = -sum(_sample_gradient(model, data.inputs[i], labels[i]) for i in range(len(labels))) / len(labels)
    assert rel_err(problem.g, by_hand) < 1e-10
    first_order = prepare(model, data, LabelChange(rows, new), 3, config)
    assert rel_err(problem.g, first_order.g) > 1e-3  # the tiny model is not at a stationary point: they differ


def test_backdoor_relabel_is_a_label_change_back_to_true_labels(setup):
    model, data, config = setup
    poisoned = SimpleNamespace(inputs=data.inputs, labels=data.labels.clone())
    rows = torch.tensor([3, 6, 9])  # labels 0, 0, 0 in the blobs; the attacker relabelled them to class 2
    true = poisoned.labels[rows].clone()
    poisoned.labels[rows] = 2
    request = backdoor_relabel(rows, true)
    assert request == LabelChange([3, 6, 9], [0, 0, 0])
    problem = prepare(model, poisoned, request, 3, config)
    n = len(data.labels)
    by_hand = (
        sum(
            _sample_gradient(model, data.inputs[i], torch.tensor(2))
            - _sample_gradient(model, data.inputs[i], data.labels[i])
            for i in rows.tolist()
        )
        / n
    )
    assert rel_err(problem.g, by_hand) < 1e-10


def test_hessian_sample_is_seeded_subset_of_retained(setup):
    model, data, _ = setup
    a = prepare(model, data, SampleRemoval([0]), 3, ProblemConfig(hessian_samples=20, seed=1))
    b = prepare(model, data, SampleRemoval([0]), 3, ProblemConfig(hessian_samples=20, seed=1))
    c = prepare(model, data, SampleRemoval([0]), 3, ProblemConfig(hessian_samples=20, seed=2))
    v = torch.randn(a.space.numel, dtype=torch.float64)
    assert a.hessian.n_samples == 20
    assert torch.equal(a.hessian.hvp(v), b.hessian.hvp(v)) and not torch.equal(a.hessian.hvp(v), c.hessian.hvp(v))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ClassRemoval(7), "Unknown class 7"),
        (SampleRemoval([]), "No training samples"),
        (SampleRemoval([0, 60]), "out of range"),
        (SampleRemoval([-1]), "out of range"),
        (SampleRemoval([1, 1]), "repeat"),
        (SampleRemoval(list(range(60))), "every training sample"),
        (LabelChange([0], [0]), "already has label 0"),
        (LabelChange([0], [5]), "not a class"),
    ],
)
def test_invalid_requests_raise_clear_errors(setup, request_, message):
    model, data, config = setup
    with pytest.raises(ValueError, match=message):
        prepare(model, data, request_, 3, config)


def test_invalid_construction():
    with pytest.raises(ValueError, match="one new label per index"):
        LabelChange([1, 2], [0])
    with pytest.raises(ValueError, match="list of integers"):
        SampleRemoval(["a"])
    with pytest.raises(ValueError, match="gradient must be"):
        ProblemConfig(gradient="exact")
    with pytest.raises(ValueError, match="hessian_data"):
        ProblemConfig(hessian_data="test")
    with pytest.raises(ValueError, match="No poisoned samples"):
        backdoor_relabel([], [])


def test_class_with_every_sample_cannot_be_removed():
    data = SimpleNamespace(inputs=torch.randn(4, 4, dtype=torch.float64), labels=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="every training sample"):
        prepare(tiny_mlp(), data, ClassRemoval(0), 3)
