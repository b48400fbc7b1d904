"""The paper benchmarks of issue 6, every table in one command.

    python -m benchmarks.run [--profile full|quick|tiny] [--quick] [--only NAME ...] [--out DIR]

``--quick`` (= ``--profile quick``) runs every table on one seed and few settings (a few minutes on 2 CPU cores);
``tiny`` is for the test that keeps these scripts from rotting. Tables (see each module's docstring):
``removal`` (1 class removal, 2 selection ablation, 7 iterated GIF, on the default model), ``larger`` (1 on the
larger model), ``backdoor`` (3), ``forgetting`` (4),
``solver`` (5 Krylov vs Richardson, 6 cost). Each writes NAME.md / NAME.json (+ PNG) into benchmarks/results/ with
the command, the git commit and the machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks import backdoor_recovery, class_removal, random_forgetting, solver_cost
from benchmarks.common import RESULTS, markdown_table, write_results
from benchmarks.paper_setup import PROFILES, Profile

TABLES = ("removal", "larger", "backdoor", "forgetting", "solver")


def _profile_line(profile: Profile) -> str:
    d, g = profile.default, profile.larger
    return (
        f"Profile `{profile.name}`: seeds {list(profile.seeds)}; {d.label} ({d.arch}, Hessian sample {d.hessian_samples}, "
        f"≤ {d.maxiter} solver iterations), {g.label} ({g.arch}, {g.recipe.epochs} epochs, Hessian sample "
        f"{g.hessian_samples}, ≤ {g.maxiter} iterations); step α chosen on validation by the open-ended search of "
        "gif_core.steps (doubling from 1, cap 1e4, then refined). "
        "Cells are mean ± sd over the seeds; accuracies in %."
    )


TABLE1_COLUMNS = [
    "model",
    "class",
    "method",
    "ratio",
    "forget_acc",
    "retain_acc",
    "f1",
    "agreement",
    "kl",
    "avg_gap",
    "step",
    "seconds",
]


def _table1_markdown(profile: Profile, table1: dict) -> str:
    """Table 1's glance at the headline ratio (selective methods) and 100% (IF, SIF), the retrained models, and
    every ratio."""
    ref_cols = ["model", "class", "forget_acc", "retain_acc", "test_acc", "f1", "retrain_seconds"]
    glance = [
        r
        for r in table1["summary"]
        if (r["ratio"] == profile.headline_ratio and r["method"] in ("gif", "fif", "pif"))
        or (r["ratio"] == 1.0 and r["method"] in ("if", "sif"))
    ]
    return f"""## Table 1 at a glance: {profile.headline_ratio:.0%} of parameters (GIF, FIF, PIF) and 100% (IF, SIF)
{markdown_table(glance, TABLE1_COLUMNS)}

Retrained models (same recipe and seed, class removed):
{markdown_table(table1["retrained"], ref_cols)}

## Table 1, every ratio
{markdown_table(table1["summary"], TABLE1_COLUMNS)}
"""


def _removal_markdown(profile: Profile, data: dict) -> str:
    t2, t7 = data["table2"], data["table7"]
    return f"""# Class removal against retraining (issue 6, tables 1, 2 and 7)

{_profile_line(profile)}

Goal on the default model: forget ≤ 2% and retain within 1 point of retrained at {profile.headline_ratio:.0%}, GIF
ahead of FIF, PIF and IF. The larger model's table 1 is in `class_removal_larger.md`.

{_table1_markdown(profile, data["table1"])}
Plot: `class_removal.png` (first class, default model).

## Table 2: selection ablation (GIF, default model, class {profile.classes[0]})
{markdown_table(t2["summary"], ["selector", "ratio", "forget_acc", "retain_acc", "f1", "agreement", "avg_gap", "step", "seeds"])}

Plot: `selection_ablation.png`.

## Table 7: iterated GIF ({profile.headline_ratio:.0%}, default model, class {profile.classes[0]}; k re-linearised steps, α chosen on validation at each)
{markdown_table(t7["summary"], ["k", "forget_acc", "retain_acc", "f1", "agreement", "kl", "avg_gap", "hvps", "seconds", "seeds"])}
"""


def _backdoor_markdown(profile: Profile, data: dict) -> str:
    cols = [
        "variant",
        "method",
        "ratio",
        "clean_acc",
        "relabelled_acc",
        "attack_success_rate",
        "agreement",
        "avg_gap",
        "step",
        "seconds",
    ]
    return f"""# Backdoor recovery by label change (issue 6, table 3)

