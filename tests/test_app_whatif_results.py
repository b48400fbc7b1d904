"""The What-if page's results as a person reads them (issue 18, "Results a person can read"): the metrics table
(human column names with units, one decimal, blank empty cells, the best edit of each column marked, each edit's
status on its row instead of one banner), the run history of the session and its one-file download, and the
backdoor view (the trigger, triggered test images, each model's predictions on them). The table's presentation
functions are also checked on hand-built rows, without Streamlit."""

from __future__ import annotations

import io
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import streamlit
import torch
from conftest import open_page
from PIL import Image
from streamlit import dataframe_util
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from app import metrics_table
from app.metrics_table import BEST_MARK, HistoryEntry

EDIT_PAGE = "views/3_What-if_edit.py"
PERCENT = re.compile(rf"^\d+\.\d( {BEST_MARK})?$")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("private_cache")]


def edit_page(model: str) -> AppTest:
    """The What-if page opened on a bundled model by its URL (as a shared link would)."""
    at = open_page(EDIT_PAGE)
    at.query_params["bundled"] = model
    at.run()
    assert not at.exception, at.exception
    return at


def run_edit(at: AppTest) -> AppTest:
    at.button(key="run_edit").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def table_with(at: AppTest, prefix: str) -> pd.DataFrame:
    """The one table on the page with a column whose name starts with ``prefix``."""
    (table,) = [t.value for t in at.dataframe if any(str(c).startswith(prefix) for c in t.value.columns)]
    return table


def shown_cells(table) -> pd.DataFrame:
    """The cells as st.dataframe draws them (the Styler's display values), not the numbers underneath."""
    return dataframe_util.convert_arrow_bytes_to_pandas_df(table.proto.arrow_data.styler.display_values)


# ---------------------------------------------------------------- presentation functions, on hand-built rows

ROWS = [
    {"model": "original", "status": "", "forget_acc": 100.0, "retain_acc": 99.0, "mia": None},
    {"model": "retrained (cache)", "status": "ground truth", "forget_acc": 50.0, "retain_acc": 97.5, "mia": 30.0},
    {"model": "GIF", "status": "ok", "forget_acc": 45.0, "retain_acc": 96.04, "mia": 28.0, "avg_gap": 1.5, "step": 8.0},
    {"model": "IF", "status": "ok", "forget_acc": 90.0, "retain_acc": 96.5, "mia": 40.0, "avg_gap": 3.0, "step": 2.0},
    {"model": "FIF", "status": "ok", "forget_acc": 60.0, "retain_acc": 96.5, "mia": 31.0, "avg_gap": 1.5, "step": 2.0},
]
EDITS = [2, 3, 4]


def test_the_best_edit_of_each_column_is_marked_by_that_columns_rule():
    frame = metrics_table.raw_frame(ROWS)
    best = metrics_table.best_mask(frame, EDITS, reference=1)
    marked = {key: list(frame.loc[best[key], "model"]) for key in frame.columns if best[key].any()}
    assert marked == {
        "avg_gap": ["GIF", "FIF"],  # lower is better; a tie marks both
        "forget_acc": ["GIF"],  # closest to the retrained 50 (|45 − 50| = 5), not the largest (IF's 90)
        "retain_acc": ["IF", "FIF"],  # higher is better among the edits; the original's 99 is never marked
        "mia": ["FIF"],  # |31 − 30| = 1 beats |28 − 30| = 2: closest to retrained, not the largest (IF's 40)
    }
    assert "step" not in marked and "model" not in marked  # no best step, no best name


def test_without_the_retrained_model_closest_to_retrained_columns_mark_nothing():
    frame = metrics_table.raw_frame(ROWS)
    best = metrics_table.best_mask(frame, EDITS, reference=None)
    assert not best["forget_acc"].any() and not best["mia"].any() and best["retain_acc"].any()


def test_a_column_where_every_edit_is_equal_or_only_one_edit_has_a_value_marks_nothing():
    rows = [{**row, "test_acc": 90.0} for row in ROWS]
    rows[2]["kl"] = 0.1
    frame = metrics_table.raw_frame(rows)
    best = metrics_table.best_mask(frame, EDITS, reference=1)
    assert not best["test_acc"].any() and not best["kl"].any()


