"""Drive the dashboard in a real browser: start ``streamlit run`` on a free local port and open Debian's chromium
through Playwright. Used by the browser test (tests/test_browser.py), the README screenshots and the interactive
timing benchmark (benchmarks/dashboard.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ENTRY = Path(__file__).resolve().parent / "streamlit_app.py"
REPOSITORY = ENTRY.parent.parent
"""Streamlit is started here so that it reads the repository's ``.streamlit/config.toml``."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Dashboard:
    """A running ``streamlit run``: its base URL and its process."""

    url: str
    process: subprocess.Popen

    def cpu_seconds(self) -> float:
        """CPU seconds the server has used so far, all its threads together."""
        return process_cpu_seconds(self.process.pid)


def process_cpu_seconds(pid: int | str) -> float:
    """User + system CPU seconds so far of process ``pid``, all its threads together (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, in clock ticks


@contextmanager
def dashboard(env: dict[str, str] | None = None, timeout: float = 120) -> Iterator[str]:
    """A running dashboard; yields its base URL and stops it afterwards."""
    with running_dashboard(env, timeout) as server:
        yield server.url


@contextmanager
def running_dashboard(env: dict[str, str] | None = None, timeout: float = 120) -> Iterator[Dashboard]:
    """A running dashboard (:class:`Dashboard`), stopped afterwards."""
    port = free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", str(ENTRY),
        "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPOSITORY, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                if process.poll() is not None:
                    assert process.stderr is not None  # opened with stderr=PIPE
                    raise RuntimeError(f"streamlit exited: {process.stderr.read().decode()[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the dashboard did not answer on {url} within {timeout} s") from None
                time.sleep(0.5)
        yield Dashboard(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000) -> Iterator[Page]:
    """A Playwright page in Debian's chromium (``/usr/bin/chromium``), headless."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def wait_idle(page: Page, timeout_ms: int = 600_000) -> None:
    """Wait until Streamlit has finished running the script (no 'running' status widget)."""
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)