{_profile_line(profile)} Trigger: {profile.default.backdoor_trigger}×{profile.default.backdoor_trigger} checkerboard,
bottom-right, on a seeded 10% of the training images, relabelled to class 0; the edit relabels them back.

{markdown_table(data["summary"], cols)}

References (same seeds):
{markdown_table(data["references"], ["model", "clean_acc", "relabelled_acc", "attack_success_rate", "forget_acc"])}

Goal: attack success ≤ 5 points above the retrained model's, clean accuracy within 2 points of it (issue 12).
Plot: `backdoor_curve.png` — clean accuracy against attack success at every α each validation search tried.
"""


def _forgetting_markdown(profile: Profile, data: dict) -> str:
    cols = ["method", "ratio", "UA", "RA", "TA", "MIA", "avg_gap", "agreement", "step", "seconds"]
    return f"""# Random forgetting of 10% of the training set (issue 6, table 4)

{_profile_line(profile)} UA = 100 − accuracy on the forgotten samples, RA on the retained training samples, TA on
test, MIA = membership-inference efficacy on the forgotten samples; Avg. Gap = mean |edited − retrained| over the four.

{markdown_table(data["summary"], cols)}

References (same seeds):
{markdown_table(data["references"], ["model", "UA", "RA", "TA", "MIA"])}

Published anchors (CIFAR-10 / ResNet-18, not this data): SalUn Avg. Gap 1.15 with 50% of weights updated; the
influence-unlearning baseline there 4.06.
"""


def _solver_markdown(profile: Profile, data: dict) -> str:
    ladder = [row for race in data["races"] for row in race["ladder"]]
    rows = [row for race in data["races"] for row in race["rows"]]
    per_hvp = [
        {
            "model": race["model"],
            "dtype": race["dtype"],
            **{f"{k} s/HVP": v for k, v in race["seconds_per_hvp"].items()},
        }
        for race in data["races"]
    ]
    return f"""# GIF solver and cost (issue 6, tables 5 and 6)

{_profile_line(profile)}

## Table 5: Krylov (CGLS) vs the Richardson baseline, GIF at {profile.headline_ratio:.0%}, class {profile.classes[0]}
Hessian-vector products to first reach each relative normal-equation residual (goal: ≥ 10× fewer):
{markdown_table(ladder, ["model", "residual", "cgls hvps", "richardson hvps", "richardson / cgls"])}

Where each solve stopped:
{markdown_table(rows, ["model", "solver", "iterations", "hvps", "rel_residual", "converged", "seconds"])}

Seconds per product (same run):
{markdown_table(per_hvp, list(per_hvp[0]))}

Plot: `solver_residuals.png`.

## Table 6: GIF end to end / retraining (goal ≤ 5% for the larger model)
{markdown_table(data["cost"], ["model", "hessian_samples", "maxiter", "GIF s", "of which solve s", "of which step search s", "retrain s", "GIF / retrain (%)"])}
"""


def _larger_markdown(profile: Profile, data: dict) -> str:
    return f"""# Class removal against retraining on the larger model (issue 6, table 1)

{_profile_line(profile)}

{_table1_markdown(profile, data["table1"])}
Plot: `class_removal_larger.png`.
"""


RUNNERS = {
    "removal": (class_removal.run, _removal_markdown, "class_removal"),
    "larger": (class_removal.run_larger, _larger_markdown, "class_removal_larger"),
    "backdoor": (backdoor_recovery.run, _backdoor_markdown, "backdoor"),
    "forgetting": (random_forgetting.run, _forgetting_markdown, "random_forgetting"),
    "solver": (solver_cost.run, _solver_markdown, "solver_cost"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--quick", action="store_true", help="same as --profile quick")
    parser.add_argument("--only", nargs="+", choices=TABLES, default=list(TABLES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    profile = PROFILES["quick" if args.quick else args.profile]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)

    for name in args.only:
        runner, markdown, filename = RUNNERS[name]
        table_start = time.perf_counter()
        data = runner(profile, args.out, log)
        seconds = time.perf_counter() - table_start
        body = markdown(profile, data) + f"\nWall-clock for this table: {seconds:.0f} s.\n"
        write_results(filename, body, {"profile": profile.name, "seconds": seconds, **data}, args.out)
        log(f"{name}: written to {args.out / filename}.md")


if __name__ == "__main__":
    main()
