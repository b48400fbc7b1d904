"""The validation step search before and after issue 12, side by side on the same Δ (class removal, GIF at 5%).

    python -m benchmarks.step_search [--quick] [--out DIR]

* ``grid (before)``: the fixed 18-point grid α ∈ [0.01, 32] the library used before, each candidate scored on a
  deep copy of the model (``apply_delta`` + ``step_objective``), as it was done then;
* ``search``: :func:`gif_core.experiment.search_validation_step`, the open-ended bracket-and-refine search (cap 1e4)
  that scores each candidate by one ``functional_call`` forward pass without copying the model;
* ``vmap, 4 a batch``: the same candidates as the search, four parameter sets stacked and evaluated in one
  ``torch.func.vmap`` forward pass (the batched alternative the issue suggests; timing only).

Seconds are wall-clock in one run on the same machine: compare within a row.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.func import functional_call, vmap

from benchmarks.common import RESULTS, markdown_table, write_results
from benchmarks.paper_setup import CNN, VGG, ModelSetting, trained
from gif_core.curvature import CurvatureConfig
from gif_core.evaluate import accuracy
from gif_core.experiment import build_scenario, search_validation_step, step_objective
from gif_core.influence import EstimatorConfig, estimate
from gif_core.params import apply_delta
from gif_core.problem import ProblemConfig, prepare
from gif_core.requests import ClassRemoval
from gif_core.selection import SelectionConfig, select
from gif_core.steps import StepSearchConfig

OLD_GRID = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
VMAP_BATCH = 4


def _vmap_seconds(model, space, delta, alphas, scenario) -> float:
    """Score ``alphas`` four at a time with vmap over stacked parameter sets; returns seconds (objective checked
    against the sequential search by the caller through the chosen predictions)."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    pieces = space.unflatten(delta)
    inputs = torch.cat([scenario.validation.inputs, scenario.step_forget.inputs])

    def logits(stacked: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, stacked, (x,))

    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(alphas), VMAP_BATCH):
            a = torch.tensor(alphas[first : first + VMAP_BATCH])
            stacked = {n: params[n][None] + a.view(-1, *[1] * params[n].ndim) * pieces[n][None] for n in pieces}
            preds = torch.cat(
                [
                    vmap(logits, in_dims=(0, None))(stacked, inputs[i : i + 256]).argmax(-1)
                    for i in range(0, len(inputs), 256)
                ],
                dim=1,
            )
            n_val = len(scenario.validation)
            for row in preds:  # the objective's accuracies, as the search computes them
                accuracy(row[:n_val], scenario.validation.labels)
                accuracy(row[n_val:], scenario.step_forget.labels)
    return time.perf_counter() - start


def compare(setting: ModelSetting, cls: int) -> dict:
    original = trained(setting, 0)
    model = original.model.eval()
    request = ClassRemoval(cls)
    scenario = build_scenario(request, original.bundle, original.train)
    problem = prepare(
        model,
        original.train,
        request,
        original.bundle.num_classes,
        ProblemConfig(
            hessian_samples=setting.hessian_samples,
            curvature=CurvatureConfig(weight_decay=setting.recipe.weight_decay),
        ),
    )
    selection = select(problem, SelectionConfig("gradient", 0.05))
    result = estimate("gif", problem, selection, EstimatorConfig(gif_ridge=0.0, maxiter=setting.maxiter))

    start = time.perf_counter()
    grid = [(a, step_objective(apply_delta(model, problem.space, result.delta, a), scenario)) for a in OLD_GRID]
    grid_seconds = time.perf_counter() - start
    grid_best = max(grid, key=lambda point: point[1])

    search = search_validation_step(model, result, scenario, StepSearchConfig())
    alphas = [a for a, _ in search.curve]
    vmap_seconds = _vmap_seconds(model, problem.space, result.delta, alphas, scenario)
    return {
        "model": setting.label,
        "class": cls,
        "validation images": len(scenario.validation) + len(scenario.step_forget),
        "grid evaluations": len(grid),
        "grid s": grid_seconds,
        "grid α": grid_best[0],
        "grid objective": grid_best[1],
        "search evaluations": search.evaluations,
        "search s": search.seconds,
        "search α": search.step,
        "search objective": search.objective,
        "search cap hit": search.cap_hit,
        "vmap s (same candidates)": vmap_seconds,
        "search s / grid s": search.seconds / grid_seconds,
        "s per candidate: grid": grid_seconds / len(grid),
        "s per candidate: search": search.seconds / search.evaluations,
        "s per candidate: vmap": vmap_seconds / search.evaluations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the default CNN only, one class")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cases = [(CNN, 0)] if args.quick else [(CNN, 0), (CNN, 3), (VGG, 0)]
    start = time.perf_counter()
    rows = [compare(setting, cls) for setting, cls in cases]
    columns = list(rows[0])
    body = f"""# Step search before and after issue 12

The same GIF Δ (5%, gradient selector; the model setting's Hessian sample and iterations, seed 0) scored by the
old fixed grid on model copies, by the open-ended search, and by vmapped batches of the search's candidates.

{markdown_table(rows, columns)}
"""
    write_results(
        "step_search", body + f"\nWall-clock: {time.perf_counter() - start:.0f} s.\n", {"rows": rows}, args.out
    )


if __name__ == "__main__":
    main()
