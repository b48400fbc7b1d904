"""The frame every dashboard page shares (app/frame.py): registered pages, one heading, one model caption, the tab's
title, and a failing page shown as a message, not a traceback. The pages themselves no longer repeat any of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import open_page

from app import frame, session

VIEWS = Path(__file__).resolve().parents[1] / "app" / "views"
pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.mark.parametrize("spec", frame.PAGES, ids=lambda spec: spec.title)
def test_each_page_gets_its_heading_and_at_most_one_model_caption(spec):
    at = open_page(spec.path)
    at.query_params["bundled"] = "iris_mlp"
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == [spec.heading]
    captions = [m.value for m in at.markdown if "iris_mlp.safetensors" in m.value]
    expected = 1 if spec.shows_model or spec.path.endswith("Model_and_data.py") else 0  # that page shows its own
    assert len(captions) == expected, captions


def test_every_page_file_is_registered_and_draws_no_frame_of_its_own():
    assert {Path(spec.path).name for spec in frame.PAGES} == {p.name for p in VIEWS.glob("*.py")}
    for page in VIEWS.glob("*.py"):
        text = page.read_text()
        assert "set_page_config" not in text and "st.title(" not in text, page.name
        assert "\nwith session.errors_shown():" not in text, page.name  # the frame shows a page's errors


def test_an_error_in_a_page_is_a_message_in_the_frame(monkeypatch):
    def broken(loaded):
        raise ValueError("the model card is unreadable")

    monkeypatch.setattr(session, "model_caption", broken)
    at = open_page("views/3_What-if_edit.py")
    at.query_params["bundled"] = "iris_mlp"
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == ["ValueError: the model card is unreadable"]
    assert [t.value for t in at.title] == ["What-if edit"]  # drawn before the page failed