def test_cells_read_with_one_decimal_blank_when_empty_and_starred_when_best():
    assert metrics_table.cell_text(96.04, "retain_acc") == "96.0"
    assert metrics_table.cell_text(96.05001, "retain_acc", best=True) == f"96.1 {BEST_MARK}"
    assert metrics_table.cell_text(math.nan, "mia") == "" and metrics_table.cell_text(None, "mia") == ""
    assert metrics_table.cell_text(0.6129, "residual") == "6.1e-01"
    assert metrics_table.cell_text(10.0, "hvps") == "10"
    frame = metrics_table.raw_frame(ROWS)
    best = metrics_table.best_mask(frame, EDITS, reference=1)
    shown = metrics_table.styled(frame, tuple(frame.columns), best).to_string(delimiter="|")
    assert "nan" not in shown.lower() and "None" not in shown
    assert f"|45.0 {BEST_MARK}|" in shown and "|96.0|" in shown  # GIF's forget accuracy is the best, one decimal


def test_the_legend_explains_the_shown_columns_and_the_step_objective():
    from gif_core.requests import ClassRemoval

    frame = metrics_table.raw_frame([{**row, "f1": 50.0} for row in ROWS])
    text = metrics_table.legend(tuple(frame.columns), ClassRemoval(3), backdoor=False)
    for words in ("F1 (%)", "not a macro F1", "MIA (%)", "members", "Avg. Gap vs retrained (pp)", "lower"):
        assert words in text
    assert "closest to retrained" in text and "Validation objective" in text and "validation images" in text
    assert "**Test accuracy (%)**" not in text and "Attack success" not in text  # only the columns shown


def test_the_combined_download_is_one_json_list_of_every_report():
    entries = [HistoryEntry((), json.dumps({"request": {"kind": "class-removal", "class": c}})) for c in (1, 2)]
    combined = json.loads(metrics_table.combined_json(entries))
    assert [report["request"]["class"] for report in combined] == [1, 2]


def test_the_probability_grid_is_one_figure_a_panel_per_image_each_model_in_its_colour_and_one_legend():
    from app import charts

    classes = ["setosa", "versicolor", "virginica"]
    rows = {name: np.array([0.2, 0.3, 0.5]) for name in ("original", "retrained", "GIF", "IF")}
    panels = [(f"test #{i}", rows) for i in range(4)]
    grid = charts.probability_grid(panels, classes, per_row=3)
    assert [a.text for a in grid.layout.annotations] == [f"test #{i}" for i in range(4)]
    assert len(grid.data) == 4 * 4 and [t.marker.color for t in grid.data[:4]] == [charts.colour_of(n) for n in rows]
    assert [t.showlegend for t in grid.data] == [True] * 4 + [False] * 12  # the legend names each model once
    assert {t.xaxis for t in grid.data[12:]} == {"x4"} and grid.layout.xaxis4.domain == grid.layout.xaxis.domain
    assert list(grid.data[0].x) == classes and list(grid.data[-1].y) == [0.2, 0.3, 0.5]
    assert grid.layout.legend.orientation == "h" and grid.layout.legend.y < 0


# ---------------------------------------------------------------- the page


def test_the_metrics_table_reads_as_a_person_reads_it():
    at = edit_page("iris_mlp")
    at.multiselect(key="methods").set_value(["gif", "if", "fif"])
    at.number_input(key="maxiter").set_value(1)  # the solves stop before the tolerance
    run_edit(at)
    report = at.session_state["edit"][1]
    table = at.dataframe[0]
    columns = list(table.value.columns)
    assert columns[:5] == [
        "model",
        "status",
        "Avg. Gap vs retrained (pp)",
        "Agreement with retrained (%)",
        "KL from retrained (nats)",
    ]
    human = {"Forget accuracy (%)", "Retain accuracy (%)", "Test accuracy (%)", "F1 (%)", "Step α", "Seconds"}
    assert human | {"Hessian-vector products", "Residual"} <= set(columns)
    assert not {"forget_acc", "test_acc", "HVPs", "residual", "converged", "diverged"} & set(columns)
    cells = shown_cells(table)
    text = cells.to_string()
    assert "None" not in text and "nan" not in text.lower()
    assert table.proto.HasField("placeholder") and table.proto.placeholder == ""  # a missing value shows blank
    for column in ("Forget accuracy (%)", "Retain accuracy (%)", "Test accuracy (%)", "F1 (%)"):
        assert all(PERCENT.match(cell) for cell in cells[column]), list(cells[column])
    retain = [o.metrics["retain_acc"] for o in report.outcomes]
    assert len(set(retain)) > 1, retain  # the edits differ here, so one of them is the best
    best_row = 2 + int(np.argmax(retain))  # after the original and the retrained rows
    assert cells["Retain accuracy (%)"].iloc[best_row].endswith(BEST_MARK)
    assert not cells["Retain accuracy (%)"].iloc[:2].str.contains(BEST_MARK).any()  # never the reference rows
    statuses = table.value["status"]
    assert statuses.iloc[1] == "ground truth"
    assert all("not converged (residual" in s for s in statuses.iloc[2:]), list(statuses)
    assert not any("Some solves stopped" in c.value for c in at.caption)  # the banner is gone: the rows say it
    legend = " ".join(m.value for m in at.markdown)
    assert "F1 (%)" in legend and "MIA" in legend and "Avg. Gap" in legend and "Validation objective" in legend


