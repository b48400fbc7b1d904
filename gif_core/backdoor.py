"""Backdoor triggers and data poisoning (BadNets-style), the set-up of the GIF paper's backdoor experiment.

A :class:`Trigger` is a small square written into a corner of every channel of an image. Poisoning
(:func:`poison`) stamps it on a seeded fraction of the training samples and relabels them as the
attacker's target class; a model trained on that data learns "trigger ⇒ target". Fixing the backdoor
is then a label change of the poisoned rows back to :attr:`PoisonedData.true_labels` (DESIGN.md section 2).

Everything here is pure: inputs are never modified, new tensors are returned. Model inputs are float
[N, C, H, W] in [0, 1]; display images are uint8 [N, H, W] or channels-last [N, H, W, C].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from gif_core.data import LabelledSet, seeded_subset

TRIGGER_KINDS: tuple[str, ...] = ("checkerboard", "patch")
CORNERS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")

DisplayT = TypeVar("DisplayT", torch.Tensor, np.ndarray)


def _check_keys(data: Mapping[str, Any], expected: set[str], what: str) -> None:
    if set(data) != expected:
        raise ValueError(f"{what} needs exactly the keys {sorted(expected)}, got {sorted(data)}")


@dataclass(frozen=True)
class Trigger:
    """A ``size`` × ``size`` square in one corner of the image, written into every channel.

    * ``"checkerboard"`` (the GIF paper's trigger): pixel (i, j) of the square, counted from the
      square's top-left pixel, is 1 (white) when i + j is even and 0 (black) when it is odd.
    * ``"patch"``: every pixel of the square is 1 (white).

    Values are 1.0 / 0.0 for float model inputs in [0, 1] and 255 / 0 for uint8 display images.
    """

    kind: str
    size: int = 4
    corner: str = "bottom-right"

    def __post_init__(self) -> None:
        if self.kind not in TRIGGER_KINDS:
            raise ValueError(f"Trigger kind must be one of {TRIGGER_KINDS}, got {self.kind!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"Trigger size must be a positive int (pixels), got {self.size!r}")
        if self.corner not in CORNERS:
            raise ValueError(f"Trigger corner must be one of {CORNERS}, got {self.corner!r}")

    def pattern(self) -> torch.Tensor:
        """The square's values as a float32 [size, size] tensor of 0s and 1s."""
        if self.kind == "patch":
            return torch.ones(self.size, self.size)
        index = torch.arange(self.size)
        return ((index[:, None] + index[None, :]) % 2 == 0).float()

    def region(self, height: int, width: int) -> tuple[slice, slice]:
        """(rows, cols) slices of the square in a ``height`` × ``width`` image; error if it does not fit."""
        if self.size > height or self.size > width:
            raise ValueError(
                f"a {self.size}x{self.size} trigger does not fit a {height}x{width} image; use a smaller size"
            )
        rows = slice(0, self.size) if self.corner.startswith("top") else slice(height - self.size, height)
        cols = slice(0, self.size) if self.corner.endswith("left") else slice(width - self.size, width)
        return rows, cols

    def stamp(self, inputs: torch.Tensor) -> torch.Tensor:
        """A NEW float tensor: ``inputs`` [N, C, H, W] with the pattern written into all C channels."""
        if inputs.ndim != 4 or not inputs.is_floating_point():
            raise ValueError(
                f"stamp expects float model inputs [N, C, H, W] in [0, 1], got {inputs.dtype} "
                f"{tuple(inputs.shape)}; use stamp_display for uint8 display images"
            )
        rows, cols = self.region(inputs.shape[2], inputs.shape[3])
        out = inputs.clone()
        out[:, :, rows, cols] = self.pattern().to(device=out.device, dtype=out.dtype)
        return out

    def stamp_display(self, images: DisplayT) -> DisplayT:
        """A NEW uint8 array of the same type: [N, H, W] or [N, H, W, C] with the pattern as 255 / 0."""
        is_tensor = isinstance(images, torch.Tensor)
        is_uint8 = images.dtype == (torch.uint8 if is_tensor else np.uint8)
        if not is_uint8 or images.ndim not in (3, 4):
            raise ValueError(
                f"stamp_display expects uint8 images [N, H, W] or [N, H, W, C], got {images.dtype} "
                f"{tuple(images.shape)}; use stamp for float model inputs"
            )
        rows, cols = self.region(images.shape[1], images.shape[2])
        square = (self.pattern() * 255).to(torch.uint8)
        if isinstance(images, torch.Tensor):
            out, patch = images.clone(), square.to(images.device)
        else:
            out, patch = images.copy(), square.numpy()
        out[:, rows, cols] = patch if images.ndim == 3 else patch[:, :, None]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, inverse of :meth:`from_dict`."""
        return {"kind": self.kind, "size": self.size, "corner": self.corner}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trigger:
        """Rebuild from :meth:`to_dict` output (all keys required, no others)."""
        _check_keys(data, {"kind", "size", "corner"}, "Trigger.from_dict")
        return cls(kind=data["kind"], size=data["size"], corner=data["corner"])


@dataclass(frozen=True)
class BackdoorSpec:
    """What to poison: relabel round(fraction · N) triggered samples as ``target``, chosen with ``seed``."""

    target: int
    fraction: float = 0.1
    trigger: Trigger = Trigger("checkerboard")
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 0:
            raise ValueError(f"target must be a class index >= 0, got {self.target!r}")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction must lie strictly between 0 and 1, got {self.fraction}")
        if not isinstance(self.trigger, Trigger):
            raise ValueError(f"trigger must be a Trigger, got {type(self.trigger).__name__}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict for model cards, inverse of :meth:`from_dict`."""
        return {
            "target": self.target,
            "fraction": self.fraction,
            "trigger": self.trigger.to_dict(),
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackdoorSpec:
        """Rebuild from :meth:`to_dict` output (all keys required, no others)."""
        _check_keys(data, {"target", "fraction", "trigger", "seed"}, "BackdoorSpec.from_dict")
        return cls(
            target=data["target"],
            fraction=data["fraction"],
            trigger=Trigger.from_dict(data["trigger"]),
            seed=data["seed"],
        )


@dataclass(frozen=True, eq=False)
class PoisonedData:
    """A poisoned copy of a training set.

    ``inputs``/``labels`` (and ``images`` when display images were given) equal the originals except at
    ``poisoned_rows`` (int64, sorted), whose inputs carry the trigger and whose labels are ``spec.target``;
    ``true_labels[j]`` is the original label of row ``poisoned_rows[j]``.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    poisoned_rows: torch.Tensor
    true_labels: torch.Tensor
    spec: BackdoorSpec
    images: torch.Tensor | np.ndarray | None = None


def poison(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    spec: BackdoorSpec,
    images: torch.Tensor | np.ndarray | None = None,
    num_classes: int | None = None,
) -> PoisonedData:
    """Poison round(spec.fraction · N) training samples (N = all samples; Python's round).

    The rows are drawn uniformly without replacement, by ``torch.randperm`` under a
    ``torch.Generator`` seeded with ``spec.seed``, among the samples whose label ≠ ``spec.target``
    (a target-class sample relabelled as the target would teach nothing). Their inputs (and display
    images) get the trigger and their labels become the target. ``num_classes`` (default: max label + 1)
    bounds the valid targets. Nothing passed in is modified.
    """
    if inputs.ndim != 4 or not inputs.is_floating_point():
        raise ValueError(f"inputs must be float [N, C, H, W], got {inputs.dtype} {tuple(inputs.shape)}")
    if labels.ndim != 1 or labels.is_floating_point() or len(labels) != len(inputs) or len(labels) == 0:
        raise ValueError(
            f"labels must be a non-empty 1-D integer tensor with one label per input; got {labels.dtype} "
            f"{tuple(labels.shape)} for {len(inputs)} inputs"
        )
    if images is not None and len(images) != len(inputs):
        raise ValueError(f"images has {len(images)} rows but inputs has {len(inputs)}; pass matching copies")
    classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if spec.target >= classes:
        raise ValueError(f"target {spec.target} is outside the label range [0, {classes}); pick a valid class")
    spec.trigger.region(inputs.shape[2], inputs.shape[3])

    count = round(spec.fraction * len(labels))
    eligible = torch.nonzero(labels != spec.target).flatten().cpu()
    if count < 1:
        raise ValueError(f"fraction {spec.fraction} of {len(labels)} samples rounds to 0; raise the fraction")
    if count > len(eligible):
        raise ValueError(
            f"cannot poison {count} samples: only {len(eligible)} have a label other than the target "
            f"{spec.target}; lower the fraction"
        )
    rows = seeded_subset(eligible, count, spec.seed)

    new_inputs = inputs.clone()
    new_inputs[rows] = spec.trigger.stamp(inputs[rows])
    new_labels = labels.clone()
    new_labels[rows] = spec.target
    new_images = None
    if images is not None:
        index = rows.numpy() if isinstance(images, np.ndarray) else rows
        new_images = images.copy() if isinstance(images, np.ndarray) else images.clone()
        new_images[index] = spec.trigger.stamp_display(images[index])
    return PoisonedData(
        inputs=new_inputs,
        labels=new_labels,
        poisoned_rows=rows,
        true_labels=labels[rows].clone(),
        spec=spec,
        images=new_images,
    )


def poison_training_set(train: LabelledSet, spec: BackdoorSpec, num_classes: int) -> tuple[LabelledSet, PoisonedData]:
    """The poisoned copy of a training split (inputs, labels and display images), and the poisoning record."""
    poisoned = poison(train.inputs, train.labels, spec, images=train.images, num_classes=num_classes)
    images = (
        poisoned.images
        if poisoned.images is None or torch.is_tensor(poisoned.images)
        else torch.as_tensor(poisoned.images)
    )
    return dataclasses.replace(train, inputs=poisoned.inputs, labels=poisoned.labels, images=images), poisoned
