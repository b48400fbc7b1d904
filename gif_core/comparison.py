"""Side-by-side predictions of several models on one split (original, edited by each method, retrained): what the
dashboard's what-if charts show. Pure bookkeeping over :mod:`gif_core.evaluate`; nothing here trains or edits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gif_core.data import LabelledSet
from gif_core.evaluate import confusion_matrix, per_class_accuracy, predict_proba


@dataclass(frozen=True)
class ModelPredictions:
    """One model on one split: probabilities [N, K], per-class accuracy (percent, NaN for an absent class) and the
    confusion matrix (rows = true class, columns = predicted)."""

    name: str
    probabilities: torch.Tensor
    per_class_accuracy: np.ndarray
    confusion: np.ndarray

    def predicted_counts(self, rows: torch.Tensor, num_classes: int) -> np.ndarray:
        """How many of the given rows are predicted as each class (the GIF paper's figure 5 histogram)."""
        predictions = self.probabilities[rows].argmax(1).numpy()
        return np.bincount(predictions, minlength=num_classes)


def compare_predictions(models: dict[str, nn.Module], split: LabelledSet, num_classes: int) -> list[ModelPredictions]:
    """:class:`ModelPredictions` for every named model, in the given order."""
    return predictions_of(
        {name: predict_proba(model, split.inputs) for name, model in models.items()}, split, num_classes
    )


def predictions_of(
    probabilities: dict[str, torch.Tensor], split: LabelledSet, num_classes: int
) -> list[ModelPredictions]:
    """:class:`ModelPredictions` from probabilities already computed on ``split`` (e.g. an edit report's test-split
    probabilities), in the given order; no model is run."""
    out = []
    for name, probs in probabilities.items():
        if probs.shape != (len(split), num_classes):
            raise ValueError(f"{name}: probabilities of shape {tuple(probs.shape)} do not cover this split")
        out.append(
            ModelPredictions(
                name,
                probs,
                per_class_accuracy(probs, split.labels, num_classes),
                confusion_matrix(probs, split.labels, num_classes),
            )
        )
    return out
