"""Defaults by measurement (issue 12): the edit settings the library, the CLI and the dashboard use, chosen by a
sweep over every class of the default CNN and several seeds, with α chosen on validation only.

    python -m benchmarks.defaults [--profile full|quick|tiny] [--stage sweep|final|before] [--out DIR]

Problems: class removal of each class of the profile, on the profile's seeded models (the paper benchmark's
models: same recipe as the bundled CNN, seed s = initial weights and shuffling), each against its retrained
ground truth (same recipe and seed, class removed).

* ``sweep``: one factor at a time around a base setting — solver iterations, stopping tolerance, Hessian-sample
  size, damping of H, GIF's ridge ρ, the ratio and the selector — GIF on every problem (IF, FIF and PIF too where
  the setting is theirs as well: iterations, Hessian sample, damping). **The rule, fixed before the run:** for each
  factor, the value with the highest mean VALIDATION objective of GIF (the step search's own objective, the F1 of
  forgetting the class's validation images vs accuracy on the other validation images, at the α the search chose)
  over all problems, among values whose mean GIF cost is ≤ 30 Hessian-vector products (the issue's cost goal);
  values within 0.05 points of the best count as tied and the cheaper one (fewer products, then the base) wins.
  Test-split numbers are reported beside it, never used.
* ``joint``: the sweep showed that the regularisers — fewer iterations, damping of H, GIF's ridge — each help and
  stand in for one another, so stage 2 tries every combination of the profile's ``joint`` values (GIF, the other
  settings at the base), then the winner with each ``joint_then`` value (a larger Hessian sample), by the same
  rule; ties prefer fewer products, then the smaller Hessian sample. Its winner is what ``EditConfig()`` holds
  (``tests/test_defaults.py`` checks that they agree).
* ``final``: the library's defaults (``EditConfig()``, with ``step="auto"``), GIF, FIF, PIF and IF on every problem
  and on the bundled model: the per-class table behind the issue's goals.
* ``before``: the same problems under the settings of the paper benchmark before this issue (Hessian sample 200,
  30 iterations, step auto), meant to be run with the library of the commit before the fixes (the record format of
  both versions is read): a folder holding ``gif_core`` → that checkout's ``gif_core`` and ``benchmarks`` → this
  one, run from there. The results name the library's own commit.

Writes ``defaults_STAGE.md`` / ``.json`` into benchmarks/results/. Rows are kept in the cache directory as they are
made, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gif_core
from benchmarks.common import RESULTS, edit_config, markdown_table, provenance, write_results
from benchmarks.paper_setup import CNN, PROFILES, ModelSetting, retrained_for, trained
from gif_core.cache_files import default_cache_dir
from gif_core.checkpoints import checkpoint_id, load_checkpoint
from gif_core.data import load_data
from gif_core.experiment import EditConfig, run_edit
from gif_core.requests import ClassRemoval
from gif_core.retrain import retrain
from gif_core.zoo import default_model_path

COST_GOAL_HVPS = 30
TIE = 0.05
BEFORE = {"hessian_samples": 200, "maxiter": 30}  # the paper benchmark's CNN settings before issue 12
SHARED_FACTORS = ("maxiter", "hessian_samples", "damping")  # settings IF, FIF and PIF use too


@dataclass(frozen=True)
class SweepProfile:
    """Which problems, and which values of each factor around the base."""

    name: str
    setting: ModelSetting
    seeds: tuple[int, ...]
    classes: tuple[int, ...]
    base: dict
    factors: dict[str, tuple]
    joint: dict[str, tuple]  # stage 2: the regularisers that interact, every combination
    joint_then: dict[str, tuple]  # then each of these values with the stage-2 winner
    bundled: bool  # also run the final table on the bundled checkpoint


FULL_BASE = {
    "selector": "gradient",
    "ratio": 0.05,
    "hessian_samples": 200,
    "damping": 0.0,
    "gif_ridge": 0.0,
    "maxiter": 10,
    "rtol": 1e-4,
}
SWEEP_PROFILES = {
    "full": SweepProfile(
        "full",
        CNN,
        seeds=(0, 1, 2),
        classes=tuple(range(10)),
        base=FULL_BASE,
        factors={
            "maxiter": (3, 5, 10, 15, 20, 30, 50),
            "rtol": (1e-4, 1e-2, 1e-1),
            "hessian_samples": (64, 128, 200, 500),
            "damping": (0.0, 1e-3, 1e-2, 1e-1),
            "gif_ridge": (0.0, 1e-6, 1e-4, 1e-2),
            "ratio": (0.02, 0.05, 0.1),
            "selector": ("gradient", "output", "curvature", "param-gradient"),
        },
        joint={"maxiter": (3, 5, 10), "damping": (1e-2, 3e-2, 1e-1, 3e-1), "gif_ridge": (0.0, 1e-2)},
        joint_then={"hessian_samples": (500,)},
        bundled=True,
    ),
    "quick": SweepProfile(
        "quick",
        CNN,
        seeds=(0,),
        classes=(0, 3),
        base={**FULL_BASE, "hessian_samples": 64},
        factors={"maxiter": (5, 10), "damping": (0.0, 1e-2)},
        joint={"maxiter": (5, 10), "damping": (1e-2, 1e-1)},
        joint_then={"hessian_samples": (128,)},
        bundled=False,
    ),
    "tiny": SweepProfile(
        "tiny",
        PROFILES["tiny"].default,
        seeds=(0,),
        classes=(0, 1),
        base={**FULL_BASE, "hessian_samples": 32, "ratio": 0.1, "maxiter": 3},
        factors={"maxiter": (2, 3), "damping": (0.0, 1e-2)},
        joint={"maxiter": (2, 3), "damping": (1e-2, 1e-1)},
        joint_then={"hessian_samples": (48,)},
        bundled=False,
    ),
}
Log = Callable[[str], None]


def variants(profile: SweepProfile) -> list[tuple[str, object, dict]]:
    """(factor, value, settings) for every one-factor change of the base (the base itself once, as factor 'base').

    A tolerance variant is meant to stop on its tolerance, not on the base's iteration count: it gets up to 50."""
    out = [("base", None, dict(profile.base))]
    for factor, values in profile.factors.items():
        for value in values:
            if value == profile.base[factor]:
                continue
            settings = {**profile.base, factor: value}
            if factor == "rtol":
                settings["maxiter"] = 50
            out.append((factor, value, settings))
    return out


