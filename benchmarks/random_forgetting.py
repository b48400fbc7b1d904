"""Issue 6, table 4: forgetting a random 10% of the training set, with the unlearning literature's metrics.

UA = 100 − accuracy on the forgotten samples, RA = accuracy on the retained training samples, TA = test accuracy,
MIA = confidence-based membership-inference efficacy on the forgotten samples (gif_core.evaluate.mia_efficacy),
Avg. Gap = mean |edited − retrained| over those four. The forgotten rows are a seeded 10% (seed s) and the
retrained model has the original's recipe and seed s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.paper_setup import Profile, flatten_outcome, retrained_for, summarise, trained
from gif_core.data import seeded_subset
from gif_core.experiment import run_edit
from gif_core.requests import SampleRemoval

METRICS = ("UA", "RA", "TA", "MIA", "avg_gap", "agreement", "seconds", "step")


def _literature_names(metrics: dict) -> dict:
    return {
        "UA": 100 - metrics["forget_acc"],
        "RA": metrics["retain_acc"],
        "TA": metrics["test_acc"],
        "MIA": metrics["mia"],
    }


def run(profile: Profile, out_dir, log: Callable[[str], None]) -> dict:
    setting = profile.default
    rows, references = [], []
    for seed in profile.seeds:
        original = trained(setting, seed)
        n = len(original.train)
        request = SampleRemoval(seeded_subset(torch.arange(n), n // 10, seed).tolist())
        truth, _ = retrained_for(original, request)
        for methods, ratio in ((("gif", "fif", "pif"), profile.headline_ratio), (("if",), 1.0)):
            config = setting.edit_config(seed, methods=methods, ratio=ratio)
            report = run_edit(original.model, original.card, original.bundle, request, config, retrained_model=truth)
            for record in report.to_dict()["results"]:
                flat = flatten_outcome(record)
                rows.append({"seed": seed, "ratio": ratio, **flat, **_literature_names(flat)})
        references.append({"seed": seed, "model": "retrained", **_literature_names(report.retrained)})
        references.append({"seed": seed, "model": "original", **_literature_names(report.original)})
        log(f"random forgetting seed {seed}: done")
    return {
        "rows": rows,
        "summary": summarise(rows, ("method", "ratio"), METRICS),
        "references": summarise(references, ("model",), METRICS[:4]),
    }
