"""Metrics of the evaluation protocol (DESIGN.md section 3), each defined in exactly one place.

Conventions
-----------
* Every accuracy-like number is a PERCENTAGE in [0, 100] (inputs and outputs alike).
* "probs" are softmax probabilities of shape [N, K]; "preds" are integer class indices of shape [N].
  Functions documented as taking ``probs_or_preds`` accept either: a 2-D array is reduced with argmax
  over classes, a 1-D integer array is used as is.
* Arrays may be ``torch.Tensor`` or ``numpy.ndarray``; results are plain Python floats or numpy arrays.
* Nothing here mutates a model: :func:`predict_proba` runs it in eval mode under ``torch.no_grad`` and
  restores every submodule's previous training flag afterwards.
* A model whose logits are NaN or ±inf has no accuracy: :func:`predict_proba` raises :class:`NonFiniteOutput`
  (the argmax of NaN is 0, which would score as a prediction of class 0).

A data split is duck-typed (:class:`LabelledData`): any object with ``.inputs`` (float [N, C, H, W]) and
``.labels`` (int [N]); score it as ``accuracy(predict_proba(model, split.inputs), split.labels)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from sklearn.svm import SVC
from torch import nn
from torch.func import functional_call

ArrayLike = torch.Tensor | np.ndarray


class NonFiniteOutput(FloatingPointError):
    """A model's logits are NaN or ±inf: it has diverged, and no metric of it is a number."""


AVG_GAP_KEYS: tuple[str, ...] = ("forget_acc", "retain_acc", "test_acc", "mia")


class LabelledData(Protocol):
    """What the metrics need from a data split (``gif_core.data.LabelledSet`` satisfies it)."""

    @property
    def inputs(self) -> torch.Tensor: ...

    @property
    def labels(self) -> torch.Tensor: ...


# --------------------------------------------------------------------------- array helpers


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _labels(labels: ArrayLike, name: str = "labels") -> np.ndarray:
    y = _to_numpy(labels, name)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array of class indices, got shape {y.shape} {y.dtype}")
    return y.astype(np.int64, copy=False)


def _as_preds(probs_or_preds: ArrayLike, name: str = "preds") -> np.ndarray:
    """Class indices from [N, K] probabilities/logits (argmax) or from [N] integer predictions."""
    x = _to_numpy(probs_or_preds, name)
    if x.ndim == 2:
        return x.argmax(axis=1).astype(np.int64)
    if x.ndim == 1 and np.issubdtype(x.dtype, np.integer):
        return x.astype(np.int64, copy=False)
    raise ValueError(f"{name} must be [N, K] probabilities or [N] integer predictions, got shape {x.shape} {x.dtype}")


def _probs(probs: ArrayLike, name: str) -> np.ndarray:
    p = _to_numpy(probs, name)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, K] probability array, got shape {p.shape}")
    return p.astype(np.float64, copy=False)


def _check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} rows but {name_b} has {len(b)}; pass matching arrays")
    if len(a) == 0:
        raise ValueError(f"{name_a} and {name_b} are empty; metrics need at least one sample")


def _check_class_range(y: np.ndarray, num_classes: int, name: str) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}); got values in [{y.min()}, {y.max()}]")


# --------------------------------------------------------------------------- predictions


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore each submodule's own training flag."""
    previous = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in previous:
            module.training = training


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


CPU_BATCH = 256
"""Images per forward pass on the CPU. With NHWC inputs it is the fastest batch of 64–1024 for the bundled CNN and
VGG-11 and within 10% of it for ResNet-18 and LeNet (benchmarks/results/inference_layout.md); one batch of 1024
was 2.9× slower on the bundled CNN."""
OTHER_DEVICE_BATCH = 1024
"""Images per forward pass on an accelerator (not measured: larger batches keep a GPU busy)."""


