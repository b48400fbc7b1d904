"""Influential samples: which training samples made this prediction, and which look mislabelled."""

from __future__ import annotations

import streamlit as st

from app import charts, session
from app.gallery import show_grid
from gif_core.browse import BROWSE_METHODS, METHOD_LABELS, InfluentialSample
from gif_core.evaluate import predict_proba

st.set_page_config(page_title="Influential samples · GIF Explorer", layout="wide")
st.title("Influential samples")
st.caption(
    "Score = predicted change of the test loss if the training sample were removed: **helpful** (positive) samples "
    "hold the prediction up, **harmful** (negative) ones pull it down. Influence functions are fragile in deep "
    "networks (Basu et al. 2021): compare methods before trusting one."
)


def captions(records: tuple[InfluentialSample, ...], classes: tuple[str, ...], kind: str) -> list[str]:
    return [f"{kind} {r.score:+.2e} · {classes[r.label]} · #{r.row}" for r in records]


with session.errors_shown():
    loaded = session.workspace()
    bundle, test = loaded.bundle, loaded.bundle.test
    st.markdown(session.model_caption(loaded))
    predicted = predict_proba(loaded.model, test.inputs).argmax(1)
    left, right = st.columns([1, 2])
    with left:
        shown_class = st.selectbox("Test images of class", ["all", *bundle.classes], key="test_class")
        wrong_only = st.checkbox("Only misclassified", key="wrong_only")
        rows = list(range(len(test)))
        if shown_class != "all":
            rows = [r for r in rows if int(test.labels[r]) == bundle.classes.index(shown_class)]
        if wrong_only:
            rows = [r for r in rows if int(predicted[r]) != int(test.labels[r])]
        if not rows:
            st.warning("No test image matches these filters.")
            st.stop()
        row = st.selectbox(
            "Test image",
            rows,
            format_func=lambda r: (
                f"#{r} · label {bundle.classes[int(test.labels[r])]} · predicted {bundle.classes[int(predicted[r])]}"
            ),
            key="test_row",
        )
        if test.images is not None:
            st.image(test.images[row].numpy(), width=140, caption=f"test #{row}")
        method = st.radio(
            "Method",
            BROWSE_METHODS,
            index=BROWSE_METHODS.index("if-lowrank"),
            format_func=METHOD_LABELS.get,
            key="browse_method",
            help=f"Hessian-based methods use H + {session.BROWSE_DAMPING}·I over a 500-sample Hessian. Low-rank IF "
            "and TracIn are instant after a one-off set-up per model; the exact solve and GIF-restricted solve per "
            "test point; Captum's run on the same model and data.",
        )
        k = st.slider("How many samples", 4, 24, 8, key="browse_k")
        explain = st.button("Explain this prediction", type="primary", key="explain")
    with right:
        if explain:
            browser = session.browser(loaded)
            with st.spinner(f"{METHOD_LABELS[method]}: scoring all {len(loaded.train)} training samples…"):
                explanation = browser.explain(test.inputs[row : row + 1], int(test.labels[row]), method, k)
            st.session_state["explanation"] = (loaded.model_id, row, explanation)
        stored = st.session_state.get("explanation")
        if stored is not None and stored[0] == loaded.model_id and stored[1] == row:
            explanation = stored[2]
            st.markdown(
                f"**{METHOD_LABELS[explanation.method]}** · true class {bundle.classes[explanation.label]}, predicted "
                f"{bundle.classes[explanation.predicted]} · {explanation.seconds:.2f} s"
                + (
                    f" · solver: {explanation.report.iterations} iterations, residual "
                    f"{explanation.report.rel_residual:.1e}"
                    if explanation.report
                    else ""
                )
            )
            if explanation.report is not None and not explanation.report.converged:
                st.warning(
                    f"The solve did not converge: it stopped after {explanation.report.iterations} iterations with "
                    f"relative residual {explanation.report.rel_residual:.1e}, so these scores are approximate. Low-rank IF "
                    "or TracIn need no solve; more damping makes the solve converge faster."
                )
            if explanation.note:
                st.info(explanation.note)
            st.plotly_chart(
                charts.probabilities({"probability": explanation.probabilities}, bundle.classes, "Prediction"),
                key="prediction",
            )
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
                show_grid([r.image for r in records], captions(records, bundle.classes, kind))
            if st.button("Remove these helpful samples on the What-if page", key="pick_helpful"):
                st.session_state["picked_rows"] = [r.row for r in explanation.helpful]
                st.success(f"Picked training rows {st.session_state['picked_rows']}: open What-if edit.")
        else:
            st.info("Pick a test image and a method, then press *Explain this prediction*.")

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
    if st.button("Rank the training set", key="rank_self"):
        browser = session.browser(loaded)
        with st.spinner("Ranking every training sample by self-influence…"):
            st.session_state["suspicious"] = (loaded.model_id, self_method, browser.suspicious(24, self_method))
    stored = st.session_state.get("suspicious")
    if stored is not None and stored[0] == loaded.model_id:
        show_grid(
            [r.image for r in stored[2]],
            [f"{r.score:.2e} · label {bundle.classes[r.label]} · #{r.row}" for r in stored[2]],
        )
