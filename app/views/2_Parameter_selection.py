"""Parameter selection: which parameters an edit would move, per layer and per channel, for two selectors."""

from __future__ import annotations

import dataclasses

import streamlit as st
from torch import nn

from app import charts, session, warmup
from app.request_form import request_form
from gif_core.experiment import EditConfig
from gif_core.problem import prepare
from gif_core.selection import (
    BUDGETS,
    METHODS,
    Selection,
    layer_architecture,
    layer_titles,
    layers_without_units,
    select,
)

st.caption(
    "GIF updates only the parameters the questioned data actually uses. Pick a question and two selectors to see "
    "what each would move: whole neurons / channels (fan-in weights and bias) of every Linear and Conv layer."
)
RATIOS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
DEFAULTS = EditConfig()


def selection_counts(model: nn.Module, selections: dict[str, Selection]) -> list[dict]:
    """One row per layer, with its architecture: units and parameters each selector (keyed by its letter, A or B)
    picked, headed by the selector's letter and method (from Selection.describe)."""
    described = {letter: s.describe() for letter, s in selections.items()}
    modules = dict(model.named_modules())
    rows = []
    for module, first in next(iter(described.values()))["layers"].items():
        row = {
            "layer": module,
            "architecture": layer_architecture(modules[module]),
            "units": first["units"],
            "parameters": first["params"],
        }
        for letter, s in selections.items():
            layer = described[letter]["layers"][module]
            row[f"{letter} ({s.method}): units"] = layer["units_selected"]
            row[f"{letter} ({s.method}): parameters"] = layer["selected"]
        rows.append(row)
    return rows


def zero_unit_notes(selections: dict[str, Selection], titles: dict[str, str]) -> list[str]:
    """One sentence per selector and layer that holds no whole unit (see layers_without_units)."""
    notes = []
    for label, s in selections.items():
        for layer in layers_without_units(s):
            spread = (
                f"{layer.n_selected:,} of its {layer.n_params:,} parameters, spread over its units"
                if layer.n_selected
                else "none of its parameters"
            )
            notes.append(f"{label} gives {titles[layer.module]} **0 units**: {spread}.")
    return notes


loaded = session.workspace()
request = request_form(loaded, "select")
a, b, c = st.columns(3)
first = a.selectbox("Selector A", METHODS, index=METHODS.index(DEFAULTS.selection.method), key="selector_a")
second = b.selectbox("Selector B (overlap)", METHODS, index=METHODS.index("output"), key="selector_b")
ratio = c.select_slider(
    "Share of parameters", RATIOS, value=DEFAULTS.selection.ratio, format_func=lambda r: f"{r:.0%}", key="sel_ratio"
)
budget = c.radio("Budget", BUDGETS, index=BUDGETS.index(DEFAULTS.selection.budget), horizontal=True, key="sel_budget")
if st.button("Select parameters", type="primary", key="run_select", disabled=request is None):
    assert request is not None  # the button is disabled without a request
    with st.spinner("Scoring neurons on the questioned data…"):
        problem = prepare(  # the Hessian sample of the What-if page's default edit (the curvature selector's F)
            loaded.model,
            loaded.train,
            request,
            loaded.bundle.num_classes,
            warmup.page_defaults(loaded).curvature.problem_config(loaded.weight_decay),
        )
        chosen = [
            select(problem, dataclasses.replace(DEFAULTS.selection, method=m, ratio=ratio, budget=budget))
            for m in (first, second)
        ]
    st.session_state["selection_view"] = (loaded.model_id, request, chosen)
stored = st.session_state.get("selection_view")
if stored is not None and stored[0] == loaded.model_id:
    _, asked, (sel_a, sel_b) = stored
    st.caption(
        f"Question: {asked.kind}, {len(asked.edit(loaded.train.labels, loaded.bundle.num_classes).rows)} training samples questioned"
    )
    by_letter = {"A": sel_a, "B": sel_b}
    labelled = {f"{letter}: {s.method}": s for letter, s in by_letter.items()}  # "A: gradient", "B: output"
    titles = layer_titles(loaded.model)
    columns = st.columns(3)
    for column, (label, s) in zip(columns, labelled.items(), strict=False):  # no delta: no arrow, no colour
        column.metric(f"{label}: parameters selected", f"{s.n_selected:,} ({s.ratio_obtained:.2%} of all)")
    columns[2].metric("Overlap of A and B (Jaccard |A∩B| / |A∪B|)", f"{sel_a.overlap(sel_b):.2f}")
    st.plotly_chart(charts.layer_fractions(labelled, titles), key="layer_fractions")
    st.caption(
        "Per layer: whole units (neurons / channels) and parameters selected by A and by B. The neuron selectors "
        "give every layer at least one unit — a share rounded to zero units would leave, e.g., the classifier "
        "head (where a class lives) out; param-gradient picks single parameters, so a layer may get no whole unit."
    )
    for note in zero_unit_notes(labelled, titles):
        st.info(note)
    st.dataframe(selection_counts(loaded.model, by_letter), hide_index=True, key="layer_counts")
    st.subheader("Per-channel view")
    st.caption(
        "Every layer with units: channels of a Conv layer (a depthwise one too), neurons of a Linear layer, heads of "
        "an attention layer (each head's query, key and value rows); A left, B right."
    )
    for layer in sel_a.layers:
        for column, (letter, s) in zip(st.columns(2), by_letter.items(), strict=True):
            figure = charts.channel_map(s, layer.module, f"{letter}: {s.method}", titles[layer.module])
            column.plotly_chart(figure, key=f"map_{letter.lower()}_{layer.module}")
else:
    st.info("Choose a question and selectors, then press *Select parameters*.")
