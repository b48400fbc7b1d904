"""Long influence work stops when asked, leaves nothing half-done, reports progress, says its cost beforehand, and
serves a repeated question from the disk cache (issue 18: bug 5 and "long work shows its cost")."""

import copy
import threading
import warnings

import pytest
import torch
from conftest import tiny_convnet, tiny_mlp
from test_browse import _image_set

from gif_core import browse
from gif_core.browse import BrowserConfig, InfluenceBrowser
from gif_core.cache_files import CacheWarning
from gif_core.interrupt import Cancelled, ForwardWatch, check
from gif_core.solvers import SolverConfig


def after(passes: int):
    """A stop check that gives a reason from the ``passes``-th call on."""
    calls = [0]

    def stop() -> str | None:
        calls[0] += 1
        return "cancelled by the test" if calls[0] >= passes else None

    return stop


def test_a_watch_counts_and_stops_only_inside_its_block():
    model = tiny_mlp()
    watch = ForwardWatch()
    watch.install([model])
    x = torch.randn(3, 4, dtype=torch.float64)
    seen = []
    with pytest.raises(Cancelled, match="cancelled by the test"), watch.active(after(3), seen.append):
        for _ in range(10):
            model(x)
    assert seen == [1, 2, 3]  # the third pass was stopped before it ran
    model(x)  # outside the block nothing counts or stops
    with watch.active() as outer, watch.active(on_pass=seen.append) as inner:  # blocks nest
        model(x)
    assert outer.passes == inner.passes == 1
    copied = copy.deepcopy(model)  # Captum copies the model: the copy is watched by the same watch
    with pytest.raises(Cancelled), watch.active(lambda: "stop the copy"):
        copied(x)
    with pytest.raises(Cancelled):
        check(lambda: "now")
    check(lambda: None)
    check(None)


def test_a_watch_acts_only_in_the_thread_that_asked():
    model = tiny_mlp()
    watch = ForwardWatch()
    watch.install([model])
    x = torch.randn(3, 4, dtype=torch.float64)
    outcome = []
    with watch.active(lambda: "stop everything") as counter:
        worker = threading.Thread(target=lambda: outcome.append(model(x).shape))
        worker.start()
        worker.join()
    assert outcome == [torch.Size([3, 3])] and counter.passes == 0


def browser_on(tmp_path, **config):
    settings = {"hessian_samples": 48, "cache_dir": tmp_path, "lowrank_rank": 6, **config}
    return InfluenceBrowser(tiny_convnet().float(), _image_set(), 0.01, BrowserConfig(**settings))


def test_an_exact_solve_stops_at_the_next_product_and_the_browser_stays_correct(tmp_path):
    slow = SolverConfig(rtol=1e-12, maxiter=60)
    browser = browser_on(tmp_path, solver=slow)
    browser.ensure_gradients()
    test_x = browser.train.inputs[:1] * 0.7
    phases = []
    with pytest.raises(Cancelled):
        browser.explain(test_x, 1, "if", stop=after(20), progress=lambda m, f: phases.append((m, f)))
    assert any("scoring" in m for m, _ in phases)  # it was inside the solve when it stopped
    assert not list(tmp_path.glob("scores-*"))  # nothing half-done was cached
    stopped_and_resumed = browser.explain(test_x, 1, "if")
    fresh = browser_on(tmp_path / "fresh", solver=slow).explain(test_x, 1, "if")
    assert torch.allclose(stopped_and_resumed.scores, fresh.scores, rtol=1e-5, atol=1e-12)


def test_a_stopped_gradient_pass_leaves_no_file(tmp_path):
    train = _image_set(n=1100)  # three blocks of per-sample gradients (512 rows each)
    browser = InfluenceBrowser(
        tiny_convnet().float(), train, 0.01, BrowserConfig(hessian_samples=48, cache_dir=tmp_path)
    )
    blocks = []
    with pytest.raises(Cancelled):
        browser.ensure_gradients(stop=after(2), progress=lambda m, f: blocks.append(f))
    assert max(blocks) > 0  # the first block was written before the stop
    assert list(tmp_path.iterdir()) == []  # neither the store nor its temporary file
    assert not browser.gradients.from_cache  # computed now, whole
    assert [p.suffix for p in tmp_path.iterdir()] == [".safetensors"]


def test_progress_fractions_rise_and_stay_below_one(tmp_path):
    browser = browser_on(tmp_path, solver=SolverConfig(rtol=1e-12, maxiter=30))
    seen: list[tuple[str, float]] = []
    browser.explain(browser.train.inputs[:1], 0, "if-lowrank", progress=lambda m, f: seen.append((m, f)))
    messages = [m for m, _ in seen]
    assert any("Per-sample gradients" in m for m in messages) and any("eigenpairs" in m for m in messages)
    lanczos = [f for m, f in seen if "eigenpairs" in m]
    assert lanczos == sorted(lanczos) and all(0 <= f <= 0.99 for f in lanczos) and max(lanczos) > 0


def test_the_estimate_names_the_missing_set_up_and_its_disk(tmp_path):
    browser = browser_on(tmp_path)
    n, p = len(browser.train), browser.curvature.space.numel
    first = browser.estimate("if-lowrank")  # G: n·p float32, eigenpairs: p·rank + rank float64
    assert first.disk_bytes == n * p * 4 + p * 6 * 8 + 6 * 8 and first.seconds > 0 and first.feasible
    assert [what for what, _ in first.phases] == ["per-sample gradients of the training set", "eigenpairs by Lanczos"]
    assert "MB to the cache" in first.describe()
    assert not first.quick  # it writes to the cache: a background job
    browser.prepare("if-lowrank")
    assert browser.estimate("if-lowrank").disk_bytes == 0 and browser.estimate("tracin").seconds == 0
    assert browser.estimate("tracin").quick and not browser.estimate("captum-tracincp").quick  # unknown: a job
    exact = browser.estimate("if")
    assert exact.phases[0][0].startswith(f"the solve: at most {browser.config.solver.maxiter + 2}")
    assert browser.estimate("captum-tracincp").seconds is None
    with pytest.raises(ValueError, match="choose one of"):
        browser.estimate("lissa")


