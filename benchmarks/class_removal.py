"""Issue 6, tables 1, 2 and 7: class removal against retraining, the selection ablation, and iterated GIF.

Table 1: for each class of the profile and each seed, GIF, FIF and PIF at every ratio and IF, SIF at 100% on the
default CNN (:func:`run`); the same on the larger model (VGG-11) for the profile's first class, at the larger
model's ratios and methods (:func:`run_larger`, its own result files: it is the slow part). Table 2: GIF with every
selector at every ratio (first class only). Table 7: GIF at 5% with k = 1, 2, 3, 5 re-linearised steps.
Every step scale is chosen on validation (``auto``); the retrained model has the original's recipe and seed.
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.paper_setup import ModelSetting, Profile, flatten_outcome, retrained_for, summarise, trained
from gif_core.experiment import run_edit
from gif_core.requests import ClassRemoval
from gif_core.selection import METHODS as SELECTORS

METRICS = ("forget_acc", "retain_acc", "test_acc", "f1", "agreement", "kl", "avg_gap", "seconds", "step", "hvps")
Log = Callable[[str], None]


def _edit_rows(original, request, truth, config, extra: dict) -> list[dict]:
    return _edit(original, request, truth, config, extra)[0]


def _edit(original, request, truth, config, extra: dict) -> tuple[list[dict], dict]:
    """One run_edit against the retrained ``truth``: a row per method, and the retrained model's own metrics."""
    report = run_edit(original.model, original.card, original.bundle, request, config, retrained_model=truth)
    return [{**extra, **flatten_outcome(record)} for record in report.to_dict()["results"]], report.retrained


def removal_rows(
    setting: ModelSetting,
    seeds,
    classes,
    ratios,
    log: Log,
    methods: tuple[str, ...] = ("gif", "fif", "pif"),
    full_methods: tuple[str, ...] = ("if", "sif"),
) -> tuple[list[dict], list[dict]]:
    """Table 1 rows for one model (one per seed, class, method, ratio) and the retrained models' own metrics."""
    rows, references = [], []
    for seed in seeds:
        original = trained(setting, seed)
        for cls in classes:
            request = ClassRemoval(cls)
            truth, retrain_seconds = retrained_for(original, request)
            base = {"model": setting.label, "class": cls, "seed": seed, "retrain_seconds": retrain_seconds}
            for ratio in ratios:
                config = setting.edit_config(seed, methods=methods, ratio=ratio)
                new_rows, retrained = _edit(original, request, truth, config, base)
                rows += new_rows
                log(f"{setting.label} seed {seed} class {cls} ratio {ratio:g}: done")
            if full_methods:
                config = setting.edit_config(seed, methods=full_methods)
                rows += _edit_rows(original, request, truth, config, {**base, "ratio": 1.0})
            references.append({**base, **retrained})
    return rows, references


def ablation_rows(setting: ModelSetting, seeds, cls: int, ratios, table1: list[dict], log: Log) -> list[dict]:
    """Table 2: GIF with every selector; the gradient selector's rows are table 1's (same seeds and settings)."""
    rows = [
        {**r, "selector": "gradient"}
        for r in table1
        if r["method"] == "gif" and r["class"] == cls and r["ratio"] in ratios and r["model"] == setting.label
    ]
    for seed in seeds:
        original = trained(setting, seed)
        request = ClassRemoval(cls)
        truth, _ = retrained_for(original, request)
        for selector in (s for s in SELECTORS if s != "gradient"):
            for ratio in ratios:
                config = setting.edit_config(seed, methods=("gif",), selector=selector, ratio=ratio)
                rows += _edit_rows(
                    original, request, truth, config, {"model": setting.label, "class": cls, "seed": seed}
                )
            log(f"ablation seed {seed} selector {selector}: done")
    return rows


