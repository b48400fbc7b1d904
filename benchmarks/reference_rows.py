"""Issue 16's table: every editor of the GIF authors' newer comparison against retraining, on class removals.

    python -m benchmarks.reference_rows [--quick] [--seeds 0,1,2] [--out DIR]

Rows, each through the same step search (α on validation), metrics and comparison with the retrained model
(same recipe and seed, the class removed): GIF, FIF and PIF on 5% of the parameters (FIF is Schioppa et al.'s
freezing: tests/test_influence.py checks the equivalence); IF by MINRES (the library's solver), by LiSSA (fixed scale
10) and by P-LiSSA; SIF, TracIn, DataInf, HyperINF and EK-FAC on all parameters; GIF with EK-FAC-based selection. Classes 0–9 of the bundled MNIST CNN, seeds
0–2 (seed s trains the original and its retrained ground truth, and seeds the Hessian sample); every setting of the
paper benchmarks' default CNN (Hessian sample 200, ≤ 3 solver iterations, float32 products). ``--quick``: the
tiny digits MLP, class 0, one seed.

A diverged edit (e.g. LiSSA whose scale is below half of λ_max(H)) is counted, never averaged. "Avg. Gap" is the mean
absolute gap to the retrained model over forget, retain and test accuracy (gif_core.evaluate.avg_gap); among the rows
that never diverged, the one with the smallest mean Avg. Gap leads.

Writes reference_rows.md / reference_rows.json into benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

from benchmarks.common import RESULTS, markdown_table, provenance, write_results
from benchmarks.paper_setup import PROFILES, ModelSetting, flatten_outcome, retrained_for, summarise, trained
from gif_core.experiment import run_edit
from gif_core.influence import METHOD_SUMMARIES
from gif_core.requests import ClassRemoval

ROWS = (  # (row name, methods run together, the settings that differ from the profile's)
    ("selective at 5%", ("gif", "fif", "pif"), {"ratio": 0.05}),
    ("full", ("if", "sif", "tracin", "datainf", "hyperinf", "ekfac"), {}),
    ("lissa", ("if",), {"symmetric_solver": "lissa", "maxiter": 100}),
    ("plissa", ("if",), {"symmetric_solver": "plissa", "maxiter": 100}),
    ("ekfac selector", ("gif",), {"ratio": 0.05, "selector": "ekfac"}),
)
"""The LiSSA rows get 100 iterations: a Neumann series needs many more than a Krylov solve, and 3 steps of it are a
rescaled TracIn step (and too few to show a divergence). The last row is GIF with the reference's EK-FAC-based
selection (:mod:`gif_core.selection`'s ``ekfac`` selector) in place of the gradient selector, at the same ratio."""
METRICS = ("forget_acc", "retain_acc", "test_acc", "f1", "avg_gap", "agreement", "hvps", "seconds", "step")


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    setting: ModelSetting
    classes: tuple[int, ...]
    seeds: tuple[int, ...]
    selective_ratio: float


FULL = Plan("full", PROFILES["full"].default, tuple(range(10)), (0, 1, 2), 0.05)
QUICK = Plan("quick", PROFILES["tiny"].default, (0,), (0,), 0.1)  # 5% of the digits MLP holds no whole neuron


def _row_name(method: str, group: str) -> str:
    if group == "ekfac selector":
        return f"{method} (ekfac selector)"
    return f"if ({group})" if group in ("lissa", "plissa") else method


def run(plan: Plan, log=print, after_seed=None) -> tuple[list[dict], list[dict]]:
    """Every (seed, class, row): the flattened outcome (or its divergence) and the retrained models' metrics.
    ``after_seed(rows, references, seeds_done)`` is called when each seed is finished (one seed takes ~30 min on
    2 cores: the tables so far are written, and an interrupted run keeps its finished seeds)."""
    rows, references = [], []
    for index, seed in enumerate(plan.seeds):
        original = trained(plan.setting, seed)
        for cls in plan.classes:
            request = ClassRemoval(cls)
            truth, retrain_seconds = retrained_for(original, request)
            base = {"class": cls, "seed": seed}
            for group, methods, changes in ROWS:
                if "ratio" in changes:
                    changes = {**changes, "ratio": plan.selective_ratio}
                config = plan.setting.edit_config(seed, methods=methods, **changes)
                report = run_edit(
                    original.model, original.card, original.bundle, request, config, retrained_model=truth
                )
                for record in report.to_dict()["results"]:
                    row = {**base, "row": _row_name(record["method"], group)}
                    if record["diverged"]:
                        rows.append({**row, "diverged": True, "reason": record["reason"]})
                    else:
                        rows.append({**row, "diverged": False, **flatten_outcome(record)})
                assert report.retrained is not None  # run_edit was given the retrained model
                if group == ROWS[0][0]:
                    references.append({**base, **report.retrained, "retrain_seconds": retrain_seconds})
            log(f"seed {seed} class {cls}: done")
        if after_seed is not None:
            after_seed(rows, references, plan.seeds[: index + 1])
    return rows, references


def summary_rows(rows: list[dict], plan: Plan) -> list[dict]:
    """Per row name: mean ± sd of the metrics over the finished edits, and how many diverged."""
    finished = [r for r in rows if not r["diverged"]]
    summary = summarise(finished, ("row",), METRICS)
    names = list(dict.fromkeys(r["row"] for r in rows))
    by_name = {s["row"]: s for s in summary}
    out = []
    for name in names:
        method = name.split(" ")[0]
        entry = by_name.get(name, {"row": name, "seeds": 0})
        entry["diverged"] = sum(1 for r in rows if r["row"] == name and r["diverged"])
        entry["parameters"] = f"{plan.selective_ratio:.0%}" if method in ("gif", "fif", "pif") else "100%"
        entry["what"] = METHOD_SUMMARIES[method] + (
            "; T chosen by EK-FAC-based selection" if "ekfac selector" in name else ""
        )
        out.append(entry)
    return out


def leader(summary: list[dict]) -> dict | None:
    """The row with the smallest mean Avg. Gap among rows that never diverged (None if every row did)."""
    candidates = [s for s in summary if s["diverged"] == 0 and "avg_gap mean" in s]
    return min(candidates, key=lambda s: s["avg_gap mean"]) if candidates else None


def paired_with_leader(rows: list[dict], lead: str) -> list[dict]:
    """Per row: the mean (and its standard error) of its Avg. Gap minus the leader's on the same (class, seed), and
    on how many of those the row was better, tied or worse — whether a lead is more than noise between runs."""
    gaps = {(r["row"], r["class"], r["seed"]): r["avg_gap"] for r in rows if not r["diverged"]}
    out = []
    for name in dict.fromkeys(r["row"] for r in rows):
        if name == lead:
            continue
        diffs = [gap - gaps[(lead, c, s)] for (n, c, s), gap in gaps.items() if n == name and (lead, c, s) in gaps]
        if not diffs:
            continue
        se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
        out.append(
            {
                "row": name,
                "pairs": len(diffs),
                "gap minus leader's": f"{statistics.fmean(diffs):+.3f} ± {se:.3f}",
                "better": sum(d < 0 for d in diffs),
                "tied": sum(d == 0 for d in diffs),
                "worse": sum(d > 0 for d in diffs),
            }
        )
    return out


def report_body(
    plan: Plan, summary: list[dict], references: list[dict], lead: dict | None, rows: list[dict] | None = None
) -> str:
    retrained = {
        k: statistics.fmean(r[k] for r in references)
        for k in ("forget_acc", "retain_acc", "test_acc", "retrain_seconds")
    }
    s = plan.setting
    columns = ["row", "parameters", "seeds", "diverged", "forget_acc", "retain_acc", "f1", "avg_gap", "agreement"]
    columns += ["hvps", "seconds", "step", "what"]
    return "\n".join(
        [
            "# Every editor of the newer reference comparison against retraining (issue 16)",
            "",
            f"Plan `{plan.name}`: {s.label} ({s.arch}, Hessian sample {s.hessian_samples}, ≤ {s.maxiter} solver "
            f"iterations), classes {list(plan.classes)}, seeds {list(plan.seeds)}; class removal, α chosen on "
            "validation. Cells are mean ± sd over every (class, seed); 'seeds' counts them; 'diverged' edits are "
            "left out of the means. hvps: Hessian-vector products (DataInf, HyperINF and EK-FAC use none: their cost is "
            "passes over the Hessian sample for per-sample gradients or Kronecker factors, in 'seconds').",
            "",
            markdown_table(summary, columns),
            "",
            f"Retrained (mean over the same runs): forget {retrained['forget_acc']:.2f}%, retain "
            f"{retrained['retain_acc']:.2f}%, test {retrained['test_acc']:.2f}%, {retrained['retrain_seconds']:.1f} s.",
            "",
            f"Leading row by mean Avg. Gap (among rows that never diverged): **{lead['row']}** ({lead['avg_gap']})."
            if lead
            else "Every row diverged at least once: no leader.",
            *(
                [
                    "",
                    f"Paired with the leader on the same (class, seed): each row's Avg. Gap minus {lead['row']}'s, mean "
                    "± standard error, and the pairs where the row was better, tied or worse.",
                    "",
                    markdown_table(
                        paired_with_leader(rows, lead["row"]),
                        ["row", "pairs", "gap minus leader's", "better", "tied", "worse"],
                    ),
                ]
                if lead and rows
                else []
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny digits MLP, class 0, one seed")
    parser.add_argument("--seeds", help="comma-separated seeds instead of the plan's (e.g. 0 for one seed)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--render", type=Path, help="rewrite the tables from this reference_rows.json's edits instead of running"
    )
    args = parser.parse_args()
    started = provenance()  # every partial write is stamped with the code the run started from
    plan = QUICK if args.quick else FULL
    if args.seeds:
        plan = dataclasses.replace(plan, seeds=tuple(int(s) for s in args.seeds.split(",")))

    def write(rows: list[dict], references: list[dict], seeds_done: tuple[int, ...], meta: dict | None = None) -> None:
        done = dataclasses.replace(plan, seeds=seeds_done)
        summary = summary_rows(rows, done)
        lead = leader(summary)
        body = report_body(done, summary, references, lead, rows)
        leading = lead["row"] if lead else None
        data = {"plan": plan.name, "rows": rows, "summary": summary, "retrained": references, "leader": leading}
        write_results("reference_rows", body, data, args.out, meta or started)
        print(body)

    if args.render:
        stored = json.loads(args.render.read_text())
        seeds = tuple(sorted({r["seed"] for r in stored["rows"]}))
        rendered = {**stored["provenance"], "tables rendered by": provenance()["command"]}
        write(stored["rows"], stored["retrained"], seeds, rendered)
        return
    run(plan, after_seed=write)


if __name__ == "__main__":
    main()
