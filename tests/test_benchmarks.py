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


def test_mislabel_benchmark_quick(tmp_path, monkeypatch):
    from benchmarks import mislabel

    monkeypatch.setattr(sys, "argv", ["mislabel.py", "--quick", "--out", str(tmp_path)])
    mislabel.main()
    rows = json.loads((tmp_path / "mislabel.json").read_text())["rows"]
    assert [r["method"].split(" ")[0] for r in rows] == ["tracin", "if-lowrank", "Captum", "Captum"]
    assert all(0 <= r["found in top 10%"] <= r["found in top 20%"] <= 100 for r in rows)


def test_flip_labels_changes_exactly_the_chosen_rows():
    import torch

    from benchmarks.mislabel import flip_labels

    labels = torch.arange(100) % 10
    flipped, rows = flip_labels(labels, 0.1, 10, seed=1)
    assert len(rows) == 10 and (flipped[rows] != labels[rows]).all()
    keep = torch.ones(100, dtype=torch.bool)
    keep[rows] = False
    assert torch.equal(flipped[keep], labels[keep])


def test_browse_speed_benchmark_quick(tmp_path, monkeypatch):
    from benchmarks import browse_speed

    monkeypatch.setattr(sys, "argv", ["browse_speed.py", "--quick", "--out", str(tmp_path)])
    browse_speed.main()
    rows = json.loads((tmp_path / "browse_speed.json").read_text())["rows"]
    assert len(rows) == 7 and all(r["per test point s (median)"] > 0 for r in rows)
    exact = next(r for r in rows if r["method"].startswith("Influence function (IF, exact"))
    assert exact["Spearman vs exact IF"] > 0.999  # the reference against itself: the bookkeeping is aligned
