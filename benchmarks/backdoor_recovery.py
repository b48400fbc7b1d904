"""Issue 6, table 3: undoing a backdoor by a label change (the GIF paper's table 3 idea).

For each seed: a checkerboard trigger on a seeded 10% of the training images, relabelled as class 0; the model is
trained on that poisoned set (seed s) and the edit relabels the poisoned samples back to their true labels. The
ground truth is the same recipe and seed trained with those labels fixed. GIF, FIF, PIF at 5%, IF and SIF at 100%;
clean test accuracy, accuracy on the relabelled samples (new labels) and attack success rate on triggered test images.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.paper_setup import Profile, backdoor_spec, flatten_outcome, retrained_for, summarise, trained
from gif_core.backdoor import poison_training_set
from gif_core.experiment import run_edit
from gif_core.requests import backdoor_relabel

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


def run(profile: Profile, out_dir, log: Callable[[str], None]) -> dict:
    setting = profile.default
    rows, references = [], []
    for seed in profile.seeds:
        spec = backdoor_spec(setting, seed)
        original = trained(setting, seed, backdoor=spec)
        _, poisoned = poison_training_set(original.bundle.train, spec, original.bundle.num_classes)
        request = backdoor_relabel(poisoned.poisoned_rows, poisoned.true_labels)
        truth, _ = retrained_for(original, request)
        for methods, ratio in ((("gif", "fif", "pif"), profile.headline_ratio), (("if", "sif"), 1.0)):
            config = setting.edit_config(seed, methods=methods, ratio=ratio)
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
            rows += [{"seed": seed, "ratio": ratio, **flatten_outcome(r)} for r in report.to_dict()["results"]]
        references.append({"seed": seed, "model": "retrained (labels fixed)", **report.retrained})
        references.append({"seed": seed, "model": "original (backdoored)", **report.original})
        log(f"backdoor seed {seed}: done")
    return {
        "rows": rows,
        "summary": summarise(rows, ("method", "ratio"), METRICS),
        "references": summarise(references, ("model",), METRICS[:4]),
    }
