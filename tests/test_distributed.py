"""Sharded curvature over two real processes (torchrun, gloo, loopback only) against one process.

Two launches: tests/distributed_worker.py (products, gradients, Fisher, per-sample gradients, two edits, the
refused --retrain), and ``torchrun -m gif_core remove`` itself. Every rank must return the same bits; the single
process is computed here, in the test's own process, by the same functions.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import distributed_worker as worker
import pytest
import torch
from conftest import rel_err

from gif_core import distributed
from gif_core.cli import main as gif_main
from gif_core.zoo import bundled_model_path

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(args: list[str], cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2`` on loopback with one thread per process; fails loudly on a non-zero exit."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "GIF_CACHE_DIR": str(tmp_path / "cache"),
    }
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    done = subprocess.run([*launcher, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Both ranks' results of tests/distributed_worker.py."""
    out = tmp_path_factory.mktemp("ranks")
    torchrun([str(TESTS / "distributed_worker.py"), str(out)], TESTS.parent, out)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.fixture(scope="module")
def single(ranks) -> dict:
    """The same computations in this one process (after the launch, so the two never compete for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {f"{k}_{key}": v for k in ("mlp", "conv") for key, v in worker.curvature_products(k).items()}
        results.update(worker.edits())
    finally:
        torch.set_num_threads(threads)
    return results


def test_shard_rows_partition_the_rows_by_rank_and_size_alone():
    for n in (0, 1, 5, 61, 200):
        for size in (1, 2, 3, 4):
            shards = [range(n)[distributed.shard_rows(n, r, size)] for r in range(size)]
            assert [i for shard in shards for i in shard] == list(range(n))  # disjoint, in order, covering
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="rank must lie"):
        distributed.shard_rows(10, 2, 2)


def test_without_a_process_group_nothing_is_shared():
    assert distributed.world() is None and distributed.is_lead()
    x = torch.arange(3.0)
    assert distributed.all_reduce_sum(x) is x and torch.equal(x, torch.arange(3.0))
    distributed.check_replicated("anything", x)  # no-op
    assert distributed.digest(x) == distributed.digest(x.clone()) != distributed.digest(x + 1)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_sharded_products_and_gradients_equal_one_process(ranks, single, kind):
    keys = ["hvp", "hvp_linearized", "hvp_gauss_newton", "gradient", "gradient_subset", "fisher", "per_sample"]
    for key in keys:
        name = f"{kind}_{key}"
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name}: the ranks disagree"
        assert rel_err(ranks[0][name], single[name]) < 1e-6, name
    assert [int(r[f"{kind}_n_samples"]) for r in ranks] == [worker.N_ROWS] * 2  # the global count
    assert [int(r[f"{kind}_local_rows"]) for r in ranks] == [30, 31]  # each rank held its shard only


def _numbers(value: object, path: str = ""):
    """(path, value) of every leaf of a JSON-like report, without timings (seconds differ run to run)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "seconds":
                yield from _numbers(item, f"{path}/{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{path}/{i}")
    else:
        yield path, value


def _assert_same_report(sharded: dict, reference: dict, rtol: float) -> None:
    left, right = dict(_numbers(sharded)), dict(_numbers(reference))
    assert left.keys() == right.keys()
    for path, value in left.items():
        if isinstance(value, float) and "rel_residual" in path:  # a residual is a difference: float noise
            # relative to its size, or absolutely below 1e-9 (HyperINF's Schulz residual sits near 1e-10, where the
            # shards' summation order alone moves it by 1e-5 of itself; every stopping tolerance is ≥ 1e-8)
            assert math.isclose(value, right[path], rel_tol=rtol, abs_tol=1e-9), (path, value, right[path])
        elif not (isinstance(value, float) and math.isnan(value) and math.isnan(right[path])):
            assert value == right[path], (path, value, right[path])  # metrics, steps, counts: exactly equal


@pytest.mark.parametrize("edit", ["removal", "change"])
def test_an_edit_gives_the_same_delta_and_report_on_two_processes(ranks, single, edit):
    deltas = [key for key in single if key.startswith(f"{edit}_") and key.endswith(("_delta", "_edited"))]
    assert len(deltas) == (2 * len(worker.SHARDED_METHODS) if edit == "removal" else 2)
    for key in deltas:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key}: the replicated solves diverged"
        assert rel_err(ranks[0][key], single[key]) < 1e-6, key
    for rank in ranks:
        _assert_same_report(rank[f"{edit}_report"], single[f"{edit}_report"], rtol=1e-6)


def test_retrain_is_refused_under_torchrun_and_only_rank_0_says_so(ranks):
    assert [r["retrain_status"] for r in ranks] == [2, 2]
    assert ranks[0]["retrain_stderr"].startswith("gif: error: --retrain is not available under torchrun (2 processes)")
    assert ranks[1]["retrain_stderr"] == ""


def test_torchrun_gif_remove_writes_one_report_equal_to_one_process(tmp_path, monkeypatch):
    model = str(bundled_model_path("iris_mlp"))
    argv = ["remove", "--model", model, "--class", "0", "--method", "gif,if", "--quiet"]
    work = tmp_path / "work"
    work.mkdir()
    done = torchrun(["-m", "gif_core", *argv, "--json", "out.json", "--save", "edited.safetensors"], work, tmp_path)
    assert sorted(p.name for p in work.iterdir()) == ["edited.json", "edited.safetensors", "out.json"]
    assert done.stdout.count("Request: kind=class-removal") == 1 and done.stdout.count("report written to") == 1
    monkeypatch.setenv("GIF_CACHE_DIR", str(tmp_path / "cache"))
    assert gif_main([*argv, "--json", str(tmp_path / "single.json")]) == 0
    # the bundled model is float32: a solver residual, a difference of near-equal sums, keeps ~1e-5 of noise
    sharded, reference = (json.loads(p.read_text()) for p in (work / "out.json", tmp_path / "single.json"))
    _assert_same_report(sharded, reference, rtol=1e-4)
