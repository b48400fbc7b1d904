"""Issue 6, table 3: undoing a backdoor by a label change (the GIF paper's table 3 idea).

For each seed: a checkerboard trigger on a seeded 10% of the training images, relabelled as class 0; the model is
trained on that poisoned set (seed s) and the edit relabels the poisoned samples back to their true labels. The
ground truth is the same recipe and seed trained with those labels fixed. GIF, FIF, PIF at 5%, IF and SIF at 100%;
clean test accuracy, accuracy on the relabelled samples (new labels) and attack success rate on triggered test images.

Issue 12's variants of GIF at the headline ratio, each with α on validation: damping of H (δ = 1e-2, 1e-1), and
k = 2, 3 re-linearised steps on the relabelled objective. The trade-off curve (``backdoor_curve.png``): for the
default GIF, FIF, PIF and IF edits of every seed, clean test accuracy against attack success at every α the
validation search tried — what the step scale can and cannot reach (read, not used to choose anything).
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.paper_setup import Profile, backdoor_spec, flatten_outcome, retrained_for, summarise, trained
from gif_core.backdoor import poison_training_set
from gif_core.evaluate import backdoor_metrics
from gif_core.experiment import MethodOutcome, run_edit
from gif_core.params import apply_delta
from gif_core.requests import backdoor_relabel

VARIANTS = (("damping 1e-2", {"damping": 1e-2}), ("damping 1e-1", {"damping": 1e-1}),
            ("k = 2", {"iterations": 2}), ("k = 3", {"iterations": 3}))  # fmt: skip
CURVE_METHODS = ("gif", "fif", "pif", "if")

METRICS = (
    "clean_acc",
    "relabelled_acc",
    "attack_success_rate",
    "forget_acc",
    "agreement",
    "avg_gap",
    "seconds",
    "step",
)


def _curve(original, spec, outcome: MethodOutcome, seed: int) -> list[dict]:
    """Clean test accuracy and attack success of one edit at every α its validation search tried."""
    test = original.bundle.test
    triggered = spec.trigger.stamp(test.inputs)
    points = []
    for alpha, objective in outcome.step_curve:
        edited = apply_delta(original.model, outcome.result.problem.space, outcome.result.delta, alpha)
        metrics = backdoor_metrics(edited, test.inputs, test.labels, triggered, spec.target)
        points.append(
            {
                "seed": seed,
                "method": outcome.method,
                "step": alpha,
                "validation objective": objective,
                "clean_acc": metrics.clean_acc,
                "attack_success_rate": metrics.attack_success_rate,
            }
        )
    return points


def _plot(curves: list[dict], references: list[dict], path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in CURVE_METHODS:
        points = [p for p in curves if p["method"] == method]
        ax.scatter([p["attack_success_rate"] for p in points], [p["clean_acc"] for p in points], s=10, label=method)
    for ref in references:
        ax.scatter(ref["attack_success_rate"], ref["clean_acc"], marker="*", s=160, color="black")
        ax.annotate(ref["model"], (ref["attack_success_rate"], ref["clean_acc"]), fontsize=7)
    ax.set_xlabel("attack success on triggered test images (%)")
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_title("Backdoor undo: every α the validation search tried (all seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(profile: Profile, out_dir, log: Callable[[str], None]) -> dict:
    setting = profile.default
    rows, references, curves = [], [], []
    for seed in profile.seeds:
        spec = backdoor_spec(setting, seed)
        original = trained(setting, seed, backdoor=spec)
        _, poisoned = poison_training_set(original.bundle.train, spec, original.bundle.num_classes)
        request = backdoor_relabel(poisoned.poisoned_rows, poisoned.true_labels)
        truth, _ = retrained_for(original, request)
        runs = [("default", ("gif", "fif", "pif"), profile.headline_ratio, {}), ("default", ("if", "sif"), 1.0, {})]
        runs += [(name, ("gif",), profile.headline_ratio, changes) for name, changes in VARIANTS]
        for variant, methods, ratio, changes in runs:
            config = setting.edit_config(seed, methods=methods, ratio=ratio, **changes)
            report = run_edit(
                original.model,
                original.card,
                original.bundle,
                request,
                config,
                train=original.train,
                backdoor=spec,
                retrained_model=truth,
            )
            rows += [
                {"seed": seed, "ratio": ratio, "variant": variant, **flatten_outcome(r)}
                for r in report.to_dict()["results"]
            ]
            if variant == "default":
                curves += [
                    p for o in report.outcomes if o.method in CURVE_METHODS for p in _curve(original, spec, o, seed)
                ]
        references.append({"seed": seed, "model": "retrained (labels fixed)", **report.retrained})
        references.append({"seed": seed, "model": "original (backdoored)", **report.original})
        log(f"backdoor seed {seed}: done")
    summary_refs = summarise(references, ("model",), METRICS[:4])
    plot_refs = [
        {"model": r["model"], "clean_acc": r["clean_acc mean"], "attack_success_rate": r["attack_success_rate mean"]}
        for r in summary_refs
    ]
    _plot(curves, plot_refs, out_dir / "backdoor_curve.png")
    return {
        "rows": rows,
        "summary": summarise(rows, ("variant", "method", "ratio"), METRICS),
        "references": summary_refs,
        "curves": curves,
    }
