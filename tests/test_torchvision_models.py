"""Issue 17: any torchvision classification model by name, adapted to small greyscale images, with BatchNorm's
statistics recalibrated after training and Hessian-vector products through MobileNet-V3's activations."""

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models import list_models

from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.data import LabelledSet
from gif_core.model_card import ModelCard
from gif_core.models import ARCHITECTURES, architecture_names, build_model, is_architecture
from gif_core.torchvision_models import ClampHardsigmoid, ClampHardswish
from gif_core.train import Recipe, train_model


def test_the_accepted_names_are_ours_then_torchvisions_registry():
    names = architecture_names()
    assert names[: len(ARCHITECTURES)] == ARCHITECTURES
    assert set(names) == set(ARCHITECTURES) | set(list_models(module=torchvision.models))
    assert is_architecture("mobilenet_v3_small") and not is_architecture("bert") and not is_architecture(3)
    classes = [str(c) for c in range(10)]
    card = ModelCard(
        arch="mobilenet_v3_small",
        input_shape=(1, 28, 28),
        num_classes=10,
        classes=classes,
        dataset="mnist-bundled",
        split_seed=0,
    )
    assert card.arch == "mobilenet_v3_small"


@pytest.mark.parametrize(
    ("name", "side"), [("resnet50", 32), ("alexnet", 64), ("vit_b_16", 32), ("inception_v3", 96), ("maxvit_t", 224)]
)
def test_small_greyscale_images_are_resized_to_the_smallest_side_the_architecture_takes(name, side):
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = build_model(name, (1, 28, 28), 10)
        out = model.train()(torch.empty(2, 1, 28, 28))
    assert model.side == side and model.repeat_channels and out.shape == (2, 10)


def test_architectures_that_cannot_be_sized_or_fed_are_refused():
    with pytest.raises(ValueError, match="cannot be checked before it is built"):
        build_model("regnet_x_400mf", (3, 32, 32), 10)
    with pytest.raises(ValueError, match=r"1 \(greyscale, repeated\) or 3 channels"):
        build_model("resnet50", (2, 32, 32), 10)
    with pytest.raises(ValueError, match="mlp or logreg"):
        build_model("mobilenet_v3_small", (64,), 10)


def test_clamp_activations_equal_torchs_and_differentiate_twice():
    x = torch.linspace(-5, 5, 201, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(ClampHardsigmoid()(x), F.hardsigmoid(x)) and torch.allclose(
        ClampHardswish()(x), F.hardswish(x)
    )
    (first,) = torch.autograd.grad(ClampHardswish()(x).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), x)  # torch's own hardswish has no second derivative
    inside = (x.abs() < 3).detach()
    assert torch.allclose(second[inside], torch.full_like(second[inside], 1 / 3))
    assert bool((second[~inside] == 0).all())


def test_hessian_vector_products_through_mobilenet_v3_are_symmetric():
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", (1, 8, 8), 3).eval()
    assert not any(isinstance(m, nn.Hardswish | nn.Hardsigmoid) for m in model.modules())
    inputs, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    curvature = Curvature(model, (inputs, labels), CurvatureConfig(weight_decay=1e-3))
    u, v = (torch.randn(curvature.space.numel, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    hu, hv = curvature.hvp(u), curvature.hvp(v)
    assert bool(torch.isfinite(hu).all()) and float((hu - 1e-3 * u).norm()) > 0
    assert float(v @ hu) == pytest.approx(float(u @ hv), rel=1e-3)


def test_batch_norm_statistics_are_recalibrated_at_the_trained_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=0.01), nn.ReLU(), nn.Linear(4, 2))
    inputs = torch.randn(40, 3) * 3 + 2
    data = LabelledSet(inputs, (inputs[:, 0] > 2).long(), torch.arange(40))
    train_model(model, data, Recipe(epochs=2, batch_size=64, lr=1e-2))  # one batch holds the whole set
    with torch.no_grad():
        hidden = model[0](inputs)
    assert torch.allclose(model[1].running_mean, hidden.mean(0), atol=1e-5)
    assert torch.allclose(model[1].running_var, hidden.var(0, unbiased=True), rtol=1e-4)
    assert not model.training


