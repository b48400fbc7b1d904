"""The GPU path (issue 17): class removal with GIF and IF against retraining, on the device the models load onto.

    python -m benchmarks.gpu [--device cuda] [--archs cnn,resnet18] [--epochs N] [--out DIR]

For each architecture: train it on the bundled MNIST with the bundled CNN's recipe (``--epochs`` overrides the
epochs), on ``--device`` (default: the GPU when there is one); retrain it without class 0 by the same recipe and
seed (its seconds are the retraining cost); then answer the removal with GIF and IF by :func:`run_edit`, once with
the scipy solvers (LSMR / MINRES, one host round trip per product; on a GPU these run as their torch twins, so
that backend is skipped there), once with their torch-native twins (``lsmr-torch`` / ``minres-torch``, every
vector on the device) and once with torch-native CGLS / CG, and report each edit's seconds, its ratio to
retraining, its products and its forget / retain accuracy next to the retrained model's. The device each number
came from is in the table and in the provenance: CPU figures are not GPU figures.

Writes gpu.md / gpu.json into benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, edit_config, markdown_table, provenance, write_results
from gif_core.data import load_data
from gif_core.experiment import EditConfig, run_edit
from gif_core.model_card import ModelCard
from gif_core.requests import ClassRemoval
from gif_core.retrain import edited_training_set
from gif_core.solvers import method_on
from gif_core.train import Recipe, build_and_train, resolve_device
from gif_core.zoo import bundled_model_path

SOLVERS = {"scipy": ("lsmr", "minres"), "torch": ("lsmr-torch", "minres-torch"), "torch-cg": ("cgls-torch", "cg-torch")}
"""Per backend: GIF's least-squares solver and IF's symmetric one."""


def _recipe(epochs: int | None) -> Recipe:
    card = ModelCard.from_json(bundled_model_path("mnist_cnn").with_suffix(".json").read_text())
    recipe = Recipe.from_dict(card.recipe)
    return dataclasses.replace(recipe, epochs=epochs) if epochs is not None else recipe


def rows_for(arch: str, device: torch.device, recipe: Recipe, damping: float) -> list[dict]:
    """One row per solver backend and method for ``arch`` on ``device`` (see the module docstring)."""
    bundle = load_data("mnist-bundled")
    request = ClassRemoval(0)
    model, trained = build_and_train(arch, bundle, recipe, device=device, show_bar=False)
    edited = dataclasses.replace(bundle, train=edited_training_set(bundle.train, request, bundle.num_classes))
    start = time.perf_counter()
    truth, _ = build_and_train(arch, edited, recipe, device=device, show_bar=False)
    retrain_seconds = time.perf_counter() - start
    card = ModelCard(arch, bundle.input_shape, bundle.num_classes, bundle.classes, "mnist-bundled", 0, recipe.to_dict())
    rows = []
    for backend, (least_squares, symmetric) in SOLVERS.items():
        if method_on(least_squares, device) != least_squares:
            continue  # scipy's solvers run as their torch twins on this device: the "torch" row measures them
        config = edit_config(
            EditConfig(methods=("gif", "if")), least_squares_solver=least_squares, symmetric_solver=symmetric,
            damping=damping,
        )  # fmt: skip
        report = run_edit(model, card, bundle, request, config, retrained_model=truth)
        for outcome in report.to_dict()["results"]:
            rows.append(
                {
                    "arch": arch,
                    "device": str(device),
                    "backend": backend,
                    "method": outcome["method"],
                    "solver": outcome.get("solver", {}).get("name", ""),
                    "hvps": outcome.get("solver", {}).get("hvps", ""),
                    "edit_s": outcome["seconds"],
                    "retrain_s": retrain_seconds,
                    "edit/retrain": outcome["seconds"] / retrain_seconds,
                    "forget": outcome.get("forget_acc", float("nan")),
                    "retain": outcome.get("retain_acc", float("nan")),
                    "retrained forget": report.retrained["forget_acc"],
                    "retrained retain": report.retrained["retain_acc"],
                    "train_s": trained.seconds,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="cuda or cpu (default: the GPU when there is one)")
    parser.add_argument("--archs", default="cnn,resnet18")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (a quick check)")
    parser.add_argument("--damping", type=float, default=EditConfig().curvature.damping)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    meta = provenance()
    device = resolve_device(args.device)
    recipe = _recipe(args.epochs)
    rows = [row for arch in args.archs.split(",") for row in rows_for(arch.strip(), device, recipe, args.damping)]
    columns = list(rows[0])
    body = (
        "# GIF and IF against retraining on the models' device\n\n"
        f"Class 0 removed from the bundled MNIST, recipe {recipe.to_dict()}, damping {args.damping}. Each edit's "
        "seconds are run_edit end to end (gradient, Hessian sample, selection, solve, validation step search, "
        "metrics).\n\n" + markdown_table(rows, columns)
    )
    path = write_results("gpu" if device.type == "cuda" else "gpu_path_on_cpu", body, {"rows": rows}, args.out, meta)
    print(path.read_text())


if __name__ == "__main__":
    main()
