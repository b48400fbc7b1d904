"""Where the seconds of the What-if page's click go, in a real browser: server, wire and chromium (issue 13).

    python -m benchmarks.click_profile [--sessions N] [--out DIR]

The bundled default, the What-if page untouched (class 0 removed, GIF and IF at the default settings, the retrained
model in the cache), reached from the entry page through the sidebar in a fresh browser session, the background
preparation finished. For each of ``--sessions`` unprofiled sessions, the time from the click on *Run the edit* to:
the status naming the first solve (the script has reached the button's branch and the answer has begun), the status saying it is done (with
the server's own seconds from its label, and each phase's seconds as the status lists them), and each of the 5 charts
drawn; at each mark the CPU seconds chromium and the server have used since the click (they share this machine's
two cores). Then one more session, profiled: chromium's JavaScript sampling profile (the DevTools protocol's
``Profiler``, every 0.5 ms) grouped by script and function, and — when ``py-spy`` is installed (the ``bench``
extra) — a 100 Hz sampling profile of the server's script thread grouped by what it was doing. The profilers slow
both sides: the profiled session's shares are meaningful, its seconds are not.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from app.browser_driver import chromium_page, process_cpu_seconds, running_dashboard, wait_idle
from benchmarks.common import RESULTS, markdown_table, provenance, write_results
from benchmarks.dashboard import _cpu_seconds, _from_the_entry_page
from gif_core.checkpoints import checkpoint_id, load_checkpoint
from gif_core.data import load_data
from gif_core.requests import ClassRemoval
from gif_core.retrain import retrain
from gif_core.zoo import default_model_path

CHARTS = 5
"""Charts the page draws after the default edit: per class, histogram, one confusion matrix, probabilities, steps."""
SERVER_ACTIVITIES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("Hessian-vector products", lambda frame: "Curvature.hvp" in frame),
    ("forward passes (predict_proba)", lambda frame: frame.startswith("predict_proba ")),
    ("tables (pandas Styler, Arrow)", lambda frame: "metrics_table.py" in frame),
    ("charts (plotly figures)", lambda frame: "app/charts.py" in frame),
    ("solvers (scipy)", lambda frame: "gif_core/solvers.py" in frame),
    ("rest of the edit (gif_core)", lambda frame: "gif_core/" in frame),
    ("Streamlit (widgets, messages)", lambda frame: "streamlit/" in frame),
)
"""What a server sample is counted as: the first activity (in this order) any frame of its stack belongs to."""


PHASES = ("click → status done", "status done → last chart")
"""The two spans over which chromium's CPU is split by process (the server computing; the browser drawing)."""


def _script_name(url: str) -> str:
    """``…/static/js/PlotlyChart.D9Z0_fxz.js`` → ``PlotlyChart`` (Streamlit's bundle names carry a content hash)."""
    name = url.rsplit("/", 1)[-1]
    return re.sub(r"\.[-\w]{6,}\.js$", "", name) or "(native)"


def chromium_cpu_by_process() -> collections.Counter[str]:
    """CPU seconds so far of chromium's processes by kind: ``--type=renderer``, ``gpu-process`` (its compositor
    and software raster, as ``--disable-gpu`` runs it), ``utility``…; ``browser`` for the main process."""
    seconds: collections.Counter[str] = collections.Counter()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            # the children rewrite their command line as one space-separated title
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split()
            if command and "chrom" in Path(command[0]).name:
                kind = next((a.split("=", 1)[1] for a in command if a.startswith("--type=")), "browser")
                seconds[kind] += process_cpu_seconds(pid)
        except OSError:
            continue
    return seconds


