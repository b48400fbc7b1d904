"""Tests of gif_core.evaluate against hand computations on tiny arrays."""

import hashlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from gif_core.evaluate import (
    BackdoorMetrics,
    accuracy,
    agreement,
    attack_success_rate,
    avg_gap,
    backdoor_metrics,
    compare_to_retrained,
    confusion_matrix,
    forget_f1,
    mean_kl,
    mia_efficacy,
    per_class_accuracy,
    predict_proba,
)


def one_hot_inputs(preds: list[int], k: int = 3) -> torch.Tensor:
    """Inputs [N, 1, 1, k] that an identity model (nn.Flatten) predicts as ``preds``."""
    return torch.eye(k)[preds].reshape(len(preds), 1, 1, k)


# ---------------------------------------------------------------- accuracies


def test_accuracy_from_probs_and_preds():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])  # argmax 0, 1, 0, 1
    labels = torch.tensor([0, 0, 0, 1])
    assert accuracy(probs, labels) == 75.0
    assert accuracy(np.array([0, 1, 0, 1]), labels.numpy()) == 75.0
    assert accuracy(torch.tensor([1, 1, 1, 0]), labels) == 0.0


def test_per_class_accuracy_and_confusion_matrix():
    preds = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 0, 1, 2, 2, 1])
    per_class = per_class_accuracy(preds, labels, num_classes=4)
    np.testing.assert_array_equal(per_class[:3], [50.0, 50.0, 100.0])
    assert np.isnan(per_class[3])  # class 3 has no sample
    expected = [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(confusion_matrix(preds, labels, num_classes=4), expected)


def test_accuracy_input_errors():
    with pytest.raises(ValueError, match="rows"):
        accuracy(torch.tensor([0, 1]), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="integer predictions"):
        accuracy(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 2]), num_classes=2)
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64))


def test_forget_f1_hand_values_and_edges():
    assert forget_f1(0.0, 100.0) == 100.0  # forgot everything, kept everything
    assert forget_f1(50.0, 50.0) == pytest.approx(50.0)  # 2·0.5·0.5 / 1.0
    assert forget_f1(20.0, 60.0) == pytest.approx(100 * 2 * 0.8 * 0.6 / 1.4)  # 68.571…
    assert forget_f1(100.0, 100.0) == 0.0  # nothing forgotten
    assert forget_f1(0.0, 0.0) == 0.0  # nothing kept
    assert forget_f1(100.0, 0.0) == 0.0  # both terms 0: defined as 0, no ZeroDivisionError
    with pytest.raises(ValueError, match="percentage"):
        forget_f1(0.5, 150.0)


# ---------------------------------------------------------------- against the retrained model


def test_agreement():
    a = torch.tensor([0, 1, 2, 1])
    b = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.0, 0.1, 0.9], [0.5, 0.3, 0.2]])  # argmax 0, 2, 2, 0
    assert agreement(a, b) == 50.0
    assert agreement(b, b) == 100.0


def test_mean_kl_identical_is_zero_and_two_class_hand_case():
    p = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
    assert mean_kl(p, p) == pytest.approx(0.0, abs=1e-12)
    p_r = np.array([[0.5, 0.5], [1.0, 0.0]])
    p_e = np.array([[0.25, 0.75], [0.5, 0.5]])
    # row 1: 0.5·ln(0.5/0.25) + 0.5·ln(0.5/0.75) = 0.5·ln(4/3); row 2: 1·ln(1/0.5) + 0 = ln 2
    assert mean_kl(p_r, p_e) == pytest.approx((0.5 * math.log(4 / 3) + math.log(2)) / 2)
    # KL is not symmetric: reversing the arguments changes the value
    assert mean_kl(p_e, p_r) != pytest.approx(mean_kl(p_r, p_e))


def test_mean_kl_clamps_zero_edited_probability():
    p_r, p_e = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    assert mean_kl(p_r, p_e, eps=1e-6) == pytest.approx(6 * math.log(10))  # 1·(ln 1 − ln 1e-6)
    with pytest.raises(ValueError, match="same shape"):
        mean_kl(p_r, np.ones((1, 3)) / 3)


def test_compare_to_retrained():
    p_edited = np.array([[0.25, 0.75], [0.5, 0.5]])  # argmax 1, 0
    p_retrained = np.array([[0.5, 0.5], [1.0, 0.0]])  # argmax 0, 0
    result = compare_to_retrained(p_edited, p_retrained)
    assert result == {"agreement": 50.0, "kl": pytest.approx((0.5 * math.log(4 / 3) + math.log(2)) / 2)}


def test_avg_gap():
    edited = {"forget_acc": 10.0, "retain_acc": 90.0, "test_acc": 85.0, "mia": 70.0, "f1": 3.0}
    retrained = {"forget_acc": 0.0, "retain_acc": 95.0, "test_acc": 86.0, "mia": 80.0}
    assert avg_gap(edited, retrained) == pytest.approx((10 + 5 + 1 + 10) / 4)
    assert avg_gap(edited, retrained, keys=("forget_acc", "not_there")) == 10.0
    with pytest.raises(ValueError, match="no key"):
        avg_gap({"f1": 1.0}, {"f1": 2.0})


def confidences_to_probs(conf: np.ndarray, labels: np.ndarray, k: int = 3) -> np.ndarray:
    """[N, k] probabilities giving ``conf`` to the true label and the rest to the next class."""
    probs = np.zeros((len(conf), k))
    probs[np.arange(len(conf)), labels] = conf
    probs[np.arange(len(conf)), (labels + 1) % k] = 1 - conf
    return probs


