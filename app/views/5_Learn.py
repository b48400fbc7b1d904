"""Learn: what IF, PIF, FIF, GIF and SIF do, on a two-parameter toy and on a small network's Hessian.

UI only: every number comes from :mod:`gif_core.teaching`. The page needs no state from the other pages.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from app.frame import PAGES
from gif_core import teaching

HOME, INFLUENTIAL, SELECTION, WHAT_IF = (spec.path for spec in PAGES[:4])  # the pages the explanations link to

STYLE = {  # method: (label, colour, marker symbol, marker size); IF and SIF often land together: both stay visible
    "if": ("IF", "#1f77b4", "diamond", 14),
    "pif": ("PIF", "#9467bd", "square", 10),
    "fif": ("FIF", "#ff7f0e", "triangle-up", 11),
    "gif": ("GIF", "#d62728", "circle", 10),
    "sif": ("SIF", "#17becf", "circle", 7),
    "tracin": ("TracIn", "#2ca02c", "x", 10),
    "datainf": ("DataInf", "#8c564b", "star", 11),
    "hyperinf": ("HyperINF", "#e377c2", "cross", 9),
    "ekfac": ("EK-FAC", "#bcbd22", "diamond-open", 12),
}
LIVE_PAGES = {  # method: pages where it runs on a real model
    "if": [(WHAT_IF, "Run IF on a real edit"), (INFLUENTIAL, "Rank influential training samples")],
    "pif": [(WHAT_IF, "Run PIF on a real edit"), (SELECTION, "See which parameters T holds")],
    "fif": [(WHAT_IF, "Run FIF on a real edit"), (SELECTION, "See which parameters T holds")],
    "gif": [(WHAT_IF, "Run GIF on a real edit"), (SELECTION, "See which parameters T holds")],
    "sif": [(WHAT_IF, "Run SIF on a real edit")],
    "tracin": [(WHAT_IF, "Run TracIn on a real edit"), (INFLUENTIAL, "Rank training samples by TracIn")],
    "datainf": [(WHAT_IF, "Run DataInf on a real edit")],
    "hyperinf": [(WHAT_IF, "Run HyperINF on a real edit")],
    "ekfac": [(WHAT_IF, "Run EK-FAC on a real edit")],
}
TOY_WEIGHT_DECAYS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
TOY_FRACTIONS = [0.2, 0.4, 0.6, 0.8, 1.0]
SPECTRUM_WEIGHT_DECAYS = [0.0, 0.0001, 0.001, 0.01, 0.1, 1.0]
SELECTED_CHOICES = {"Largest |g| (param-gradient selector)": None, "θ₁ only": 0, "θ₂ only": 1}


@st.cache_data(show_spinner="Training the toy, running the estimators and retraining…")
def toy_result(cluster: int, fraction: float, weight_decay: float, selected: int | None) -> teaching.ToyResult:
    config = teaching.ToyConfig(
        removed_cluster=cluster, removed_fraction=fraction, weight_decay=weight_decay, selected=selected
    )
    return teaching.toy_example(config)


@st.cache_data(show_spinner="Training one small network per weight decay and eigendecomposing its Hessian…")
def spectra(weight_decays: tuple[float, ...]) -> tuple[teaching.Spectrum, ...]:
    return teaching.hessian_spectra(weight_decays)


def _wd_label(value: float) -> str:
    return f"{value:g}"


def _point_text(point) -> str:
    return f"({float(point[0]):.3f}, {float(point[1]):.3f})"


def contour_figure(result: teaching.ToyResult) -> go.Figure:
    fig = go.Figure(
        go.Contour(
            x=result.grid_x.tolist(),
            y=result.grid_y.tolist(),
            z=result.loss.tolist(),
            colorscale="Blues",
            reversescale=True,
            ncontours=30,
            colorbar={"title": "retained loss"},
            name="retained loss",
            hovertemplate="θ₁ %{x:.3f}<br>θ₂ %{y:.3f}<br>loss %{z:.4f}<extra></extra>",
        )
    )
    start = result.theta_star
    for method, point in result.updates.items():
        label, colour, symbol, size = STYLE[method]
        fig.add_annotation(
            x=float(point[0]),
            y=float(point[1]),
            ax=float(start[0]),
            ay=float(start[1]),
            xref="x",
            yref="y",
            axref="x",
            ayref="y",
            showarrow=True,
            arrowhead=3,
            arrowsize=1.2,
            arrowwidth=2,
            arrowcolor=colour,
            text="",
        )
        fig.add_trace(
            go.Scatter(
                x=[float(point[0])],
                y=[float(point[1])],
                mode="markers",
                marker={"color": colour, "symbol": symbol, "size": size},
                name=f"θ* + Δ ({label})",
                hovertemplate=f"{label}: {_point_text(point)}<extra></extra>",
            )
        )
    for point, name, symbol, colour in (
        (start, "θ* (trained on all data)", "circle-open", "black"),
        (result.retrained, "retrained without the removed points", "star", "gold"),
    ):
        fig.add_trace(
            go.Scatter(
                x=[float(point[0])],
                y=[float(point[1])],
                mode="markers",
                marker={"symbol": symbol, "size": 16, "color": colour, "line": {"color": "black", "width": 1.5}},
                name=name,
                hovertemplate=f"{name}: {_point_text(point)}<extra></extra>",
            )
        )
    fig.update_layout(
        xaxis_title="θ₁",
        yaxis_title="θ₂",
        height=560,
        legend={"orientation": "h", "y": -0.15},
        margin={"t": 30},
        title=f"Retained objective; GIF, FIF and PIF may move only θ{'₁₂'[result.selected]}",
    )
    return fig


def data_figure(result: teaching.ToyResult) -> go.Figure:
    inputs, labels = result.data.inputs, result.data.labels
    removed = set(result.removed_rows.tolist())
    fig = go.Figure()
    for cls, colour in ((0, "#636efa"), (1, "#ef553b")):
        for is_removed in (False, True):
            rows = [i for i in range(len(labels)) if int(labels[i]) == cls and (i in removed) == is_removed]
            if not rows:
                continue
            fig.add_trace(
                go.Scatter(
                    x=inputs[rows, 0].tolist(),
                    y=inputs[rows, 1].tolist(),
                    mode="markers",
                    marker={"color": colour, "symbol": "x" if is_removed else "circle", "size": 8 if is_removed else 6},
                    name=f"class {cls}" + (" (removed)" if is_removed else ""),
                )
            )
    fig.update_layout(
        xaxis_title="x₁", yaxis_title="x₂", height=560, legend={"orientation": "h", "y": -0.15}, margin={"t": 30}
    )
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig


def toy_section() -> None:
    st.header("Two parameters, one removal")
    st.markdown(
        "A classifier with exactly two parameters θ = (θ₁, θ₂) scores a 2-D point x by θ·x (class 1 when positive), "
        "trained with weight decay λ to its exact optimum θ*. Part of one cluster of training points is removed. "
        "Each arrow is the library's real estimator run on this model, from θ* to θ* + Δ; the star is the true "
        "answer, the model retrained without those points. GIF, FIF and PIF may move one parameter only (the "
        "selection T), so their arrows are parallel to an axis: watch how each picks the length of its step."
    )
    cluster_names = [c.name for c in teaching.TOY_CLUSTERS]
    left, middle, right, last = st.columns(4)
    cluster = left.selectbox(
        "Cluster to remove", range(len(cluster_names)), format_func=cluster_names.__getitem__, key="toy_cluster"
    )
    fraction = middle.select_slider(
        "Share of the cluster removed", TOY_FRACTIONS, value=0.8, format_func=lambda f: f"{f:.0%}", key="toy_fraction"
    )
    weight_decay = right.select_slider(
        "Weight decay λ", TOY_WEIGHT_DECAYS, value=0.01, format_func=_wd_label, key="toy_weight_decay"
    )
    choice = last.radio("Parameter GIF/FIF/PIF may move", list(SELECTED_CHOICES), key="toy_selected")
    try:
        result = toy_result(cluster, fraction, weight_decay, SELECTED_CHOICES[choice])
    except Exception as exc:
        st.error(f"The toy example could not be computed: {exc}")
        return
    plot, data = st.columns([3, 2])
    plot.plotly_chart(contour_figure(result), key="toy_contour")
    data.plotly_chart(data_figure(result), key="toy_data")
    st.markdown(
        f"{len(result.removed_rows)} of {len(result.data.labels)} training points removed. Retained loss at θ*: "
        f"{result.retained_loss_at_star:.4f}; at the retrained optimum: {result.retained_loss_at_retrained:.4f}. "
        "Moving one parameter only, none of GIF, FIF and PIF can reach the star; they differ in what they aim at. "
        "GIF leaves the smallest gradient on *both* parameters (to first order), FIF the lowest loss along its own "
        "axis (to second order), and PIF copies IF's value of the selected parameter."
    )
    st.dataframe(
        [
            {
                "estimator": STYLE[m][0],
                "θ₁": float(point[0]),
                "θ₂": float(point[1]),
                "distance to retrained": result.distances[m],
                "retained loss": result.retained_losses[m],
                "|gradient of retained loss|": result.gradient_norms[m],
            }
            for m, point in result.updates.items()
        ],
        hide_index=True,
        column_config={
            "θ₁": st.column_config.NumberColumn(format="%.4f"),
            "θ₂": st.column_config.NumberColumn(format="%.4f"),
            "distance to retrained": st.column_config.NumberColumn(format="%.4f"),
            "retained loss": st.column_config.NumberColumn(format="%.5f"),
            "|gradient of retained loss|": st.column_config.NumberColumn(format="%.2e"),
        },
    )


def spectrum_figures(results: tuple[teaching.Spectrum, ...], zoom: bool) -> tuple[go.Figure, go.Figure]:
    eigen = go.Figure()
    for spectrum in results:
        eigen.add_trace(
            go.Scatter(
                y=spectrum.eigenvalues.tolist(),
                mode="lines+markers",
                marker={"size": 4},
                name=f"λ = {_wd_label(spectrum.weight_decay)}",
            )
        )
    eigen.add_hline(y=0, line_dash="dash", line_color="grey")
    eigen.update_layout(
        xaxis_title="eigenvalue rank (ascending)", yaxis_title="eigenvalue of H", height=450, margin={"t": 30}
    )
    if zoom:  # frame the most negative eigenvalue; large positive ones leave the frame
        lowest = min(min(float(s.eigenvalues[0]) for s in results), -1e-3)
        eigen.update_yaxes(range=[1.5 * lowest, -3 * lowest])
    share = go.Figure(
        go.Scatter(
            x=[_wd_label(s.weight_decay) for s in results],
            y=[100 * s.negative_share for s in results],
            mode="lines+markers",
            name="negative eigenvalues",
        )
    )
    share.update_layout(
        xaxis={"title": "weight decay λ", "type": "category"},
        yaxis={"title": "negative eigenvalues (%)", "rangemode": "tozero"},
        height=450,
        margin={"t": 30},
    )
    return eigen, share


def spectrum_section() -> None:
    st.header("Is H positive definite? Weight decay and the Hessian spectrum")
    config = teaching.SpectrumConfig()
    layers = " → ".join(str(width) for width in (4, *config.hidden, 3))
    st.markdown(
        "IF, PIF and FIF solve with H (or its block H_TT), and the H of a neural network is rarely positive "
        "definite: a network trained briefly is not at an exact minimum. Here a small tanh network "
        f"({layers}) is trained on Iris for {config.recipe.epochs} {config.recipe.optimizer.capitalize()} epochs, "
        "once per weight decay λ, and the full spectrum of H = ∇²(mean cross-entropy + λ/2·|θ|²) is computed. "
        "At a fixed θ, weight decay shifts every eigenvalue up by λ; training with λ also moves θ. GIF solves the "
        r"normal equations $H_{:,T}^\top H_{:,T}\,\Delta_T = H_{:,T}^\top g$ instead, whose matrix stays positive "
        "semi-definite either way."
    )
    chosen = st.multiselect(
        "Weight decays λ",
        SPECTRUM_WEIGHT_DECAYS,
        default=SPECTRUM_WEIGHT_DECAYS,
        format_func=_wd_label,
        key="spectrum_weight_decays",
    )
    zoom = st.toggle("Zoom on the eigenvalues near zero", value=True, key="spectrum_zoom")
    if not chosen:
        st.info("Pick at least one weight decay.")
        return
    try:
        results = spectra(tuple(sorted(chosen)))
    except Exception as exc:
        st.error(f"The Hessian spectra could not be computed: {exc}")
        return
    eigen, share = spectrum_figures(results, zoom)
    left, right = st.columns([3, 2])
    left.plotly_chart(eigen, key="spectrum_eigenvalues")
    right.plotly_chart(share, key="spectrum_share")
    st.caption(
        f"{len(results[0].eigenvalues)} parameters, so {len(results[0].eigenvalues)} eigenvalues per λ. An "
        f"eigenvalue counts as negative below −{config.negative_tolerance:g}·max|eigenvalue|, so the exact zero "
        "modes of the softmax (adding a constant to every logit changes nothing) are not counted at λ = 0."
    )


def explanations_section() -> None:
    st.header("The estimators in plain words")
    st.markdown(
        "Every estimator answers the same question — *how must the parameters θ move when the edit happens?* — "
        "from the trained model alone. H is the Hessian of the training objective, T the selected parameters, "
        "F the frozen rest."
    )
    st.info(teaching.SIGN_CONVENTION)
    for method, explanation in teaching.EXPLANATIONS.items():
        with st.container(border=True):
            st.subheader(explanation.name)
            st.markdown(explanation.idea)
            st.latex(explanation.formula)
            st.caption(explanation.sign)
            columns = st.columns(len(LIVE_PAGES[method]))
            for column, (page, label) in zip(columns, LIVE_PAGES[method], strict=True):
                column.page_link(page, label=label, icon=":material/arrow_forward:")


st.markdown("How the influence estimators behind GIF Explorer work, shown on examples small enough to compute exactly.")
st.page_link(HOME, label="Load a model and data to try them for real", icon=":material/home:")
toy_section()
spectrum_section()
explanations_section()
