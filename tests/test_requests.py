"""Requests build the g of DESIGN.md (checked against a hand computation) and reject bad input clearly."""

from types import SimpleNamespace

import pytest
import torch
from conftest import blobs, rel_err, tiny_mlp
from torch.nn import functional as F

from gif_core.curvature import CurvatureConfig
from gif_core.problem import ProblemConfig, prepare
from gif_core.requests import ClassRemoval, LabelChange, SampleRemoval, backdoor_relabel

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


def test_each_kind_states_its_data_edit_once():
    """The rows, the mask, the edited labels and the edited set, checked against what each question means."""
    labels = torch.tensor([0, 1, 2, 1, 0, 1])
    train = SimpleNamespace(labels=labels)  # edit() reads labels only
    removal = ClassRemoval(1).edit(train.labels, 3)
    assert removal.rows.tolist() == [1, 3, 5] and removal.in_u.tolist() == [False, True, False, True, False, True]
    assert removal.retain_rows.tolist() == removal.edited_rows.tolist() == [0, 2, 4]
    assert not removal.relabels and removal.labels is labels
    samples = SampleRemoval([4, 0]).edit(labels, 3)
    assert samples.rows.tolist() == [0, 4] and samples.edited_rows.tolist() == [1, 2, 3, 5]
    change = LabelChange([5, 2], [0, 1]).edit(labels, 3)
    assert change.relabels and change.rows.tolist() == [5, 2] and change.new_labels.tolist() == [0, 1]
    assert change.labels.tolist() == [0, 1, 1, 1, 0, 0] and labels.tolist() == [0, 1, 2, 1, 0, 1]  # a copy
    assert change.edited_rows.tolist() == [0, 1, 2, 3, 4, 5] and change.retain_rows.tolist() == [0, 1, 3, 4]


def test_each_kind_states_its_validation_objective():
    """Hand-computed values (accuracies in percent): a class removal scores F1(forget 20, retain 80) =
    2·0.8·0.8/1.6 = 80; a sample removal 80 − |70 − 80| = 70; a label change the harmonic mean 2·60·90/150 = 72."""
    assert ClassRemoval(0).objective(val_acc=80.0, target_acc=20.0) == pytest.approx(80.0)
    assert SampleRemoval([1]).objective(val_acc=80.0, target_acc=70.0) == pytest.approx(70.0)
    assert LabelChange([1], [0]).objective(val_acc=90.0, target_acc=60.0) == pytest.approx(72.0)
    assert LabelChange([1], [0]).objective(val_acc=0.0, target_acc=0.0) == 0.0
    assert ClassRemoval(3).held_out_class == 3 and SampleRemoval([1]).held_out_class is None
    assert ClassRemoval(3).question(("a", "b", "c", "d")) == "remove class d"
    assert LabelChange([1, 2], [0, 0]).question(()) == "change 2 labels"
    assert SampleRemoval([1]).question(()) == "remove 1 training sample"
