"""Image grids (or a table, for tabular data) of samples with captions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st


def feature_columns(features: Sequence[np.ndarray], names: Sequence[str] | None = None) -> dict[str, list[float]]:
    """One table column per feature (named ``names``, else ``feature 1``, ``feature 2``, …), values to 3 decimals."""
    table = np.asarray(features, dtype=float).reshape(len(features), -1)
    names = list(names) if names is not None else [f"feature {j + 1}" for j in range(table.shape[1])]
    if len(names) != table.shape[1]:
        raise ValueError(f"{len(names)} feature names for {table.shape[1]} features")
    return {name: np.round(table[:, j], 3).tolist() for j, name in enumerate(names)}


def show_grid(
    images: Sequence[np.ndarray | None],
    captions: Sequence[str],
    columns: int = 8,
    features: Sequence[np.ndarray] | None = None,
    feature_names: Sequence[str] | None = None,
) -> None:
    """Images in rows of ``columns``; tabular samples (image None) as a table of their captions and, when
    ``features`` are given (one vector per sample), their feature values."""
    if not images:
        st.info("Nothing to show.")
        return
    if images[0] is None:
        table: dict[str, list[str] | list[float]] = {"sample": list(captions)}
        if features is not None:
            table |= feature_columns(features, feature_names)
        st.dataframe(table, hide_index=True)
        return
    for start in range(0, len(images), columns):
        cells = st.columns(columns)
        for cell, image, caption in zip(
            cells, images[start : start + columns], captions[start : start + columns], strict=False
        ):
            assert image is not None  # a set is all images or all tabular samples (checked on images[0])
            cell.image(image, caption=caption, width=72, clamp=True)
