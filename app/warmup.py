"""The What-if page's next click, prepared in the background while the user reads the page.

For the question the form shows now (and, on the Model & data page, the default question), one worker thread per
browser session runs :meth:`gif_core.workspace.Workspace.prepare` — the request's gradient, the Hessian sample and the
trace of its products, the selection, the original's metrics and predictions — and loads the retrained model if the
cache holds it. A click then only solves, chooses the step and scores the edited models. A job is keyed by the
model, its card, the request and the preparation settings; a new key cancels the old job at its next phase. It
runs as an :mod:`app.jobs` job that outlives a change of page (it is started on the Model & data page for the
What-if page) and stops when the session ends. The worker never touches Streamlit: the page polls its phase.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from app import jobs
from gif_core.experiment import EditConfig, PreparedEdit, preparation_key
from gif_core.interrupt import Cancelled, StopCheck, check
from gif_core.requests import ClassRemoval, EditRequest
from gif_core.retrain import Retrained
from gif_core.workspace import Workspace

SLOT = "warmup"
"""The :mod:`app.jobs` slot of the preparation."""


@dataclass
class Warmed:
    """A finished preparation and the retrained model the cache held for it (None: not cached, or not asked)."""

    prepared: PreparedEdit
    retrained: Retrained | None


def page_defaults(loaded: Workspace) -> EditConfig:
    """The What-if page's settings before the user touches them: the library's, with the Hessian sample capped at
    the training set's size and its products traced (the trace runs in the background preparation)."""
    defaults = EditConfig()
    samples = defaults.curvature.samples
    assert samples is not None  # the library's default is a number of samples
    curvature = dataclasses.replace(defaults.curvature, samples=min(samples, len(loaded.train)), linearize=True)
    return dataclasses.replace(defaults, curvature=curvature)


def start_default(loaded: Workspace) -> jobs.Job:
    """Prepare the What-if page's first question (remove the first class, default settings, with retraining)."""
    return start(loaded, ClassRemoval(0), page_defaults(loaded), with_retrain=True)


def job_key(loaded: Workspace, request: EditRequest, config: EditConfig, with_retrain: bool) -> tuple:
    return (loaded.model_id, request, preparation_key(config), with_retrain, loaded.card.to_json())


def start(loaded: Workspace, request: EditRequest, config: EditConfig, with_retrain: bool) -> jobs.Job:
    """This session's job for the question (started now unless it is already running or done)."""
    return jobs.start(
        SLOT,
        job_key(loaded, request, config, with_retrain),
        "Preparing this question in the background",
        lambda stop, progress: _prepare(stop, progress, loaded, request, config, with_retrain),
        outlives_page=True,
        cancellable=False,
    )


def _prepare(
    stop: StopCheck,
    progress: Callable[[str, float], None],
    loaded: Workspace,
    request: EditRequest,
    config: EditConfig,
    with_retrain: bool,
) -> Warmed:
    def report(message: str, fraction: float) -> None:  # the preparation stops at its next phase
        check(stop)
        progress(message, fraction)

    report("Looking up the retrained model in the cache", 0.0)
    retrained = loaded.cached_retrain(request) if with_retrain else None
    return Warmed(loaded.prepare(request, config, retrained=retrained, progress=report), retrained)


def wait(job: jobs.Job, show: Callable[[str], None]) -> Warmed:
    """The job's result, waiting (and saying so) if it is still running; its error is raised here."""
    if job.running():
        show(f"Waiting for the preparation: {job.state.now[0]}")
    return job.future.result()


def show(job: jobs.Job, subject: str = "this question") -> None:
    """A line: the preparation's phase while it runs (polled), its seconds once done."""
    if job.running():
        jobs.poll(job)
        return
    error = job.future.exception()
    if error is None:
        assert job.state.finished is not None  # set before the job's future completes (jobs._run)
        seconds = job.state.finished - job.state.started
        st.caption(f"Prepared {subject} in {seconds:.1f} s: *Run the edit* only solves now.")
    elif not isinstance(error, Cancelled):
        st.error(f"This question cannot be answered: {error}")