def test_every_run_is_kept_in_the_history_and_downloads_as_one_json_report(monkeypatch):
    downloads: dict[str, object] = {}
    original = streamlit.download_button

    def recording(label, data, *args, **kwargs):
        downloads[kwargs.get("key")] = data
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(streamlit, "download_button", recording)
    at = edit_page("iris_mlp")
    at.checkbox(key="with_retrain").uncheck()
    run_edit(at)
    model_id = at.session_state["workspace"].model_id
    assert len(at.session_state["edit_history"][model_id]) == 1
    at.radio(key="step_mode").set_value("fixed").run()
    at.number_input(key="step_value").set_value(0.5)
    run_edit(at)
    at.multiselect(key="prob_rows").set_value([0]).run()  # a rerun without a click adds no run
    history = at.session_state["edit_history"][model_id]
    assert len(history) == 2
    table = table_with(at, "question")
    assert list(table["run"]) == [1, 1, 2, 2] and list(table["model"]) == ["GIF", "IF", "GIF", "IF"]
    assert table["settings"].iloc[2].count("α = 0.5") == 1 and "auto α" in table["settings"].iloc[0]
    reports = json.loads(downloads["download_history"])
    assert len(reports) == 2 and [r["config"]["step"] for r in reports] == ["auto", 0.5]
    assert reports[1] == json.loads(at.session_state["edit"][1].to_json())
    assert not any(hasattr(value, "parameters") for entry in history for value in vars(entry).values())


def _has_corner_trigger(png: bytes, pattern: np.ndarray) -> bool:
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    size = len(pattern)
    return image.shape == (28, 28) and np.array_equal(image[-size:, -size:], pattern * 255)


def test_the_backdoor_view_shows_the_trigger_triggered_images_and_each_models_predictions(monkeypatch):
    stored: list[bytes] = []
    load = MemoryMediaFileStorage.load_and_get_id

    def recording(self, path_or_data, mimetype, kind, filename=None):
        if isinstance(path_or_data, bytes) and mimetype.startswith("image/"):
            stored.append(path_or_data)
        return load(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recording)
    at = edit_page("mnist_cnn_backdoor")
    at.radio(key="edit_kind").set_value("Undo the backdoor")
    at.multiselect(key="methods").set_value(["gif"])
    at.checkbox(key="with_retrain").uncheck()
    at.number_input(key="hess_n").set_value(64)
    at.number_input(key="maxiter").set_value(2)
    run_edit(at)
    loaded, report = at.session_state["workspace"], at.session_state["edit"][1]
    captions = [c for image in at.get("image") for c in image.captions]
    assert any(c.startswith("the trigger: 4×4 checkerboard, bottom-right") for c in captions), captions
    triggered = [c for c in captions if c.startswith("test #") and "true" in c]
    assert len(triggered) == 6 and len({c.split("true ")[1] for c in triggered}) == 6  # a mix of classes
    pattern = loaded.backdoor.trigger.pattern().numpy().astype(np.uint8)
    assert sum(_has_corner_trigger(png, pattern) for png in stored) >= 6  # the shown test images carry the trigger
    predictions = table_with(at, "test #").set_index("model")
    assert list(predictions.index) == ["original (before)", "GIF (after)"]
    assert predictions.loc["original (before)", "Attack success (%)"] == f"{report.original['attack_success_rate']:.1f}"
    gif = report.outcomes[0].metrics["attack_success_rate"]
    assert predictions.loc["GIF (after)", "Attack success (%)"] == f"{gif:.1f}"
    assert len(predictions.columns) == 1 + 6 and all(c.startswith("test #") for c in predictions.columns[1:])
    assert predictions.loc["original (before)"].str.contains("(target)", regex=False).any()  # the backdoor works
    history = at.session_state["edit_history"][loaded.model_id]
    assert history[0].rows[0]["question"].startswith("undo the backdoor")


