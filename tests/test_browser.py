"""The dashboard in a real browser: `streamlit run` on a free port, Debian's chromium through Playwright.

Runs a class removal on the What-if page, waits for the charts and saves a screenshot of every page (into
$GIF_SCREENSHOT_DIR when set — that is how the README's screenshots are made — else into a temporary folder).
Under CI=true a missing chromium is a failure, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.browser_driver import CHROMIUM, chromium_page, dashboard, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does."
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _open_and_click(page, address: str, button: str) -> None:
    """Open a page, wait until its button is there and Streamlit is idle, and press the button."""
    page.goto(address, timeout=120_000)
    page.get_by_role("button", name=button).wait_for(timeout=120_000)
    wait_idle(page)
    page.get_by_role("button", name=button).click()


def test_class_removal_in_a_real_browser(tmp_path):
    _require_chromium()
    shots = Path(os.environ.get("GIF_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with dashboard(env={"GIF_CACHE_DIR": str(tmp_path / "cache")}) as url, chromium_page(height=3600) as page:
        page.goto(url, timeout=120_000)
        page.get_by_role("heading", name="GIF Explorer").wait_for(timeout=120_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
        wait_idle(page)
        page.screenshot(path=str(shots / "1_model_and_data.png"), full_page=True)

        _open_and_click(page, f"{url}/What-if_edit", "Run the edit")
        page.get_by_text("Metrics (percent").wait_for(timeout=600_000)
        charts = page.locator(".js-plotly-plot")
        charts.nth(7).wait_for(timeout=300_000)  # per-class, histogram, confusions, probabilities, step curve
        wait_idle(page)
        assert page.get_by_text("retrained (").count() >= 1
        assert page.get_by_text("Edit done in").count() == 1  # the phases' status, closed when done
        assert page.get_by_role("button", name="JSON report (as gif remove --json)").count() == 1
        page.screenshot(path=str(shots / "4_what_if_edit.png"), full_page=True)
        assert (shots / "4_what_if_edit.png").stat().st_size > 50_000

        page.goto(f"{url}/Influential_samples", timeout=120_000)
        page.get_by_role("button", name="Explain this prediction").wait_for(timeout=120_000)
        wait_idle(page)
        page.get_by_text("TracIn (final checkpoint)", exact=True).first.click()
        wait_idle(page)
        page.get_by_role("button", name="Explain this prediction").click()
        page.get_by_text("Most harmful training samples").wait_for(timeout=300_000)
        page.locator('[data-testid="stImage"]').nth(16).wait_for(timeout=120_000)  # test image + 8 + 8
        wait_idle(page)
        page.screenshot(path=str(shots / "2_influential_samples.png"), full_page=True)

        _open_and_click(page, f"{url}/Parameter_selection", "Select parameters")
        page.get_by_text("Per-channel view").wait_for(timeout=300_000)
        page.locator(".js-plotly-plot").nth(4).wait_for(timeout=120_000)  # layer bars + 2 conv layers × 2
        wait_idle(page)
        page.screenshot(path=str(shots / "3_parameter_selection.png"), full_page=True)

        page.goto(f"{url}/Learn", timeout=120_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=300_000)
        wait_idle(page)
        page.screenshot(path=str(shots / "5_learn.png"), full_page=True)
        assert not page.get_by_text("Traceback").count()
