"""The benchmark scripts run end to end on a tiny configuration, so they cannot rot."""

import json
import math
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


def test_loo_benchmark_quick(tmp_path, monkeypatch):
    from benchmarks import loo

    monkeypatch.setattr(sys, "argv", ["loo.py", "--quick", "--out", str(tmp_path)])
    loo.main()
    data = json.loads((tmp_path / "loo.json").read_text())
    rows = data["rows"]
    assert {r["method"] for r in rows} == {"if", "gif", "tracincp", "naive", "arnoldi"}
    assert len({(r["setting"], r["λ"]) for r in rows}) == len(loo.QUICK)
    for row in rows:
        assert all(math.isfinite(row[c]) for c in ("Spearman mean", "Spearman min", "Pearson mean", "sign agreement"))
    # teeth: on strongly convex L2 logistic regression, IF must rank the leave-one-out effects and get their sign
    (l2_logreg,) = [r for r in rows if r["setting"] == "logreg / Iris" and r["λ"] > 0 and r["method"] == "if"]
    assert l2_logreg["Spearman min"] >= 0.9 and l2_logreg["sign agreement"] >= 0.9
    assert (tmp_path / "loo_scatter.png").stat().st_size > 1000


def test_point_losses_stay_exact_where_cross_entropy_rounds_to_zero():
    import pytest
    import torch
    from torch import nn
    from torch.nn import functional as F

    from benchmarks.loo import point_losses

    model = nn.Linear(2, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[60.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
        model.bias.zero_()
    inputs, labels = torch.tensor([[1.0, 0.0], [0.2, 0.1]], dtype=torch.float64), torch.tensor([0, 1])
    exact = [
        math.log1p(math.exp(-60.0) + math.exp(-60.0)),
        float(F.cross_entropy(model(inputs[1:]), labels[1:]).detach()),
    ]
    assert float(F.cross_entropy(model(inputs[:1]), labels[:1]).detach()) == 0.0  # what the plain loss returns
    assert point_losses(model, inputs, labels) == pytest.approx(exact, rel=1e-12)


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


def test_paper_benchmarks_run_every_table_on_the_tiny_profile(tmp_path, monkeypatch):
    """benchmarks.run (issue 6) end to end on the digits profile: every table written, with the rows it promises."""
    from benchmarks import run
    from benchmarks.paper_setup import PROFILES
    from gif_core.selection import METHODS as SELECTORS

    monkeypatch.setenv("GIF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["run.py", "--profile", "tiny", "--out", str(tmp_path)])
    run.main()
    tiny = PROFILES["tiny"]
    for name in ("class_removal", "class_removal_larger", "backdoor", "random_forgetting", "solver_cost"):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert {"command", "commit", "machine"} <= set(data["provenance"]) and data["profile"] == "tiny"
        assert "Produced by" in (tmp_path / f"{name}.md").read_text()
    removal = json.loads((tmp_path / "class_removal.json").read_text())
    default = removal["table1"]["rows"]
    larger = json.loads((tmp_path / "class_removal_larger.json").read_text())["table1"]["rows"]
    assert {r["model"] for r in default} == {tiny.default.label} and {r["model"] for r in larger} == {tiny.larger.label}
    assert {(r["method"], r["ratio"]) for r in default} == {
        *((m, r) for m in ("gif", "fif", "pif") for r in tiny.ratios),
        ("if", 1.0),
        ("sif", 1.0),
    }
    assert {(r["method"], r["ratio"]) for r in larger} == {
        *((m, r) for m in tiny.larger_methods for r in tiny.larger_ratios),
        *((m, 1.0) for m in tiny.larger_full_methods),
    }
    assert {r["seed"] for r in default + larger} == set(tiny.seeds)
    for row in default + larger:
        assert all(math.isfinite(row[k]) for k in ("forget_acc", "retain_acc", "f1", "agreement", "kl", "avg_gap"))
        assert row["step"] > 0 and row["hvps"] > 0
        # the validation curve behind the chosen α is kept, and α is its best point
        assert max(row["step_search"], key=lambda point: point[1])[0] == row["step"]
    # PIF and FIF on every parameter ARE IF: same Δ, same solver, so the same numbers
    for seed in tiny.seeds:
        at_full = {r["method"]: r for r in default if r["ratio"] == 1.0 and r["seed"] == seed}
        assert at_full["pif"]["forget_acc"] == at_full["if"]["forget_acc"]
        assert at_full["pif"]["agreement"] == at_full["if"]["agreement"]
    assert {r["selector"] for r in removal["table2"]["rows"]} == set(SELECTORS)
    iterated = {r["k"]: r for r in removal["table7"]["summary"]}
    assert set(iterated) == set(tiny.iterations)
    assert iterated[2]["hvps mean"] > iterated[1]["hvps mean"]  # every step's products are counted
    backdoor = json.loads((tmp_path / "backdoor.json").read_text())
    assert {r["method"] for r in backdoor["rows"]} == {"gif", "fif", "pif", "if", "sif"}
    assert all(0 <= r["attack_success_rate"] <= 100 for r in backdoor["rows"])
    assert {r["variant"] for r in backdoor["rows"] if r["method"] == "gif"} == {
        "default", "damping 1e-2", "damping 1e-1", "k = 2", "k = 3"
    }  # fmt: skip
    curve_steps = {(p["seed"], p["method"]): [] for p in backdoor["curves"]}
    for point in backdoor["curves"]:
        curve_steps[point["seed"], point["method"]].append(point["step"])
    assert set(curve_steps) == {(s, m) for s in tiny.seeds for m in ("gif", "fif", "pif", "if")}
    default_gif = [r for r in backdoor["rows"] if r["variant"] == "default" and r["method"] == "gif"]
    for row in default_gif:  # the curve is the search's own: the same α values
        assert sorted(curve_steps[row["seed"], "gif"]) == [a for a, _ in row["step_search"]]
    assert (tmp_path / "backdoor_curve.png").stat().st_size > 1000
    forgetting = json.loads((tmp_path / "random_forgetting.json").read_text())
    assert all(0 <= r["MIA"] <= 100 and r["UA"] == 100 - r["forget_acc"] for r in forgetting["rows"])
    solver = json.loads((tmp_path / "solver_cost.json").read_text())
    assert [r["model"] for r in solver["races"]] == [tiny.default.label, tiny.larger.label]
    assert all({row["solver"] for row in r["rows"]} == {"cgls", "richardson"} for r in solver["races"])
    assert all(c["ratio mean"] > 0 for c in solver["cost"])
    assert (tmp_path / "class_removal.png").stat().st_size > 1000
    assert (tmp_path / "class_removal_larger.png").stat().st_size > 1000
    assert (tmp_path / "solver_residuals.png").stat().st_size > 1000


def test_defaults_benchmark_stages_run_on_the_tiny_profile(tmp_path, monkeypatch):
    """The defaults sweep, its joint stage and the final per-class table, on the 8×8 digits (so they cannot rot);
    the rule picks a setting whose validation objective is the best among the affordable ones."""
    from benchmarks import defaults

    monkeypatch.setenv("GIF_CACHE_DIR", str(tmp_path / "cache"))
    for stage in ("sweep", "joint", "final"):
        monkeypatch.setattr(sys, "argv", ["defaults.py", "--profile", "tiny", "--stage", stage, "--out", str(tmp_path)])
        defaults.main()
    sweep = json.loads((tmp_path / "defaults_sweep_tiny.json").read_text())
    profile = defaults.SWEEP_PROFILES["tiny"]
    assert {(r["seed"], r["class"]) for r in sweep["rows"]} == {(s, c) for s in profile.seeds for c in profile.classes}
    assert set(sweep["chosen"]) == set(profile.factors)
    joint = json.loads((tmp_path / "defaults_joint_tiny.json").read_text())
    affordable = [s for s in joint["summary"] if s["hvps"] <= defaults.COST_GOAL_HVPS]
    label = defaults._label(joint["chosen"], [*profile.joint, *profile.joint_then])
    (chosen,) = [s for s in joint["summary"] if s["value"] == label]
    assert chosen["val_objective"] >= max(s["val_objective"] for s in affordable) - defaults.TIE
    final = json.loads((tmp_path / "defaults_final_tiny.json").read_text())
    assert {r["method"] for r in final["table"]} == {"gif", "fif", "pif", "if"}
    assert all(math.isfinite(r["avg_gap"]) for r in final["table"])