def test_mia_efficacy_separates_member_like_from_test_like_forget_sets():
    rng = np.random.default_rng(0)
    y_retain, y_test, y_forget = rng.integers(0, 3, 60), rng.integers(0, 3, 40), rng.integers(0, 3, 20)
    p_retain = confidences_to_probs(rng.uniform(0.9, 1.0, 60), y_retain)  # members: confident
    p_test = confidences_to_probs(rng.uniform(0.2, 0.5, 40), y_test)  # non-members: unsure
    forget_like_test = confidences_to_probs(rng.uniform(0.25, 0.45, 20), y_forget)
    forget_like_retain = confidences_to_probs(rng.uniform(0.92, 0.98, 20), y_forget)
    args = (p_retain, y_retain, p_test, y_test)
    assert mia_efficacy(*args, forget_like_test, y_forget) == 100.0
    assert mia_efficacy(*args, forget_like_retain, y_forget) == 0.0
    # the feature is the TRUE label's probability, not the top one: confidently wrong = non-member
    wrong_labels = (y_forget + 1) % 3
    assert mia_efficacy(*args, forget_like_retain, wrong_labels) == 100.0
    # half the forget samples look like members, half like test samples
    half = np.concatenate([forget_like_test[:10], forget_like_retain[10:]])
    assert mia_efficacy(*args, half, y_forget, seed=1) == 50.0


# ---------------------------------------------------------------- predictions and model-based metrics


def state_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def small_model() -> nn.Sequential:
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(2))
        linear.bias.zero_()
    # BatchNorm updates its running statistics and Dropout is random if run in training mode
    return nn.Sequential(nn.Flatten(), linear, nn.BatchNorm1d(2), nn.Dropout(0.5))


def test_predict_proba_values_and_does_not_modify_model():
    model = small_model()
    model.train()
    model[3].eval()  # mixed modes must come back exactly as they were
    modes = [m.training for m in model.modules()]
    before = state_hash(model)
    inputs = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0], [math.log(4.0), 0.0]]).reshape(3, 1, 1, 2)
    probs = predict_proba(model, inputs, batch_size=2)
    # eval BatchNorm with fresh statistics divides by sqrt(1 + 1e-5); softmax of (0, ln 3) = (1/4, 3/4)
    expected = torch.tensor([[0.25, 0.75], [0.5, 0.5], [0.8, 0.2]])
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    assert probs.dtype == torch.float32 and not probs.requires_grad
    assert state_hash(model) == before
    assert [m.training for m in model.modules()] == modes
    torch.testing.assert_close(predict_proba(model, inputs, batch_size=1024), probs)


class _NeedsNCHW(nn.Module):
    """A conv net whose ``view`` only accepts NCHW strides (as hand-written user modules often do); it records the
    layout of each batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4 * 4 * 4, 5)
        self.nhwc_seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.nhwc_seen.append(x.stride(1) == 1)
        h = self.conv(x)
        return self.head(h.view(h.shape[0], -1))  # raises on NHWC strides


def test_predict_proba_passes_image_batches_in_nhwc_and_matches_nchw():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
    inputs = torch.randn(70, 3, 6, 6)
    seen = []
    model[0].register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    probs = predict_proba(model, inputs, batch_size=32)
    with torch.no_grad():
        expected = torch.softmax(model(inputs), dim=1)  # NCHW, one batch
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)
    assert len(seen) == 4 and all(seen[:3])  # three NHWC batches of the call (the 4th is the reference's NCHW)
    assert not seen[3]


def test_predict_proba_falls_back_to_nchw_for_a_model_that_needs_it():
    torch.manual_seed(0)
    model = _NeedsNCHW()
    inputs = torch.randn(10, 3, 6, 6)
    with pytest.raises(RuntimeError, match="view"):
        model(inputs.to(memory_format=torch.channels_last))  # the premise: NHWC strides break this model
    model.nhwc_seen.clear()
    probs = predict_proba(model, inputs, batch_size=4)
    with torch.no_grad():
        expected = torch.softmax(model.head(model.conv(inputs).view(10, -1)), dim=1)
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)
    assert model.nhwc_seen == [True, False, False, False]  # tried once, then NCHW for every batch


def test_predict_proba_errors():
    with pytest.raises(ValueError, match=r"model\.to"):
        predict_proba(small_model(), torch.zeros(1, 1, 1, 2), device="cuda")
    with pytest.raises(ValueError, match="batch_size"):
        predict_proba(small_model(), torch.zeros(1, 1, 1, 2), batch_size=0)


def test_attack_success_rate_excludes_target_class():
    true_labels = torch.tensor([0, 1, 2, 1])
    triggered_preds = torch.tensor([2, 0, 2, 2])
    # rows with true label ≠ 2: 0, 1, 3 -> predicted 2, 0, 2 -> 2/3 (75 % if row 2 were counted)
    assert attack_success_rate(triggered_preds, true_labels, target=2) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="other classes"):
        attack_success_rate(torch.tensor([2, 2]), torch.tensor([2, 2]), target=2)


def test_backdoor_metrics_with_identity_model():
    labels = torch.tensor([0, 1, 2, 1])
    clean = one_hot_inputs([0, 1, 1, 1])  # 3/4 correct
    triggered = one_hot_inputs([2, 0, 2, 2])
    metrics = backdoor_metrics(nn.Flatten(), clean, labels, triggered, target=2)
    assert metrics == BackdoorMetrics(clean_acc=75.0, attack_success_rate=pytest.approx(200 / 3))
    with pytest.raises(ValueError, match="row for row"):
        backdoor_metrics(nn.Flatten(), clean, labels, triggered[:2], target=2)
