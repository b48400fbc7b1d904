"""Influential samples: which training samples made this prediction, and which look mislabelled."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import streamlit as st
import torch

from app import charts, jobs, session
from app.gallery import show_grid
from gif_core.agreement import pairwise_agreement
from gif_core.browse import (
    BROWSE_METHODS,
    METHOD_LABELS,
    SCORE_UNITS,
    SET_LIMIT,
    Explanation,
    InfluenceBrowser,
    InfluentialSample,
    RankingRow,
    SetExplanation,
    ranking_table,
    tie_band,
)
from gif_core.data import LabelledSet, seeded_subset
from gif_core.evaluate import predict_proba
from gif_core.interrupt import StopCheck
from gif_core.scores import SCORE_FORMULA
from gif_core.solvers import SolverConfig

MODES = ("one test image", "a set of test images", "a whole class")
Target = int | tuple[int, ...]  # one test row, or a set of test rows (the influence on their mean loss)

st.caption(
    f"Score = {SCORE_FORMULA}, the predicted change of the test loss if the training sample were removed: "
    "**helpful** (positive) samples "
    "hold the prediction up, **harmful** (negative) ones pull it down. Influence functions are fragile in deep "
    "networks (Basu et al. 2021): compare methods before trusting one."
)


def compute(
    browser: InfluenceBrowser,
    test: LabelledSet,
    target: Target,
    method: str,
    k: int,
    solver: SolverConfig,
    stop: StopCheck | None,
    progress: Callable[[str, float], None] | None,
) -> Explanation | SetExplanation:
    """The page's one computing call (a background job unless the estimate is quick): one test row is explained
    alone, a set by the influence on its mean loss."""
    if isinstance(target, int):
        inputs, label = test.inputs[target : target + 1], int(test.labels[target])
        return browser.explain(inputs, label, method, k, stop=stop, progress=progress, solver=solver)
    rows = list(target)
    inputs, labels = test.inputs[rows], test.labels[rows]
    return browser.explain_set(inputs, labels, method, k, stop=stop, progress=progress, solver=solver)


def describe_target(target: Target, test: LabelledSet, classes: Sequence[str]) -> str:
    """``test #3``, or the size of a set and the classes in it."""
    if isinstance(target, int):
        return f"test #{target}"
    names = sorted({classes[int(test.labels[r])] for r in target})
    return f"{len(target)} test images (classes {', '.join(names)})"


def captions(
    records: tuple[InfluentialSample, ...], ranked: dict[int, RankingRow], classes: Sequence[str]
) -> list[str]:
    """``helpful +1.2e-03 (+0.82 of max) · setosa · #17`` for each sample."""
    return [
        f"{ranked[r.row].kind} {r.score:+.2e} ({ranked[r.row].relative_score:+.2f} of max) · {classes[r.label]} · "
        f"#{r.row}"
        for r in records
    ]


def features_of(train: LabelledSet, records: Sequence[InfluentialSample]) -> list[np.ndarray] | None:
    """The input vectors of tabular samples, shown beside them (None for images: the image shows the sample)."""
    return None if train.images is not None else [train.inputs[r.row].numpy() for r in records]