def _methods(factor: str) -> tuple[str, ...]:
    return ("gif", "fif", "pif", "if") if factor in ("base", *SHARED_FACTORS) else ("gif",)


def _record_step(record: dict) -> tuple[float, float, bool]:
    """The validation objective at the chosen α and at α = 1, and whether the search hit its cap (the record
    formats before and after issue 12)."""
    search = record.get("step_search")
    if isinstance(search, dict):
        at_one = next((p["objective"] for p in search["curve"] if p["step"] == 1.0), float("nan"))
        return search["objective"], at_one, search["cap_hit"]
    if search:  # the fixed grid before issue 12: a list of points, the largest α its cap
        at_one = next((p["objective"] for p in search if p["step"] == 1.0), float("nan"))
        return max(p["objective"] for p in search), at_one, record["step"] == max(p["step"] for p in search)
    return float("nan"), float("nan"), False


def _edit_rows(model, card, bundle, cls: int, config: EditConfig, truth, extra: dict) -> list[dict]:
    """One run_edit of a class removal against its retrained ``truth``: a row per method."""
    report = run_edit(model, card, bundle, ClassRemoval(cls), config, retrained_model=truth)
    rows = []
    for record in report.to_dict()["results"]:
        objective, objective_at_one, cap_hit = _record_step(record)
        rows.append(
            {
                **extra,
                "method": record["method"],
                "forget_acc": record["forget_acc"],
                "retain_acc": record["retain_acc"],
                "test_acc": record["test_acc"],
                "avg_gap": record["vs_retrain"]["avg_gap"],
                "agreement": record["vs_retrain"]["agreement"],
                "val_objective": objective,
                "val_objective_at_step_1": objective_at_one,
                "step": record["step"],
                "cap_hit": cap_hit,
                "hvps": record["solver"]["hvps"],
                "rel_residual": record["solver"]["rel_residual"],
                "n_selected": record["n_selected"],
                "seconds": record["seconds"],
                "retrained_forget_acc": report.retrained["forget_acc"],
                "retrained_retain_acc": report.retrained["retain_acc"],
            }
        )
    return rows