def js_profile_tables(profile: dict) -> tuple[list[dict], list[dict], float]:
    """Self seconds by script (native entries such as ``(garbage collector)`` by name), the 15 functions of the
    most inclusive seconds, and the seconds sampled in all."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    parent = {child: n["id"] for n in profile["nodes"] for child in n.get("children", [])}
    by_script: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    deltas = [*profile["timeDeltas"][1:], 0]
    for sample, delta in zip(profile["samples"], deltas, strict=True):
        frame = nodes[sample]["callFrame"]
        by_script[_script_name(frame["url"]) if frame["url"] else frame["functionName"]] += delta
        seen, node = set(), sample
        while node is not None:
            f = nodes[node]["callFrame"]
            label = f"{f['functionName'] or '(anonymous)'} · {_script_name(f['url'])}" if f["url"] else ""
            if label and label not in seen:
                inclusive[label] += delta
                seen.add(label)
            node = parent.get(node)
    total = sum(profile["timeDeltas"]) / 1e6
    scripts = [{"script or native": k, "seconds": v / 1e6, "share (%)": 100 * v / 1e6 / total} for k, v in
               by_script.most_common(14)]  # fmt: skip
    functions = [{"function · script": k, "inclusive seconds": v / 1e6} for k, v in inclusive.most_common(15)]
    return scripts, functions, total


def server_profile_table(raw: str) -> tuple[list[dict], int]:
    """py-spy's raw samples of the script thread, counted by :data:`SERVER_ACTIVITIES` (the rest: "other")."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or "scriptThread" not in frames[0]:
            continue
        activity = next((name for name, belongs in SERVER_ACTIVITIES if any(belongs(f) for f in frames)), "other")
        counts[activity] += int(n)
    total = sum(counts.values())
    rows = [{"activity": k, "samples": v, "share (%)": 100 * v / total} for k, v in counts.most_common()]
    return rows, total


