"""The benchmark scripts run end to end on a tiny configuration, so they cannot rot."""

import json
import sys

from benchmarks import engine


def test_engine_benchmark_quick(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["engine.py", "--quick", "--out", str(tmp_path)])
    engine.main()
    data = json.loads((tmp_path / "engine.json").read_text())
    assert data["hvp_cost"]["ratio"] > 0 and {"command", "commit", "machine"} <= set(data["provenance"])
    assert {r["solver"] for r in data["solver_race"]["rows"]} == {"cgls", "lsmr", "richardson"}
    assert (tmp_path / "engine_residuals.png").stat().st_size > 1000
    assert "Produced by" in (tmp_path / "engine.md").read_text()
