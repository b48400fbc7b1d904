"""Edit requests — "what if this data had not been there?" — and what each one does to the training set.

Training set S with n samples, questioned set U ⊂ S with m samples. A request answers, once, everything that
depends on its kind (:class:`DataEdit` and :meth:`objective`); the problem built from it — the vector g, the
Hessian, the second-order terms — lives in :mod:`gif_core.problem`:

* :class:`ClassRemoval` — remove every training sample of one class; it is judged on the held-out images of that
  class (a model retrained without the class cannot predict it).
* :class:`SampleRemoval` — remove the training samples at given rows; judged on those samples themselves.
* :class:`LabelChange` — relabel U from y to y'; U stays in the edited training set with its new labels.
* :func:`backdoor_relabel` — undo a backdoor: U = poisoned samples, y = the attacker's label, y' = the true label.

Every kind validates itself against the training labels in :meth:`edit` (unknown class, rows out of range or
repeated, a "change" to the same label, removing everything): each a ValueError saying what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from gif_core.data import LabelledSet
from gif_core.evaluate import forget_f1


def _as_index_tuple(values: object, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in torch.as_tensor(values).reshape(-1).tolist())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a list of integers, got {values!r}") from exc


@dataclass(frozen=True)
class DataEdit:
    """What a request does to a training set of n rows.

    ``rows``: U's rows (sorted for a removal, in the request's order for a label change); ``in_u``: the bool mask of
    U over S; ``labels``: the labels of S after the edit (U's new labels for a label change, else S's own);
    ``new_labels``: U's new labels (in ``rows`` order) for a label change, None for a removal."""

    rows: torch.Tensor
    in_u: torch.Tensor
    labels: torch.Tensor
    new_labels: torch.Tensor | None

    @property
    def relabels(self) -> bool:
        """True when U stays in the edited set with new labels, False when it is removed."""
        return self.new_labels is not None

    @property
    def retain_rows(self) -> torch.Tensor:
        """The rows of S outside U."""
        return torch.nonzero(~self.in_u).reshape(-1)

    @property
    def edited_rows(self) -> torch.Tensor:
        """The rows of S that form the edited training set: S∖U for a removal, all of S for a label change."""
        return torch.arange(len(self.in_u)) if self.relabels else self.retain_rows

    def edited_set(self, train: LabelledSet) -> LabelledSet:
        """The training set the request asks about: ``train`` with U removed, or with U relabelled."""
        return train.with_labels(self.labels) if self.relabels else train.subset(~self.in_u)


def _data_edit(rows: torch.Tensor, labels: torch.Tensor, new_labels: torch.Tensor | None = None) -> DataEdit:
    in_u = torch.zeros(len(labels), dtype=torch.bool)
    in_u[rows] = True
    edited = labels
    if new_labels is not None:
        edited = labels.clone()
        edited[rows] = new_labels
    return DataEdit(rows, in_u, edited, new_labels)


@dataclass(frozen=True)
class ClassRemoval:
    """Remove every training sample of class ``cls``."""

    cls: int
    kind: str = field(default="class-removal", init=False)
    OBJECTIVE: ClassVar[str] = (
        "the F1 (as above) of the forget accuracy on the validation images of the removed class and the "
        "validation accuracy on the other classes"
    )

    @property
    def held_out_class(self) -> int | None:
        """The class whose held-out (validation, test) images are judged as the forgotten data."""
        return self.cls

    def edit(self, labels: torch.Tensor, num_classes: int) -> DataEdit:
        if not 0 <= self.cls < num_classes:
            raise ValueError(f"Unknown class {self.cls}: the model has classes 0 … {num_classes - 1}.")
        rows = torch.nonzero(labels == self.cls).reshape(-1)
        if len(rows) == 0:
            raise ValueError(f"Class {self.cls} has no training sample: there is nothing to remove.")
        if len(rows) == len(labels):
            raise ValueError("Removing this class would remove every training sample; keep at least one.")
        return _data_edit(rows, labels)

    def objective(self, val_acc: float, target_acc: float) -> float:
        """F1 of (forget = ``target_acc`` on the validation images of the class, retain = ``val_acc``)."""
        return forget_f1(target_acc, val_acc)

    def question(self, classes: list[str] | tuple[str, ...]) -> str:
        return f"remove class {classes[self.cls]}"

    def describe(self) -> dict:
        return {"kind": self.kind, "class": self.cls}


