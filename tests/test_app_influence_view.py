"""The Influential samples page as a reader meets it (issue 18): scores with their scale and class names, the score
histogram, agreement between methods, influence on a set or a class, the CSV of the full ranking, picking single
samples for What-if, and tabular samples shown with their feature values. On the bundled Iris MLP (fast)."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
import streamlit as st
import torch
from conftest import finish_jobs, no_errors, open_page
from scipy.stats import spearmanr
from streamlit.testing.v1 import AppTest

from gif_core.browse import SET_LIMIT, Explanation, SetExplanation
from gif_core.workspace import open_workspace_path
from gif_core.zoo import bundled_model_path

PAGE = "views/1_Influential_samples.py"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("private_cache")]


@pytest.fixture(scope="module")
def iris():
    """The bundled Iris MLP's workspace, read independently of the page."""
    return open_workspace_path(bundled_model_path("iris_mlp"))


@pytest.fixture
def downloads(monkeypatch) -> dict[str, object]:
    """What each download button on the page offered, by its key."""
    offered: dict[str, object] = {}
    original = st.download_button

    def recording(label, data, *args, **kwargs):
        offered[kwargs.get("key")] = data
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(st, "download_button", recording)
    return offered


def iris_page() -> AppTest:
    at = open_page(PAGE)
    at.query_params["bundled"] = "iris_mlp"
    at.run()
    no_errors(at)
    return at


def explain(at: AppTest, method: str) -> Explanation | SetExplanation:
    at.radio(key="browse_method").set_value(method)
    finish_jobs(at.button(key="explain").click().run())
    no_errors(at)
    return at.session_state["explanation"][2]


def chart_titles(at: AppTest) -> list[str]:
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    return [spec["layout"].get("title", {}).get("text", "") for spec in specs]


def test_one_point_shows_histogram_class_names_relative_scores_features_and_a_full_csv(iris, downloads):
    at = iris_page()
    row = at.selectbox(key="test_row").value
    explanation = explain(at, "tracin")
    assert at.session_state["explanation"][1] == row
    n, classes = len(iris.train), iris.bundle.classes
    assert f"Scores of all {n} training samples" in chart_titles(at)
    assert any("Units:" in c.value and "relative to the largest |score|" in c.value for c in at.caption)
    helpful = at.dataframe[0].value
    first = explanation.helpful[0]
    top = float(explanation.scores.abs().max())
    assert helpful["sample"][0] == (
        f"helpful {first.score:+.2e} ({first.score / top:+.2f} of max) · {classes[first.label]} · #{first.row}"
    )
    assert all(any(name in caption for name in classes) for caption in helpful["sample"])
    features = helpful[[f"feature {j}" for j in (1, 2, 3, 4)]].to_numpy()
    expected = iris.train.inputs[[r.row for r in explanation.helpful]].numpy()
    assert features.shape == expected.shape and abs(features - expected).max() < 1e-3
    table = pd.read_csv(io.StringIO(downloads["ranking_csv"]))
    assert len(table) == n and sorted(table["row"]) == list(range(n))
    assert list(table.columns) == ["rank", "row", "source_index", "label", "score", "relative_score", "kind"]
    assert (table["score"].diff().dropna() <= 0).all() and table["relative_score"].abs().max() == pytest.approx(1)
    assert set(table["label"]) <= set(classes)
    assert (table.loc[table["kind"] == "helpful", "score"] > 0).all()
    assert (table.loc[table["kind"] == "harmful", "score"] < 0).all()
    tie = 1e-6 * top
    assert (table.loc[table["kind"] == "tie", "score"].abs() <= tie).all()
    by_row = table.set_index("row")
    assert by_row.loc[first.row, "source_index"] == int(iris.train.source_index[first.row])
    assert by_row.loc[first.row, "label"] == classes[int(iris.train.labels[first.row])]


