"""Any torchvision classification model by its registry name, behind an input adapter for small or greyscale images.

The accepted names are torchvision's own (``torchvision.models.list_models(module=torchvision.models)``: the
classification models, not detection, segmentation, video or quantized ones), so no list is kept here. The model is
``torchvision.models.get_model(name, weights=None, num_classes=K)`` — randomly initialised: no pretrained weights are
downloaded — held as ``net`` inside :class:`AdaptedClassifier`, which

* repeats a one-channel image to the three channels every torchvision classifier expects (no parameters), and
* resizes (bilinear) an image smaller than :data:`MIN_SIDE` — torchvision's classifiers downsample by 32, and an
  8×8 digit leaves their later stages 1×1 and their BatchNorm statistics meaningless — or too small for the
  architecture to the smallest square side of :data:`SIDES` it accepts, found by a forward pass on the meta device
  (shapes only, nothing computed); ViTs, whose patch grid is fixed at construction, are built for that side
  (``image_size``).

Hardsigmoid and Hardswish (MobileNet-V3's) are replaced by the same functions written with ``clamp``: torch has
neither a forward-mode nor a second derivative for ``hardsigmoid_backward``, so Hessian-vector products through them
fail, while clamp's derivative is a mask that differentiates again (the values are the same piecewise-linear ones).

GoogLeNet and Inception-v3 are built without their auxiliary heads (``aux_logits=False``): a classifier here returns
one logits tensor in training mode too. Parameter names are ``net.`` + torchvision's, stable across runs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MIN_SIDE = 32
SIDES = (32, 64, 96, 128, 160, 224, 299, 384, 518)
"""Square sides tried, smallest first, when an image is too small for an architecture as it is."""
AUXILIARY_HEADS = ("googlenet", "inception_v3")


def torchvision_names() -> tuple[str, ...]:
    """torchvision's classification models by registry name."""
    import torchvision
    from torchvision.models import list_models

    return tuple(list_models(module=torchvision.models))


class ClampHardsigmoid(nn.Module):
    """hardsigmoid(x) = clamp(x/6 + 1/2, 0, 1), twice differentiable by autograd (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x / 6 + 0.5, 0.0, 1.0)


class ClampHardswish(nn.Module):
    """hardswish(x) = x · clamp(x/6 + 1/2, 0, 1), twice differentiable by autograd (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.clamp(x / 6 + 0.5, 0.0, 1.0)


REPLACEMENTS: dict[type[nn.Module], type[nn.Module]] = {nn.Hardsigmoid: ClampHardsigmoid, nn.Hardswish: ClampHardswish}


def _replace_activations(model: nn.Module) -> nn.Module:
    """``model`` with every :data:`REPLACEMENTS` module swapped in place (same names; they hold no parameters)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            replacement = REPLACEMENTS.get(type(child))
            if replacement is not None:
                setattr(parent, name, replacement())
    return model


class AdaptedClassifier(nn.Module):
    """x [B, C, H, W] ↦ net(resize(repeat(x))): see the module docstring."""

    def __init__(self, net: nn.Module, repeat_channels: bool, side: int | None) -> None:
        super().__init__()
        self.net, self.repeat_channels, self.side = net, repeat_channels, side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat_channels:
            x = x.expand(-1, 3, -1, -1)
        if self.side is not None:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        return self.net(x)


def _net(name: str, num_classes: int, side: int | None) -> nn.Module:
    from torchvision.models import get_model

    kwargs: dict = {"weights": None, "num_classes": num_classes}
    if name in AUXILIARY_HEADS:
        kwargs.update(aux_logits=False, init_weights=True)
    if side is not None and name.startswith("vit_"):
        kwargs["image_size"] = side  # the ViT builders pass it to VisionTransformer
    return _replace_activations(get_model(name, **kwargs))


def _probe(name: str, shape: tuple[int, int, int], num_classes: int, side: int | None) -> str | None:
    """None if the adapted model, built on the meta device, maps a batch of two ``shape`` images to
    [2, num_classes] in training mode; otherwise why not."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        try:
            model = AdaptedClassifier(_net(name, num_classes, side), shape[0] == 1, side).train()
        except RuntimeError as error:
            if "meta" in str(error):
                raise ValueError(
                    f"torchvision's {name!r} computes on tensors while it is constructed, so its size cannot be "
                    "checked before it is built (on the meta device); it is not accepted. Choose another architecture."
                ) from error
            return f"not constructible at side {side} ({error})"
        except (ValueError, AssertionError) as error:
            return f"not constructible at side {side} ({error})"
        try:
            out = model(torch.empty(2, *shape))
        except (RuntimeError, ValueError, AssertionError, IndexError) as error:
            return f"forward fails ({error})"
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        return f"returns {type(out).__name__} instead of logits [batch, {num_classes}]"
    return None


def build_torchvision(name: str, input_shape: tuple[int, ...], num_classes: int) -> AdaptedClassifier:
    """torchvision's ``name`` for images of ``input_shape`` (C, H, W) with C = 1 or 3, adapted as the module
    docstring says; ValueError if no side of :data:`SIDES` suits it."""
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise ValueError(
            f"torchvision's {name!r} takes images with 1 (greyscale, repeated) or 3 channels as (C, H, W); got "
            f"input shape {tuple(input_shape)}. For tabular data choose mlp or logreg."
        )
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    reasons = []
    native = (None,) if min(shape[1:]) >= MIN_SIDE else ()
    for side in (*native, *(s for s in SIDES if s > min(shape[1:]))):
        reason = _probe(name, shape, num_classes, side)
        if reason is None:
            return AdaptedClassifier(_net(name, num_classes, side), shape[0] == 1, side)
        reasons.append(reason)
    raise ValueError(
        f"torchvision's {name!r} accepts none of the image sides {list(SIDES)} for input shape {list(shape)} "
        f"(last: {reasons[-1]}); choose another architecture."
    )
