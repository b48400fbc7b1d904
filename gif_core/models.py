"""Classifier architectures, built from an input shape and a number of classes.

Our seven (:data:`ARCHITECTURES`) and every torchvision classification model by its registry name
(:mod:`gif_core.torchvision_models`, behind an input adapter for small or greyscale images; ``resnet18`` and
``vgg11`` are ours: torchvision's with a small-image stem and head; ``vit`` is torchvision's VisionTransformer at a
size that trains on CPU in minutes, the small attention model of the tool). Parameter names are stable (plain
``nn.Sequential`` and named submodules), so checkpoints and parameter selections refer to the same tensors across
runs. ``cnn`` is the default: small (46,730 parameters at 28x28), no BatchNorm and no dropout, so Hessian-vector
products on it are cheap and exact.
"""

from __future__ import annotations

from torch import nn

from gif_core.torchvision_models import build_torchvision, torchvision_names

ARCHITECTURES: tuple[str, ...] = ("mlp", "logreg", "cnn", "lenet", "resnet18", "vgg11", "vit")
"""Our own architectures; :func:`architecture_names` adds torchvision's registry."""
IMAGE_ARCHITECTURES: tuple[str, ...] = ("cnn", "lenet", "resnet18", "vgg11", "vit")


def architecture_names() -> tuple[str, ...]:
    """Every accepted name: ours, then torchvision's classification models (its registry, not a list kept here)."""
    return (*ARCHITECTURES, *(name for name in torchvision_names() if name not in ARCHITECTURES))


def is_architecture(name: object) -> bool:
    """Whether ``name`` is one of ours or a torchvision classification model (torchvision is imported only for a
    name that is not ours)."""
    return isinstance(name, str) and (name in ARCHITECTURES or name in torchvision_names())


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised ``arch`` for per-sample inputs of ``input_shape`` (``(C, H, W)`` or ``(F,)``).

    The initialisation draws from torch's global random generator: seed it (or use
    :func:`gif_core.train.build_and_train`) for reproducible weights.
    """
    if not is_architecture(arch):
        raise ValueError(unknown_architecture(repr(arch)))
    shape = tuple(int(d) for d in input_shape)
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if arch not in ARCHITECTURES:
        return build_torchvision(arch, shape, num_classes)
    if arch in IMAGE_ARCHITECTURES and len(shape) != 3:
        raise ValueError(
            f"{arch!r} needs image inputs (C, H, W), got shape {shape}; for tabular data choose mlp or logreg"
        )
    if arch == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(_size(shape), num_classes))
    if arch == "mlp":
        return _mlp(_size(shape), num_classes)
    if arch == "cnn":
        return _cnn(shape, num_classes)
    if arch == "lenet":
        return _lenet(shape, num_classes)
    if arch == "resnet18":
        return _resnet18(shape[0], num_classes)
    if arch == "vit":
        return _vit(shape, num_classes)
    return _vgg11(shape[0], num_classes)


def unknown_architecture(shown: str) -> str:
    """The message for a name (``shown`` as the caller quotes it) that is neither ours nor torchvision's."""
    return (
        f"unknown architecture {shown}; choose one of {', '.join(ARCHITECTURES)} or a torchvision classification "
        "model by name (e.g. resnet50, mobilenet_v3_small, efficientnet_b0, convnext_tiny, vit_b_16)"
    )


def _size(shape: tuple[int, ...]) -> int:
    size = 1
    for d in shape:
        size *= d
    return size


def _check_min_side(arch: str, shape: tuple[int, ...], minimum: int) -> None:
    if min(shape[1:]) < minimum:
        raise ValueError(f"{arch!r} needs images of at least {minimum}x{minimum}, got {shape[1]}x{shape[2]}")


def _mlp(in_features: int, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def _cnn(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """conv5x5(16) - pool - conv5x5(32) - pool - linear(64) - linear(classes), ReLU, unpadded convs."""
    _check_min_side("cnn", shape, 16)
    channels, height, width = shape
    side_h, side_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
    flat = 32 * side_h * side_w
    return nn.Sequential(
        nn.Conv2d(channels, 16, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def _lenet(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-5 with ReLU and max-pooling; the first conv is padded so 28x28 and 32x32 inputs both work."""
    _check_min_side("lenet", shape, 12)
    channels, height, width = shape
    side_h, side_w = (height // 2 - 4) // 2, (width // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(channels, 6, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side_h * side_w, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def _resnet18(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 for small images: 3x3 stride-1 stem, no stem max-pool."""
    from torchvision import models as tv_models  # imported here: torchvision.models costs ~2 s to import

    model = tv_models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _vgg11(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's VGG-11 (no BatchNorm) for small images.

    The first conv takes ``in_channels``; the five max-pools round up (``ceil_mode``) so a 28x28 input still
    reaches 1x1; the head is global average pooling and a 512-512-classes MLP instead of the 4096-wide one.
    """
    from torchvision import models as tv_models  # imported here: torchvision.models costs ~2 s to import

    model = tv_models.vgg11(weights=None)
    model.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    for layer in model.features:
        if isinstance(layer, nn.MaxPool2d):
            layer.ceil_mode = True
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, num_classes))
    return model


VIT_SIZE = {"num_layers": 2, "num_heads": 4, "hidden_dim": 32, "mlp_dim": 64}
"""The small ViT's encoder: 2 blocks of 4 heads of 8 (one packed ``nn.MultiheadAttention`` each), MLP 64."""


def _vit(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision's VisionTransformer (:data:`VIT_SIZE`) on square images of side s divisible by 4: a 4×4 grid
    of patches of side s/4 (7 at 28×28), a class token, and the patch embedding reading ``C`` channels (it is
    re-made for C ≠ 3 with torchvision's own initialisation: truncated normal, std √(1/fan_in), zero bias)."""
    import math

    from torchvision.models import VisionTransformer  # imported here: torchvision.models costs ~2 s to import

    channels, height, width = shape
    if height != width or height % 4 or height < 8:
        raise ValueError(
            f"'vit' needs square images whose side is a multiple of 4 (at least 8x8), got {height}x{width}"
        )
    patch = height // 4
    model = VisionTransformer(image_size=height, patch_size=patch, num_classes=num_classes, **VIT_SIZE)
    if channels != 3:
        hidden = VIT_SIZE["hidden_dim"]
        model.conv_proj = nn.Conv2d(channels, hidden, kernel_size=patch, stride=patch)
        nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / (channels * patch * patch)))
        nn.init.zeros_(model.conv_proj.bias)
    return model