class RowStore:
    """Rows as they are made, one JSON line each, so that an interrupted run resumes (keyed by problem + config)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, list[dict]] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                self.rows[entry["key"]] = entry["rows"]

    def get_or_make(self, key: str, make: Callable[[], list[dict]]) -> list[dict]:
        if key not in self.rows:
            self.rows[key] = make()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps({"key": key, "rows": self.rows[key]}) + "\n")
        return self.rows[key]


def _problems(profile: SweepProfile, bundled: bool):
    """(model label, seed, class, original model, card, bundle, retrained model) for every problem."""
    for seed in profile.seeds:
        original = trained(profile.setting, seed)
        for cls in profile.classes:
            truth, _ = retrained_for(original, ClassRemoval(cls))
            yield "seed", seed, cls, original.model, original.card, original.bundle, truth
    if bundled:
        path = default_model_path()
        model, card = load_checkpoint(path)
        bundle = load_data(card.dataset, seed=card.split_seed)
        for cls in profile.classes:
            truth = retrain(card, bundle, bundle.train, ClassRemoval(cls), checkpoint_id(path), show_bar=False)
            yield "bundled", 0, cls, model, card, bundle, truth.model


def source_digest() -> str:
    """SHA-256 of the Python source of the gif_core that runs and of this benchmark package: the content a row is
    computed from (a commit that changes neither keeps the rows; one that changes either recomputes them)."""
    digest = hashlib.sha256()
    for folder in (Path(gif_core.__file__).resolve().parent, Path(__file__).resolve().parent):
        for path in sorted(folder.rglob("*.py")):
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _store(profile: SweepProfile, stage: str, code: str) -> RowStore:
    """Rows of this profile and stage computed by this source (a row computed by other code is never reused)."""
    identity = [profile.name, stage, dataclasses.asdict(profile), code]
    tag = hashlib.sha256(json.dumps(identity, default=str).encode())
    return RowStore(default_cache_dir() / "benchmarks" / f"defaults_{stage}_{tag.hexdigest()[:12]}.jsonl")


def run_sweep(profile: SweepProfile, log: Log, code: str) -> list[dict]:
    store, rows = _store(profile, "sweep", code), []
    for label, seed, cls, model, card, bundle, truth in _problems(profile, bundled=False):
        for factor, value, settings in variants(profile):
            config = edit_config(methods=_methods(factor), step="auto", seed=seed, **settings)
            key = json.dumps([label, seed, cls, factor, value, dataclasses.asdict(config)], default=str)
            extra = {"model": label, "seed": seed, "class": cls, "factor": factor, "value": value}
            rows += store.get_or_make(
                key,
                partial(_edit_rows, model, card, bundle, cls, config, truth, extra),
            )
        log(f"sweep: seed {seed} class {cls} done")
    return rows


def run_final(
    profile: SweepProfile, log: Log, code: str, settings: dict | None = None, stage: str = "final"
) -> list[dict]:
    """GIF, FIF, PIF and IF on every problem (and the bundled model) with ``settings`` (None: the library's
    defaults, ``EditConfig()``)."""
    store, rows = _store(profile, stage, code), []
    for label, seed, cls, model, card, bundle, truth in _problems(profile, bundled=profile.bundled):
        changes = {"methods": ("gif", "fif", "pif", "if"), "step": "auto", **(settings or {})}
        config = edit_config(seed=seed, **changes)
        key = json.dumps([label, seed, cls, dataclasses.asdict(config)], default=str)
        extra = {"model": label, "seed": seed, "class": cls}
        rows += store.get_or_make(
            key,
            partial(_edit_rows, model, card, bundle, cls, config, truth, extra),
        )
        log(f"{stage}: {label} seed {seed} class {cls} done")
    return rows


def _mean(values) -> float:
    values = [float(v) for v in values]
    return statistics.fmean(values) if values else float("nan")


def meets_goal(row: dict) -> bool:
    """The issue's per-class goal: forget ≤ 2% and retain within 1 point of the retrained model."""
    return row["forget_acc"] <= 2.0 and row["retain_acc"] >= row["retrained_retain_acc"] - 1.0


