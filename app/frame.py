"""The frame every dashboard page shares (drawn by the entry point, ``app/streamlit_app.py``): the page list for
``st.navigation``, the browser tab's title and the wide layout, the page's heading, the session's model above the
pages that work on it, and errors shown as messages in the page instead of tracebacks (:func:`session.errors_shown`).
A page file draws only its own content."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st
from streamlit.navigation.page import StreamlitPage

from app import jobs, session

APP_NAME = "GIF Explorer"


@dataclass(frozen=True)
class PageSpec:
    """One page: its file (relative to ``app/``), its name in the navigation, its heading, its icon, and whether the
    frame shows the session's model above it (the Model & data page shows it after its loader instead)."""

    path: str
    title: str
    heading: str
    icon: str
    shows_model: bool


PAGES = (
    PageSpec("views/Model_and_data.py", "Model & data", APP_NAME, ":material/home:", False),
    PageSpec("views/1_Influential_samples.py", "Influential samples", "Influential samples", ":material/search:", True),
    PageSpec("views/2_Parameter_selection.py", "Parameter selection", "Parameter selection", ":material/tune:", True),
    PageSpec("views/3_What-if_edit.py", "What-if edit", "What-if edit", ":material/call_split:", True),
    PageSpec("views/5_Learn.py", "Learn", "Learn", ":material/school:", False),
)
"""The dashboard's pages in navigation order; the first is the default (its URL is the root). Each URL path is its
file name without the number prefix, e.g. ``/What-if_edit``."""


def navigation() -> StreamlitPage:
    """Register :data:`PAGES` with ``st.navigation``; the page this run shows."""
    pages = [st.Page(spec.path, title=spec.title, icon=spec.icon, default=i == 0) for i, spec in enumerate(PAGES)]
    return st.navigation(pages)


def run(page: StreamlitPage) -> None:
    """Draw the frame around ``page`` and run it: tab title and layout, heading, the running jobs of the page the
    user left stopped, the model caption, and the page inside :func:`session.errors_shown`."""
    spec = next(s for s in PAGES if s.title == page.title)
    st.set_page_config(page_title=f"{spec.title} · {APP_NAME}", layout="wide")
    jobs.leave_other_pages()
    st.title(spec.heading)
    with session.errors_shown():
        if spec.shows_model:
            st.markdown(session.model_caption(session.workspace()))
        page.run()