def choose_target(test: LabelledSet, predicted: torch.Tensor, classes: Sequence[str]) -> Target | None:
    """One test row, a set of rows or a whole class (sampled down to SET_LIMIT), as the user picks it."""
    mode = st.radio("Explain", MODES, horizontal=True, key="explain_mode")
    if mode == "a whole class":
        class_name = st.selectbox("Class", classes, key="set_class")
        class_rows = torch.nonzero(test.labels == classes.index(class_name)).flatten()
        chosen = seeded_subset(class_rows, SET_LIMIT, 0).tolist()
        st.caption(
            f"{len(chosen)} of the {len(class_rows)} test images of class {class_name}"
            + (f" (a seeded sample: at most {SET_LIMIT} points)" if len(class_rows) > SET_LIMIT else "")
            + "; the scores are the influence on their mean test loss."
        )
        return tuple(chosen) if chosen else None
    shown_class = st.selectbox("Test images of class", ["all", *classes], key="test_class")
    wrong_only = st.checkbox("Only misclassified", key="wrong_only")
    rows = list(range(len(test)))
    if shown_class != "all":
        rows = [r for r in rows if int(test.labels[r]) == classes.index(shown_class)]
    if wrong_only:
        rows = [r for r in rows if int(predicted[r]) != int(test.labels[r])]
    if not rows:
        st.warning("No test image matches these filters.")
        return None

    def name(r: int) -> str:
        return f"#{r} · label {classes[int(test.labels[r])]} · predicted {classes[int(predicted[r])]}"

    if mode == "one test image":
        session.linked_input("test_row", rows, rows[0])
        row = st.selectbox("Test image", rows, format_func=name, key="test_row")
        if test.images is not None:
            st.image(test.images[row].numpy(), width=140, caption=f"test #{row}")
        return row
    picked = st.multiselect(
        f"Test images (up to {SET_LIMIT})", rows, format_func=name, max_selections=SET_LIMIT, key="test_rows"
    )
    st.caption("The scores are the influence on the picked images' mean test loss (the mean of their scores).")
    return tuple(sorted(picked)) if picked else None


def show_header(
    explanation: Explanation | SetExplanation, target: Target, test: LabelledSet, classes: Sequence[str]
) -> None:
    """What was explained, by which method, how long it took, whether its solve converged, and the score's units."""
    if isinstance(explanation, Explanation):
        what = f"true class {classes[explanation.label]}, predicted {classes[explanation.predicted]}"
    else:
        what = f"{describe_target(target, test, classes)}, {explanation.accuracy:.1f}% of them predicted right"
    report = explanation.report
    solver = f" · solver: {report.iterations} iterations, residual {report.rel_residual:.1e}" if report else ""
    if isinstance(explanation, Explanation) and explanation.from_cache:
        solver += " · scores from the disk cache"
    st.markdown(f"**{METHOD_LABELS[explanation.method]}** · {what} · {explanation.seconds:.2f} s{solver}")
    if report is not None and not report.converged:
        st.warning(
            f"The solve did not converge: it stopped after {report.iterations} iterations with relative residual "
            f"{report.rel_residual:.1e}, so these scores are approximate. Low-rank IF or TracIn need no solve; more "
            "damping makes the solve converge faster."
        )
    if explanation.note:
        st.info(explanation.note)
    st.caption(
        f"Units: {SCORE_UNITS[explanation.method]}. Each score is also shown relative to the largest |score| over the "
        "training set (+1.00 = the most helpful sample, −1.00 a harmful one as strong)."
    )


def show_ranking(
    explanation: Explanation | SetExplanation,
    ranking: tuple[RankingRow, ...],
    train: LabelledSet,
    classes: Sequence[str],
    k: int,
) -> None:
    """The score histogram, the helpful and harmful samples, and the CSV of the full ranking."""
    st.plotly_chart(
        charts.score_histogram(
            [r.score for r in ranking],
            [r.kind for r in ranking],
            tie_band(explanation.scores),
            f"Scores of all {len(ranking)} training samples",
        ),
        key="score_histogram",
    )
    ranked = {r.row: r for r in ranking}
    if train.images is None:
        st.caption("Tabular samples are listed with their feature values as the model sees them (standardised).")
    for kind, records, sign in (
        ("helpful", explanation.helpful, "positive"),
        ("harmful", explanation.harmful, "negative"),
    ):
        st.subheader(f"Most {kind} training samples")
        if len(records) < k:
            st.caption(
                f"Only {len(records)} training samples have a {sign} score; the others tie at zero "
                "(within a millionth of the largest score) and are neither helpful nor harmful."
            )
        show_grid(
            [r.image for r in records],
            captions(records, ranked, classes),
            features=features_of(train, records),
        )
    table = pd.DataFrame([dataclasses.asdict(r) for r in ranking])
    st.download_button(
        f"Download the full ranking ({len(ranking)} rows, CSV)",
        table.to_csv(index=False),
        file_name=f"ranking-{explanation.method}.csv",
        mime="text/csv",
        key="ranking_csv",
    )


