"""Plotly figures for the dashboard. Presentation only: every number comes from gif_core."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from gif_core.comparison import ModelPredictions
from gif_core.selection import Selection

MODEL_COLOURS = {
    "original": "#7f7f7f",
    "retrained": "#222222",
    "GIF": "#d62728",
    "FIF": "#ff7f0e",
    "PIF": "#9467bd",
    "IF": "#1f77b4",
    "SIF": "#17becf",
}
"""One colour per model on every chart (the original grey, the retrained ground truth near-black)."""


def colour_of(name: str) -> str | None:
    """The colour of the model a trace is named after: its first word (``"GIF (lsmr)"`` is GIF); None if unknown."""
    return MODEL_COLOURS.get(name.split(" ")[0])


def _layout(fig: go.Figure, title: str, x: str = "", y: str = "", height: int = 360) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=height, margin={"t": 50, "b": 40})
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


def probabilities(rows: dict[str, np.ndarray], classes: Sequence[str], title: str) -> go.Figure:
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


def layer_fractions(selections: Sequence[Selection]) -> go.Figure:
    fig = go.Figure(
        [
            go.Bar(name=s.method, x=[l.module for l in s.layers], y=[100 * l.fraction for l in s.layers])
            for s in selections
        ]
    )
    fig.update_layout(barmode="group")
    fig.update_xaxes(type="category")  # module names such as "0", "3" are names, not positions
    return _layout(fig, "Selected share of each layer", "layer", "selected (%)")


def channel_map(selection: Selection, module: str) -> go.Figure:
    """One row per selector-score (or selected flag) over the layer's channels/neurons."""
    layer = next(l for l in selection.layers if l.module == module)
    chosen = layer.selected_neurons.numpy().astype(float)
    z = [chosen] if layer.scores is None else [layer.scores.numpy() / max(float(layer.scores.max()), 1e-30), chosen]
    y = ["selected"] if layer.scores is None else ["score (scaled)", "selected"]
    fig = go.Figure(go.Heatmap(z=z, y=y, x=list(range(layer.n_neurons)), colorscale="Viridis", zmin=0, zmax=1))
    return _layout(
        fig, f"{module} ({layer.kind}): {int(chosen.sum())} of {layer.n_neurons} selected", "channel", "", 220
    )


def score_bars(values: Sequence[float], labels: Sequence[str], title: str) -> go.Figure:
    colours = ["#2a9d8f" if v >= 0 else "#e76f51" for v in values]
    fig = go.Figure(go.Bar(x=list(labels), y=list(values), marker_color=colours))
    return _layout(fig, title, "training sample", "score (+ helpful / − harmful)", height=300)