def one_click(
    page,
    server,
    url: str,
    before: Callable[[], None] = lambda: None,
    between: Callable[[], None] = lambda: None,
    after: Callable[[], None] = lambda: None,
) -> tuple[dict[str, tuple[float, float, float]], str, str, dict[str, dict[str, float]]]:
    """Arrive, wait for the preparation, call ``before``, click, call ``between`` once the status says done and
    ``after`` once the last chart is drawn; per
    mark (seconds, chromium CPU, server CPU) since the click, the status's done label, its phase lines, and per
    span of :data:`PHASES` chromium's CPU seconds by process kind."""
    _from_the_entry_page(page, url)
    page.get_by_text("Prepared this question").wait_for(timeout=300_000)
    wait_idle(page)
    marks = {}
    before()
    by_process = [chromium_cpu_by_process()]
    chromium, serving, start = _cpu_seconds("chrom"), server.cpu_seconds(), time.perf_counter()

    def mark(name: str) -> None:
        marks[name] = (time.perf_counter() - start, _cpu_seconds("chrom") - chromium, server.cpu_seconds() - serving)

    page.get_by_role("button", name="Run the edit").click()
    page.get_by_text("solving for Δ").first.wait_for(timeout=600_000)  # the status's first phase label
    mark("status: the first solve runs")
    page.get_by_text("Edit done in").wait_for(timeout=600_000)
    mark("status: done")
    by_process.append(chromium_cpu_by_process())
    between()
    charts = page.locator(".js-plotly-plot")
    for i in range(CHARTS):
        charts.nth(i).wait_for(timeout=600_000)
        mark(f"chart {i + 1} of {CHARTS} drawn")
    by_process.append(chromium_cpu_by_process())
    after()
    processes = {
        phase: {kind: now[kind] - then[kind] for kind in now}
        for phase, (then, now) in zip(PHASES, itertools.pairwise(by_process), strict=True)
    }
    label = page.get_by_text("Edit done in").inner_text()
    status = page.locator('[data-testid="stExpander"]').filter(has_text="Edit done in")
    status.get_by_text("Edit done in").click()  # open the finished status: its phase lines
    phases = "\n".join(line for line in status.inner_text().splitlines() if " s" in line)  # not the icon's name
    return marks, label, phases, processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5, help="unprofiled sessions (median reported)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    meta = provenance()
    beside = Path(sys.executable).with_name("py-spy")  # the virtual environment's, when it is not activated
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    with tempfile.TemporaryDirectory() as cache:
        path = default_model_path()
        _, card = load_checkpoint(path)
        bundle = load_data(card.dataset, seed=card.split_seed)
        retrain(card, bundle, bundle.train, ClassRemoval(0), checkpoint_id(path), cache_dir=Path(cache),
                show_bar=False)  # fmt: skip
        with running_dashboard(env={"GIF_CACHE_DIR": cache}) as server, chromium_page() as first:
            first.goto(server.url)  # warm the server: imports, the bundled model and its data
            first.locator(".js-plotly-plot").first.wait_for(timeout=300_000)
            wait_idle(first)
            browser = first.context.browser
            timelines, labels, phases, processes = [], [], "", []
            for _ in range(args.sessions):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                try:
                    marks, label, phases, by_process = one_click(page, server, server.url)
                finally:
                    page.close()
                timelines.append(marks)
                processes.append(by_process)
                labels.append(float(re.search(r"Edit done in ([0-9.]+) s", label)[1]))
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                cdp = page.context.new_cdp_session(page)
                cdp.send("Profiler.enable")
                cdp.send("Profiler.setSamplingInterval", {"interval": 500})
                recorder: subprocess.Popen | None = None
                with tempfile.TemporaryDirectory() as spy_dir:
                    raw_path = Path(spy_dir) / "server.txt"
                    if spy:
                        command = [spy, "record", "--pid", str(server.process.pid), "--format", "raw", "-o",
                                   str(raw_path), "--rate", "100", "--threads", "--nonblocking"]  # fmt: skip
                    profiles: list[dict] = []  # one per span of PHASES

                    def start_profiling() -> None:
                        nonlocal recorder
                        if spy:
                            recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                            time.sleep(1.0)  # py-spy attaches
                        cdp.send("Profiler.start")

                    def next_span() -> None:
                        profiles.append(cdp.send("Profiler.stop")["profile"])
                        cdp.send("Profiler.start")

                    def stop_profiling() -> None:
                        profiles.append(cdp.send("Profiler.stop")["profile"])
                        if recorder is not None:
                            recorder.send_signal(signal.SIGINT)
                            recorder.wait(timeout=60)

                    one_click(page, server, server.url, start_profiling, next_span, stop_profiling)
                    raw = raw_path.read_text() if raw_path.exists() else ""
            finally:
                page.close()
    names = list(timelines[0])
    timeline = [
        {
            "mark (since the click)": name,
            "seconds": statistics.median(t[name][0] for t in timelines),
            "chromium CPU s": statistics.median(t[name][1] for t in timelines),
            "server CPU s": statistics.median(t[name][2] for t in timelines),
        }
        for name in names
    ]
    kinds = sorted({kind for p in processes for span in p.values() for kind in span})
    chromium_processes = [
        {"process": kind, **{span: statistics.median(p[span].get(kind, 0.0) for p in processes) for span in PHASES}}
        for kind in kinds
    ]
    js_spans = {span: js_profile_tables(profile) for span, profile in zip(PHASES, profiles, strict=True)}
    js_section = "\n".join(
        f"""### {span} ({sampled:.2f} s sampled)
By script (self time; `(idle)`: the main thread waiting, `(program)`: native work outside JavaScript such as style
and layout):

{markdown_table(scripts, ["script or native", "seconds", "share (%)"])}

The functions with the most inclusive time:

{markdown_table(functions, ["function · script", "inclusive seconds"])}
"""
        for span, (scripts, functions, sampled) in js_spans.items()
    )
    server_rows, samples = server_profile_table(raw) if raw else ([], 0)
    server_section = (
        f"{samples} samples of the script thread (100 Hz, the profiled click):\n\n"
        + markdown_table(server_rows, ["activity", "samples", "share (%)"])
        if server_rows
        else "py-spy is not installed (`pip install -e .[bench]`): no server profile."
    )
    body = f"""# The What-if click, profiled in the browser

{__doc__.split(chr(10) + chr(10))[2]}

## Timeline, median of {args.sessions} sessions
{markdown_table(timeline, ["mark (since the click)", "seconds", "chromium CPU s", "server CPU s"])}

The server's own seconds for the answer (its status label), median: {statistics.median(labels):.2f}. Its phases as
the status listed them in the last unprofiled session:

```
{phases.strip()}
```

Chromium's CPU seconds by process, median per span (`gpu-process`: the compositor and its software raster, as
`--disable-gpu` runs it; `renderer`: the page's JavaScript, style, layout and paint):

{markdown_table(chromium_processes, ["process", *PHASES])}

## Chromium's JavaScript, the profiled click
{js_section}
## The server's script thread, the profiled click
{server_section}
"""
    javascript = {
        span: {"scripts": scripts, "functions": functions, "seconds_sampled": sampled}
        for span, (scripts, functions, sampled) in js_spans.items()
    }
    results = {"timeline": timeline, "timelines": timelines, "server_seconds": labels,
               "chromium_processes": chromium_processes, "javascript": javascript, "server": server_rows}  # fmt: skip
    write_results("click_profile", body, results, args.out, meta)
    print(body)


if __name__ == "__main__":
    main()
