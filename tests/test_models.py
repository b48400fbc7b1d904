"""Architectures: forward shapes, exact sizes, stable parameter names, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gif_core.models import ARCHITECTURES, build_model


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_image_forward_shapes(arch: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(arch, shape, 10).eval()
    with torch.no_grad():
        out = model(torch.rand(2, *shape))
    assert out.shape == (2, 10)
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("arch", ["mlp", "logreg"])
def test_tabular_forward_shape(arch: str) -> None:
    out = build_model(arch, (4,), 3)(torch.randn(5, 4))
    assert out.shape == (5, 3)


def test_exact_parameter_counts() -> None:
    # logreg: one Linear(F, K).
    assert _count(build_model("logreg", (1, 28, 28), 10)) == 784 * 10 + 10
    assert _count(build_model("logreg", (4,), 3)) == 4 * 3 + 3
    # mlp: F -> 64 -> 64 -> K.
    assert _count(build_model("mlp", (1, 28, 28), 10)) == (784 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10)
    assert _count(build_model("mlp", (4,), 3)) == (4 * 64 + 64) + (64 * 64 + 64) + (64 * 3 + 3)
    # cnn: conv5x5 C->16, pool, conv5x5 16->32, pool, Linear(32*s*s, 64), Linear(64, K); s = 4 at 28, 5 at 32.
    conv = (1 * 16 * 25 + 16) + (16 * 32 * 25 + 32)
    assert _count(build_model("cnn", (1, 28, 28), 10)) == conv + (32 * 4 * 4 * 64 + 64) + (64 * 10 + 10) == 46730
    conv_rgb = (3 * 16 * 25 + 16) + (16 * 32 * 25 + 32)
    assert _count(build_model("cnn", (3, 32, 32), 10)) == conv_rgb + (32 * 5 * 5 * 64 + 64) + (64 * 10 + 10)


def test_cnn_has_no_batchnorm_or_dropout_and_stable_names() -> None:
    model = build_model("cnn", (1, 28, 28), 10)
    kinds = {type(m) for m in model.modules()}
    assert kinds <= {nn.Sequential, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear}
    assert [name for name, _ in model.named_parameters()] == [
        "0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias",
    ]  # fmt: skip


def test_small_image_adaptations() -> None:
    resnet = build_model("resnet18", (1, 28, 28), 7)
    assert resnet.conv1.in_channels == 1 and resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, nn.Identity)
    assert resnet.fc.out_features == 7
    vgg = build_model("vgg11", (3, 32, 32), 7)
    assert vgg.features[0].in_channels == 3
    assert vgg.classifier[-1].out_features == 7
    assert max(m.out_features for m in vgg.classifier if isinstance(m, nn.Linear)) < 4096


def test_the_small_vit_reads_greyscale_patches_and_its_attention_heads_are_selection_units() -> None:
    from gif_core.params import ParamSpace

    model = build_model("vit", (1, 28, 28), 10)
    assert model.conv_proj.in_channels == 1 and model.conv_proj.kernel_size == (7, 7) and model.seq_length == 17
    space = ParamSpace.from_model(model)
    heads = [layer for layer in space.layers if layer.kind == "attention"]
    assert [(layer.module, layer.n_neurons) for layer in heads] == [
        (f"encoder.layers.encoder_layer_{i}.self_attention", 4) for i in range(2)
    ]
    assert build_model("vit", (1, 8, 8), 3).conv_proj.kernel_size == (2, 2)


def test_errors_list_the_choices() -> None:
    with pytest.raises(ValueError, match="mlp, logreg, cnn, lenet, resnet18, vgg11, vit"):
        build_model("transformer", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="mlp or logreg"):
        build_model("cnn", (4,), 3)
    with pytest.raises(ValueError, match="at least 16x16"):
        build_model("cnn", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="square images whose side is a multiple of 4"):
        build_model("vit", (1, 28, 30), 10)
    with pytest.raises(ValueError, match="2 classes"):
        build_model("mlp", (4,), 1)