def sweep_summary(rows: list[dict]) -> list[dict]:
    """Per factor, value and method: means over all problems (validation objective first)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["factor"], str(row["value"]), row["method"]), []).append(row)
    summary = []
    for (factor, value, method), members in groups.items():
        summary.append(
            {
                "factor": factor,
                "value": value,
                "method": method,
                "problems": len(members),
                "val_objective": _mean(r["val_objective"] for r in members),
                "hvps": _mean(r["hvps"] for r in members),
                "forget_acc": _mean(r["forget_acc"] for r in members),
                "retain_acc": _mean(r["retain_acc"] for r in members),
                "avg_gap": _mean(r["avg_gap"] for r in members),
                "goal_met": sum(meets_goal(r) for r in members),
                "cap_hit": sum(bool(r["cap_hit"]) for r in members),
                "seconds": _mean(r["seconds"] for r in members),
            }
        )
    return summary


def _pick(candidates: list[tuple[dict, dict]]) -> dict:
    """The rule: among (settings, summary) pairs costing ≤ COST_GOAL_HVPS products, the highest mean validation
    objective; within TIE points of it, fewer products, then a smaller Hessian sample, then the earlier candidate."""
    affordable = [(i, c) for i, c in enumerate(candidates) if c[1]["hvps"] <= COST_GOAL_HVPS]
    top = max(summary["val_objective"] for _, (_, summary) in affordable)
    tied = [(i, c) for i, c in affordable if c[1]["val_objective"] >= top - TIE]
    _, (settings, _) = min(tied, key=lambda ic: (ic[1][1]["hvps"], ic[1][0].get("hessian_samples", 0), ic[0]))
    return settings


def choose(profile: SweepProfile, summary: list[dict]) -> dict:
    """Stage 1: the rule applied to GIF's rows of every factor, one factor at a time (the base first on ties)."""
    gif = {(s["factor"], s["value"]): s for s in summary if s["method"] == "gif"}
    base = gif[("base", "None")]
    chosen = {}
    for factor, values in profile.factors.items():
        ordered = [profile.base[factor], *(v for v in values if v != profile.base[factor])]
        candidates = [({factor: v}, base if v == profile.base[factor] else gif[(factor, str(v))]) for v in ordered]
        chosen.update(_pick(candidates))
    return chosen


def _label(settings: dict, keys) -> str:
    return ", ".join(f"{k}={settings[k]}" for k in keys)


def run_joint(profile: SweepProfile, log: Log, code: str) -> tuple[list[dict], list[dict], dict]:
    """Stage 2 (module docstring): rows, their summary, and the chosen settings."""
    store, rows = _store(profile, "joint", code), []
    keys = list(profile.joint)
    label_of = partial(_label, keys=[*keys, *profile.joint_then])
    grid = [
        {**profile.base, **dict(zip(keys, combo, strict=True))} for combo in itertools.product(*profile.joint.values())
    ]

    def rows_for(settings_list: list[dict]) -> list[dict]:
        made = []
        for label, seed, cls, model, card, bundle, truth in _problems(profile, bundled=False):
            for settings in settings_list:
                config = edit_config(methods=("gif",), step="auto", seed=seed, **settings)
                key = json.dumps([label, seed, cls, dataclasses.asdict(config)], default=str)
                extra = {"model": label, "seed": seed, "class": cls, "factor": "joint",
                         "value": label_of(settings)}  # fmt: skip
                made += store.get_or_make(key, partial(_edit_rows, model, card, bundle, cls, config, truth, extra))
            log(f"joint: seed {seed} class {cls} done")
        return made

    rows += rows_for(grid)
    by_label = {s["value"]: s for s in sweep_summary(rows)}
    winner = _pick([(g, by_label[label_of(g)]) for g in grid])
    then = [{**winner, factor: v} for factor, values in profile.joint_then.items() for v in values]
    rows += rows_for(then)
    summary = sweep_summary(rows)
    by_label = {s["value"]: s for s in summary}
    chosen = _pick([(g, by_label[label_of(g)]) for g in [winner, *then]])
    return rows, summary, chosen


def per_class_table(rows: list[dict]) -> list[dict]:
    """Per model kind, class and method: means over the seeds, and how many seeds meet the goal."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["class"], row["method"]), []).append(row)
    table = []
    for (model, cls, method), members in sorted(groups.items()):
        mean = {k: _mean(r[k] for r in members) for k in ("forget_acc", "retain_acc", "retrained_retain_acc")}
        table.append(
            {
                "model": model,
                "class": cls,
                "method": method,
                "seeds": len(members),
                **mean,
                "retain − retrained": mean["retain_acc"] - mean["retrained_retain_acc"],
                "avg_gap": _mean(r["avg_gap"] for r in members),
                "hvps": _mean(r["hvps"] for r in members),
                "step": _mean(r["step"] for r in members),
                "goal met (class mean)": meets_goal({**mean}),
            }
        )
    return table


def goal_lines(table: list[dict]) -> list[dict]:
    """Per model kind and method: classes meeting the goal (seed means) and the mean Avg. Gap over classes."""
    out = []
    for model in dict.fromkeys(r["model"] for r in table):
        for method in dict.fromkeys(r["method"] for r in table):
            members = [r for r in table if r["model"] == model and r["method"] == method]
            out.append(
                {
                    "model": model,
                    "method": method,
                    "classes meeting the goal": f"{sum(r['goal met (class mean)'] for r in members)} of {len(members)}",
                    "mean avg_gap": _mean(r["avg_gap"] for r in members),
                    "worst avg_gap": max(r["avg_gap"] for r in members),
                    "mean hvps": _mean(r["hvps"] for r in members),
                }
            )
    return out


TABLE_COLUMNS = ["model", "class", "method", "seeds", "forget_acc", "retain_acc", "retrained_retain_acc",
                 "retain − retrained", "avg_gap", "hvps", "step", "goal met (class mean)"]  # fmt: skip


def library_commit() -> str:
    """The path and git commit of the gif_core that runs (the ``before`` stage runs an older one)."""
    folder = Path(gif_core.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=folder
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"{folder} at {commit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(SWEEP_PROFILES), default="full")
    parser.add_argument("--stage", choices=("sweep", "joint", "final", "before"), default="sweep")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    profile = SWEEP_PROFILES[args.profile]
    start, meta = time.perf_counter(), {**provenance(), "gif_core": library_commit()}
    code = source_digest()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)

    problems = f"classes {list(profile.classes)} × seeds {list(profile.seeds)} of the {profile.setting.label}"
    if args.stage == "sweep":
        rows = run_sweep(profile, log, code)
        summary = sweep_summary(rows)
        chosen = choose(profile, summary)
        cols = ["factor", "value", "method", "problems", "val_objective", "hvps", "forget_acc", "retain_acc",
                "avg_gap", "goal_met", "cap_hit", "seconds"]  # fmt: skip
        body = f"""# Defaults sweep (issue 12)

