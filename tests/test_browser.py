"""The dashboard in a real browser: `streamlit run` on a free port, Debian's chromium through Playwright.

Runs a class removal on the What-if page, waits for the charts and saves a screenshot of every page (into
$GIF_SCREENSHOT_DIR when set — that is how the README's screenshots are made — else into a temporary folder).
Under CI=true a missing chromium is a failure, not a skip.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import torch
from conftest import cache_folder

from app.browser_driver import CHROMIUM, Dashboard, chromium_page, dashboard, running_dashboard, wait_idle
from app.charts import MODEL_COLOURS

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


def test_class_removal_in_a_real_browser(tmp_path, shared_retrains, default_question_retrained):
    _require_chromium()
    shots = Path(os.environ.get("GIF_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    cache = cache_folder(tmp_path / "cache", shared_retrains)
    with dashboard(env={"GIF_CACHE_DIR": cache}) as url, chromium_page(height=3600) as page:
        page.goto(url, timeout=120_000)
        page.get_by_role("heading", name="GIF Explorer").wait_for(timeout=120_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
        wait_idle(page)
        page.screenshot(path=str(shots / "1_model_and_data.png"), full_page=True)

        _open_and_click(page, f"{url}/What-if_edit", "Run the edit")
        page.get_by_text("Metrics (percent").wait_for(timeout=600_000)
        charts = page.locator(".js-plotly-plot")
        charts.nth(4).wait_for(timeout=300_000)  # per-class, histogram, confusion, probabilities, step curve
        wait_idle(page)
        assert page.get_by_text("retrained (").count() >= 1
        assert page.get_by_text("Edit done in").count() == 1  # the phases' status, closed when done
        report_button = page.get_by_role("button", name="JSON report (as gif remove --json)")
        report_button.wait_for(timeout=60_000)  # under load the downloads below the charts may still be arriving
        assert report_button.count() == 1
        page.screenshot(path=str(shots / "4_what_if_edit.png"), full_page=True)
        assert (shots / "4_what_if_edit.png").stat().st_size > 50_000
        _one_colour_per_model(page)
        _nothing_drawn_outside_its_chart(page)
        _the_form_stays_on_empty_input(page)

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
        # issue 18, bug 1: "helpful" means a positive score, never a negative one
        assert page.get_by_text(re.compile(r"^helpful \+")).count() >= 1
        assert page.get_by_text(re.compile(r"^helpful [−-]")).count() == 0

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

        # issue 18, bug 6: a reload (or a shared link) keeps the model the URL names
        page.goto(f"{url}/Influential_samples?bundled=iris_mlp", timeout=120_000)
        page.get_by_text("iris_mlp.safetensors").first.wait_for(timeout=120_000)
        page.reload()
        page.get_by_text("iris_mlp.safetensors").first.wait_for(timeout=120_000)
        wait_idle(page)
        assert "bundled=iris_mlp" in page.url and page.get_by_text("mnist_cnn.safetensors").count() == 0


def _one_colour_per_model(page) -> None:
    """Issue 18, bug 7: every chart draws a model in the same colour (GIF was red in bars, blue in the step chart)."""
    traces = page.evaluate(
        """() => Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(plot => (plot.data || []).map(
            t => [t.name, (t.marker && typeof t.marker.color === 'string' && t.marker.color)
                           || (t.line && t.line.color) || null]))"""
    )
    colours: dict[str, set[str]] = {}
    for name, colour in traces:
        if name in MODEL_COLOURS and colour:
            colours.setdefault(name, set()).add(colour)
    assert {"original", "GIF", "IF"} <= set(colours), traces
    assert all(found == {MODEL_COLOURS[name]} for name, found in colours.items()), colours


def _nothing_drawn_outside_its_chart(page) -> None:
    """The fixed margins of app.charts hold every title, tick label and legend: nothing a chart draws reaches past
    its SVG (where it would be clipped)."""
    outside = page.evaluate(
        """() => Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(plot => {
            const box = plot.querySelector('.main-svg').getBoundingClientRect();
            return Array.from(plot.querySelectorAll('.legend, .g-xtitle, .g-ytitle, .gtitle, .xtick text, .ytick text'))
                .map(e => [e.getAttribute('class'), e.textContent.slice(0, 30), e.getBoundingClientRect()])
                .filter(([, , r]) => r.width > 0 && (r.left < box.left - 1 || r.right > box.right + 1
                                                      || r.top < box.top - 1 || r.bottom > box.bottom + 1))
                .map(([cls, text]) => cls + ': ' + text);
        })"""
    )
    assert outside == [], outside


def _the_form_stays_on_empty_input(page) -> None:
    """Issue 18, bug 2: an empty sample list showed a ValueError and the methods, selector and button vanished."""
    page.get_by_text("Remove training samples", exact=True).first.click()
    wait_idle(page)
    assert page.get_by_text("Type the training rows to remove").count() == 1
    button = page.get_by_role("button", name="Run the edit")
    assert button.count() == 1 and button.is_disabled()
    assert page.get_by_text("Methods").count() >= 1 and page.get_by_text("ValueError").count() == 0
    assert page.get_by_text("Metrics (percent").count() == 1  # the earlier result stays


def _busy(server: Dashboard, seconds: float) -> float:
    """The server's CPU use over ``seconds`` of wall time, in cores."""
    before = server.cpu_seconds()
    time.sleep(seconds)
    return (server.cpu_seconds() - before) / seconds


