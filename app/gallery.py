"""Image grids (or a table, for tabular data) of samples with captions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st


def show_grid(images: Sequence[np.ndarray | None], captions: Sequence[str], columns: int = 8) -> None:
    """Images in rows of ``columns``; tabular samples (image None) are listed as captions only."""
    if not images:
        st.info("Nothing to show.")
        return
    if images[0] is None:
        st.dataframe({"sample": list(captions)}, hide_index=True)
        return
    for start in range(0, len(images), columns):
        cells = st.columns(columns)
        for cell, image, caption in zip(
            cells, images[start : start + columns], captions[start : start + columns], strict=False
        ):
            cell.image(image, caption=caption, width=72, clamp=True)