def test_arnoldi_is_refused_beyond_what_can_finish(tmp_path, monkeypatch):
    browser = browser_on(tmp_path)
    assert browser.estimate("captum-arnoldi").feasible  # 48 samples × 1k parameters
    monkeypatch.setattr(browse, "ARNOLDI_MAX_WORK", 100)
    refused = browser.estimate("captum-arnoldi")
    assert not refused.feasible and "cannot finish here" in refused.describe()


def test_a_repeated_slow_question_is_served_from_the_disk_cache_in_any_session(tmp_path):
    browser = browser_on(tmp_path)
    test_x = browser.train.inputs[2:3] * 0.9
    first = browser.explain(test_x, 2, "if")
    assert not first.from_cache and first.report is not None
    other_session = browser_on(tmp_path)  # a new browser on the same model and data
    again = other_session.explain(test_x, 2, "if", stop=lambda: "a cache hit runs no product")
    assert again.from_cache and torch.equal(again.scores, first.scores) and again.report == first.report
    assert not other_session.explain(test_x, 1, "if").from_cache  # another label is another question
    assert not browser_on(tmp_path, damping=0.1).explain(test_x, 2, "if").from_cache  # other settings too
    tracin = browser.explain(test_x, 2, "tracin")
    assert not tracin.from_cache  # cheap methods are not cached


def test_a_tampered_score_entry_is_recomputed_with_a_warning(tmp_path):
    browser = browser_on(tmp_path)
    test_x = browser.train.inputs[:1]
    first = browser.explain(test_x, 0, "gif")
    (entry,) = tmp_path.glob("scores-*.safetensors")
    other = next(p for p in browser_on(tmp_path).cache_dir.glob("*.safetensors") if p != entry)
    entry.write_bytes(other.read_bytes())  # another entry copied over it
    with pytest.warns(CacheWarning, match="influence-score cache entry"):
        again = browser_on(tmp_path).explain(test_x, 0, "gif")
    assert not again.from_cache and torch.allclose(again.scores, first.scores, rtol=1e-4, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert browser_on(tmp_path).explain(test_x, 0, "gif").from_cache  # the entry was replaced


def test_two_threads_on_one_browser_get_the_answers_of_one(tmp_path):
    browser = browser_on(tmp_path)
    browser.ensure_gradients()
    points = [browser.train.inputs[i : i + 1] * 0.5 for i in range(2)]
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        results[i] = browser.explain(points[i], i, "if").scores

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    alone = browser_on(tmp_path / "alone")
    for i in range(2):
        assert torch.allclose(results[i], alone.explain(points[i], i, "if").scores, rtol=1e-5, atol=1e-12)


def test_a_waiting_caller_can_be_stopped(tmp_path):
    browser = browser_on(tmp_path)
    holder_in, release = threading.Event(), threading.Event()

    def hold() -> None:
        with browser._lock:
            holder_in.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holder_in.wait(5)
    waits = []
    with pytest.raises(Cancelled):
        browser.ensure_gradients(stop=after(3), progress=lambda m, f: waits.append(m))
    release.set()
    holder.join()
    assert waits and all("Waiting for another computation" in m for m in waits)


def test_captum_scoring_stops_and_a_stopped_browser_still_answers(tmp_path):
    """Captum works on its own copy of the model: the watch must reach it, and a stop must not stick to it."""
    browser = browser_on(tmp_path)
    test_x = browser.train.inputs[:1]
    browser.prepare("captum-tracincp")
    with pytest.raises(Cancelled):
        browser.explain(test_x, 0, "captum-tracincp", stop=after(1))
    first = browser.explain(test_x, 1, "captum-tracincp")  # the next question in the same thread runs
    second = browser.explain(browser.train.inputs[1:2], 1, "captum-tracincp")
    assert torch.isfinite(first.scores).all() and torch.isfinite(second.scores).all()


def test_the_estimate_matches_the_files_written(tmp_path):
    browser = browser_on(tmp_path)
    expected = browser.estimate("if-lowrank").disk_bytes
    browser.prepare("if-lowrank")
    written = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    assert 0 <= written - expected < 4096  # the files' headers
    test_x = browser.train.inputs[:1]
    assert browser.estimate("if", (test_x, 0)).seconds > 0
    browser.explain(test_x, 0, "if")
    assert browser.estimate("if", (test_x, 0)).seconds == 0  # its scores are cached now
    assert browser.estimate("if", (test_x, 1)).seconds > 0


def test_a_solver_given_per_call_is_used_and_keyed(tmp_path):
    browser = browser_on(tmp_path, solver=SolverConfig(rtol=1e-12, maxiter=60))
    test_x = browser.train.inputs[:1]
    full = browser.explain(test_x, 0, "if")
    short = browser.explain(test_x, 0, "if", solver=SolverConfig(rtol=1e-12, maxiter=2))
    assert short.report.iterations == 2 and not short.from_cache and full.report.iterations > 2
    assert browser.explain(test_x, 0, "if").from_cache  # each solver has its own entry