def _is_working(server: Dashboard, within: float = 15.0) -> bool:
    """Whether the server uses more than half a core (over 3 s) within ``within`` seconds: the test's other
    processes share the cores, so one window can fall short while the work runs on."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _busy(server, 3.0) > 0.5:
            return True
    return False


def _goes_idle(server: Dashboard, within: float = 20.0) -> bool:
    """Whether the server's CPU use falls below a quarter of a core (over 2 s) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _busy(server, 2.0) < 0.25:
            return True
    return False


def test_long_work_stops_on_cancel_on_leaving_and_on_reload(tmp_path):
    """Issue 18, bug 5: after leaving the page or reloading during an exact IF the server stayed busy for minutes.
    The cost is said before the click, the work shows its phase, and it stops on Cancel, on opening another page and
    when the tab is reloaded (its session ends): the server goes idle each time. Then bug 4: a stopped solve says so.
    (Bug 3's no-op flag is a cell of the metrics table, which Streamlit draws on a canvas with no DOM text: the
    AppTest test reads that table's values instead.)"""
    _require_chromium()
    with running_dashboard(env={"GIF_CACHE_DIR": str(tmp_path / "cache")}) as server, chromium_page() as page:

        def start_exact_if() -> None:
            page.goto(f"{server.url}/Influential_samples", timeout=120_000)
            page.get_by_role("button", name="Explain this prediction").wait_for(timeout=120_000)
            wait_idle(page)
            page.get_by_text("Influence function (IF, exact solve)", exact=True).first.click()
            wait_idle(page)
            # the training set's gradient store may already be on disk: a Cancel can come after its phase
            stored = [f for f in (tmp_path / "cache").rglob("*.safetensors") if not f.name.startswith("scores-")]
            cost = "Cost now: about [^,]*\\.$" if stored else "Cost now: about .* MB to the cache"
            page.get_by_text(re.compile(cost)).first.wait_for(timeout=120_000)
            page.get_by_role("button", name="Explain this prediction").click()
            page.get_by_text("so far").first.wait_for(timeout=120_000)
            assert _is_working(server)

        start_exact_if()
        page.get_by_role("button", name="Cancel").click()
        page.get_by_text("stopped: cancelled by you").wait_for(timeout=60_000)
        assert _goes_idle(server)

        start_exact_if()
        page.get_by_role("link", name="Parameter selection").click()
        page.get_by_role("button", name="Select parameters").wait_for(timeout=120_000)
        wait_idle(page)
        assert _goes_idle(server)

        start_exact_if()
        page.reload()
        page.get_by_role("button", name="Explain this prediction").wait_for(timeout=120_000)
        wait_idle(page)
        assert _goes_idle(server)
        assert not list((tmp_path / "cache").rglob("*.partial"))  # nothing half-written is left

        # issue 18, bug 4, on the Iris MLP: a solve that stops at its iteration limit says so above its scores
        page.goto(f"{server.url}/Influential_samples?bundled=iris_mlp", timeout=120_000)
        page.get_by_role("button", name="Explain this prediction").wait_for(timeout=120_000)
        wait_idle(page)
        page.get_by_text("Influence function (IF, exact solve)", exact=True).first.click()
        wait_idle(page)
        limit = page.get_by_label("Max iterations of a solve (exact IF, GIF-restricted)", exact=True)
        limit.fill("2")
        limit.press("Enter")
        wait_idle(page)
        page.get_by_role("button", name="Explain this prediction").click()
        page.get_by_text("The solve did not converge").wait_for(timeout=300_000)
        assert page.get_by_text("stopped after 2 iterations").count() >= 1