def test_agreement_table_appears_once_two_methods_explained_the_same_point():
    at = iris_page()
    tracin = explain(at, "tracin")
    assert any("Only one method" in i.value for i in at.info)
    assert not any("Spearman ρ" in d.value.columns for d in at.dataframe)
    captum = explain(at, "captum-tracincp")  # with λ > 0 the two differ by a constant offset per test point
    agreement = next(d.value for d in at.dataframe if "Spearman ρ" in d.value.columns)
    assert len(agreement) == 1
    assert set(agreement.iloc[0][["method A", "method B"]]) == {"TracIn (final checkpoint)", "Captum TracInCP"}
    expected = spearmanr(tracin.scores.numpy(), captum.scores.numpy()).statistic
    # nearly the same order: they differ by a constant offset, up to float32 rounding among near-ties
    assert expected > 0.99 and agreement.iloc[0]["Spearman ρ"] == f"{expected:+.3f}"
    explain(at, "gif")
    agreement = next(d.value for d in at.dataframe if "Spearman ρ" in d.value.columns)
    assert len(agreement) == 3  # every pair of the three methods
    assert agreement.iloc[0]["method A"] == "GIF-restricted"  # the current method first


def test_picking_two_individual_samples_sends_exactly_those_rows():
    at = iris_page()
    explanation = explain(at, "tracin")
    wanted = [explanation.helpful[1].row, explanation.harmful[0].row]
    at.multiselect(key="pick_rows").set_value(wanted).run()
    no_errors(at)
    at.button(key="send_picked").click().run()
    no_errors(at)
    assert at.session_state["picked_rows"] == wanted
    at.button(key="pick_helpful").click().run()  # the one-click "all helpful" still works
    assert at.session_state["picked_rows"] == [r.row for r in explanation.helpful]


def test_a_set_of_rows_and_a_whole_class_are_explained_by_their_mean_loss(iris):
    at = iris_page()
    at.radio(key="explain_mode").set_value("a set of test images").run()
    at.multiselect(key="test_rows").set_value([0, 3]).run()
    result = explain(at, "tracin")
    assert isinstance(result, SetExplanation) and at.session_state["explanation"][1] == (0, 3)
    assert result.labels == tuple(int(iris.bundle.test.labels[r]) for r in (0, 3))
    assert any("2 test images" in m.value for m in at.markdown)
    at.radio(key="explain_mode").set_value("a whole class").run()
    at.selectbox(key="set_class").select("versicolor").run()
    result = explain(at, "tracin")
    rows = (iris.bundle.test.labels == iris.bundle.classes.index("versicolor")).nonzero().flatten().tolist()
    assert len(rows) <= SET_LIMIT and at.session_state["explanation"][1] == tuple(rows)
    assert result.labels == tuple(int(iris.bundle.test.labels[r]) for r in rows)
    assert any(f"{len(rows)} of the {len(rows)} test images of class versicolor" in c.value for c in at.caption)
    assert any(f"{len(rows)} test images (classes versicolor)" in m.value for m in at.markdown)
    assert torch.isfinite(result.scores).all() and len(at.dataframe) >= 2


def test_the_url_restores_the_test_image_and_the_method():
    """Issue 18, bug 6: a reload or a shared link keeps the page's main inputs, not only the model."""
    at = open_page(PAGE)
    at.query_params.update({"bundled": "iris_mlp", "test_row": "5", "browse_method": "tracin"})
    at.run()
    no_errors(at)
    assert at.selectbox(key="test_row").value == 5 and at.radio(key="browse_method").value == "tracin"
    at.radio(key="browse_method").set_value("gif").run()
    assert at.query_params["browse_method"] == ["gif"] or at.query_params["browse_method"] == "gif"
    nonsense = open_page(PAGE)
    nonsense.query_params.update({"bundled": "iris_mlp", "test_row": "abc", "browse_method": "lissa"})
    nonsense.run()
    no_errors(nonsense)  # a link naming nothing valid falls back to the defaults
    assert nonsense.selectbox(key="test_row").value == 0 and nonsense.radio(key="browse_method").value == "if-lowrank"