def show_picking(explanation: Explanation | SetExplanation, ranked: dict[int, RankingRow]) -> None:
    """Pick individual helpful or harmful samples (or all helpful ones) to remove on the What-if page."""
    st.subheader("Remove samples on the What-if page")
    shown = [r.row for r in (*explanation.helpful, *explanation.harmful)]
    picked = st.multiselect(
        "Training samples to remove",
        shown,
        format_func=lambda row: f"#{row} · {ranked[row].kind} {ranked[row].relative_score:+.2f} · {ranked[row].label}",
        key="pick_rows",
    )
    left, right = st.columns(2)
    if left.button(f"Send {len(picked)} picked samples to What-if", key="send_picked", disabled=not picked):
        st.session_state["picked_rows"] = list(picked)
        st.success(f"Picked training rows {picked}: open What-if edit.")
    if right.button("Remove these helpful samples on the What-if page", key="pick_helpful"):
        st.session_state["picked_rows"] = [r.row for r in explanation.helpful]
        st.success(f"Picked training rows {st.session_state['picked_rows']}: open What-if edit.")


def show_agreement(explanation: Explanation | SetExplanation, target: Target, model_id: str, k: int) -> None:
    """Spearman's ρ and the top-k overlaps between this explanation and the others computed for the same target."""
    st.subheader("Do the methods agree?")
    stored = st.session_state.get("explanations", {})
    scores = {explanation.method: explanation.scores} | {
        key[2]: e.scores for key, e in stored.items() if key[:2] == (model_id, target)
    }
    if len(scores) < 2:
        st.info(
            "Only one method has explained this so far: choose another method on the left and press *Explain* again "
            "to compare their rankings here (Spearman's ρ over all training samples, overlap of the top-k)."
        )
        return
    st.caption(
        f"Spearman's ρ: +1 = the same order of all training samples, 0 = unrelated, −1 = reversed. Overlap: the "
        f"share of the top-{k} helpful (or harmful) samples both methods name."
    )
    st.dataframe(
        [
            {
                "method A": METHOD_LABELS[a.first],
                "method B": METHOD_LABELS[a.second],
                "Spearman ρ": "undefined (one ranking is all ties)" if np.isnan(a.spearman) else f"{a.spearman:+.3f}",
                f"top-{a.k} helpful overlap": f"{a.helpful_overlap:.0%}",
                f"top-{a.k} harmful overlap": f"{a.harmful_overlap:.0%}",
            }
            for a in pairwise_agreement(scores, k)
        ],
        hide_index=True,
        key="agreement",
    )


loaded = session.workspace()
bundle, test = loaded.bundle, loaded.bundle.test
predicted = predict_proba(loaded.model, test.inputs).argmax(1)
left, right = st.columns([1, 2])
with left:
    chosen = choose_target(test, predicted, bundle.classes)
    if chosen is None:
        st.stop()
    target: Target = chosen  # not Optional, also inside the job's lambda below
    session.linked_input("browse_method", BROWSE_METHODS, "if-lowrank")
    method = st.radio(
        "Method",
        BROWSE_METHODS,
        format_func=METHOD_LABELS.get,
        key="browse_method",
        help=f"Hessian-based methods use H + {session.BROWSE_DAMPING}·I over a 500-sample Hessian. Low-rank IF "
        "and TracIn are instant after a one-off set-up per model; the exact solve and GIF-restricted solve per "
        "test point (one per set); DataInf, HyperINF and EK-FAC replace H⁻¹ by their approximate inverse (passes "
        "over the Hessian sample per test point, no solve); TRAK projects the cached gradients once to a few hundred "
        "dimensions and inverts their Gauss–Newton matrix there; Captum's run on the same model and data.",
    )
    k = st.slider("How many samples", 4, 24, 8, key="browse_k")
    session.keep_in_link("test_row", "browse_method")
    browser = session.browser(loaded)
    maxiter = st.number_input(
        "Max iterations of a solve (exact IF, GIF-restricted)",
        1,
        1000,
        browser.config.solver.maxiter,
        step=10,
        key="browse_maxiter",
        help="A solve that stops here before its tolerance says so above its scores (they are approximate).",
    )
    solver = dataclasses.replace(browser.config.solver, maxiter=int(maxiter))
    point = (test.inputs[target : target + 1], int(test.labels[target])) if isinstance(target, int) else None
    cost = browser.estimate(method, point, solver)
    st.caption(f"Cost now: {cost.describe()}.")
    explain = st.button("Explain this prediction", type="primary", key="explain", disabled=not cost.feasible)