Problems: class removal, {problems}; base setting {profile.base}; one factor changed at a time; α chosen on
validation. Rule (fixed before the run, see `benchmarks/defaults.py`): per factor, the highest mean validation
objective of GIF among values costing ≤ {COST_GOAL_HVPS} Hessian-vector products; within {TIE} points, the cheaper.
Test-split columns (forget, retain, Avg. Gap to the retrained model, problems meeting forget ≤ 2% and retain within
1 point) are reported, not used.

**Chosen:** {chosen}

{markdown_table(sorted(summary, key=lambda s: (s["factor"], s["method"], s["value"])), cols)}
"""
        data = {"profile": profile.name, "base": profile.base, "chosen": chosen, "summary": summary, "rows": rows}
    elif args.stage == "joint":
        rows, summary, chosen = run_joint(profile, log, code)
        cols = ["value", "problems", "val_objective", "hvps", "forget_acc", "retain_acc", "avg_gap", "goal_met",
                "cap_hit", "seconds"]  # fmt: skip
        body = f"""# Defaults, stage 2: the regularisers together (issue 12)

Problems: class removal, {problems}; GIF; every combination of {profile.joint} (other settings at the base
{profile.base}), then the winner with {profile.joint_then}. Same rule as stage 1 (`defaults_sweep.md`): the highest
mean validation objective among settings costing ≤ {COST_GOAL_HVPS} Hessian-vector products; within {TIE} points,
fewer products, then the smaller Hessian sample. Test-split columns are reported, not used.

**Chosen (the library's defaults, `EditConfig()`):** {chosen}

{markdown_table(sorted(summary, key=lambda s: -s["val_objective"]), cols)}
"""
        data = {"profile": profile.name, "base": profile.base, "chosen": chosen, "summary": summary, "rows": rows}
    else:
        settings = {"step": "auto", **BEFORE} if args.stage == "before" else None
        rows = run_final(profile, log, code, settings, args.stage)
        table = per_class_table(rows)
        lines = goal_lines(table)
        described = (
            "settings of the paper benchmark before issue 12 " + str(BEFORE)
            if settings
            else ("the library's defaults `EditConfig()` = " + str(dataclasses.asdict(EditConfig())))
        )
        body = f"""# Class removal on every class, {args.stage} (issue 12)

Problems: {problems}{" and the bundled checkpoint" if profile.bundled else ""}; {described}; α chosen on validation.
Goal: forget ≤ 2% and retain within 1 point of the retrained model on ≥ 9 of 10 classes (seed means), GIF's Avg.
Gap ≤ FIF's, PIF's and IF's.

{markdown_table(lines, list(lines[0]))}

## Per class (means over the seeds)
{markdown_table(table, TABLE_COLUMNS)}
"""
        data = {"profile": profile.name, "settings": settings, "table": table, "goal": lines, "rows": rows}
    seconds = time.perf_counter() - start
    write_results(f"defaults_{args.stage}" + ("" if profile.name == "full" else f"_{profile.name}"),
                  body + f"\nWall-clock: {seconds:.0f} s.\n", {"seconds": seconds, **data}, args.out, meta)  # fmt: skip
    log(f"written to {args.out}")


if __name__ == "__main__":
    main()
