"""Long work of one browser session, run in a background thread that the page watches and can stop.

The page starts a job (an influence explanation, a self-influence ranking) and returns at once; a polling fragment
shows the phase under way, a progress bar, the seconds spent and, where the phase reports its fraction, the
seconds left, with a *Cancel* button. The work itself is gif_core's: it checks ``stop`` at every forward pass of
the model (:mod:`gif_core.interrupt`) and reports ``progress(message, fraction)``. It stops, at its next forward
pass, when

* the user presses *Cancel*,
* the same slot gets a new question (the old answer would be thrown away),
* the user opens another page of the app (:func:`leave_other_pages`, called by the frame of every page, :mod:`app.frame`), or
* the browser session ends: the tab is closed or reloaded, so Streamlit's runtime no longer lists the session.

A job keeps no Streamlit object; the page reads its state. Each slot of a session has one worker thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import streamlit as st
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from gif_core.interrupt import Cancelled, StopCheck

JOBS = "background_jobs"
EXECUTORS = "background_executors"
Progress = Callable[[str, float], None]


@dataclass
class JobState:
    """What the worker is doing (written by the worker, read by the page) and whether it was asked to stop."""

    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    now: tuple[str, float] = ("Queued", 0.0)
    started: float = field(default_factory=time.perf_counter)
    phase_started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    def report(self, message: str, fraction: float) -> None:
        """gif_core's ``progress(message, fraction)``: a new message starts a new phase (for its ETA)."""
        if message != self.now[0]:
            self.phase_started = time.perf_counter()
        self.now = (message, fraction)

    def stop(self, reason: str) -> None:
        if not self.cancel.is_set():
            self.reason = reason
            self.cancel.set()

    def seconds_left(self) -> float | None:
        """The phase's remaining seconds at its pace so far (None until 2% of it is done or when it reports no
        fraction): elapsed · (1 − f) / f."""
        fraction = self.now[1]
        if fraction < 0.02:
            return None
        return (time.perf_counter() - self.phase_started) * (1 - fraction) / fraction


@dataclass(frozen=True)
class Job:
    """A background computation: what it answers (``key``, and in words ``subject``), the page that started it,
    its future and state; whether it goes on when the user opens another page, and whether it offers *Cancel*."""

    key: tuple
    subject: str
    page: str
    future: Future
    state: JobState
    outlives_page: bool = False
    cancellable: bool = True

    def running(self) -> bool:
        return not self.future.done()


def current(slot: str) -> Job | None:
    """This session's job in ``slot`` (running or finished), if any."""
    return st.session_state.get(JOBS, {}).get(slot)


def start(
    slot: str,
    key: tuple,
    subject: str,
    work: Callable[[StopCheck, Progress], Any],
    *,
    outlives_page: bool = False,
    cancellable: bool = True,
) -> Job:
    """Run ``work(stop, progress)`` in the background for ``key`` in ``slot`` (a running or finished job for the
    same key is kept, unless it was stopped or failed); an older job in the slot is stopped. Each slot has its
    own worker thread, so a long job in one slot never delays another slot's."""
    jobs: dict[str, Job] = st.session_state.setdefault(JOBS, {})
    old = jobs.get(slot)
    reusable = old is not None and old.key == key and not old.state.cancel.is_set()
    if old is not None and reusable and (old.running() or old.future.exception() is None):
        return old
    if old is not None:
        old.state.stop("a new question replaced it")
    context = get_script_run_ctx()
    state = JobState()
    executors: dict[str, ThreadPoolExecutor] = st.session_state.setdefault(EXECUTORS, {})
    if slot not in executors:
        executors[slot] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gif-{slot}")
    stop = stop_check(state, context.session_id if context else None)
    future = executors[slot].submit(_run, work, stop, state)
    page = context.page_script_hash if context else ""
    job = Job(key, subject, page, future, state, outlives_page, cancellable)
    jobs[slot] = job
    return job


def stop_check(state: JobState, session_id: str | None) -> StopCheck:
    """The reason to stop now, if any: a cancel (its reason) or the end of the browser session ``session_id``."""
    runtime = Runtime.instance() if Runtime.exists() else None  # None under AppTest, which has no server

    def stop() -> str | None:
        if state.cancel.is_set():
            return state.reason
        if runtime is not None and session_id is not None and not runtime.is_active_session(session_id):
            state.stop("the browser session ended (tab closed or reloaded)")
            return state.reason
        return None

    return stop


def _run(work: Callable[[StopCheck, Progress], Any], stop: StopCheck, state: JobState) -> Any:
    try:
        return work(stop, state.report)
    finally:
        state.finished = time.perf_counter()


def leave_other_pages() -> None:
    """Stop this session's running jobs that another page started: the user has left the page that shows them."""
    context = get_script_run_ctx()
    if context is None:
        return
    for job in st.session_state.get(JOBS, {}).values():
        if job.running() and not job.outlives_page and job.page != context.page_script_hash:
            job.state.stop("you opened another page")


def result(job: Job) -> Any | None:
    """The job's result once it has finished; while it runs, a polled progress line with *Cancel* (and None). A
    stopped or failed job says why, in place (the rest of the page stays), and gives None."""
    if job.running():
        poll(job)
        return None
    error = job.future.exception()
    if isinstance(error, Cancelled):
        st.warning(f"{job.subject} stopped: {error}. Press the button again to restart it.")
    elif error is not None:
        st.error(f"{job.subject} failed: {type(error).__name__}: {error}")
    return None if error is not None else job.future.result()


@st.fragment(run_every=0.5)
def poll(job: Job) -> None:
    """The running job's progress line (redrawn every half second) and, if it is cancellable, *Cancel*; once it
    finishes, one full rerun of the page draws its result."""
    if not job.running():
        st.rerun()  # one full rerun draws the result; the poller is not drawn again
    message, fraction = job.state.now
    spent = time.perf_counter() - job.state.started
    left = job.state.seconds_left()
    eta = f", about {left:.0f} s left in this phase" if left is not None else ""
    st.progress(min(1.0, max(0.0, fraction)), text=f"{job.subject} — {message} ({spent:.0f} s so far{eta})")
    if job.state.cancel.is_set():
        st.caption(f"Stopping at the next step: {job.state.reason}.")
    elif job.cancellable and st.button("Cancel", key=f"cancel_{id(job)}"):
        job.state.stop("cancelled by you")
