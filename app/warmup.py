"""The What-if page's next click, prepared in the background while the user reads the page.

For the question the form shows now (and, on the Model & data page, the default question), one worker thread per
browser session runs :func:`gif_core.experiment.prepare_edit` — the request's gradient, the Hessian sample and the
trace of its products, the selection, the original's metrics and predictions — and loads the retrained model if the
cache holds it. A click then only solves, chooses the step and scores the edited models. A job is keyed by the
model, the request and the preparation settings; a new key cancels the old job at its next phase. The worker never
touches Streamlit: the page polls the job's phase and shows it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import streamlit as st

from gif_core.experiment import EditConfig, PreparedEdit, preparation_key, prepare_edit
from gif_core.interrupt import Cancelled
from gif_core.requests import ClassRemoval, EditRequest
from gif_core.retrain import Retrained, cached_retrain
from gif_core.workspace import Workspace

EXECUTOR = "warmup_executor"
JOB = "warmup_job"


@dataclass
class Warmed:
    """A finished preparation and the retrained model the cache held for it (None: not cached, or not asked)."""

    prepared: PreparedEdit
    retrained: Retrained | None


@dataclass
class Phase:
    """What the worker is doing, written by the worker and read by the page; ``cancel`` stops the worker at its
    next phase."""

    cancel: threading.Event = field(default_factory=threading.Event)
    now: tuple[str, float] = ("Queued", 0.0)
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    def report(self, message: str, fraction: float) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"the question changed during: {message}")
        self.now = (message, fraction)


@dataclass(frozen=True)
class WarmJob:
    key: tuple
    future: Future
    phase: Phase


def page_defaults(loaded: Workspace) -> EditConfig:
    """The What-if page's settings before the user touches them: the library's, with the Hessian sample capped at
    the training set's size and its products traced (the trace runs in the background preparation)."""
    defaults = EditConfig()
    return dataclasses.replace(
        defaults, hessian_samples=min(defaults.hessian_samples, len(loaded.train)), linearize=True
    )


def start_default(loaded: Workspace) -> WarmJob:
    """Prepare the What-if page's first question (remove the first class, default settings, with retraining)."""
    return start(loaded, ClassRemoval(0), page_defaults(loaded), with_retrain=True)


def job_key(loaded: Workspace, request: EditRequest, config: EditConfig, with_retrain: bool) -> tuple:
    return (loaded.model_id, loaded.card.to_json(), request, preparation_key(config), with_retrain)


def start(loaded: Workspace, request: EditRequest, config: EditConfig, with_retrain: bool) -> WarmJob:
    """This session's job for the question (started now unless it is already running or done)."""
    key = job_key(loaded, request, config, with_retrain)
    current: WarmJob | None = st.session_state.get(JOB)
    if current is not None and current.key == key:
        return current
    if current is not None:
        current.phase.cancel.set()
    if EXECUTOR not in st.session_state:
        st.session_state[EXECUTOR] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gif-warmup")
    phase = Phase()
    job = WarmJob(key, st.session_state[EXECUTOR].submit(_prepare, phase, loaded, request, config, with_retrain), phase)
    st.session_state[JOB] = job
    return job


def _prepare(phase: Phase, loaded: Workspace, request: EditRequest, config: EditConfig, with_retrain: bool) -> Warmed:
    try:
        phase.report("Looking up the retrained model in the cache", 0.0)
        retrained = cached_retrain(loaded.card, loaded.train, request, loaded.model_id) if with_retrain else None
        prepared = prepare_edit(
            loaded.model,
            loaded.card,
            loaded.bundle,
            request,
            config,
            train=loaded.train,
            backdoor=loaded.backdoor if request is loaded.backdoor_request else None,
            retrained_model=retrained.model if retrained else None,
            progress=phase.report,
        )
        return Warmed(prepared, retrained)
    finally:
        phase.finished = time.perf_counter()


def wait(job: WarmJob, show: Callable[[str], None]) -> Warmed:
    """The job's result, waiting (and saying so) if it is still running; its error is raised here."""
    if not job.future.done():
        show(f"Waiting for the preparation: {job.phase.now[0]}")
    return job.future.result()


def show(job: WarmJob, subject: str = "this question") -> None:
    """A line: the preparation's phase while it runs (polled), its seconds once done."""
    if job.future.done():
        error = job.future.exception()
        if error is None:
            seconds = job.phase.finished - job.phase.started
            st.caption(f"Prepared {subject} in {seconds:.1f} s: *Run the edit* only solves now.")
        elif not isinstance(error, Cancelled):
            st.error(f"This question cannot be answered: {error}")
        return
    _poll(job, subject)


@st.fragment(run_every=0.5)
def _poll(job: WarmJob, subject: str) -> None:
    if job.future.done():
        st.rerun()  # one full rerun draws the finished state; the poller is not drawn again
    message, fraction = job.phase.now
    st.progress(
        min(1.0, max(0.0, fraction)),
        text=f"Preparing {subject} in the background ({time.perf_counter() - job.phase.started:.0f} s): {message}",
    )
