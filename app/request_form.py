"""The shared "what is asked" form: remove a class, remove samples, change labels, or undo the backdoor."""

from __future__ import annotations

import streamlit as st

from gif_core.requests import ClassRemoval, EditRequest, parse_label_change, parse_sample_removal
from gif_core.workspace import Workspace

KINDS = ("Remove a class", "Remove training samples", "Change labels", "Undo the backdoor")


def request_form(loaded: Workspace, prefix: str) -> EditRequest:
    """Widgets for one request (keys start with ``prefix``); raises ValueError with a hint on bad input."""
    kinds = KINDS if loaded.backdoor_request is not None else KINDS[:3]
    kind = st.radio("Question", kinds, key=f"{prefix}_kind", horizontal=True)
    classes = loaded.bundle.classes
    if kind == KINDS[0]:
        cls = st.selectbox(
            "Class to remove", range(len(classes)), format_func=lambda c: classes[c], key=f"{prefix}_cls"
        )
        return ClassRemoval(int(cls))
    if kind == KINDS[1]:
        picked = st.session_state.get("picked_rows") or []
        text = st.text_input(
            "Training rows to remove (comma-separated; picked on the Influential samples page are filled in)",
            value=",".join(map(str, picked)),
            key=f"{prefix}_samples",
        )
        if not text.strip():
            raise ValueError("Type the training rows to remove, e.g. 10,42,77 (or pick them on Influential samples).")
        return parse_sample_removal(text)
    if kind == KINDS[2]:
        text = st.text_input("Label changes ROW:NEW_LABEL, comma-separated", value="5:3,9:1", key=f"{prefix}_relabel")
        return parse_label_change(text)
    st.caption(f"Relabel the {len(loaded.backdoor_request.indices)} poisoned training images to their true classes.")
    return loaded.backdoor_request
