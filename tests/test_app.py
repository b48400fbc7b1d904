"""Every dashboard page, headless (streamlit.testing.v1.AppTest): default load, the controls, the methods and
the error paths. Heavy numbers are checked in gif_core's own tests; here the pages must show them, not crash."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import finish_jobs, no_errors, open_page, plotly_specs
from streamlit.testing.v1 import AppTest

from gif_core.browse import BROWSE_METHODS
from gif_core.influence import METHOD_LABELS, METHOD_SUMMARIES, METHODS

REPOSITORY = Path(__file__).resolve().parents[1]
PAGES = {
    "model": None,  # the default page
    "influence": "views/1_Influential_samples.py",
    "selection": "views/2_Parameter_selection.py",
    "edit": "views/3_What-if_edit.py",
}
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("private_cache")]


def page(name: str, bundled: str | None = None) -> AppTest:
    """A new session on page ``name``; with ``bundled``, opened on that bundled model by its URL (as a shared link
    would), so the default CNN is never loaded first."""
    at = open_page(PAGES[name])
    if bundled is not None:
        at.query_params["bundled"] = bundled
    at.run()
    assert not at.exception, at.exception
    if bundled is not None:  # a link that failed would fall back to the default model with a warning
        assert at.session_state["workspace"].source.endswith(f"{bundled}.safetensors") and not at.warning
    return at


def load_bundled(at: AppTest, name: str) -> AppTest:
    at.selectbox(key="bundled_name").select(name)
    at.button(key="load_bundled").click().run()
    no_errors(at)
    return at


def small_solver(at: AppTest) -> None:
    at.number_input(key="hess_n").set_value(64)
    at.number_input(key="maxiter").set_value(10)
    at.selectbox(key="ls_solver").select("cgls")
    at.checkbox(key="trace").check()


# ---------------------------------------------------------------- Model & data


def test_model_page_starts_on_the_bundled_default_and_switches_models():
    at = page("model")
    no_errors(at)
    assert "mnist_cnn.safetensors" in at.markdown[0].value or any(
        "mnist_cnn.safetensors" in m.value for m in at.markdown
    )
    assert len(at.get("plotly_chart")) == 1 and len(at.get("image")) >= 1
    at.selectbox(key="gallery_class").select("7").run()
    no_errors(at)
    load_bundled(at, "iris_mlp")
    assert any("iris_mlp.safetensors" in m.value for m in at.markdown)
    assert len(at.dataframe) == 1  # tabular data: a table instead of images
    load_bundled(at, "mnist_cnn_backdoor")
    assert any("backdoor" in w.value for w in at.warning)


def test_model_page_loads_a_local_checkpoint_and_reports_bad_paths(tmp_path):
    at = page("model")
    at.radio(key="source").set_value("Local path").run()
    at.button(key="load_path").click().run()
    assert "Type the path" in at.error[0].value
    at.text_input(key="local_path").input(str(tmp_path / "missing.safetensors"))
    at.button(key="load_path").click().run()
    assert "not found" in at.error[0].value and not at.exception
    at.text_input(key="local_path").input(str(REPOSITORY / "assets" / "iris_mlp.safetensors"))
    at.button(key="load_path").click().run()
    no_errors(at)
    assert any("iris_mlp.safetensors" in m.value for m in at.markdown)


def test_model_page_refuses_a_pickled_checkpoint(tmp_path, monkeypatch):
    """A .pt file holding a pickled object (not a plain state dict) is refused, never unpickled (its folder is an
    allowed local root, so it is the reader that refuses it, not the path rule)."""
    monkeypatch.setenv("GIF_LOCAL_ROOTS", str(tmp_path))

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    bad = tmp_path / "bad.pt"
    torch.save({"weight": Payload()}, bad)
    (tmp_path / "bad.json").write_text((REPOSITORY / "assets" / "iris_mlp.json").read_text())
    at = page("model")
    at.radio(key="source").set_value("Local path").run()
    at.text_input(key="local_path").input(str(bad))
    at.button(key="load_path").click().run()
    assert at.error and not at.exception and not (tmp_path / "pwned").exists()
    assert "weights_only" in at.error[0].value  # refused by the weights-only reader


def test_a_reload_or_a_shared_link_keeps_the_model():
    """Issue 18, bug 6: after a reload the page switched back to the default model."""
    at = page("model")
    load_bundled(at, "iris_mlp")
    assert at.query_params == {"bundled": "iris_mlp"}  # the URL now names the loaded model
    reloaded = open_page()
    reloaded.query_params["bundled"] = "iris_mlp"  # a new session opened on the same URL
    reloaded.run()
    no_errors(reloaded)
    assert reloaded.session_state["workspace"].source.endswith("iris_mlp.safetensors")
    local = open_page()
    local.query_params["path"] = "assets/iris_mlp.safetensors"
    local.run()
    assert local.session_state["workspace"].source.endswith("iris_mlp.safetensors") and not local.warning
    outside = open_page()
    outside.query_params["path"] = "/etc/passwd"
    outside.run()
    assert "could not be loaded" in outside.warning[0].value and not outside.exception
    assert outside.session_state["workspace"].source.endswith("mnist_cnn.safetensors")


def test_model_page_upload_asks_for_both_files():
    at = page("model")
    at.radio(key="source").set_value("Upload").run()
    at.button(key="load_upload").click().run()
    assert "Upload both" in at.error[0].value


# ---------------------------------------------------------------- Influential samples


def test_influence_page_explains_a_prediction_and_ranks_mislabels():
    at = page("influence")
    no_errors(at)
    at.selectbox(key="test_class").select("4").run()
    row = at.selectbox(key="test_row").value
    at.radio(key="browse_method").set_value("tracin")
    at.slider(key="browse_k").set_value(5)
    finish_jobs(at.button(key="explain").click().run())
    no_errors(at)
    images = at.get("image")
    assert len(images) >= 1 + 2 * 5  # the test image, 5 helpful, 5 harmful
    assert any("TracIn" in m.value and "true class 4" in m.value for m in at.markdown)
    at.button(key="pick_helpful").click().run()
    assert len(at.session_state["picked_rows"]) == 5
    at.radio(key="self_method").set_value("tracin")
    finish_jobs(at.button(key="rank_self").click().run())
    no_errors(at)
    assert at.session_state["suspicious"][1] == "tracin" and len(at.session_state["suspicious"][2]) == 24
    assert at.session_state["explanation"][1] == row


def test_influence_page_filters():
    at = page("influence")
    at.checkbox(key="wrong_only").check().run()
    no_errors(at)
    labels = at.selectbox(key="test_row").options
    assert labels and all("predicted" in o for o in labels)
    assert all(o.split("label ")[1].split(" ")[0] != o.split("predicted ")[1] for o in labels)


@pytest.mark.parametrize("method", BROWSE_METHODS)
def test_influence_page_every_method_on_the_small_model(method):
    at = page("influence", bundled="iris_mlp")
    no_errors(at)
    at.radio(key="browse_method").set_value(method)
    finish_jobs(at.button(key="explain").click().run())
    no_errors(at)
    explanation = at.session_state["explanation"][2]
    assert explanation.method == method and torch.isfinite(explanation.scores).all()
    assert len(at.dataframe) == 2  # helpful and harmful tables (tabular data)


def test_influence_page_says_when_the_solve_did_not_converge():
    """Issue 18, bug 4: exact IF stopped at its iteration limit (residual 6.6e-2) and only a caption said so."""
    at = page("influence", bundled="iris_mlp")
    at.radio(key="browse_method").set_value("if")
    at.number_input(key="browse_maxiter").set_value(2)
    finish_jobs(at.button(key="explain").click().run())
    assert not at.exception and not at.session_state["explanation"][2].report.converged
    assert any("did not converge" in w.value and "2 iterations" in w.value for w in at.warning)


# ---------------------------------------------------------------- Parameter selection


def test_selection_page_shows_two_selectors_and_their_overlap():
    at = page("selection")
    at.selectbox(key="selector_a").select("gradient")
    at.selectbox(key="selector_b").select("random")
    at.button(key="run_select").click().run()
    no_errors(at)
    _, _, (first, second) = at.session_state["selection_view"]
    assert first.method == "gradient" and second.method == "random"
    assert 0 <= first.overlap(second) < 1
    assert len(at.metric) == 3 and len(at.get("plotly_chart")) == 1 + 4 * 2  # layer bars + every Linear/Conv × A, B
    (table,) = at.dataframe  # per-layer units and parameters, every layer present
    counts = table.value
    assert list(counts["layer"]) == ["0", "3", "7", "9"] and list(counts["units"]) == [16, 32, 64, 10]
    head = counts[counts["layer"] == "9"].iloc[0]
    assert head["A (gradient): units"] >= 1 and head["A (gradient): parameters"] == 65 * head["A (gradient): units"]


def test_selection_page_error_paths():
    at = page("selection")
    at.radio(key="select_kind").set_value("Remove training samples").run()
    assert "Type the training rows" in at.info[0].value and at.button(key="run_select").disabled
    at.text_input(key="select_samples").input("1,x").run()
    assert "comma-separated integers" in at.error[0].value
    at.text_input(key="select_samples").input("999999").run()
    at.button(key="run_select").click().run()
    assert "out of range" in at.error[0].value and not at.exception
    at.radio(key="select_kind").set_value("Change labels").run()
    at.text_input(key="select_relabel").input("5-3").run()
    assert "ROW:LABEL" in at.error[0].value


# ---------------------------------------------------------------- What-if edit


def test_edit_page_class_removal_with_retraining_charts_and_downloads():
    """The page's tables, charts and downloads, and the retrain cache: nothing here needs the CNN, so the iris MLP
    answers (its retrain takes a second; the CNN's per-layer table is checked by the default demo below)."""
    at = page("edit", bundled="iris_mlp")
    at.selectbox(key="edit_cls").select(2)
    small_solver(at)
    at.button(key="run_edit").click().run()
    no_errors(at)
    _, report = at.session_state["edit"]
    assert report.request.cls == 2 and report.retrained is not None
    assert report.retrained["forget_acc"] < 5  # the retrained model never saw class 2
    table = at.dataframe[0].value
    assert list(table["model"])[:2] == ["original", f"retrained ({report.retrain_seconds:.1f} s)"]
    assert {"GIF", "IF"} <= set(table["model"])
    layers = at.dataframe[1].value  # the selection's per-layer counts, as in the JSON report
    # Flatten, Linear(4→64), ReLU, Linear(64→64), ReLU, Linear(64→3): the three Linear layers and their units
    assert list(layers["layer"]) == ["1", "3", "5"] and list(layers["units"]) == [64, 64, 3]
    assert (layers["units_selected"] >= 1).all()
    assert report.to_dict()["selection"]["layers"]["5"]["units_selected"] >= 1
    # per-class bars, histogram, one confusion matrix (GIF's first), the 3 images' probabilities, residuals, steps
    assert len(at.get("plotly_chart")) == 1 + 1 + 1 + 1 + 1 + 1
    titles = [a["text"] for a in plotly_specs(at)[3]["layout"]["annotations"]]
    assert len(titles) == 3 and all(t.startswith("test #") for t in titles)  # one panel per chosen image
    assert at.radio(key="confusion_model").value == "GIF"
    assert plotly_specs(at)[2]["layout"]["title"]["text"] == "Confusion matrix · GIF"
    at.radio(key="confusion_model").set_value("retrained").run()
    confusion = plotly_specs(at)[2]
    assert confusion["layout"]["title"]["text"] == "Confusion matrix · retrained"
    z = confusion["data"][0]["z"]  # plotly's typed-array form of the counts
    counts = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"])
    assert counts.sum() == len(at.session_state["edit"][1].retrained_test_probs)  # every test image, once
    assert len(at.get("download_button")) == 3
    at.multiselect(key="prob_rows").set_value([0]).run()
    no_errors(at)
    again = page("edit", bundled="iris_mlp")
    again.selectbox(key="edit_cls").select(2)
    again.checkbox(key="with_retrain").check()
    small_solver(again)
    again.button(key="run_edit").click().run()
    assert again.session_state["edit"][1].retrain_from_cache  # the same question is never retrained twice


def test_the_first_question_is_prepared_in_the_background_and_the_click_reuses_it(default_question_retrained):
    from app.jobs import JOBS
    from app.warmup import SLOT

    at = page("model")  # loading a model starts the What-if page's first question
    job = at.session_state[JOBS][SLOT]
    at.switch_page(PAGES["edit"]).run()
    assert at.session_state[JOBS][SLOT] is job  # the page's untouched form asks the same question: no second job
    warmed = job.future.result(timeout=600)
    at.button(key="run_edit").click().run()
    no_errors(at)
    report = at.session_state["edit"][1]
    assert report.selection is warmed.prepared.selection and report.original is warmed.prepared.original
    assert report.original_test_probs is warmed.prepared.original_test_probs
    at.selectbox(key="edit_cls").select(4).run()  # another question: a new job, the old one told to stop
    assert at.session_state[JOBS][SLOT] is not job and at.session_state[JOBS][SLOT].key[1].cls == 4
    assert job.state.cancel.is_set()


def test_edit_page_default_demo_shows_gif_forgetting(default_question_retrained):
    """The demo a newcomer sees, untouched: class 0 removed from the bundled CNN with every default. Before issue 12
    GIF kept 100% of the class here (the head got no rows at 5% and the step grid stopped at α = 32)."""
    at = page("edit")
    at.button(key="run_edit").click().run()
    no_errors(at)
    _, report = at.session_state["edit"]
    assert report.request.cls == 0 and report.retrained is not None
    gif = next(o for o in report.outcomes if o.method == "gif")
    assert gif.metrics["forget_acc"] <= 2.0, gif.metrics
    assert gif.metrics["retain_acc"] >= report.retrained["retain_acc"] - 1.0, (gif.metrics, report.retrained)
    assert not gif.step_search.cap_hit and gif.result.solver_summary()["hvps"] <= 30
    row = at.dataframe[0].value.set_index("model").loc["GIF"]
    assert row["Forget accuracy (%)"] == gif.metrics["forget_acc"]
    layers = at.dataframe[1].value  # the CNN's per-layer selection: both convolutions and both Linear layers
    assert list(layers["layer"]) == ["0", "3", "7", "9"] and list(layers["units"]) == [16, 32, 64, 10]
    assert (layers["units_selected"] >= 1).all() and report.to_dict()["selection"]["layers"]["9"]["units_selected"] >= 1


def test_edit_page_every_method_and_fixed_step_on_the_small_model():
    at = page("edit", bundled="iris_mlp")
    at.multiselect(key="methods").set_value(list(METHODS))
    at.select_slider(key="ratio").set_value(0.2)
    at.radio(key="step_mode").set_value("fixed").run()
    at.number_input(key="step_value").set_value(0.5)
    at.checkbox(key="with_retrain").uncheck()
    at.button(key="run_edit").click().run()
    no_errors(at)
    report = at.session_state["edit"][1]
    assert [o.method for o in report.outcomes] == list(METHODS)
    assert all(o.step == 0.5 for o in report.outcomes)
    names = list(at.dataframe[0].value["model"])  # every method has its row, named as the library names it
    assert all(any(name.startswith(METHOD_LABELS[m]) for name in names) for m in METHODS), names
    legend = next(e.proto.body for e in at.get("markdown") if "**HyperINF** —" in e.proto.body)
    assert all(f"**{METHOD_LABELS[m]}** — {METHOD_SUMMARIES[m]}" in legend for m in METHODS)


def test_edit_page_shows_a_diverged_edit_as_such_never_as_an_accuracy():
    """A fixed α = 1e37 overflows the iris MLP: the row says diverged, no metric, no chart, no download of it."""
    at = page("edit", bundled="iris_mlp")
    at.multiselect(key="methods").set_value(["gif", "if"])
    at.radio(key="step_mode").set_value("fixed").run()
    at.number_input(key="step_value").set_value(1e37)
    at.checkbox(key="with_retrain").uncheck()
    at.button(key="run_edit").click().run()
    assert not at.exception
    report = at.session_state["edit"][1]
    assert all(o.diverged for o in report.outcomes)
    table = at.dataframe[0].value.set_index("model")
    assert table.loc["GIF", "status"].startswith("diverged") and pd.isna(table.loc["GIF", "Test accuracy (%)"])
    assert sorted(e.value.split(":")[0] for e in at.error) == ["GIF diverged", "IF diverged"]
    assert len(at.get("download_button")) == 0


@pytest.mark.parametrize("text", ["", "abc", "1;2", "0-10"])
def test_edit_page_form_stays_on_empty_or_bad_rows_and_keeps_the_last_result(text):
    """Issue 18, bug 2: the ValueError replaced Methods, Selector, *Run the edit* and the earlier result."""
    at = page("edit", bundled="iris_mlp")
    at.checkbox(key="with_retrain").uncheck()
    at.button(key="run_edit").click().run()
    no_errors(at)
    at.radio(key="edit_kind").set_value("Remove training samples").run()
    at.text_input(key="edit_samples").input(text).run()
    assert not at.exception
    if text:
        assert len(at.error) == 1 and "comma-separated integers" in at.error[0].value  # beside the field
    else:
        assert not at.error and "Type the training rows" in at.info[0].value
    assert at.multiselect(key="methods").value == ["gif", "if"] and at.selectbox(key="selector")
    assert at.button(key="run_edit").disabled
    assert at.dataframe[0].value["model"].iloc[0] == "original"  # the earlier result is still shown


def test_edit_page_flags_a_no_op_edit_on_its_row():
    """Issue 18, bug 3: an edit whose metrics equal the original's looked like a result."""
    at = page("edit", bundled="iris_mlp")
    at.radio(key="edit_kind").set_value("Remove training samples").run()
    at.text_input(key="edit_samples").input("0,1,2,3,4,5,6,7")
    at.radio(key="step_mode").set_value("fixed").run()
    at.number_input(key="step_value").set_value(0.001)
    at.checkbox(key="with_retrain").uncheck()
    at.button(key="run_edit").click().run()
    no_errors(at)
    table = at.dataframe[0].value.set_index("model")
    assert list(table.columns[:1]) == ["status"]  # beside the method's name, not off to the right
    assert "changes no test prediction" in table.loc["GIF", "status"]


def test_edit_page_undoes_the_backdoor():
    at = page("edit", bundled="mnist_cnn_backdoor")
    at.radio(key="edit_kind").set_value("Undo the backdoor")
    at.multiselect(key="methods").set_value(["gif"])
    at.checkbox(key="with_retrain").uncheck()
    small_solver(at)
    at.button(key="run_edit").click().run()
    no_errors(at)
    metrics = at.session_state["edit"][1].outcomes[0].metrics
    assert {"clean_acc", "attack_success_rate", "relabelled_acc"} <= set(metrics)


def test_edit_page_error_paths():
    at = page("edit")
    at.multiselect(key="methods").set_value([]).run()
    assert "at least one method" in at.error[0].value and at.button(key="run_edit").disabled
    at.radio(key="edit_kind").set_value("Change labels").run()
    at.text_input(key="edit_relabel").input("0:99").run()
    at.multiselect(key="methods").set_value(["gif"])
    at.checkbox(key="with_retrain").uncheck().run()
    at.button(key="run_edit").click().run()
    assert at.error and "label" in at.error[0].value.lower() and not at.exception
    assert "Undo the backdoor" not in at.radio(key="edit_kind").options  # a clean model has no backdoor to undo


def test_two_sessions_never_see_each_other():
    first, second = page("model"), page("model")
    load_bundled(first, "iris_mlp")
    second.run()
    assert any("mnist_cnn.safetensors" in m.value for m in second.markdown)
    first.switch_page(PAGES["edit"]).run()
    first.checkbox(key="with_retrain").uncheck()
    first.button(key="run_edit").click().run()
    second.switch_page(PAGES["edit"]).run()
    assert "edit" in first.session_state and "edit" not in second.session_state
    assert any("Run the edit" in i.value for i in second.info)


def test_each_model_has_one_colour_on_every_chart():
    """Issue 18, bug 7: GIF was red in the bars and blue in the step chart."""
    import numpy as np

    from app import charts
    from gif_core.comparison import predictions_of
    from gif_core.data import LabelledSet

    test = LabelledSet(torch.zeros(6, 2), torch.tensor([0, 1, 2, 0, 1, 2]), torch.arange(6))
    names = ["original", "retrained", "GIF", "IF", "FIF"]
    generator = torch.Generator().manual_seed(0)
    probs = {n: torch.softmax(torch.randn(6, 3, generator=generator), 1) for n in names}
    predictions = predictions_of(probs, test, 3)
    figures = [
        charts.per_class_accuracy(predictions, ["a", "b", "c"]),
        charts.predicted_histogram({n: np.ones(3) for n in names}, ["a", "b", "c"], "a"),
        charts.probabilities({n: np.ones(3) / 3 for n in names}, ["a", "b", "c"], "#0"),
        charts.residual_curves({"GIF (lsmr)": [1.0, 0.1], "IF (minres)": [1.0, 0.5]}),
        charts.step_curves({"GIF": [(1.0, 2.0), (2.0, 3.0)], "IF": [(1.0, 1.0), (2.0, 0.5)]}),
    ]
    seen: dict[str, set[str]] = {}
    for figure in figures:
        for trace in figure.data:
            colour = trace.marker.color if trace.type == "bar" else trace.line.color or trace.marker.color
            seen.setdefault(trace.name.split(" ")[0], set()).add(colour)
    assert {name: len(colours) for name, colours in seen.items()} == {n: 1 for n in names}
    assert len({next(iter(c)) for c in seen.values()}) == len(names)  # and the colours differ between models
