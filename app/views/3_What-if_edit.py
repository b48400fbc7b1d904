"""What-if edit: answer "what if this data had not been there?" with GIF and classic influence functions, side by
side with the model really retrained without it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import streamlit as st
import torch
from torch import nn

from app import charts, gallery, metrics_table, session, warmup
from app.request_form import request_form
from gif_core.backdoor import BackdoorSpec
from gif_core.checkpoints import weights_bytes
from gif_core.comparison import ModelPredictions, predictions_of
from gif_core.data import DataBundle
from gif_core.evaluate import predict_proba
from gif_core.experiment import EditConfig, EditReport, MethodOutcome, answer
from gif_core.influence import METHOD_LABELS, METHOD_SUMMARIES, METHODS, EstimatorConfig
from gif_core.problem import DTYPES, HESSIAN_DATA, HessianConfig
from gif_core.selection import METHODS as SELECTORS
from gif_core.solvers import LEAST_SQUARES_METHODS, SYMMETRIC_METHODS
from gif_core.workspace import Workspace, edited_card

st.caption(
    "GIF moves only the selected parameters (Lyu et al. 2023); FIF and PIF are its frozen / projected cousins; IF "
    "and SIF are the classic first- and second-order influence functions over all parameters; TracIn, DataInf, "
    "HyperINF and EK-FAC are the GIF authors' newer reference rows (no curvature; layer-wise curvature inverses). The retrained "
    "model is the ground truth."
)
RATIOS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
DEFAULTS = EditConfig()
MODEL_PRECISION = "the model's own"
STEP_MODES = ["auto (validation split)", "fixed"]
HISTORY = "edit_history"  # session key of the run history: {model id: [HistoryEntry, …]}, one per finished edit
CHARTS_PER_ROW = 3
STATUS_COLUMN = {"status": st.column_config.TextColumn("status", width=320)}
WRAPPING_ROW_HEIGHT = 72  # st.dataframe wraps text in rows taller than 4rem: a status reads whole, on 3 lines
TRIGGERED_SHOWN = 6


def show_metrics(report: EditReport, backdoor: bool) -> None:
    """The metrics table (human names, one decimal, blanks where a metric does not apply, ★ on the best edit of
    each column, each edit's status on its row), its legend, and an error per diverged edit."""
    st.subheader("Metrics (percent unless a column says otherwise)")
    table = metrics_table.metrics_table(report, METHOD_LABELS)
    st.dataframe(
        metrics_table.styled(table.frame, table.keys, table.best),
        hide_index=True,
        column_config=STATUS_COLUMN,
        row_height=WRAPPING_ROW_HEIGHT,
        placeholder="",
    )
    st.caption(
        f"{metrics_table.BEST_MARK} in bold: the best edit of its column (for forget accuracy and MIA the one closest "
        "to the retrained model). What each column measures and which way is better:"
    )
    with st.expander("What the columns mean, and which value is best"):
        st.markdown(metrics_table.legend(table.keys, report.request, backdoor, [o.method for o in report.outcomes]))
    for o in report.outcomes:
        if o.diverged:
            st.error(f"{METHOD_LABELS[o.method]} diverged: {o.diverged}. It has no metrics and cannot be downloaded.")


def show_probability_grid(predictions: Sequence[ModelPredictions], bundle: DataBundle, rows: Sequence[int]) -> None:
    """The chosen test images in a row, then one figure of their probability panels (every model's bars over the
    class names), :data:`CHARTS_PER_ROW` panels a row so that each keeps a readable width."""
    if not rows:
        return
    titles = [f"test #{row} · true class {bundle.classes[int(bundle.test.labels[row])]}" for row in rows]
    if bundle.test.images is not None:
        st.image([bundle.test.images[row].numpy() for row in rows], caption=[f"#{row}" for row in rows], width=90)
    panels = [
        (title, {p.name: p.probabilities[row].numpy() for p in predictions})
        for title, row in zip(titles, rows, strict=True)
    ]
    st.plotly_chart(charts.probability_grid(panels, bundle.classes, CHARTS_PER_ROW), key="probabilities")


def show_trigger(spec: BackdoorSpec, classes: Sequence[str]) -> None:
    """The trigger pattern itself, enlarged without smoothing, beside what it does and which class it aims at."""
    trigger = spec.trigger
    pattern, words = st.columns([1, 5])
    scale = max(1, 64 // trigger.size)
    pattern.image(
        np.kron(trigger.pattern().numpy(), np.ones((scale, scale))),
        caption=f"the trigger: {trigger.size}×{trigger.size} {trigger.kind}, {trigger.corner} corner",
        clamp=True,
    )
    words.markdown(
        f"Every triggered image gets this square in its {trigger.corner} corner; the attacker's target is class "
        f"**{classes[spec.target]}**. Attack success = share of triggered test images of other classes predicted "
        "as the target."
    )


def triggered_predictions(
    models: dict[str, tuple[nn.Module, dict[str, float]]],
    inputs: torch.Tensor,
    rows: np.ndarray,
    spec: BackdoorSpec,
    classes: Sequence[str],
) -> pd.DataFrame:
    """One row per model: its attack success rate and the class it predicts for each triggered image (``inputs``,
    test rows ``rows``), the attacker's target marked."""
    table = []
    for name, (model, metrics) in models.items():
        predicted = predict_proba(model, inputs).argmax(1).tolist()
        record = {"model": name, "Attack success (%)": f"{metrics['attack_success_rate']:.1f}"}
        for row, p in zip(rows, predicted, strict=True):
            record[f"test #{row}"] = classes[p] + (" (target)" if p == spec.target else "")
        table.append(record)
    return pd.DataFrame(table)


def show_backdoor(loaded: Workspace, report: EditReport, finished: Sequence[MethodOutcome]) -> None:
    """The trigger, a few triggered test images (one per class other than the target), and what each model predicts
    on them: the original (before), the retrained model and every edit (after), with their attack success."""
    spec, test, classes = loaded.backdoor, loaded.bundle.test, loaded.bundle.classes
    assert spec is not None and test.images is not None  # shown only for a backdoored model (of images)
    st.subheader("The backdoor: its trigger and triggered test images")
    show_trigger(spec, classes)
    labels = test.labels.numpy()
    rows = np.array([np.flatnonzero(labels == c)[0] for c in np.unique(labels) if c != spec.target])
    rows = rows[:TRIGGERED_SHOWN]  # the first test image of each class but the target: a mix of classes
    gallery.show_grid(
        list(spec.trigger.stamp_display(test.images[rows]).numpy()),
        [f"test #{r} · true {classes[int(test.labels[r])]}" for r in rows],
        columns=TRIGGERED_SHOWN,
    )
    models = {"original (before)": (loaded.model, report.original)}
    if report.retrained_model is not None:
        assert report.retrained is not None  # its metrics come with the retrained model
        models["retrained"] = (report.retrained_model, report.retrained)
    for o in finished:
        assert o.model is not None  # set unless diverged
        models[f"{METHOD_LABELS[o.method]} (after)"] = (o.model, o.metrics)
    st.markdown("**Predicted class of each triggered image, before and after the edit**")
    table = triggered_predictions(models, spec.trigger.stamp(test.inputs[rows]), rows, spec, classes)
    st.dataframe(table, hide_index=True, key="backdoor_predictions")


def remember(loaded: Workspace, report: EditReport) -> None:
    """Add a finished edit to this session's run history of the model (its rows and JSON report, no model)."""
    backdoor = report.request is loaded.backdoor_request
    question = metrics_table.question_text(report.request, loaded.bundle.classes, backdoor)
    entry = metrics_table.history_entry(report, METHOD_LABELS, question, report.to_json())
    st.session_state.setdefault(HISTORY, {}).setdefault(loaded.model_id, []).append(entry)


def show_history(loaded: Workspace) -> None:
    """Every edit run on this model in this session, side by side, and (from two runs on) all their reports as
    one JSON list."""
    entries = st.session_state.get(HISTORY, {}).get(loaded.model_id, [])
    if not entries:
        return
    st.subheader(f"Run history ({len(entries)} run{'s' if len(entries) > 1 else ''} on this model, this session)")
    frame, keys = metrics_table.history_frame(entries)
    st.dataframe(
        metrics_table.styled(frame, keys),
        hide_index=True,
        column_config=STATUS_COLUMN,
        row_height=WRAPPING_ROW_HEIGHT,
        placeholder="",
        key="edit_history_table",
    )
    if len(entries) < 2:
        st.caption("Each edit you run is kept here; this run's JSON report is under Downloads.")
        return
    st.download_button(
        f"All {len(entries)} runs as one JSON report",
        metrics_table.combined_json(entries),
        file_name="runs.json",
        key="download_history",
    )


def show_downloads(loaded: Workspace, report: EditReport, finished: Sequence[MethodOutcome]) -> None:
    """The first finished edit's checkpoint and card, and the JSON report: new files, the original is never
    touched (nothing to download when every edit diverged)."""
    if not finished:
        return
    st.subheader("Downloads")
    first = finished[0]
    assert first.model is not None  # set unless diverged
    d1, d2, d3 = st.columns(3)
    d1.download_button(
        f"Edited model ({METHOD_LABELS[first.method]}) .safetensors",
        weights_bytes(first.model),
        file_name=f"edited_{first.method}.safetensors",
        key="download_weights",
    )
    d2.download_button(
        "Its model card .json",
        edited_card(loaded, first, report.request.describe()).to_json(),
        file_name=f"edited_{first.method}.json",
        key="download_card",
    )
    d3.download_button(
        "JSON report (as gif remove --json)",
        report.to_json(),
        file_name="report.json",
        key="download_report",
    )


def curvature_settings(shown: HessianConfig, n_train: int) -> HessianConfig:
    """The curvature widgets, starting at ``shown`` (the page's defaults): which data H covers, its sample, the
    damping δ, Gauss-Newton and the precision of the products."""
    s1, s2, s3, s4, s5 = st.columns(5)
    assert shown.samples is not None  # page_defaults caps the library's default number
    samples = s1.number_input("Hessian samples", min(16, n_train), n_train, shown.samples, step=16, key="hess_n")
    data = s2.selectbox(
        "H over", HESSIAN_DATA, index=HESSIAN_DATA.index(shown.data), key="hess_data",
        help="retained: the edited training set (one Newton step on it); all: the training set as it was (Koh & Liang)",
    )  # fmt: skip
    damping = s3.number_input("Damping δ of H", 0.0, 10.0, shown.damping, step=0.001, format="%.4f", key="damping")
    precisions = [MODEL_PRECISION, *DTYPES]
    dtype = s4.selectbox(
        "Precision of H·v", precisions, index=precisions.index(shown.dtype or MODEL_PRECISION), key="dtype",
        help="float64 products let the Krylov solves reach smaller residuals (benchmarks/results/engine.md)",
    )  # fmt: skip
    gauss_newton = s5.checkbox(
        "Gauss-Newton", shown.gauss_newton, key="gauss_newton",
        help="the Gauss-Newton matrix (positive semi-definite) instead of the exact Hessian",
    )  # fmt: skip
    return dataclasses.replace(
        shown, samples=int(samples), data=data, damping=float(damping), gauss_newton=gauss_newton,
        dtype=None if dtype == MODEL_PRECISION else dtype,
    )  # fmt: skip


def solver_settings(shown: EstimatorConfig) -> EstimatorConfig:
    """The solver widgets, starting at ``shown`` (the page's defaults): solvers, GIF's ridge ρ and the stopping rule."""
    s1, s2, s3, s4, s5 = st.columns(5)
    maxiter = s1.number_input("Max iterations", 1, 1000, shown.maxiter, step=5, key="maxiter")
    rtol = s2.number_input("Tolerance", 1e-12, 0.5, shown.rtol, format="%.0e", key="rtol")
    ridge = s3.number_input("GIF ridge ρ", 0.0, 10.0, shown.gif_ridge, step=1e-4, format="%.6f", key="ridge")
    least_squares = s4.selectbox(
        "GIF's solver", LEAST_SQUARES_METHODS, index=LEAST_SQUARES_METHODS.index(shown.least_squares_solver),
        key="ls_solver",
    )  # fmt: skip
    symmetric = s5.selectbox(
        "IF's solver", SYMMETRIC_METHODS, index=SYMMETRIC_METHODS.index(shown.symmetric_solver), key="sym_solver"
    )
    trace = st.checkbox(
        "Record the residual curve (CG-type solvers; costs extra Hessian-vector products)", False, key="trace"
    )
    return dataclasses.replace(
        shown, symmetric_solver=symmetric, least_squares_solver=least_squares, gif_ridge=float(ridge),
        rtol=float(rtol), maxiter=int(maxiter), track_residuals=trace,
    )  # fmt: skip


loaded = session.workspace()
bundle = loaded.bundle
request = request_form(loaded, "edit")
a, b, c = st.columns(3)
methods = a.multiselect(
    "Methods",
    METHODS,
    default=["gif", "if"],
    format_func=lambda m: METHOD_LABELS[m],
    key="methods",
    help="\n".join(f"- **{METHOD_LABELS[m]}**: {METHOD_SUMMARIES[m]}" for m in METHODS),
)
selector = b.selectbox(
    "Selector (GIF/FIF/PIF)", SELECTORS, index=SELECTORS.index(DEFAULTS.selection.method), key="selector"
)
ratio = b.select_slider(
    "Share of parameters", RATIOS, value=DEFAULTS.selection.ratio, format_func=lambda r: f"{r:.0%}", key="ratio"
)
step_mode = c.radio("Step scale α", STEP_MODES, index=0 if DEFAULTS.step == "auto" else 1, key="step_mode")
step_value = c.number_input("α", min_value=0.001, value=1.0, key="step_value", disabled=step_mode != "fixed")
with_retrain = c.checkbox("Compare with the retrained model", value=True, key="with_retrain")
defaults = warmup.page_defaults(loaded)
with st.expander("Curvature and solver settings (defaults chosen by benchmarks/defaults.py)"):
    curvature = curvature_settings(defaults.curvature, len(loaded.train))
    solver = solver_settings(defaults.solver)
config = dataclasses.replace(
    defaults,
    methods=tuple(methods) or DEFAULTS.methods,
    selection=dataclasses.replace(defaults.selection, method=selector, ratio=ratio),
    curvature=curvature,
    solver=solver,
    step="auto" if step_mode != "fixed" else float(step_value),
)
job = warmup.start(loaded, request, config, with_retrain) if request is not None else None
if not methods:
    st.error("Choose at least one method.")
run = st.button("Run the edit", type="primary", key="run_edit", disabled=job is None or not methods)
if job is not None and not run:
    warmup.show(job)
elif run:
    clicked = time.perf_counter()
    assert job is not None and request is not None  # the button is disabled without a request (and job)
    with st.status("Running the edit…", expanded=True) as status:
        warmed = warmup.wait(job, status.write)
        prepared, retrained = warmed.prepared, warmed.retrained
        if with_retrain and retrained is None:
            status.write("Retraining without the data (cached after the first time)…")
            bar = st.progress(0.0)

            def show_retraining(done: int, total: int) -> None:
                bar.progress(done / total, text=f"Retraining: step {done}/{total}")

            retrained = loaded.retrain(request, progress=show_retraining, show_bar=False)
            bar.empty()
            prepared = prepared.with_retrained(retrained.model, retrained.seconds, retrained.from_cache)
        report = answer(prepared, config, progress=session.phase_writer(status))
        status.update(label=f"Edit done in {time.perf_counter() - clicked:.1f} s", state="complete", expanded=False)
    st.session_state["edit"] = (loaded.model_id, report)
    remember(loaded, report)

stored = st.session_state.get("edit")
if stored is None or stored[0] != loaded.model_id:
    st.info("Choose a question and methods, then press *Run the edit*.")
    st.stop()
report = stored[1]
outcomes = report.outcomes
is_backdoor = report.request is loaded.backdoor_request
show_metrics(report, is_backdoor)
finished = [o for o in outcomes if not o.diverged]
if report.selection is not None:
    with st.expander("Selected parameters per layer (GIF/FIF/PIF)"):
        layers = report.selection.describe()["layers"]
        st.dataframe([{"layer": name, **counts} for name, counts in layers.items()], hide_index=True, key="edit_layers")
# ---- predictions of every model
probabilities = {"original": report.original_test_probs}
if report.retrained_test_probs is not None:
    probabilities["retrained"] = report.retrained_test_probs
probabilities.update({METHOD_LABELS[o.method]: o.test_probs for o in finished})
predictions = predictions_of(probabilities, bundle.test, bundle.num_classes)
st.plotly_chart(charts.per_class_accuracy(predictions, bundle.classes), key="edit_per_class")
removed_class = report.request.held_out_class
if removed_class is not None:
    removed_rows = np.flatnonzero(bundle.test.labels.numpy() == removed_class)
    counts = {p.name: p.predicted_counts(torch.as_tensor(removed_rows), bundle.num_classes) for p in predictions}
    st.plotly_chart(charts.predicted_histogram(counts, bundle.classes, bundle.classes[removed_class]), key="histogram")
# one confusion matrix, of the model picked (the first edit's by default): every chart costs the browser CPU time
names = [p.name for p in predictions]
first = names.index(METHOD_LABELS[finished[0].method]) if finished else 0
shown = st.radio("Confusion matrix of", names, index=first, horizontal=True, key="confusion_model")
st.plotly_chart(charts.confusion(predictions[names.index(shown)], bundle.classes), key="confusion")
if is_backdoor:
    show_backdoor(loaded, report, finished)
# ---- chosen test images
st.subheader("Probability changes for chosen test images")
default_rows = removed_rows[:3].tolist() if removed_class is not None else list(range(3))
chosen = st.multiselect("Test images", list(range(len(bundle.test))), default=default_rows, key="prob_rows")
show_probability_grid(predictions, bundle, chosen)
# ---- solver and step
curves = {
    f"{METHOD_LABELS[o.method]} ({r.name})": r.residual_history
    for o in finished
    for r in o.result.reports
    if r.residual_history
}
if curves:
    st.plotly_chart(charts.residual_curves(curves), key="residuals")
else:
    st.caption(
        "No residual curve: tick *Record the residual curve* under Solver settings (LSMR reports only its final "
        "residual; choose cgls for GIF's curve). The final residuals are in the table."
    )
steps = {METHOD_LABELS[o.method]: o.step_curve for o in finished if o.step_curve}
if steps:
    st.plotly_chart(charts.step_curves(steps), key="steps")
show_downloads(loaded, report, finished)
show_history(loaded)
