"""Class removal on each kind of architecture the tool accepts (issue 17), against retraining.

    python -m benchmarks.architectures [--archs cnn,vit,mobilenet_v3_small] [--seeds 0,1,2] [--classes 0,3]
                                       [--epochs N] [--unpaired-batch-norm] [--out DIR]

For each architecture, seed and class: the model trained on the bundled MNIST with the bundled CNN's recipe (seed s,
``--epochs`` overrides the epochs), its retrained ground truth (same recipe and seed, the class removed), and GIF,
FIF and PIF at 5% of the parameters and IF at 100%, each with α chosen on validation (the library's defaults
otherwise). Rows: forget / retain / test accuracy, Avg. Gap to the retrained model, the share of parameters the
selection really holds (whole units: one attention head of the small ViT is a quarter of its layer, so "5%" holds
more), and the edit's seconds against retraining's. ``cnn`` is the bundled default, ``vit`` our small
VisionTransformer (two blocks of four heads), ``mobilenet_v3_small`` torchvision's (BatchNorm, depthwise convs).

``--unpaired-batch-norm`` (an ablation of :mod:`gif_core.params`' BatchNorm pairing): GIF at 5% once more on each
model with BatchNorm, with the pairing read from the model's data flow switched off for the run (the private
``params._batch_norm_of_each_conv`` patched to find no pair), so that a selected conv channel moves without its
BatchNorm's γ_j, β_j (unpaired BatchNorms are no unit: they stay frozen). Rows "<arch> (BN unpaired)".

Writes architectures.md / architectures.json into benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from unittest import mock

from benchmarks.class_removal import removal_rows
from benchmarks.common import RESULTS, markdown_table, provenance, write_results
from benchmarks.paper_setup import CNN, ModelSetting, summarise
from gif_core import params
from gif_core.models import build_model

RATIO = 0.05

METRICS = ("forget_acc", "retain_acc", "test_acc", "f1", "avg_gap", "ratio_obtained", "step", "seconds", "edit/retrain")


def setting_for(arch: str, epochs: int | None) -> ModelSetting:
    """The bundled CNN's setting (recipe, Hessian sample, iterations) with ``arch`` in its place."""
    recipe = CNN.recipe if epochs is None else dataclasses.replace(CNN.recipe, epochs=epochs)
    return dataclasses.replace(CNN, label=arch, arch=arch, recipe=recipe)


def rows_for(setting: ModelSetting, seeds, classes, log=print) -> tuple[list[dict], list[dict]]:
    """One row per (seed, class, method) — class_removal's table 1 at 5% with IF at 100% — each with its edit's
    seconds over retraining's; and the retrained models' own metrics."""
    rows, references = removal_rows(setting, seeds, classes, (RATIO,), log, full_methods=("if",))
    for row in rows:
        row["edit/retrain"] = row["seconds"] / row["retrain_seconds"]
    return rows, references


def unpaired_rows(setting: ModelSetting, seeds, classes, log=print) -> list[dict]:
    """GIF at 5% with the BatchNorm pairing switched off (module docstring); no rows for a model without pairs."""
    model = build_model(setting.arch, (1, 28, 28), 10)
    if not params._batch_norm_of_each_conv(model):
        return []
    with mock.patch.object(params, "_batch_norm_of_each_conv", lambda module: {}):
        rows, _ = removal_rows(setting, seeds, classes, (RATIO,), log, methods=("gif",), full_methods=())
    for row in rows:
        row["model"] = f"{setting.label} (BN unpaired)"
        row["edit/retrain"] = row["seconds"] / row["retrain_seconds"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="cnn,vit,mobilenet_v3_small")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--classes", default="0,3")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (a quick check)")
    parser.add_argument("--unpaired-batch-norm", action="store_true", help="also GIF without the BatchNorm pairing")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    meta = provenance()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    classes = tuple(int(c) for c in args.classes.split(","))
    rows, references = [], []
    for arch in args.archs.split(","):
        setting = setting_for(arch.strip(), args.epochs)
        new_rows, new_references = rows_for(setting, seeds, classes)
        rows, references = rows + new_rows, references + new_references
        if args.unpaired_batch_norm:
            rows += unpaired_rows(setting, seeds, classes)
    summary = summarise(rows, ("model", "method", "ratio"), METRICS)
    retrained = summarise(references, ("model",), ("forget_acc", "retain_acc", "test_acc", "retrain_seconds"))
    recipe = setting_for("cnn", args.epochs).recipe
    body = "\n".join(
        [
            "# Class removal on each kind of architecture, against retraining (issue 17)",
            "",
            f"Bundled MNIST, recipe {recipe.to_dict()} (seed s for the original and its retrained ground truth), "
            f"seeds {list(seeds)}, classes {list(classes)}; GIF, FIF and PIF at 5% (gradient selector), IF at "
            "100%, α chosen on validation, the library's other defaults. Cells are mean ± sd over (seed, class); 'seeds' counts those runs. "
            "ratio_obtained: the share of parameters the selection holds (whole units). Accuracies in %.",
            "",
            markdown_table(summary, ["model", "method", "ratio", "seeds", *METRICS]),
            "",
            "Retrained models:",
            "",
            markdown_table(retrained, ["model", "seeds", "forget_acc", "retain_acc", "test_acc", "retrain_seconds"]),
        ]
    )
    path = write_results("architectures", body, {"rows": rows, "retrained": references}, args.out, meta)
    print(path.read_text())


if __name__ == "__main__":
    main()