@pytest.mark.slow
def test_a_torchvision_mobilenet_trained_by_gif_train_answers_a_class_removal_against_retraining(tmp_path, monkeypatch):
    """Issue 17's goal on small sizes: `gif train` of a torchvision registry model on 8x8 greyscale digits, then
    `gif remove` with GIF vs IF vs the retrained model, the report's rows and selection checked."""
    import json

    from gif_core.cli import main

    monkeypatch.setenv("GIF_CACHE_DIR", str(tmp_path / "cache"))
    weights, report_path = tmp_path / "mnv3.safetensors", tmp_path / "report.json"
    train = ["train", "--arch", "mobilenet_v3_small", "--data", "digits", "--epochs", "2"]
    assert main([*train, "--out", str(weights)]) == 0
    remove = ["remove", "--model", str(weights), "--class", "3", "--method", "gif,if", "--retrain", "--quiet"]
    assert main([*remove, "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["retrained"]["forget_acc"] == 0.0 and report["original"]["forget_acc"] > 50
    rows = {row["method"]: row for row in report["results"]}
    assert set(rows) == {"gif", "if"}
    for row in rows.values():
        assert not row["diverged"] and row["forget_acc"] < report["original"]["forget_acc"]
        assert 0 <= row["vs_retrain"]["avg_gap"] <= 100
    layers = report["selection"]["layers"]
    assert layers["net.classifier.3"]["units_selected"] >= 1  # the head of torchvision's MobileNet-V3
    assert any(layer["kind"] == "conv" and layer["units_selected"] >= 1 for layer in layers.values())


@pytest.mark.slow
def test_a_torchvision_mobilenet_loads_in_the_dashboard_and_its_what_if_edit_meets_the_retrained_model(
    tmp_path, monkeypatch, private_cache
):
    """Issue 17's goal in the dashboard: a MobileNet-V3 (BatchNorm, depthwise convs) trained by `gif train`,
    loaded from a local path like any checkpoint; the What-if page removes a class with GIF and IF beside the model
    retrained without it, and its table has one row each with the retrained model's class forgotten."""
    from conftest import open_page, wait_for_background_work

    from gif_core.cli import main

    monkeypatch.setenv("GIF_LOCAL_ROOTS", str(tmp_path))
    weights = tmp_path / "mnv3.safetensors"
    train = ["train", "--arch", "mobilenet_v3_small", "--data", "digits", "--epochs", "2", "--out", str(weights)]
    assert main(train) == 0
    at = open_page().run()
    at.radio(key="source").set_value("Local path").run()
    at.text_input(key="local_path").input(str(weights))
    at.button(key="load_path").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.switch_page("views/3_What-if_edit.py").run()
    at.multiselect(key="methods").set_value(["gif", "if"])
    at.button(key="run_edit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    report = at.session_state["edit"][1]
    assert [o.method for o in report.outcomes] == ["gif", "if"]
    assert report.retrained is not None and report.retrained["forget_acc"] == 0.0
    table = at.dataframe[0].value
    assert any(str(m).startswith("retrained") for m in table["model"])
    assert {"GIF", "IF"} <= {str(m).split(" ")[0] for m in table["model"]}
    wait_for_background_work(at)


@pytest.mark.slow
def test_a_resnet18_trained_by_gif_train_answers_a_class_removal_in_the_cli_and_the_dashboard(
    tmp_path, monkeypatch, private_cache
):
    """Issue 17's goal for ResNet-18 (BatchNorm in every block) on small sizes: trained once by `gif train` on 8x8
    greyscale digits; `gif remove` with GIF vs IF vs the retrained model, the report's rows and its per-layer
    selection checked (BatchNorm's γ and β move with their conv channel: conv1 holds 9 weights + 2 per unit);
    then the same file loaded in the dashboard from a local path, and the What-if page's GIF + IF removal beside
    the retrained model."""
    import json

    from conftest import open_page, wait_for_background_work

    from gif_core.cli import main

    monkeypatch.setenv("GIF_LOCAL_ROOTS", str(tmp_path))
    weights, report_path = tmp_path / "resnet18.safetensors", tmp_path / "report.json"
    train = ["train", "--arch", "resnet18", "--data", "digits", "--epochs", "2", "--out", str(weights)]
    assert main(train) == 0
    remove = ["remove", "--model", str(weights), "--class", "3", "--method", "gif,if", "--retrain", "--quiet"]
    assert main([*remove, "--hessian-samples", "64", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["retrained"]["forget_acc"] == 0.0 and report["original"]["forget_acc"] > 50
    rows = {row["method"]: row for row in report["results"]}
    assert set(rows) == {"gif", "if"}
    for row in rows.values():
        assert not row["diverged"] and row["forget_acc"] < report["original"]["forget_acc"]
        assert 0 <= row["vs_retrain"]["avg_gap"] <= 100
    layers = report["selection"]["layers"]
    assert layers["fc"]["units_selected"] >= 1
    stem = layers["conv1"]
    assert stem["units_selected"] >= 1 and stem["selected"] == stem["units_selected"] * (9 + 2)

    at = open_page().run()
    at.radio(key="source").set_value("Local path").run()
    at.text_input(key="local_path").input(str(weights))
    at.button(key="load_path").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.switch_page("views/3_What-if_edit.py").run()
    at.multiselect(key="methods").set_value(["gif", "if"])
    at.button(key="run_edit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    edited = at.session_state["edit"][1]
    assert [o.method for o in edited.outcomes] == ["gif", "if"]
    assert edited.retrained is not None and edited.retrained["forget_acc"] == 0.0
    table = at.dataframe[0].value
    assert any(str(m).startswith("retrained") for m in table["model"])
    assert {"GIF", "IF"} <= {str(m).split(" ")[0] for m in table["model"]}
    wait_for_background_work(at)
