"""Parameter selection: which parameters an edit would move, per layer and per channel, for two selectors."""

from __future__ import annotations

import streamlit as st

from app import charts, session
from app.request_form import request_form
from gif_core.curvature import CurvatureConfig
from gif_core.experiment import EditConfig
from gif_core.requests import ProblemConfig, prepare
from gif_core.selection import BUDGETS, METHODS, SelectionConfig, select

st.set_page_config(page_title="Parameter selection · GIF Explorer", layout="wide")
st.title("Parameter selection")
st.caption(
    "GIF updates only the parameters the questioned data actually uses. Pick a question and two selectors to see "
    "what each would move: whole neurons / channels (fan-in weights and bias) of every Linear and Conv layer."
)
RATIOS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
DEFAULTS = EditConfig()


def selection_counts(selections: list) -> list[dict]:
    """One row per layer: units and parameters selectors A and B picked (from Selection.describe)."""
    described = [s.describe() for s in selections]
    rows = []
    for module, first in described[0]["layers"].items():
        row = {"layer": module, "kind": first["kind"], "units": first["units"], "parameters": first["params"]}
        for name, s, d in zip("AB", selections, described, strict=False):
            layer = d["layers"][module]
            row[f"{name} ({s.method}): units"] = layer["units_selected"]
            row[f"{name} ({s.method}): parameters"] = layer["selected"]
        rows.append(row)
    return rows


with session.errors_shown():
    loaded = session.workspace()
    st.markdown(session.model_caption(loaded))
    request = request_form(loaded, "select")
    a, b, c = st.columns(3)
    first = a.selectbox("Selector A", METHODS, index=METHODS.index(DEFAULTS.selector), key="selector_a")
    second = b.selectbox("Selector B (overlap)", METHODS, index=METHODS.index("output"), key="selector_b")
    ratio = c.select_slider(
        "Share of parameters", RATIOS, value=DEFAULTS.ratio, format_func=lambda r: f"{r:.0%}", key="sel_ratio"
    )
    budget = c.radio("Budget", BUDGETS, index=BUDGETS.index(DEFAULTS.budget), horizontal=True, key="sel_budget")
    if st.button("Select parameters", type="primary", key="run_select", disabled=request is None):
        with st.spinner("Scoring neurons on the questioned data…"):
            problem = prepare(  # the Hessian sample of the What-if page's default edit (the curvature selector's F)
                loaded.model,
                loaded.train,
                request,
                loaded.bundle.num_classes,
                ProblemConfig(
                    hessian_samples=DEFAULTS.hessian_samples,
                    seed=DEFAULTS.seed,
                    curvature=CurvatureConfig(weight_decay=loaded.weight_decay),
                ),
            )
            chosen = [select(problem, SelectionConfig(m, ratio, budget)) for m in (first, second)]
        st.session_state["selection_view"] = (loaded.model_id, request, chosen)
    stored = st.session_state.get("selection_view")
    if stored is not None and stored[0] == loaded.model_id:
        _, asked, (sel_a, sel_b) = stored
        st.caption(
            f"Question: {asked.kind}, {len(asked.forget_rows(loaded.train.labels, loaded.bundle.num_classes))} training samples questioned"
        )
        m1, m2, m3 = st.columns(3)
        m1.metric(f"Selected by {sel_a.method}", f"{sel_a.n_selected:,}", f"{sel_a.ratio_obtained:.2%} of all")
        m2.metric(f"Selected by {sel_b.method}", f"{sel_b.n_selected:,}", f"{sel_b.ratio_obtained:.2%} of all")
        m3.metric("Overlap (Jaccard |A∩B| / |A∪B|)", f"{sel_a.overlap(sel_b):.2f}")
        st.plotly_chart(charts.layer_fractions([sel_a, sel_b]), key="layer_fractions")
        st.caption(
            "Per layer: whole units (neurons / channels) and parameters selected. Every layer gets at least one unit "
            "— a share rounded to zero units would leave, e.g., the classifier head (where a class lives) out."
        )
        st.dataframe(selection_counts([sel_a, sel_b]), hide_index=True, key="layer_counts")
        conv_layers = [l.module for l in sel_a.layers if l.kind == "conv"] or [l.module for l in sel_a.layers]
        st.subheader("Per-channel view")
        for module in conv_layers:
            left, right = st.columns(2)
            left.plotly_chart(charts.channel_map(sel_a, module), key=f"map_a_{module}")
            right.plotly_chart(charts.channel_map(sel_b, module), key=f"map_b_{module}")
    else:
        st.info("Choose a question and selectors, then press *Select parameters*.")
