"""Per-user state of the dashboard and the few read-only shared resources.

Everything a user loads or computes lives in ``st.session_state`` (one per browser session), so two sessions never
see each other's models or edits. ``st.cache_resource`` holds only objects no session changes: the bundled
workspaces (whose models every gif_core function copies before editing) and their data, and the influence browsers
(keyed by model and data content; they cache their own set-up and serialise their computations).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import streamlit as st

from app import jobs
from gif_core.browse import BrowserConfig, InfluenceBrowser
from gif_core.cache_files import data_fingerprint
from gif_core.gradient_store import default_gradient_dir
from gif_core.workspace import Workspace, open_workspace_path, resolve_local_checkpoint, resolve_local_folder
from gif_core.zoo import DEFAULT_MODEL, bundled_model_path

WORKSPACE = "workspace"
LINK = "workspace_link"
LINK_PARAMS = ("bundled", "path", "data")
"""The URL query parameters that name the session's model: ``?bundled=NAME`` or ``?path=PATH[&data=FOLDER]``."""
DERIVED = ("explanation", "explanations", "suspicious", "picked_rows", "edit", "selection_view", jobs.JOBS)
"""What is computed for the session's model, forgotten when another is loaded (the edit history is kept: it is
per model id)."""
BROWSE_DAMPING = 0.01
"""δ in H + δI for influence browsing: a trained network's H is indefinite and ill-conditioned (see
benchmarks/results/browse_speed.md); the page states it."""
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, RuntimeError, OSError, KeyError)


@st.cache_resource(show_spinner="Loading the bundled model and its data…")
def bundled_workspace(name: str) -> Workspace:
    """A bundled model with its data; shared read-only between sessions."""
    return open_workspace_path(bundled_model_path(name))


def workspace() -> Workspace:
    """This session's model: the one the URL names (a reload or a shared link restores it), else the bundled
    default until the user loads another. The URL is kept pointing at the current model on every page."""
    if WORKSPACE not in st.session_state:
        st.session_state[WORKSPACE], st.session_state[LINK] = _from_link(st.query_params.to_dict())
    link = st.session_state[LINK]
    for name in LINK_PARAMS:
        if link.get(name) is None:
            st.query_params.pop(name, None)
        elif st.query_params.get(name) != link[name]:
            st.query_params[name] = link[name]
    return st.session_state[WORKSPACE]


def use_workspace(loaded: Workspace, link: dict[str, str] | None = None) -> None:
    """Make ``loaded`` this session's model and forget everything computed for the previous one. ``link`` is how
    the URL names it (:data:`LINK_PARAMS`; None for an upload, which a URL cannot restore)."""
    st.session_state[WORKSPACE] = loaded
    st.session_state[LINK] = link or {}
    for job in st.session_state.get(jobs.JOBS, {}).values():
        job.state.stop("another model was loaded")
    for key in DERIVED:
        st.session_state.pop(key, None)


def linked_input(key: str, allowed: Sequence[Any], default: Any) -> None:
    """Call before drawing the widget ``key`` (drawn without a default of its own): in a new session its value is
    the URL's ``?key=…`` when that names one of ``allowed``, else ``default``; afterwards :func:`keep_in_link`
    writes it back, so a reload or a shared link restores the page's main inputs as well as its model."""
    if key in st.session_state:
        return
    by_text = {str(option): option for option in allowed}
    st.session_state[key] = by_text.get(st.query_params.get(key, ""), default)


def keep_in_link(*keys: str) -> None:
    """Write the current values of the widgets ``keys`` into the URL (see :func:`linked_input`)."""
    for key in keys:
        if key in st.session_state and st.query_params.get(key) != str(st.session_state[key]):
            st.query_params[key] = str(st.session_state[key])


def _from_link(params: dict[str, str]) -> tuple[Workspace, dict[str, str]]:
    """The workspace the URL's parameters name, and those parameters; the default (with a warning) when they name
    nothing loadable. Local paths obey the same allowed folders as the Local path source."""
    try:
        if "bundled" in params:
            return bundled_workspace(params["bundled"]), {"bundled": params["bundled"]}
        if "path" in params:
            weights = resolve_local_checkpoint(params["path"])
            root = resolve_local_folder(params["data"]) if params.get("data") else None
            return open_workspace_path(weights, root), {k: params[k] for k in ("path", "data") if params.get(k)}
    except USER_ERRORS as error:
        st.warning(f"The link's model could not be loaded ({error}); showing the bundled default instead.")
    return bundled_workspace(DEFAULT_MODEL), {"bundled": DEFAULT_MODEL}


@st.cache_resource(max_entries=4, show_spinner=False)
def _shared_browser(key: tuple[str, ...], _loaded: Workspace, _config: BrowserConfig) -> InfluenceBrowser:
    return InfluenceBrowser(_loaded.model, _loaded.train, _loaded.weight_decay, _config)


def browser(loaded: Workspace) -> InfluenceBrowser:
    """The influence browser for ``loaded``, shared by every session on the same model, model card (its weight
    decay enters H), training data, settings and cache folder: its set-up (per-sample gradients, eigenpairs,
    Captum's estimators) is done once per server, not once per session, and it runs one computation at a time.
    Making it is cheap; the set-up runs in the first job that needs it (:mod:`app.jobs`)."""
    config = BrowserConfig(damping=BROWSE_DAMPING)
    data_key = data_fingerprint(loaded.train.inputs, loaded.train.labels)
    key = (loaded.model_id, loaded.card.to_json(), data_key, repr(config), str(default_gradient_dir()))
    return _shared_browser(key, loaded, config)


def progress_bar(text: str) -> tuple[Callable[[str, float], None], Callable[[], None]]:
    """A Streamlit progress bar as a gif_core ``progress(message, fraction)`` callback, and a function to clear it."""
    bar = st.progress(0.0, text=text)

    def report(message: str, fraction: float) -> None:
        bar.progress(min(1.0, max(0.0, fraction)), text=message)

    def clear() -> None:
        bar.empty()

    return report, clear


def phase_writer(status: Any) -> Callable[[str, float], None]:
    """A gif_core ``progress(message, fraction)`` callback for an ``st.status``: the phase under way is its label,
    and each finished phase is written as a line with its seconds."""
    last: list = [None, time.perf_counter()]

    def report(message: str, _fraction: float) -> None:
        now = time.perf_counter()
        if last[0] is not None:
            status.write(f"{last[0]} — {now - last[1]:.2f} s")
        last[:] = [message, now]
        status.update(label=f"{message}…")

    return report


@contextmanager
def errors_shown() -> Iterator[None]:
    """Show a bad input or a failed computation as a message in the page, never as a traceback."""
    try:
        yield
    except USER_ERRORS as exc:
        st.error(f"{type(exc).__name__}: {exc}")


def model_caption(loaded: Workspace) -> str:
    card = loaded.card
    return f"**{Path(loaded.source).name}** · {card.arch} on {card.dataset} · id `{loaded.model_id}`"
