"""The shared "what is asked" form: remove a class, remove samples, change labels, or undo the backdoor."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from app import session
from gif_core.requests import ClassRemoval, EditRequest, parse_label_change, parse_sample_removal
from gif_core.workspace import Workspace

KINDS = ("Remove a class", "Remove training samples", "Change labels", "Undo the backdoor")


def request_form(loaded: Workspace, prefix: str) -> EditRequest | None:
    """Widgets for one request (keys start with ``prefix``). Bad or missing input is shown as an error right under
    its field and gives None: the rest of the page (methods, settings, earlier results) stays."""
    kinds = KINDS if loaded.backdoor_request is not None else KINDS[:3]
    session.linked_input(f"{prefix}_kind", kinds, kinds[0])
    kind = st.radio("Question", kinds, key=f"{prefix}_kind", horizontal=True)
    session.keep_in_link(f"{prefix}_kind")
    classes = loaded.bundle.classes
    if kind == KINDS[0]:
        session.linked_input(f"{prefix}_cls", range(len(classes)), 0)
        cls = st.selectbox(
            "Class to remove", range(len(classes)), format_func=lambda c: classes[c], key=f"{prefix}_cls"
        )
        session.keep_in_link(f"{prefix}_cls")
        return ClassRemoval(int(cls))
    if kind == KINDS[1]:
        picked = st.session_state.get("picked_rows") or []
        text = st.text_input(
            "Training rows to remove (comma-separated; picked on the Influential samples page are filled in)",
            value=",".join(map(str, picked)),
            key=f"{prefix}_samples",
        )
        if not text.strip():
            st.info("Type the training rows to remove, e.g. 10,42,77 (or pick them on Influential samples).")
            return None
        return _parsed(parse_sample_removal, text)
    if kind == KINDS[2]:
        text = st.text_input("Label changes ROW:NEW_LABEL, comma-separated", value="5:3,9:1", key=f"{prefix}_relabel")
        return _parsed(parse_label_change, text)
    assert loaded.backdoor_request is not None  # KINDS[3] is offered only for a backdoored model
    st.caption(f"Relabel the {len(loaded.backdoor_request.indices)} poisoned training images to their true classes.")
    return loaded.backdoor_request


def _parsed(parse: Callable[[str], EditRequest], text: str) -> EditRequest | None:
    """``parse(text)``, or None with its error shown under the field."""
    try:
        return parse(text)
    except ValueError as error:
        st.error(str(error))
        return None
