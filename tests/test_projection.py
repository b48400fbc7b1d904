"""TRAK-style scores: with k = p the projection cancels and the scores (÷ 1 − p_z) equal TRAK's formula on margin
gradients taken by autograd (the identity ∇f = −∇ℓ/(1 − p_y) is not assumed); a duplicated training sample is its own copy's most
helpful sample; impossible inputs are refused."""

import pytest
import torch
from conftest import blobs, rel_err
from conftest import fit_logreg as _fit_logreg
from torch import nn
from torch.nn import functional as F

from gif_core.projection import TrakConfig, trak_kernel, true_class_complement


def _rows(model, inputs, labels, value):
    """One gradient row per sample of value(logits [1, K], label [1]) with respect to the model's parameters."""
    rows = []
    for x, y in zip(inputs, labels, strict=True):
        model.zero_grad()
        value(model(x[None]), y[None]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
    return torch.stack(rows)


def _margin(logits, label):
    log_p = F.log_softmax(logits, dim=1)[0, label[0]]
    return log_p - torch.log1p(-log_p.exp())


class _AnchoredLogreg(nn.Module):
    """Multinomial logistic regression with class 0's logit fixed at 0: softmax logits are defined up to a common
    shift, so a full last layer leaves the margin gradients a null direction per input feature and their Gram
    matrix singular; anchoring one class removes it."""

    def __init__(self, n_in: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_classes - 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        return torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1)


def _logreg():
    data = blobs(n=90, n_in=3, n_classes=3, seed=5)
    return _fit_logreg(data.inputs, data.labels, weight_decay=0.1, init=_AnchoredLogreg(3, 3)), data


def test_full_dimension_trak_equals_the_formula_on_autograd_margin_gradients():
    model, data = _logreg()
    losses = _rows(model, data.inputs, data.labels, F.cross_entropy)
    margins = _rows(model, data.inputs, data.labels, _margin)
    complement = true_class_complement(model, data.inputs, data.labels)
    with torch.no_grad():
        probability = F.softmax(model(data.inputs), dim=1)[torch.arange(len(data.labels)), data.labels]
    assert rel_err(complement, 1 - probability) < 1e-6
    p = losses.shape[1]
    kernel = trak_kernel(losses, complement, TrakConfig(dim=p, ridge=0.0))

    test_x, test_y = data.inputs[:3] + 0.2, data.labels[:3]
    test_losses = _rows(model, test_x, test_y, F.cross_entropy)
    test_margins = _rows(model, test_x, test_y, _margin)
    test_complement = true_class_complement(model, test_x, test_y)  # TRAK's τ = score / (1 − p_z)
    gram = margins.T @ margins
    for row in range(3):
        expected = margins @ torch.linalg.solve(gram, test_margins[row]) * complement
        got = kernel.scores(test_losses[row]) / test_complement[row]
        assert rel_err(got.double(), expected) < 1e-3

    decay = 0.1 * torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # the λθ of regularised gradients
    regularised = trak_kernel(losses + decay, complement, TrakConfig(dim=p, ridge=0.0), shared=decay)
    assert rel_err(regularised.features.double(), kernel.features.double()) < 1e-5


def test_a_training_sample_is_the_most_helpful_for_its_own_copy():
    model, data = _logreg()
    losses = _rows(model, data.inputs, data.labels, F.cross_entropy)
    complement = true_class_complement(model, data.inputs, data.labels)
    kernel = trak_kernel(losses, complement, TrakConfig(dim=8, seed=1))
    # the least-fit training samples: their gradients are large, so a copy of one leans on it most
    for row in torch.argsort(complement, descending=True)[:3].tolist():
        scores = kernel.scores(losses[row])
        assert int(scores.argmax()) == row and float(scores[row]) > 0


def test_impossible_inputs_are_refused():
    model, data = _logreg()
    losses = _rows(model, data.inputs, data.labels, F.cross_entropy)
    complement = true_class_complement(model, data.inputs, data.labels)
    with pytest.raises(ValueError, match="one per training sample"):
        trak_kernel(losses, complement[:-1])
    with pytest.raises(ValueError, match="infinite"):
        trak_kernel(losses, torch.zeros_like(complement))
    with pytest.raises(ValueError, match="at least 1"):
        TrakConfig(dim=0)