def test_an_uploaded_exported_program_answers_a_class_removal_in_a_real_browser(tmp_path):
    """Issue 17: a .pt2 of a module the library does not know, uploaded with its card through the page's file
    inputs, loads, and the What-if page removes a class with it against the retrained program."""
    _require_chromium()
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from test_exported import RECIPE, DigitNet, exported_bytes

    from gif_core.cli import main
    from gif_core.data import load_data
    from gif_core.train import train_model

    torch.manual_seed(0)
    module = DigitNet()
    train_model(module, load_data("digits").train, RECIPE, show_bar=False)
    weights = tmp_path / "digitnet.pt2"
    weights.write_bytes(exported_bytes(module))
    assert main(["card", str(weights), "--data", "digits", "--epochs", "8", "--lr", "0.01"]) == 0
    with dashboard(env={"GIF_CACHE_DIR": str(tmp_path / "cache")}) as url, chromium_page(height=2400) as page:
        page.goto(url, timeout=120_000)
        page.get_by_role("heading", name="GIF Explorer").wait_for(timeout=120_000)
        wait_idle(page)
        page.get_by_text("Upload", exact=True).click()
        wait_idle(page)
        uploads = page.locator('input[type="file"]')
        for upload, path in enumerate((weights, weights.with_suffix(".json"))):  # each file listed before the next
            for attempt in range(3):  # a file set while the page reruns (a busy machine) can be dropped: set it again
                uploads.nth(upload).set_input_files(str(path))
                try:
                    page.get_by_text(path.name, exact=True).first.wait_for(timeout=40_000)
                    break
                except PlaywrightTimeoutError:
                    if attempt == 2:
                        raise
            wait_idle(page)
        page.get_by_role("button", name="Load upload").click()
        try:
            page.get_by_text("exported on digits").first.wait_for(timeout=300_000)
        except PlaywrightTimeoutError:  # say what the page showed instead
            shown = page.locator('[data-testid="stAlert"], [data-testid="stException"]').all_inner_texts()
            raise AssertionError(f"The upload did not load; the page's messages: {shown}") from None
        wait_idle(page)
        page.get_by_role("link", name="What-if edit").click()  # the sidebar keeps the session (and its upload)
        page.get_by_role("button", name="Run the edit").wait_for(timeout=120_000)
        wait_idle(page)
        page.get_by_role("button", name="Run the edit").click()
        page.get_by_text("Metrics (percent").wait_for(timeout=600_000)
        wait_idle(page)
        assert page.get_by_text("digitnet.pt2").count() >= 1 and page.get_by_text("retrained (").count() >= 1
        assert page.get_by_text("Traceback").count() == 0 and page.get_by_text("Error").count() == 0
