"""Parameter selection as a person reads it (issue 18): layers named by their architecture, selectors A and B named
everywhere, a per-unit map for every Linear/Conv layer, a note on a layer with no unit, and no delta arrows."""

from __future__ import annotations

import pytest
import torch
from conftest import blobs, open_page, wait_for_background_work
from conftest import plotly_specs as _charts
from streamlit.testing.v1 import AppTest
from torch import nn

from gif_core.checkpoints import load_checkpoint
from gif_core.curvature import CurvatureConfig
from gif_core.params import ParamSpace
from gif_core.problem import ProblemConfig, prepare
from gif_core.requests import ClassRemoval
from gif_core.selection import (
    NEURON_METHODS,
    SelectionConfig,
    from_mask,
    layer_architecture,
    layer_title,
    layer_titles,
    layers_without_units,
    select,
)
from gif_core.zoo import default_model_path

PAGE = "views/2_Parameter_selection.py"


class Named(nn.Module):
    """Named submodules, as hand-written models have them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc2 = nn.Linear(128, 10)


# ---------------------------------------------------------------- layer titles


def test_layer_title_of_named_modules():
    model = Named()
    assert layer_title(model, "conv1") == "conv1 (Conv2d 1→16, 5×5)"
    assert layer_title(model, "fc2") == "fc2 (Linear 128→10)"
    assert layer_titles(model) == {"conv1": "conv1 (Conv2d 1→16, 5×5)", "fc2": "fc2 (Linear 128→10)"}


def test_layer_title_of_a_sequential_shows_kernel_stride_and_groups():
    model = nn.Sequential(
        nn.Conv2d(4, 8, (3, 5), stride=2, groups=2), nn.ReLU(), nn.Conv1d(2, 3, 7), nn.Conv3d(1, 2, 3), nn.Linear(6, 2)
    )
    assert layer_titles(model) == {
        "0": "0 (Conv2d 4→8, 3×5, stride 2×2, groups 2)",
        "2": "2 (Conv1d 2→3, 7)",
        "3": "3 (Conv3d 1→2, 3×3×3)",
        "4": "4 (Linear 6→2)",
    }


def test_layer_title_of_a_bare_linear_and_bad_names():
    assert layer_title(nn.Linear(4, 3), "") == "model (Linear 4→3)"
    with pytest.raises(ValueError, match=r"no module named 'fc9'; its Linear/Conv layers are 'conv1', 'fc2'"):
        layer_title(Named(), "fc9")
    with pytest.raises(ValueError, match="MaxPool2d is not a Linear, Conv or attention layer"):
        layer_architecture(Named().pool)


def test_bundled_cnn_titles_match_its_weight_shapes():
    model, _ = load_checkpoint(default_model_path(), device="cpu")
    state = model.state_dict()
    titles = layer_titles(model)
    assert list(titles) == [layer.module for layer in ParamSpace.from_model(model).layers]
    for name, title in titles.items():
        shape = tuple(state[f"{name}.weight"].shape)
        if len(shape) == 4:
            assert title == f"{name} (Conv2d {shape[1]}→{shape[0]}, {shape[2]}×{shape[3]})"
        else:
            assert title == f"{name} (Linear {shape[1]}→{shape[0]})"
    assert titles["0"] == "0 (Conv2d 1→16, 5×5)" and titles["9"] == "9 (Linear 64→10)"


# ---------------------------------------------------------------- layers without units


def test_layers_without_units_from_a_hand_made_mask():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    space = ParamSpace.from_model(model)
    first, second, _ = space.layers
    mask = torch.zeros(space.numel, dtype=torch.bool)
    mask[first.neuron_indices(torch.tensor([1]))] = True  # one whole neuron
    mask[second.weight.offset] = True  # one weight of a neuron, not the whole neuron
    summaries = layers_without_units(from_mask(space, mask))
    assert [(l.module, l.n_selected) for l in summaries] == [("2", 1), ("4", 0)]


@pytest.mark.parametrize("budget", ["per-layer", "global"])
@pytest.mark.parametrize("method", NEURON_METHODS)
def test_neuron_selectors_leave_no_layer_without_a_unit(method, budget):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 32), nn.ReLU(), nn.Linear(32, 3)
    ).double()
    damped = ProblemConfig(curvature=CurvatureConfig(damping=0.01))  # the ekfac selector's inverse needs λ + δ > 0
    problem = prepare(model, blobs(n=90, image=True), ClassRemoval(1), 3, damped)
    assert layers_without_units(select(problem, SelectionConfig(method, 0.01, budget))) == ()


# ---------------------------------------------------------------- the page


def _selected(first: str, second: str, ratio: float = 0.05) -> AppTest:
    return _run_selection(open_page(PAGE).run(), first, second, ratio)


def _run_selection(at: AppTest, first: str, second: str, ratio: float = 0.05) -> AppTest:
    at.selectbox(key="selector_a").select(first)
    at.selectbox(key="selector_b").select(second)
    at.select_slider(key="sel_ratio").set_value(ratio)
    at.button(key="run_select").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


@pytest.fixture(scope="module")
def gradient_vs_output(private_cache) -> AppTest:
    return _selected("gradient", "output")


CNN_TITLES = ["0 (Conv2d 1→16, 5×5)", "3 (Conv2d 16→32, 5×5)", "7 (Linear 512→64)", "9 (Linear 64→10)"]


@pytest.mark.slow
def test_page_names_layers_by_architecture_and_selectors_by_letter(gradient_vs_output):
    at = gradient_vs_output
    (table,) = at.dataframe
    counts = table.value
    assert [f"{l} ({a})" for l, a in zip(counts["layer"], counts["architecture"], strict=True)] == CNN_TITLES
    assert {"A (gradient): units", "A (gradient): parameters", "B (output): units", "B (output): parameters"} <= set(
        counts.columns
    )
    bars = _charts(at)[0]
    assert [trace["name"] for trace in bars["data"]] == ["A: gradient", "B: output"]
    assert all(list(trace["x"]) == CNN_TITLES for trace in bars["data"])


@pytest.mark.slow
def test_page_draws_a_per_unit_map_for_every_layer_linear_included(gradient_vs_output):
    titles = [chart["layout"]["title"]["text"] for chart in _charts(gradient_vs_output)[1:]]
    expected = [f"{letter} · {layer}: " for layer in CNN_TITLES for letter in ("A: gradient", "B: output")]
    assert len(titles) == len(expected) and all(t.startswith(e) for t, e in zip(titles, expected, strict=True)), titles
    head = [t for t in titles if "9 (Linear 64→10)" in t]
    assert len(head) == 2 and all(t.endswith(" of 10 neurons selected") for t in head)


@pytest.mark.slow
def test_page_metrics_have_no_delta_arrow(gradient_vs_output):
    metrics = gradient_vs_output.metric
    assert len(metrics) == 3 and all(m.proto.delta == "" for m in metrics), [m.proto.delta for m in metrics]
    assert [m.label for m in metrics][:2] == ["A: gradient: parameters selected", "B: output: parameters selected"]


@pytest.mark.slow
def test_page_notes_a_layer_given_zero_units(private_cache):
    at = _selected("param-gradient", "gradient", ratio=0.01)
    (sel_a, sel_b) = at.session_state["selection_view"][2]
    empty = layers_without_units(sel_a)
    assert empty and not layers_without_units(sel_b)
    notes = [i.value for i in at.info if "0 units" in i.value]
    assert len(notes) == len(empty)
    for layer, note in zip(empty, notes, strict=True):
        assert note.startswith(f"A: param-gradient gives {CNN_TITLES[['0', '3', '7', '9'].index(layer.module)]}")


@pytest.mark.slow
def test_page_draws_the_heads_of_a_loaded_vision_transformer(tmp_path, monkeypatch, private_cache):
    """The small ViT (ours, torchvision's VisionTransformer) loaded from a local path like any checkpoint: the page
    counts and draws its attention layers by head, whole heads selected, each head's q/k/v rows its parameters."""
    from gif_core.checkpoints import save_checkpoint
    from gif_core.model_card import ModelCard
    from gif_core.models import VIT_SIZE, build_model

    monkeypatch.setenv("GIF_LOCAL_ROOTS", str(tmp_path))
    torch.manual_seed(0)
    model = build_model("vit", (1, 28, 28), 10)
    card = ModelCard("vit", (1, 28, 28), 10, tuple(str(c) for c in range(10)), "mnist-bundled", 0, {})
    save_checkpoint(model, card, tmp_path / "vit.safetensors")
    at = open_page().run()
    at.radio(key="source").set_value("Local path").run()
    at.text_input(key="local_path").input(str(tmp_path / "vit.safetensors"))
    at.button(key="load_path").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.switch_page(PAGE).run()
    at = _run_selection(at, "gradient", "output")
    table = at.dataframe[0].value
    attention = table[table["architecture"].str.startswith("MultiheadAttention")]
    d, heads = VIT_SIZE["hidden_dim"] // VIT_SIZE["num_heads"], VIT_SIZE["num_heads"]
    assert list(attention["layer"]) == [f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(2)]
    assert list(attention["units"]) == [heads, heads]
    per_head = 3 * d * (VIT_SIZE["hidden_dim"] + 1)  # its query, key and value rows with their biases
    for letter in ("A (gradient)", "B (output)"):
        units, params = attention[f"{letter}: units"], attention[f"{letter}: parameters"]
        assert all(u >= 1 for u in units) and list(params) == [u * per_head for u in units]
    titles = [chart["layout"]["title"]["text"] for chart in _charts(at)[1:]]
    head_maps = [t for t in titles if "self_attention (MultiheadAttention" in t]
    assert len(head_maps) == 4 and all(f"of {heads} heads selected" in t for t in head_maps), head_maps
    wait_for_background_work(at)