def predict_proba(
    model: nn.Module,
    inputs: torch.Tensor,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    parameters: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Softmax probabilities p = softmax(model(x)) as float32 [N, K] on the CPU.

    The model must return logits [B, K]. It runs in eval mode (restored afterwards) without gradients,
    in batches of ``batch_size`` (default :data:`CPU_BATCH` on the CPU, :data:`OTHER_DEVICE_BATCH` elsewhere) moved
    to ``device`` (default: the device of the model's parameters). Image batches [B, C, H, W] are passed in NHWC
    (``torch.channels_last``), on which oneDNN's convolutions and pooling run 1.4–2.9× faster on the CPU
    (benchmarks/results/inference_layout.md; the probabilities agree to 2e-7); a model that cannot take them (a
    ``view`` that needs NCHW strides raises) gets NCHW batches instead.
    The model is never moved or modified; ``device`` must therefore be where the model already lives.
    ``parameters`` (optional, by name) are used in place of the model's own tensors through
    ``torch.func.functional_call`` — how a candidate θ + α·Δ is scored without copying the model.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if inputs.ndim < 1 or inputs.shape[0] == 0:
        raise ValueError("inputs must be a non-empty batch [N, ...]")
    model_device = _model_device(model)
    run_device = model_device if device is None else torch.device(device)
    same_index = run_device.index is None or model_device.index is None or run_device == model_device
    if run_device.type != model_device.type or not same_index:
        raise ValueError(
            f"the model lives on {model_device} but device={run_device}; "
            "move the model first (model.to(device)) or leave device=None"
        )
    if batch_size is None:
        batch_size = CPU_BATCH if run_device.type == "cpu" else OTHER_DEVICE_BATCH

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return model(batch) if parameters is None else functional_call(model, dict(parameters), (batch,))

    channels_last = inputs.ndim == 4
    chunks = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            batch = inputs[start : start + batch_size].to(run_device)
            if channels_last:
                try:
                    logits = forward(batch.to(memory_format=torch.channels_last))  # restrides even when C = 1
                except RuntimeError:  # NHWC strides the model cannot take; NCHW raises a real error again
                    channels_last = False
            if not channels_last:
                logits = forward(batch)
            if logits.ndim != 2:
                raise ValueError(f"the model must return logits [B, K], got shape {tuple(logits.shape)}")
            if not torch.isfinite(logits).all():
                bad = int((~torch.isfinite(logits)).sum())
                raise NonFiniteOutput(
                    f"the model's outputs are not finite ({bad} of {logits.numel()} logits in a batch are NaN or "
                    "±inf): its weights are, or it overflows on these inputs"
                )
            chunks.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(chunks)


# --------------------------------------------------------------------------- accuracies


def accuracy(probs_or_preds: ArrayLike, labels: ArrayLike) -> float:
    """Accuracy in percent: 100 · mean_i [pred_i = y_i] (pred = argmax of probabilities when 2-D)."""
    preds, y = _as_preds(probs_or_preds), _labels(labels)
    _check_same_length(preds, y, "predictions", "labels")
    return float(100.0 * np.mean(preds == y))


def per_class_accuracy(preds: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Accuracy of each true class in percent, float64 [num_classes] (preds: [N] indices or [N, K] probs).

    acc_c = 100 · #{i : y_i = c, pred_i = c} / #{i : y_i = c}; NaN for a class with no sample
    (use ``np.nanmean`` to average over the classes that are present).
    """
    preds, y = _as_preds(preds), _labels(labels)
    _check_same_length(preds, y, "predictions", "labels")
    _check_class_range(y, num_classes, "labels")
    total = np.bincount(y, minlength=num_classes)
    correct = np.bincount(y[preds == y], minlength=num_classes)
    out = np.full(num_classes, np.nan)
    np.divide(100.0 * correct, total, out=out, where=total > 0)
    return out


def confusion_matrix(preds: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts int64 [num_classes, num_classes]: entry [t, p] = #{i : y_i = t, pred_i = p} (rows = true).

    ``preds`` are [N] class indices or [N, K] probabilities (reduced by argmax).
    """
    preds, y = _as_preds(preds), _labels(labels)
    _check_same_length(preds, y, "predictions", "labels")
    _check_class_range(y, num_classes, "labels")
    _check_class_range(preds, num_classes, "predictions")
    counts = np.bincount(y * num_classes + preds, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def forget_f1(forget_acc: float, retain_acc: float) -> float:
    """The GIF paper's F1 of forgetting vs retaining, in percent.

    With f = forget_acc / 100 and r = retain_acc / 100 (fractions), F1 = 2(1 − f)·r / ((1 − f) + r),
    returned as 100 · F1. It is the harmonic mean of "how much was forgotten" (1 − f) and "how much was
    kept" (r); defined as 0 when both terms are 0 (f = 100 %, r = 0 %). Inputs are percentages in [0, 100].
    """
    for name, value in (("forget_acc", forget_acc), ("retain_acc", retain_acc)):
        if not 0.0 <= value <= 100.0:
            raise ValueError(f"{name} must be a percentage in [0, 100], got {value}")
    forgotten, kept = 1.0 - forget_acc / 100.0, retain_acc / 100.0
    if forgotten + kept == 0.0:
        return 0.0
    return 100.0 * 2.0 * forgotten * kept / (forgotten + kept)


# --------------------------------------------------------------------------- against the retrained model


def agreement(probs_a: ArrayLike, probs_b: ArrayLike) -> float:
    """Prediction agreement in percent: 100 · mean_i [argmax a_i = argmax b_i] (1-D predictions accepted)."""
    a, b = _as_preds(probs_a, "probs_a"), _as_preds(probs_b, "probs_b")
    _check_same_length(a, b, "probs_a", "probs_b")
    return float(100.0 * np.mean(a == b))


def mean_kl(p_retrained: ArrayLike, p_edited: ArrayLike, eps: float = 1e-12) -> float:
    """Mean over samples of KL(retrained ‖ edited) = Σ_k p_r,k · (log p_r,k − log p_e,k), in nats.

    For numerical safety both distributions are clamped to [eps, 1] inside the logarithms only; the weight
    p_r,k is not clamped, so classes the retrained model gives probability 0 contribute exactly 0, and an
    edited probability of 0 costs at most −log(eps) instead of +inf. Computed in float64.
    """
    if eps <= 0.0:
        raise ValueError(f"eps must be > 0, got {eps}")
    p_r, p_e = _probs(p_retrained, "p_retrained"), _probs(p_edited, "p_edited")
    if p_r.shape != p_e.shape:
        raise ValueError(f"p_retrained {p_r.shape} and p_edited {p_e.shape} must have the same shape")
    log_ratio = np.log(np.clip(p_r, eps, 1.0)) - np.log(np.clip(p_e, eps, 1.0))
    return float(np.mean(np.sum(p_r * log_ratio, axis=1)))


def compare_to_retrained(p_edited: ArrayLike, p_retrained: ArrayLike) -> dict[str, float]:
    """``{"agreement": agreement(edited, retrained) in %, "kl": mean_kl(retrained, edited) in nats}``."""
    return {"agreement": agreement(p_edited, p_retrained), "kl": mean_kl(p_retrained, p_edited)}


def _true_label_confidence(probs: ArrayLike, labels: ArrayLike, name: str) -> np.ndarray:
    p, y = _probs(probs, f"p_{name}"), _labels(labels, f"y_{name}")
    _check_same_length(p, y, f"p_{name}", f"y_{name}")
    _check_class_range(y, p.shape[1], f"y_{name}")
    return p[np.arange(len(y)), y]


def mia_efficacy(
    p_retain: ArrayLike,
    y_retain: ArrayLike,
    p_test: ArrayLike,
    y_test: ArrayLike,
    p_forget: ArrayLike,
    y_forget: ArrayLike,
    seed: int = 0,
) -> float:
    """Membership-inference (MIA) efficacy of an unlearned model, in percent (higher = better forgotten).

    The confidence-based attack of Jia et al. 2023 ("Model sparsity can simplify machine unlearning",
    also used by SalUn): each sample's single feature is the model's probability of its TRUE label,
    c_i = p_i[y_i]. An ``sklearn.svm.SVC(C=3, gamma="auto", kernel="rbf")`` (their settings) is trained
    to separate retained training samples (members, label 1) from test samples (non-members, label 0),
    on balanced classes: the larger of the two sets is subsampled without replacement to the size of the
    smaller, by ``numpy.random.default_rng(seed)``. Then

        MIA efficacy = 100 · #{forget samples predicted non-member} / #forget.

    A model that truly forgot the forget set treats it like unseen test data (efficacy near the retrained
    model's); one that still remembers it gives training-like confidences (efficacy near 0).
    """
    c_retain = _true_label_confidence(p_retain, y_retain, "retain")
    c_test = _true_label_confidence(p_test, y_test, "test")
    c_forget = _true_label_confidence(p_forget, y_forget, "forget")
    rng = np.random.default_rng(seed)
    n = min(len(c_retain), len(c_test))
    c_retain = c_retain if len(c_retain) == n else c_retain[rng.choice(len(c_retain), n, replace=False)]
    c_test = c_test if len(c_test) == n else c_test[rng.choice(len(c_test), n, replace=False)]
    features = np.concatenate([c_retain, c_test])[:, None]
    membership = np.concatenate([np.ones(n), np.zeros(n)])
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features, membership)
    predicted_member = attack.predict(c_forget[:, None])
    return float(100.0 * np.mean(predicted_member == 0))


def avg_gap(
    edited: Mapping[str, float],
    retrained: Mapping[str, float],
    keys: Sequence[str] = AVG_GAP_KEYS,
) -> float:
    """The unlearning literature's Avg. Gap: mean over keys k present in both of |edited[k] − retrained[k]|.

    Default keys: forget_acc, retain_acc, test_acc, mia (all percentages), so the gap is in points.
    """
    shared = [k for k in keys if k in edited and k in retrained]
    if not shared:
        raise ValueError(
            f"no key of {tuple(keys)} is in both dicts (edited has {sorted(edited)}, retrained has "
            f"{sorted(retrained)}); pass metrics with matching names or choose keys="
        )
    return float(np.mean([abs(edited[k] - retrained[k]) for k in shared]))


# --------------------------------------------------------------------------- backdoor


def attack_success_rate(probs_or_preds_triggered: ArrayLike, true_labels: ArrayLike, target: int) -> float:
    """ASR in percent: among triggered images whose TRUE label ≠ target, the share predicted as target.

    ASR = 100 · #{i : y_i ≠ t, pred_i = t} / #{i : y_i ≠ t}. Images of the target class are excluded:
    predicting the target for them is correct, not a successful attack.
    """
    preds, y = _as_preds(probs_or_preds_triggered), _labels(true_labels, "true_labels")
    _check_same_length(preds, y, "triggered predictions", "true_labels")
    attacked = y != target
    if not attacked.any():
        raise ValueError(f"every true label equals the target {target}; ASR needs images of other classes")
    return float(100.0 * np.mean(preds[attacked] == target))


@dataclass(frozen=True)
class BackdoorMetrics:
    """Clean test accuracy and attack success rate (both percent) of a possibly backdoored model."""

    clean_acc: float
    attack_success_rate: float


def backdoor_metrics(
    model: nn.Module,
    clean_test_inputs: torch.Tensor,
    clean_test_labels: torch.Tensor,
    triggered_inputs: torch.Tensor,
    target: int,
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> BackdoorMetrics:
    """Clean accuracy on the test set, and :func:`attack_success_rate` on its triggered copy.

    ``triggered_inputs[i]`` must be ``clean_test_inputs[i]`` with the trigger stamped (same row order),
    so that ``clean_test_labels`` are the triggered images' true labels.
    """
    if triggered_inputs.shape != clean_test_inputs.shape:
        raise ValueError(
            f"triggered_inputs {tuple(triggered_inputs.shape)} must match clean_test_inputs "
            f"{tuple(clean_test_inputs.shape)} row for row; stamp the trigger on the clean test images"
        )
    clean = predict_proba(model, clean_test_inputs, batch_size, device)
    triggered = predict_proba(model, triggered_inputs, batch_size, device)
    return BackdoorMetrics(
        clean_acc=accuracy(clean, clean_test_labels),
        attack_success_rate=attack_success_rate(triggered, clean_test_labels, target),
    )