def test_the_curvature_and_solver_settings_shown_are_the_ones_the_edit_uses():
    """Every widget of the settings expander starts at the library's default and reaches the edit's config."""
    from gif_core.experiment import EditConfig

    at = edit_page("iris_mlp")
    defaults = EditConfig()
    assert at.number_input(key="damping").value == defaults.curvature.damping
    assert at.number_input(key="ridge").value == defaults.solver.gif_ridge
    assert at.number_input(key="maxiter").value == defaults.solver.maxiter
    assert at.number_input(key="rtol").value == defaults.solver.rtol
    assert at.selectbox(key="hess_data").value == defaults.curvature.data
    assert at.selectbox(key="ls_solver").value == defaults.solver.least_squares_solver
    assert at.selectbox(key="sym_solver").value == defaults.solver.symmetric_solver
    assert not at.checkbox(key="gauss_newton").value
    at.multiselect(key="methods").set_value(["gif", "if"])
    at.checkbox(key="with_retrain").uncheck()
    at.number_input(key="hess_n").set_value(64)
    at.selectbox(key="hess_data").select("all")
    at.number_input(key="damping").set_value(0.1)
    at.selectbox(key="dtype").select("float64")
    at.checkbox(key="gauss_newton").check()
    at.number_input(key="rtol").set_value(1e-6)
    at.number_input(key="maxiter").set_value(7)
    at.number_input(key="ridge").set_value(0.0)
    at.selectbox(key="sym_solver").select("cg")
    run_edit(at)
    report = at.session_state["edit"][1]
    curvature, solver = report.config.curvature, report.config.solver
    assert (curvature.samples, curvature.data, curvature.damping) == (64, "all", 0.1)
    assert (curvature.dtype, curvature.gauss_newton, curvature.linearize) == ("float64", True, True)
    assert (solver.rtol, solver.maxiter, solver.gif_ridge, solver.symmetric_solver) == (1e-6, 7, 0.0, "cg")
    gif, full = report.outcomes
    assert gif.result.delta.dtype == full.result.delta.dtype == torch.float64
    assert full.result.reports[0].name == "cg" and not gif.diverged and not full.diverged


def test_charts_keep_fixed_margins_except_where_tick_labels_are_long_names():
    """Fixed margins spare plotly.js its margin-growing redraws (benchmarks/results/click_profile.md); the layer
    chart's tick labels are architecture titles of any length, so plotly may grow its margins."""
    from app import charts
    from gif_core.comparison import predictions_of
    from gif_core.data import LabelledSet

    classes = ["a", "b", "c"]
    labels = torch.tensor([0, 1, 2, 2])
    probs = {"original": torch.eye(3)[[0, 1, 2, 1]], "GIF": torch.eye(3)[[0, 1, 2, 2]]}
    split = LabelledSet(torch.zeros(4, 2), labels, torch.arange(4), None)
    predictions = predictions_of(probs, split, 3)
    figures = [
        charts.per_class_accuracy(predictions, classes),
        charts.confusion(predictions[0], classes),
        charts.step_curves({"GIF": [(1.0, 50.0), (2.0, 60.0)]}),
        charts.probability_grid([("test #0", {"GIF": np.array([0.2, 0.3, 0.5])})], classes, per_row=3),
    ]
    for fig in figures:
        assert fig.layout.margin.autoexpand is False and fig.layout.margin.r is not None
        assert fig.layout.xaxis.automargin is False and fig.layout.yaxis.automargin is False
    selection = SimpleNamespace(layers=[SimpleNamespace(module="0", fraction=0.05)])  # what the chart reads
    layers = charts.layer_fractions({"A": selection}, {"0": "0 (Conv2d 1→16, 5×5)"})
    assert layers.layout.margin.autoexpand is None and layers.layout.xaxis.automargin is None