@dataclass(frozen=True)
class SampleRemoval:
    """Remove the training samples at the given rows of the training split."""

    indices: tuple[int, ...]
    kind: str = field(default="sample-removal", init=False)
    held_out_class: ClassVar[int | None] = None
    OBJECTIVE: ClassVar[str] = (
        "validation accuracy − |accuracy on the removed samples − validation accuracy| (a retrained model "
        "treats removed samples like held-out data)"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", _as_index_tuple(self.indices, "indices"))

    def edit(self, labels: torch.Tensor, num_classes: int) -> DataEdit:
        _check_rows(self.indices, len(labels))
        if len(self.indices) == len(labels):
            raise ValueError("Removing every training sample leaves nothing to learn from; keep at least one.")
        return _data_edit(torch.tensor(sorted(self.indices), dtype=torch.long), labels)

    def objective(self, val_acc: float, target_acc: float) -> float:
        """val − |``target_acc`` on the removed samples − val|: removed samples should look held out, not destroyed
        (F1 here would reward destroying the model)."""
        return val_acc - abs(target_acc - val_acc)

    def question(self, classes: list[str] | tuple[str, ...]) -> str:
        return f"remove {counted(len(self.indices), 'training sample')}"

    def describe(self) -> dict:
        return {"kind": self.kind, "indices": list(self.indices)}


@dataclass(frozen=True)
class LabelChange:
    """Change the labels of the training samples at ``indices`` to ``new_labels`` (same order)."""

    indices: tuple[int, ...]
    new_labels: tuple[int, ...]
    kind: str = field(default="label-change", init=False)
    held_out_class: ClassVar[int | None] = None
    OBJECTIVE: ClassVar[str] = (
        "the harmonic mean of the accuracy on the relabelled samples against their new labels and the "
        "validation accuracy"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", _as_index_tuple(self.indices, "indices"))
        object.__setattr__(self, "new_labels", _as_index_tuple(self.new_labels, "new_labels"))
        if len(self.indices) != len(self.new_labels):
            raise ValueError(
                f"Give one new label per index: {len(self.indices)} indices but {len(self.new_labels)} labels."
            )

    def edit(self, labels: torch.Tensor, num_classes: int) -> DataEdit:
        _check_rows(self.indices, len(labels))
        for row, new in zip(self.indices, self.new_labels, strict=True):
            if not 0 <= new < num_classes:
                raise ValueError(f"New label {new} for sample {row} is not a class (0 … {num_classes - 1}).")
            if int(labels[row]) == new:
                raise ValueError(f"Sample {row} already has label {new}: a label change must change the label.")
        rows = torch.tensor(self.indices, dtype=torch.long)
        return _data_edit(rows, labels, torch.tensor(self.new_labels, dtype=torch.long))

    def objective(self, val_acc: float, target_acc: float) -> float:
        """Harmonic mean of ``target_acc`` (the relabelled samples against their new labels) and ``val_acc``."""
        return 0.0 if target_acc + val_acc == 0 else 2 * target_acc * val_acc / (target_acc + val_acc)

    def question(self, classes: list[str] | tuple[str, ...]) -> str:
        return f"change {counted(len(self.indices), 'label')}"

    def describe(self) -> dict:
        return {"kind": self.kind, "indices": list(self.indices), "new_labels": list(self.new_labels)}


EditRequest = ClassRemoval | SampleRemoval | LabelChange


def counted(n: int, noun: str) -> str:
    """``3 labels``, ``1 label``: n and the noun, plural unless n is 1."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from exc


def parse_sample_removal(text: str) -> SampleRemoval:
    """``"10,42,77"`` → SampleRemoval of those training rows."""
    return SampleRemoval(tuple(_parse_ints(text, "Sample indices")))


def parse_label_change(text: str) -> LabelChange:
    """``"5:3,9:1"`` (ROW:NEW_LABEL pairs) → LabelChange."""
    pairs = [p.split(":") for p in text.split(",") if p.strip()]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"Label changes are ROW:LABEL pairs separated by commas (e.g. 5:3,9:1), got {text!r}")
    rows = _parse_ints(",".join(p[0] for p in pairs), "Relabel rows")
    labels = _parse_ints(",".join(p[1] for p in pairs), "Relabel labels")
    return LabelChange(tuple(rows), tuple(labels))


def backdoor_relabel(poisoned_rows: torch.Tensor, true_labels: torch.Tensor) -> LabelChange:
    """Undo a backdoor: relabel the poisoned training samples (now carrying the attacker's label) to their true
    labels. A row whose true label equals its current label is no poisoned sample: :meth:`LabelChange.edit`
    rejects it."""
    rows = _as_index_tuple(poisoned_rows, "poisoned_rows")
    labels = _as_index_tuple(true_labels, "true_labels")
    if not rows:
        raise ValueError("No poisoned samples given: a backdoor relabel needs at least one.")
    return LabelChange(rows, labels)


def _check_rows(indices: tuple[int, ...], n: int) -> None:
    if not indices:
        raise ValueError("No training samples given: pick at least one index.")
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ValueError(f"Indices out of range {bad[:5]}: the training split has rows 0 … {n - 1}.")
    if len(set(indices)) != len(indices):
        raise ValueError("Indices repeat: give each training sample once.")
