"""The Learn page in Streamlit's AppTest: it renders, every control reruns it and changes what is drawn, and a
failing computation shows an error message instead of a traceback.

The page is opened through the app's entry point (:func:`conftest.open_page`), inside the frame every page shares;
``st.page_link`` resolves its paths against the entry point's folder.
"""

from __future__ import annotations

import pytest
import streamlit as st
from conftest import open_page
from conftest import plotly_specs as _charts
from streamlit.testing.v1 import AppTest

from gif_core import teaching

PAGE = "views/5_Learn.py"


def _open() -> AppTest:
    at = open_page(PAGE, timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


@pytest.fixture(scope="module")
def page() -> AppTest:
    return _open()


def test_page_renders_its_charts_explanations_and_links(page):
    assert [t.value for t in page.title] == ["Learn"]
    assert not page.error
    charts = _charts(page)
    assert len(charts) == 4  # toy contour, toy data, eigenvalue spectrum, negative share
    contour = charts[0]["data"]
    assert contour[0]["type"] == "contour"
    names = {trace.get("name", "") for trace in contour}
    for label in ("IF", "PIF", "FIF", "GIF", "SIF"):
        assert f"θ* + Δ ({label})" in names
    assert any("retrained" in name for name in names)
    assert len(charts[0]["layout"]["annotations"]) == len(teaching.EXPLANATIONS)  # one arrow per estimator
    assert len(page.get("latex")) == len(teaching.EXPLANATIONS)
    assert len(page.get("page_link")) >= 1 + len(teaching.EXPLANATIONS)


@pytest.mark.parametrize(
    ("widget", "key", "value"),
    [
        ("selectbox", "toy_cluster", 3),
        ("select_slider", "toy_fraction", 0.4),
        ("select_slider", "toy_weight_decay", 0.1),
        ("radio", "toy_selected", "θ₁ only"),
    ],
)
def test_each_toy_control_changes_the_contour_plot(widget, key, value):
    at = _open()
    before = _charts(at)[0]
    getattr(at, widget)(key=key).set_value(value).run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error
    after = _charts(at)[0]
    assert after != before


def test_selected_parameter_is_named_in_the_contour_title():
    at = _open()
    at.radio(key="toy_selected").set_value("θ₂ only").run()
    assert "θ₂" in _charts(at)[0]["layout"]["title"]["text"]
    at.radio(key="toy_selected").set_value("θ₁ only").run()
    assert "θ₁" in _charts(at)[0]["layout"]["title"]["text"]


def test_spectrum_controls_change_the_spectrum_charts():
    at = _open()
    eigen, share = _charts(at)[2:]
    assert len(share["data"][0]["x"]) == len(eigen["data"]) > 2
    at.multiselect(key="spectrum_weight_decays").set_value([0.0, 1.0]).run()
    assert not at.exception
    eigen, share = _charts(at)[2:]
    assert share["data"][0]["x"] == ["0", "1"]
    assert len(eigen["data"]) == 2
    assert "range" in eigen["layout"]["yaxis"]
    at.toggle(key="spectrum_zoom").set_value(False).run()
    assert not at.exception
    assert "range" not in _charts(at)[2]["layout"]["yaxis"]
    at.multiselect(key="spectrum_weight_decays").set_value([]).run()
    assert not at.exception
    assert len(_charts(at)) == 2
    assert at.info


def test_failures_show_an_error_message_not_a_traceback(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("no stationary point")

    monkeypatch.setattr(teaching, "toy_example", fail)
    monkeypatch.setattr(teaching, "hessian_spectra", fail)
    st.cache_data.clear()
    try:
        at = open_page(PAGE, timeout=60)
        at.run()
        assert not at.exception
        messages = [e.value for e in at.error]
        assert len(messages) == 2
        assert all("no stationary point" in m for m in messages)
        assert len(at.get("latex")) == len(teaching.EXPLANATIONS)  # the explanations still render
    finally:
        st.cache_data.clear()