def iterated_rows(
    setting: ModelSetting, seeds, cls: int, steps, ratio: float, table1: list[dict], log: Log
) -> list[dict]:
    """Table 7: GIF at ``ratio`` with k re-linearised steps; k = 1 is table 1's row."""
    rows = [
        {**r, "k": 1}
        for r in table1
        if r["method"] == "gif" and r["class"] == cls and r["ratio"] == ratio and r["model"] == setting.label
    ]
    for seed in seeds:
        original = trained(setting, seed)
        request = ClassRemoval(cls)
        truth, _ = retrained_for(original, request)
        for k in (k for k in steps if k > 1):
            config = setting.edit_config(seed, methods=("gif",), ratio=ratio, iterations=k)
            rows += _edit_rows(
                original, request, truth, config, {"model": setting.label, "class": cls, "seed": seed, "k": k}
            )
            log(f"iterated seed {seed} k {k}: done")
    return rows


def _plot_ratios(summary: list[dict], references: list[dict], path, title: str, series_key: str, metrics) -> None:
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8))
    for ax, metric in zip(axes, metrics, strict=True):
        for name in dict.fromkeys(r[series_key] for r in summary):
            points = sorted(
                (r["ratio"], r[f"{metric} mean"], r[f"{metric} sd"]) for r in summary if r[series_key] == name
            )
            if len(points) > 1:
                ax.errorbar(
                    [p[0] * 100 for p in points],
                    [p[1] for p in points],
                    [p[2] for p in points],
                    label=name,
                    marker="o",
                    capsize=3,
                )
            else:
                ax.axhline(points[0][1], ls="--", lw=1, label=f"{name} (100%)")
        if references and metric in references[0]:
            ax.axhline(sum(r[metric] for r in references) / len(references), color="black", lw=1.5, label="retrained")
        ax.set_xscale("log")
        ax.set_xlabel("updated parameters (%)")
        ax.set_title(metric)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(profile: Profile, out_dir, log: Log) -> dict:
    """Tables 1, 2 and 7 on the default model for ``profile``; returns the raw rows and summaries (written by
    benchmarks.run)."""
    table1, references = removal_rows(profile.default, profile.seeds, profile.classes, profile.ratios, log)
    cls = profile.classes[0]
    ablation = ablation_rows(profile.default, profile.seeds, cls, profile.ablation_ratios, table1, log)
    iterated = iterated_rows(
        profile.default, profile.seeds, cls, profile.iterations, profile.headline_ratio, table1, log
    )
    summary1 = summarise(table1, ("model", "class", "method", "ratio"), METRICS)
    summary2 = summarise(ablation, ("selector", "ratio"), METRICS)
    summary7 = summarise(iterated, ("k",), METRICS)
    refs = [r for r in references if r["class"] == cls]
    _plot_ratios(
        [r for r in summary1 if r["class"] == cls],
        refs,
        out_dir / "class_removal.png",
        f"{profile.default.label}: class {cls} removed (mean ± sd over {len(profile.seeds)} seeds)",
        "method",
        ("forget_acc", "retain_acc", "agreement"),
    )
    _plot_ratios(
        summary2,
        refs,
        out_dir / "selection_ablation.png",
        f"GIF selectors, {profile.default.label}, class {cls}",
        "selector",
        ("forget_acc", "retain_acc", "f1"),
    )
    return {
        "table1": {"rows": table1, "summary": summary1, "retrained": _summarise_references(references)},
        "table2": {"rows": ablation, "summary": summary2},
        "table7": {"rows": iterated, "summary": summary7},
    }


def run_larger(profile: Profile, out_dir, log: Log) -> dict:
    """Table 1 on the larger model: the profile's first class, ``larger_ratios`` × ``larger_methods`` and
    ``larger_full_methods`` at 100%."""
    setting, cls = profile.larger, profile.classes[0]
    rows, references = removal_rows(
        setting, profile.seeds, (cls,), profile.larger_ratios, log, profile.larger_methods, profile.larger_full_methods
    )
    summary = summarise(rows, ("model", "class", "method", "ratio"), METRICS)
    _plot_ratios(
        summary,
        references,
        out_dir / "class_removal_larger.png",
        f"{setting.label}: class {cls} removed (mean ± sd over {len(profile.seeds)} seeds)",
        "method",
        ("forget_acc", "retain_acc", "agreement"),
    )
    return {"table1": {"rows": rows, "summary": summary, "retrained": _summarise_references(references)}}


def _summarise_references(references: list[dict]) -> list[dict]:
    return summarise(references, ("model", "class"), ("forget_acc", "retain_acc", "test_acc", "f1", "retrain_seconds"))
