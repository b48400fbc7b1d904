"""Plotly figures for the dashboard. Presentation only: every number comes from gif_core."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from gif_core.comparison import ModelPredictions
from gif_core.params import UNIT_NAMES
from gif_core.selection import Selection

MODEL_COLOURS = {
    "original": "#7f7f7f",
    "retrained": "#222222",
    "GIF": "#d62728",
    "FIF": "#ff7f0e",
    "PIF": "#9467bd",
    "IF": "#1f77b4",
    "SIF": "#17becf",
    "TracIn": "#2ca02c",
    "DataInf": "#8c564b",
    "HyperINF": "#e377c2",
    "EK-FAC": "#bcbd22",
}
"""One colour per model on every chart (the original grey, the retrained ground truth near-black)."""


def colour_of(name: str) -> str | None:
    """The colour of the model a trace is named after: its first word (``"GIF (lsmr)"`` is GIF); None if unknown."""
    return MODEL_COLOURS.get(name.split(" ")[0])


FIXED_MARGINS = {"t": 50, "b": 50, "l": 70, "r": 170, "autoexpand": False}
"""Margins in pixels that hold a chart's title, axis titles, tick labels and its legend on the right (names up to
about 20 characters). Fixed, they spare plotly.js the redraws with which it grows margins to fit what it drew
(``autoexpand``, axes' ``automargin``): on the What-if page that halved the browser's time from the server's answer to
the last chart (benchmarks/results/click_profile.md)."""


def _layout(
    fig: go.Figure, title: str, x: str = "", y: str = "", height: int = 360, fixed_margins: bool = True
) -> go.Figure:
    """Title, axis titles and height; :data:`FIXED_MARGINS` unless the chart's tick labels are long names of
    unknown length (``fixed_margins=False``: plotly grows the margins to fit them)."""
    margin = FIXED_MARGINS if fixed_margins else {"t": 50, "b": 40}
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=height, margin=margin)
    if fixed_margins:
        fig.update_xaxes(automargin=False)
        fig.update_yaxes(automargin=False)
    return fig


def per_class_accuracy(predictions: Sequence[ModelPredictions], classes: Sequence[str]) -> go.Figure:
    fig = go.Figure(
        [
            go.Bar(name=p.name, x=list(classes), y=p.per_class_accuracy, marker_color=colour_of(p.name))
            for p in predictions
        ]
    )
    fig.update_layout(barmode="group", yaxis_range=[0, 100])
    fig.update_xaxes(type="category")
    return _layout(fig, "Test accuracy per class", "class", "accuracy (%)")


def confusion(prediction: ModelPredictions, classes: Sequence[str]) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=prediction.confusion,
            x=list(classes),
            y=list(classes),
            colorscale="Blues",
            text=prediction.confusion,
            texttemplate="%{text}",
        )
    )
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"Confusion matrix · {prediction.name}", "predicted", "true", height=420)


def predicted_histogram(counts: dict[str, np.ndarray], classes: Sequence[str], removed: str) -> go.Figure:
    fig = go.Figure(
        [go.Bar(name=name, x=list(classes), y=c, marker_color=colour_of(name)) for name, c in counts.items()]
    )
    fig.update_layout(barmode="group")
    fig.update_xaxes(type="category")
    return _layout(fig, f"What the test images of class {removed} are predicted as", "predicted class", "images")


def probabilities(rows: Mapping[str, Sequence[float] | np.ndarray], classes: Sequence[str], title: str) -> go.Figure:
    fig = go.Figure([go.Bar(name=name, x=list(classes), y=p, marker_color=colour_of(name)) for name, p in rows.items()])
    fig.update_layout(barmode="group", yaxis_range=[0, 1])
    fig.update_xaxes(type="category")
    return _layout(fig, title, "class", "probability", height=300)


def residual_curves(curves: dict[str, Sequence[float]]) -> go.Figure:
    fig = go.Figure(
        [
            go.Scatter(name=name, x=list(range(1, len(c) + 1)), y=list(c), mode="lines", line_color=colour_of(name))
            for name, c in curves.items()
        ]
    )
    fig.update_yaxes(type="log")
    return _layout(fig, "Solver: relative residual per iteration", "iteration", "relative residual")


def step_curves(curves: dict[str, Sequence[tuple[float, float]]]) -> go.Figure:
    """Each method's validation objective against α, with the chosen (best) α marked."""
    fig = go.Figure()
    for name, curve in curves.items():
        colour = colour_of(name)
        x, y = [a for a, _ in curve], [o for _, o in curve]
        fig.add_trace(go.Scatter(name=name, x=x, y=y, mode="lines+markers", line_color=colour, marker_color=colour))
        best = max(curve, key=lambda point: point[1])
        fig.add_trace(
            go.Scatter(
                name=f"{name} chosen α", x=[best[0]], y=[best[1]], mode="markers", marker_size=14,
                marker_color=colour, showlegend=False,
            )
        )  # fmt: skip
    fig.update_xaxes(type="log")
    return _layout(fig, "Validation objective against the step scale α (auto step)", "α", "objective (%)")


def layer_fractions(selections: Mapping[str, Selection], titles: Mapping[str, str]) -> go.Figure:
    """Grouped bars of each selector's selected share per layer; the legend names each selector by its key
    (e.g. ``"A: gradient"``), the x axis each layer by its architecture title (``titles[module]``)."""
    fig = go.Figure(
        [
            go.Bar(name=label, x=[titles[l.module] for l in s.layers], y=[100 * l.fraction for l in s.layers])
            for label, s in selections.items()
        ]
    )
    fig.update_layout(barmode="group", legend_title_text="selector")
    fig.update_xaxes(type="category")  # titles such as "0 (Conv2d 1→16, 5×5)" are names, not positions
    return _layout(fig, "Selected share of each layer", "layer", "selected (%)", fixed_margins=False)


def channel_map(selection: Selection, module: str, label: str, title: str) -> go.Figure:
    """One row per selector-score (or selected flag) over the layer's units: channels of a Conv layer, neurons of
    a Linear one, heads of an attention layer. The title names the selector (``label``, e.g. ``"A: gradient"``) and the layer (``title``)."""
    layer = next(l for l in selection.layers if l.module == module)
    chosen = layer.selected_neurons.numpy().astype(float)
    z = [chosen] if layer.scores is None else [layer.scores.numpy() / max(float(layer.scores.max()), 1e-30), chosen]
    y = ["selected"] if layer.scores is None else ["score (scaled)", "selected"]
    fig = go.Figure(go.Heatmap(z=z, y=y, x=list(range(layer.n_neurons)), colorscale="Viridis", zmin=0, zmax=1))
    unit = UNIT_NAMES[layer.kind]
    heading = f"{label} · {title}: {int(chosen.sum())} of {layer.n_neurons} {unit}s selected"
    return _layout(fig, heading, unit, "", 220)


KIND_COLOURS = {"helpful": "#2a9d8f", "tie": "#bbbbbb", "harmful": "#e76f51"}
"""Helpful (positive) green, harmful (negative) orange-red, ties at zero grey, on every influence chart."""


def _shade(fig: go.Figure, x0: float, x1: float, kind: str) -> None:
    """Shade [x0, x1] in ``kind``'s colour, named above the plot."""
    fig.add_vrect(x0=x0, x1=x1, fillcolor=KIND_COLOURS[kind], opacity=0.08, line_width=0)
    fig.add_annotation(x=(x0 + x1) / 2, y=1, yref="paper", text=kind, showarrow=False, yanchor="bottom")


def score_histogram(scores: Sequence[float], kinds: Sequence[str], tie: float, title: str) -> go.Figure:
    """Every training sample's score, one bar colour per kind (helpful / tie / harmful, shared bins), with the
    helpful and harmful sides shaded, zero marked and the tie band ±``tie`` named."""
    values, labels = np.asarray(scores, dtype=float), np.asarray(kinds)
    fig = go.Figure(
        [
            go.Histogram(
                x=values[labels == kind],
                name=f"{kind} ({int((labels == kind).sum())})",
                bingroup=1,
                marker_color=colour,
                nbinsx=60,
            )
            for kind, colour in KIND_COLOURS.items()
        ]
    )
    _shade(fig, float(values.min(initial=0.0)), 0.0, "harmful")
    _shade(fig, 0.0, float(values.max(initial=0.0)), "helpful")
    fig.add_vline(x=0.0, line_dash="dot", annotation_text=f"tie band ±{tie:.1e}", annotation_position="bottom")
    fig.update_layout(barmode="stack")
    return _layout(fig, title, "score (+ helpful / − harmful)", "training samples", height=320)


def probability_grid(
    panels: Sequence[tuple[str, Mapping[str, np.ndarray]]], classes: Sequence[str], per_row: int
) -> go.Figure:
    """:func:`probabilities` of several test images as ONE figure, ``per_row`` panels a row (one chart costs the
    browser far less than one per image): each panel titled, every model in its colour, the legend once, in a row
    under the grid so that each panel keeps its width for the bars."""
    from plotly.subplots import make_subplots

    rows = -(-len(panels) // per_row)
    fig = make_subplots(
        rows=rows, cols=per_row, subplot_titles=[title for title, _ in panels], vertical_spacing=0.5 / rows
    )
    for index, (_, probabilities_of) in enumerate(panels):
        for name, p in probabilities_of.items():
            bar = go.Bar(name=name, x=list(classes), y=p, marker_color=colour_of(name), legendgroup=name)
            fig.add_trace(bar.update(showlegend=index == 0), row=index // per_row + 1, col=index % per_row + 1)
    fig.update_xaxes(type="category")
    fig.update_yaxes(range=[0, 1])
    fig.update_layout(
        barmode="group",
        height=90 + 300 * rows,
        margin={**FIXED_MARGINS, "b": 90, "r": 30},  # the legend is under the grid
        legend={"orientation": "h", "x": 0, "y": -0.1},
    )
    fig.update_xaxes(automargin=False)
    fig.update_yaxes(automargin=False)
    return fig
