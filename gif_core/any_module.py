"""Any ``nn.Module`` classifier, without a model card: tensors in, the same report as the CLI and dashboard out.

    from gif_core.any_module import Objective, edit_module, retrain_module, tensor_bundle

    data = tensor_bundle((x_train, y_train), (x_val, y_val), (x_test, y_test))
    truth = retrain_module(model, data, ClassRemoval(3), Recipe(epochs=10))       # optional ground truth
    report = edit_module(model, data, ClassRemoval(3), EditConfig(methods=("gif", "if")),
                         objective=Objective(weight_decay=1e-4), retrained_model=truth)

The objective is the one the whole library differentiates (:mod:`gif_core.objective`): L(θ) = mean_i CE(f(x_i; θ),
y_i) + (λ/2)·‖θ‖² over the module's trainable parameters (``requires_grad=False`` ones are never selected or
moved), evaluated in eval mode (dropout off, BatchNorm's running statistics frozen). Say the λ the model was
trained with in :class:`Objective`; cross-entropy is the only loss, since every Hessian, gradient and metric here
is of it. The neuron selectors find the module's ``nn.Linear`` / ``nn.Conv{1,2,3}d`` layers by type, wherever they
sit in the module tree; parameters outside such layers are moved only by the full-model methods (IF, SIF, ...).
The model is never modified: each method's edit is a copy (``report.outcomes[i].model``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gif_core.data import DataBundle, LabelledSet
from gif_core.experiment import EditConfig, EditReport, Progress, run_edit
from gif_core.exported import reinitialised
from gif_core.requests import EditRequest
from gif_core.retrain import edited_training_set
from gif_core.train import Recipe, build_and_train

LOSSES = ("cross_entropy",)


@dataclass(frozen=True)
class Objective:
    """The training objective of the module: ``loss`` (cross-entropy, the only one) and the weight decay λ of
    L = mean CE + (λ/2)·‖θ‖² (the coupled L2 term of ``torch.optim.Adam(weight_decay=λ)`` / SGD's)."""

    loss: str = "cross_entropy"
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(
                f"loss {self.loss!r} is not supported: every Hessian, gradient and metric of gif_core is of the "
                f"cross-entropy of a classifier's logits; use one of {', '.join(LOSSES)}"
            )
        if not (isinstance(self.weight_decay, int | float) and 0 <= self.weight_decay < float("inf")):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")


def labelled_set(inputs: torch.Tensor, labels: torch.Tensor) -> LabelledSet:
    """Samples and integer labels as a :class:`~gif_core.data.LabelledSet` (row i is sample i)."""
    inputs = torch.as_tensor(inputs)
    if not inputs.is_floating_point():
        inputs = inputs.float()
    labels = torch.as_tensor(labels).long().reshape(-1)
    return LabelledSet(inputs, labels, torch.arange(inputs.shape[0]))


def tensor_bundle(
    train: tuple[torch.Tensor, torch.Tensor],
    validation: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    classes: Sequence[str] | None = None,
    name: str = "tensors",
) -> DataBundle:
    """Three ``(inputs, labels)`` splits as a :class:`~gif_core.data.DataBundle`. The validation split chooses the
    step scale α (``step="auto"``), the test split is where every number is reported. ``classes`` defaults to
    ``"0" … "K-1"`` for K = 1 + the largest label in any split."""
    splits = [labelled_set(*split) for split in (train, validation, test)]
    top = max(int(split.labels.max()) for split in splits if len(split.labels))
    names = tuple(classes) if classes is not None else tuple(str(c) for c in range(top + 1))
    if top >= len(names) or min(int(split.labels.min()) for split in splits if len(split.labels)) < 0:
        raise ValueError(f"labels must lie in 0 … {len(names) - 1} (one per class name), got up to {top}")
    return DataBundle(name, names, tuple(splits[0].inputs.shape[1:]), 0, *splits)


def edit_module(
    model: nn.Module,
    data: DataBundle,
    request: EditRequest,
    config: EditConfig | None = None,
    *,
    objective: Objective | None = None,
    retrained_model: nn.Module | None = None,
    progress: Progress | None = None,
) -> EditReport:
    """Answer ``request`` about ``model`` (trained on ``data.train`` with ``objective``) with every method of
    ``config``, against ``retrained_model`` when given: :func:`gif_core.experiment.run_edit` without a card."""
    objective = objective or Objective()
    evaluated = copy.deepcopy(model).eval()  # eval mode without changing the caller's module
    return run_edit(
        evaluated, None, data, request, config, retrained_model=retrained_model, progress=progress,
        weight_decay=objective.weight_decay,
    )  # fmt: skip


def retrain_module(
    model: nn.Module, data: DataBundle, request: EditRequest, recipe: Recipe, *, show_bar: bool = False
) -> nn.Module:
    """The ground truth: a copy of ``model`` re-initialised (each Linear/Conv2d/BatchNorm's ``reset_parameters``,
    seeded by ``recipe.seed``; :func:`gif_core.exported.reinitialised`) and trained by ``recipe`` on ``data.train``
    edited by ``request`` (U removed, or relabelled). Use the recipe the model itself was trained with."""
    edited = edited_training_set(data.train, request, data.num_classes)
    bundle = DataBundle(data.name, data.classes, data.input_shape, data.split_seed, edited, data.val, data.test)
    trained, _ = build_and_train(
        "(the given module)", bundle, recipe, show_bar=show_bar, initial=lambda: reinitialised(model, recipe.seed)
    )
    return trained