with right:
    question = (loaded.model_id, target, method, k, solver)
    finished, job = None, jobs.current("explain")
    busy = job is not None and job.running()  # the browser is taken: even quick work waits, so it waits as a job
    if explain and cost.quick and not busy:  # under a second, nothing to set up: no background job, no polling
        finished = compute(browser, test, target, method, k, solver, None, None)
    elif explain:
        jobs.start(
            "explain",
            question,
            f"{METHOD_LABELS[method]} for {describe_target(target, test, bundle.classes)}",
            lambda stop, report: compute(browser, test, target, method, k, solver, stop, report),
        )
    job = jobs.current("explain")
    if job is not None and job.key != question and job.running():
        jobs.result(job)  # the previous choice's work: its progress and Cancel stay in sight
    if finished is None and job is not None and job.key == question:
        finished = jobs.result(job)
    stored = st.session_state.get("explanation")
    if finished is not None and (stored is None or stored[2] is not finished):
        st.session_state["explanation"] = (loaded.model_id, target, finished)
        st.session_state.setdefault("explanations", {})[(loaded.model_id, target, method)] = finished
        st.session_state.pop("pick_rows", None)
    stored = st.session_state.get("explanation")
    if stored is not None and stored[0] == loaded.model_id and stored[1] == target:
        explanation = stored[2]
        show_header(explanation, target, test, bundle.classes)
        if isinstance(explanation, Explanation):
            st.plotly_chart(
                charts.probabilities({"probability": explanation.probabilities}, bundle.classes, "Prediction"),
                key="prediction",
            )
        ranking = ranking_table(explanation.scores, loaded.train, bundle.classes)
        show_ranking(explanation, ranking, loaded.train, bundle.classes, k)
        show_picking(explanation, {r.row: r for r in ranking})
        show_agreement(explanation, target, loaded.model_id, k)
    else:
        st.info("Pick a test image (or a set) and a method, then press *Explain this prediction*.")

st.divider()
st.subheader("Possible mislabels: the most self-influential training samples")
st.caption(
    "Self-influence ∇ℓ_zᵀH⁻¹∇ℓ_z/n (low-rank IF) or ‖∇ℓ_z‖² (TracIn): how much a sample props itself up. "
    "Mislabelled and atypical samples rank first."
)
self_method = st.radio(
    "Self-influence",
    ["tracin", "if-lowrank"],
    format_func=lambda m: {"tracin": "TracIn", "if-lowrank": "Low-rank IF"}[m],
    horizontal=True,
    key="self_method",
)
st.caption(f"Cost now: {browser.estimate(self_method).describe()}.")
ranking_question = (loaded.model_id, self_method)
if st.button("Rank the training set", key="rank_self"):
    jobs.start(
        "suspicious",
        ranking_question,
        "Self-influence ranking",
        lambda stop, report: browser.suspicious(24, self_method, stop=stop, progress=report),
    )
job = jobs.current("suspicious")
if job is not None and (job.key == ranking_question or job.running()):
    ranked = jobs.result(job)
    ranked = ranked if job.key == ranking_question else None
    if ranked is not None:
        st.session_state["suspicious"] = (loaded.model_id, self_method, ranked)
stored = st.session_state.get("suspicious")
if stored is not None and stored[0] == loaded.model_id:
    show_grid(
        [r.image for r in stored[2]],
        [f"{r.score:.2e} · label {bundle.classes[r.label]} · #{r.row}" for r in stored[2]],
        features=features_of(loaded.train, stored[2]),
    )
