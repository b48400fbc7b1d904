"""What-if edit: answer "what if this data had not been there?" with GIF and classic influence functions, side by
side with the model really retrained without it."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import streamlit as st

from app import charts, session, warmup
from app.request_form import request_form
from gif_core.checkpoints import weights_bytes
from gif_core.comparison import predictions_of
from gif_core.experiment import EditConfig, answer
from gif_core.influence import METHODS
from gif_core.requests import ClassRemoval
from gif_core.retrain import retrain
from gif_core.selection import METHODS as SELECTORS
from gif_core.solvers import LEAST_SQUARES_METHODS
from gif_core.workspace import edited_card

st.set_page_config(page_title="What-if edit · GIF Explorer", layout="wide")
st.title("What-if edit")
st.caption(
    "GIF moves only the selected parameters (Lyu et al. 2023); FIF and PIF are its frozen / projected cousins; IF "
    "and SIF are the classic first- and second-order influence functions over all parameters. The retrained model "
    "is the ground truth."
)
METHOD_NAMES = {"gif": "GIF", "fif": "FIF", "pif": "PIF", "if": "IF", "sif": "SIF"}
RATIOS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
DEFAULTS = EditConfig()
STEP_MODES = ["auto (validation split)", "fixed"]
METRICS = ["forget_acc", "retain_acc", "test_acc", "f1", "relabelled_acc", "clean_acc", "attack_success_rate", "mia"]

with session.errors_shown():
    loaded = session.workspace()
    bundle = loaded.bundle
    st.markdown(session.model_caption(loaded))
    request = request_form(loaded, "edit")
    a, b, c = st.columns(3)
    methods = a.multiselect("Methods", METHODS, default=["gif", "if"], format_func=METHOD_NAMES.get, key="methods")
    selector = b.selectbox(
        "Selector (GIF/FIF/PIF)", SELECTORS, index=SELECTORS.index(DEFAULTS.selector), key="selector"
    )
    ratio = b.select_slider(
        "Share of parameters", RATIOS, value=DEFAULTS.ratio, format_func=lambda r: f"{r:.0%}", key="ratio"
    )
    step_mode = c.radio("Step scale α", STEP_MODES, index=0 if DEFAULTS.step == "auto" else 1, key="step_mode")
    step_value = c.number_input("α", min_value=0.001, value=1.0, key="step_value", disabled=step_mode != "fixed")
    with_retrain = c.checkbox("Compare with the retrained model", value=True, key="with_retrain")
    with st.expander("Solver settings (defaults chosen by benchmarks/defaults.py)"):
        s1, s2, s3, s4, s5 = st.columns(5)
        n_train = len(loaded.train)
        hessian_samples = s1.number_input(
            "Hessian samples",
            min(16, n_train),
            n_train,
            warmup.page_defaults(loaded).hessian_samples,
            step=16,
            key="hess_n",
        )
        maxiter = s2.number_input("Max iterations", 1, 1000, DEFAULTS.maxiter, step=5, key="maxiter")
        damping = s3.number_input(
            "Damping δ of H", 0.0, 10.0, DEFAULTS.damping, step=0.001, format="%.4f", key="damping"
        )
        ridge = s4.number_input("GIF ridge ρ", 0.0, 10.0, DEFAULTS.gif_ridge, step=1e-4, format="%.6f", key="ridge")
        solver = s5.selectbox(
            "Least-squares solver",
            LEAST_SQUARES_METHODS,
            index=LEAST_SQUARES_METHODS.index(DEFAULTS.least_squares_solver),
            key="ls_solver",
        )
        trace = st.checkbox(
            "Record the residual curve (CG-type solvers; costs extra Hessian-vector products)", False, key="trace"
        )
    config = dataclasses.replace(
        warmup.page_defaults(loaded),
        methods=tuple(methods) or DEFAULTS.methods,
        selector=selector,
        ratio=ratio,
        step="auto" if step_mode != "fixed" else float(step_value),
        hessian_samples=int(hessian_samples),
        damping=float(damping),
        gif_ridge=float(ridge),
        least_squares_solver=solver,
        maxiter=int(maxiter),
        track_residuals=trace,
    )
    job = warmup.start(loaded, request, config, with_retrain) if request is not None else None
    if not methods:
        st.error("Choose at least one method.")
    run = st.button("Run the edit", type="primary", key="run_edit", disabled=job is None or not methods)
    if job is not None and not run:
        warmup.show(job)
    elif run:
        clicked = time.perf_counter()
        with st.status("Running the edit…", expanded=True) as status:
            warmed = warmup.wait(job, status.write)
            prepared, retrained = warmed.prepared, warmed.retrained
            if with_retrain and retrained is None:
                status.write("Retraining without the data (cached after the first time)…")
                bar = st.progress(0.0)
                retrained = retrain(
                    loaded.card,
                    bundle,
                    loaded.train,
                    request,
                    loaded.model_id,
                    progress=lambda done, total: bar.progress(done / total, text=f"Retraining: step {done}/{total}"),
                    show_bar=False,
                )
                bar.empty()
                prepared = prepared.with_retrained(retrained.model)
            report = answer(prepared, config, progress=session.phase_writer(status))
            status.update(label=f"Edit done in {time.perf_counter() - clicked:.1f} s", state="complete", expanded=False)
        if retrained is not None:
            report.retrain_seconds, report.retrain_from_cache = retrained.seconds, retrained.from_cache
        report.extra["model"] = {"path": loaded.source, "id": loaded.model_id}
        st.session_state["edit"] = (loaded.model_id, report)

    stored = st.session_state.get("edit")
    if stored is None or stored[0] != loaded.model_id:
        st.info("Choose a question and methods, then press *Run the edit*.")
        st.stop()
    report = stored[1]
    outcomes = report.outcomes
    # ---- metrics table
    table = [{"model": "original", "status": "", **report.original}]
    if report.retrained is not None:
        source = "cache" if report.retrain_from_cache else f"{report.retrain_seconds:.1f} s"
        table.append({"model": f"retrained ({source})", "status": "ground truth", **report.retrained})
    for o in outcomes:
        if o.diverged:
            table.append({"model": METHOD_NAMES[o.method], "diverged": o.diverged, "seconds": o.seconds})
            continue
        solver = o.result.solver_summary()
        row = {"model": METHOD_NAMES[o.method], "status": "; ".join(o.flags) or "ok"}
        row.update({**o.metrics, "step α": o.step, "seconds": o.seconds})
        row.update({"HVPs": solver["hvps"], "residual": solver["rel_residual"], "converged": solver["converged"]})
        if o.vs_retrain is not None:
            row.update({f"vs retrained: {k}": v for k, v in o.vs_retrain.items()})
        table.append(row)
    frame = pd.DataFrame(table)
    st.subheader("Metrics (percent; Avg. Gap = mean |metric − retrained|, lower is better)")
    st.dataframe(
        frame[[c for c in frame.columns if c == "model" or c not in METRICS or frame[c].notna().any()]], hide_index=True
    )
    for o in outcomes:
        if o.diverged:
            st.error(f"{METHOD_NAMES[o.method]} diverged: {o.diverged}. It has no metrics and cannot be downloaded.")
        elif o.step_search is not None:
            for warning in o.step_search.warnings:
                st.warning(f"{METHOD_NAMES[o.method]}: {warning}")
    finished = [o for o in outcomes if not o.diverged]
    if not all(o.result.converged for o in finished):
        st.caption(
            "Some solves stopped at *Max iterations* before the tolerance (see *converged*). At the defaults that is "
            f"by design: {DEFAULTS.maxiter} Krylov iterations, damping δ = {DEFAULTS.damping:g} and GIF's ridge "
            f"ρ = {DEFAULTS.gif_ridge:g} regularise the solve; more converged, undamped solves edited worse "
            "(benchmarks/results/defaults_sweep.md)."
        )
    if report.selection is not None:
        with st.expander("Selected parameters per layer (GIF/FIF/PIF)"):
            layers = report.selection.describe()["layers"]
            st.dataframe(
                [{"layer": name, **counts} for name, counts in layers.items()], hide_index=True, key="edit_layers"
            )
    # ---- predictions of every model
    probabilities = {"original": report.original_test_probs}
    if report.retrained_test_probs is not None:
        probabilities["retrained"] = report.retrained_test_probs
    probabilities.update({METHOD_NAMES[o.method]: o.test_probs for o in finished})
    predictions = predictions_of(probabilities, bundle.test, bundle.num_classes)
    st.plotly_chart(charts.per_class_accuracy(predictions, bundle.classes), key="edit_per_class")
    if isinstance(report.request, ClassRemoval):
        removed_rows = np.flatnonzero(bundle.test.labels.numpy() == report.request.cls)
        counts = {p.name: p.predicted_counts(removed_rows, bundle.num_classes) for p in predictions}
        st.plotly_chart(
            charts.predicted_histogram(counts, bundle.classes, bundle.classes[report.request.cls]), key="histogram"
        )
    tabs = st.tabs([p.name for p in predictions])
    for tab, p in zip(tabs, predictions, strict=True):
        tab.plotly_chart(charts.confusion(p, bundle.classes), key=f"confusion_{p.name}")
    # ---- chosen test images
    st.subheader("Probability changes for chosen test images")
    default_rows = removed_rows[:3].tolist() if isinstance(report.request, ClassRemoval) else list(range(3))
    chosen = st.multiselect("Test images", list(range(len(bundle.test))), default=default_rows, key="prob_rows")
    columns = st.columns(max(1, len(chosen)))
    for column, row in zip(columns, chosen, strict=False):
        if bundle.test.images is not None:
            column.image(
                bundle.test.images[row].numpy(),
                width=90,
                caption=f"test #{row} · {bundle.classes[int(bundle.test.labels[row])]}",
            )
        column.plotly_chart(
            charts.probabilities(
                {p.name: p.probabilities[row].numpy() for p in predictions}, bundle.classes, f"#{row}"
            ),
            key=f"probs_{row}",
        )
    # ---- solver and step
    curves = {
        f"{METHOD_NAMES[o.method]} ({r.name})": r.residual_history
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
    steps = {METHOD_NAMES[o.method]: o.step_curve for o in finished if o.step_curve}
    if steps:
        st.plotly_chart(charts.step_curves(steps), key="steps")
    # ---- downloads: new files only, the original is never touched
    if not finished:
        st.stop()
    st.subheader("Downloads")
    first = finished[0]
    d1, d2, d3 = st.columns(3)
    d1.download_button(
        f"Edited model ({METHOD_NAMES[first.method]}) .safetensors",
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
