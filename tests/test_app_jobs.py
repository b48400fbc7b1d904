"""The dashboard's background jobs (app/jobs.py) and its shared influence browsers (app/session.py), without a
browser: why a job stops, its time left, and which workspaces share a browser."""

from __future__ import annotations

import dataclasses
import time

import pytest

from app import jobs, session
from gif_core.workspace import open_workspace_path
from gif_core.zoo import bundled_model_path


class FakeRuntime:
    def __init__(self, active: set[str]) -> None:
        self.active = active

    def is_active_session(self, session_id: str) -> bool:
        return session_id in self.active


def test_a_job_stops_when_cancelled_or_when_its_session_ends(monkeypatch):
    runtime = FakeRuntime({"mine"})
    monkeypatch.setattr(jobs.Runtime, "exists", staticmethod(lambda: True))
    monkeypatch.setattr(jobs.Runtime, "instance", staticmethod(lambda: runtime))
    state = jobs.JobState()
    stop = jobs.stop_check(state, "mine")
    assert stop() is None
    runtime.active.clear()  # the tab was closed or reloaded
    assert stop() == "the browser session ended (tab closed or reloaded)" and state.cancel.is_set()
    cancelled = jobs.JobState()
    cancelled.stop("cancelled by you")
    cancelled.stop("a later reason does not replace the first")
    assert jobs.stop_check(cancelled, None)() == "cancelled by you"


def test_the_time_left_follows_the_phase_pace():
    state = jobs.JobState()
    state.report("Solving", 0.01)
    assert state.seconds_left() is None  # too little done to tell
    state.phase_started = time.perf_counter() - 10.0
    state.report("Solving", 0.25)  # a quarter in 10 s: 30 s left
    assert state.seconds_left() == pytest.approx(30.0, rel=0.05)
    state.report("Scoring", 0.5)  # a new phase starts its own clock
    assert state.seconds_left() < 1.0


def test_sessions_share_a_browser_only_for_the_same_model_card_and_data():
    loaded = open_workspace_path(bundled_model_path("iris_mlp"))
    first, again = session.browser(loaded), session.browser(loaded)
    recipe = {**loaded.card.recipe, "weight_decay": 0.5}
    other_card = dataclasses.replace(loaded, card=dataclasses.replace(loaded.card, recipe=recipe))
    other = session.browser(other_card)
    assert first is again and other is not first
    assert other.weight_decay == 0.5 != first.weight_decay
