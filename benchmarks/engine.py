"""Engine benchmark (issue: gif_core engine): cost of a Hessian-vector product relative to a gradient, the
GIF solve with Krylov (CGLS, LSMR) vs the reference Richardson iteration, on the default CNN with 5% of parameters,
and IF's symmetric solve by MINRES and CG vs the LiSSA and P-LiSSA baselines (issue 16).

    python -m benchmarks.engine [--quick] [--out DIR]

Writes engine.md / engine.json / engine_residuals.png into benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from benchmarks.common import RESULTS, markdown_table, write_results
from gif_core.checkpoints import load_checkpoint
from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.data import load_data
from gif_core.influence import EstimatorConfig, estimate
from gif_core.problem import HessianConfig, ProblemConfig, prepare
from gif_core.requests import ClassRemoval
from gif_core.selection import SelectionConfig, select
from gif_core.solvers import SYMMETRIC_METHODS, SolveReport
from gif_core.zoo import default_model_path


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def hvp_over_gradient(model, card, data, batch: int, repeats: int) -> dict:
    inputs, labels = data.train.inputs[:batch], data.train.labels[:batch]
    config = CurvatureConfig(weight_decay=card.recipe.get("weight_decay", 0.0), batch_size=batch)
    curvature = Curvature(model, (inputs, labels), config)
    v = torch.randn(curvature.space.numel)
    grad_s = _median_seconds(lambda: curvature.gradient(inputs, labels), repeats)
    hvp_s = _median_seconds(lambda: curvature.hvp(v), repeats)
    return {"batch": batch, "gradient_s": grad_s, "hvp_s": hvp_s, "ratio": hvp_s / grad_s}


LADDER = (1e-1, 1e-2, 1e-3, 1e-4)


def products_to_reach(curve: list[tuple[int, float]], level: float) -> int | None:
    return next((hvps for hvps, residual in curve if residual <= level), None)


def speedup_ladder(race: dict) -> list[dict]:
    """Products CGLS and Richardson took to first reach each residual of :data:`LADDER` in a :func:`solver_race`,
    and their ratio; where Richardson never got there, its whole spend gives a lower bound."""
    spent = {row["solver"]: row["hvps"] for row in race["rows"]}
    ladder = []
    for level in LADDER:
        krylov = products_to_reach(race["curves"].get("cgls", []), level)
        baseline = products_to_reach(race["curves"].get("richardson", []), level)
        if krylov and baseline:
            speedup = f"{baseline / krylov:.1f}×"
        elif krylov:
            speedup = f"≥ {spent['richardson'] / krylov:.1f}×"
        else:
            speedup = "n/a"
        ladder.append(
            {
                "residual": level,
                "cgls hvps": krylov or f"not reached in {spent['cgls']}",
                "richardson hvps": baseline or f"not reached in {spent['richardson']}",
                "richardson / cgls": speedup,
            }
        )
    return ladder


def _report_row(solver: str, report: SolveReport) -> dict:
    """One solve's row of a race table."""
    return {
        "solver": solver,
        "iterations": report.iterations,
        "hvps": report.hvps,
        "rel_residual": report.rel_residual,
        "converged": report.converged,
        "seconds": report.seconds,
        "note": report.note,
    }


def solver_race(
    model,
    card,
    data,
    ratio: float,
    hessian_samples: int,
    rtol: float,
    maxiter: int,
    richardson_maxiter: int,
    *,
    removed_class: int = 3,
    dtype: torch.dtype = torch.float64,
    krylov: tuple[str, ...] = ("cgls", "lsmr"),
    seed: int = 0,
    richardson_restarts: int = 100,
) -> dict:
    """GIF for removing ``removed_class`` at ``ratio`` (gradient selector), solved by each Krylov method and by
    the Richardson baseline, with products in ``dtype``; the residual history of the traced solvers."""
    curvature = CurvatureConfig(weight_decay=card.recipe.get("weight_decay", 0.0), dtype=dtype)
    config = ProblemConfig(hessian_samples=hessian_samples, curvature=curvature, seed=seed)
    problem = prepare(model, data.train, ClassRemoval(removed_class), card.num_classes, config)
    selection = select(problem, SelectionConfig("gradient", ratio, seed=seed))
    rows, curves = [], {}
    for solver, cap in (*((name, maxiter) for name in krylov), ("richardson", richardson_maxiter)):
        settings = EstimatorConfig(
            least_squares_solver=solver, gif_ridge=0.0, rtol=rtol, maxiter=cap, track_residuals=solver != "lsmr",
            richardson_restarts=richardson_restarts,
        )  # fmt: skip
        result = estimate("gif", problem, selection, settings)
        report = result.reports[0]
        rows.append(_report_row(solver, report))
        if report.residual_history:
            # Aᵀb costs one product up front; each iteration one H_{:,T} and one H_{:,T}ᵀ product.
            curves[solver] = [(1 + 2 * (i + 1), r) for i, r in enumerate(report.residual_history)]
            for level in LADDER:
                rows[-1][f"hvps to {level:g}"] = products_to_reach(curves[solver], level) or "not reached"
    return {
        "n_selected": selection.n_selected,
        "n_params": problem.space.numel,
        "hessian_samples": problem.hessian.n_samples,
        "rows": rows,
        "curves": curves,
    }


def symmetric_race(
    model, card, data, hessian_samples: int, rtol: float, maxiter: int, *, removed_class: int = 3, seed: int = 0
) -> dict:
    """IF for removing ``removed_class``: (H + δI) x = g with the edits' damping δ, float64 products, solved by every
    symmetric solver (MINRES, CG, LiSSA at its fixed scale, P-LiSSA) under the same tolerance and iteration cap; a
    divergence is a row, not a crash. Residuals per iteration (one product each; P-LiSSA's power iterations and
    restarts are in its total)."""
    damping = HessianConfig().damping
    curvature = CurvatureConfig(card.recipe.get("weight_decay", 0.0), damping=damping, dtype=torch.float64)
    config = ProblemConfig(hessian_samples=hessian_samples, curvature=curvature, seed=seed)
    problem = prepare(model, data.train, ClassRemoval(removed_class), card.num_classes, config)
    rows, curves = [], {}
    for solver in SYMMETRIC_METHODS:
        settings = EstimatorConfig(symmetric_solver=solver, rtol=rtol, maxiter=maxiter, track_residuals=True)
        try:
            report = estimate("if", problem, config=settings).reports[0]
        except FloatingPointError as error:
            rows.append({"solver": solver, "converged": False, "note": f"diverged: {error}"})
            continue
        rows.append(_report_row(solver, report))
        curves[solver] = list(enumerate(report.residual_history, start=1))
    return {"damping": damping, "hessian_samples": problem.hessian.n_samples, "rows": rows, "curves": curves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings, for a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, card = load_checkpoint(default_model_path())
    data = load_data(card.dataset, seed=card.split_seed)
    batch, repeats = (64, 2) if args.quick else (512, 7)
    cost = hvp_over_gradient(model, card, data, batch, repeats)
    race = solver_race(
        model,
        card,
        data,
        ratio=0.05,
        hessian_samples=32 if args.quick else 256,
        rtol=1e-4,
        maxiter=10 if args.quick else 600,
        richardson_maxiter=10 if args.quick else 1500,
    )
    ladder_rows = speedup_ladder(race)
    symmetric = symmetric_race(
        model, card, data, hessian_samples=32 if args.quick else 256, rtol=1e-4, maxiter=10 if args.quick else 600
    )
    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in race["curves"].items():
        ax.semilogy([c[0] for c in curve], [c[1] for c in curve], label=name)
    ax.axhline(1e-4, color="grey", ls=":", label="target 1e-4")
    ax.set_xlabel("Hessian-vector products")
    ax.set_ylabel("relative normal-equation residual")
    ax.set_title(f"GIF solve, default CNN, {race['n_selected']} of {race['n_params']} parameters")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "engine_residuals.png", dpi=120)
    body = f"""# Engine benchmark

## Hessian-vector product cost (default CNN, batch of {cost["batch"]} MNIST images, median of {repeats})
| gradient s | HVP s | HVP / gradient |
|---|---|---|
| {cost["gradient_s"]:.4f} | {cost["hvp_s"]:.4f} | **{cost["ratio"]:.2f}** (goal ≤ 3) |

## GIF solve (class 3 removal, gradient selector, 5% of parameters, float64 products over {race["hessian_samples"]} retained samples)
{markdown_table(race["rows"], ["solver", "iterations", "hvps", "rel_residual", "converged", "seconds", "note"])}

Hessian-vector products to first reach each relative normal-equation residual (goal: ≥ 10× fewer for Krylov at 1e-4):
{markdown_table(ladder_rows, ["residual", "cgls hvps", "richardson hvps", "richardson / cgls"])}

Residual against products: `engine_residuals.png`. LSMR has no per-iteration trace in scipy; its row shows where it stopped.

## IF solve (class 3 removal, (H + {symmetric["damping"]:g}·I) x = g over {symmetric["hessian_samples"]} retained samples, float64 products, rtol 1e-4)
MINRES and CG (scipy) against the named baselines LiSSA (fixed scale 10) and P-LiSSA (power-iteration scale, restarts,
stall detection; its products include the power iterations). LiSSA's Neumann series converges only on a positive
definite H with the scale above λ_max/2; the damped H of a network need not be positive definite.
{markdown_table(symmetric["rows"], ["solver", "iterations", "hvps", "rel_residual", "converged", "seconds", "note"])}
"""
    summary = {k: v for k, v in race.items() if k != "curves"}
    data_out = {"hvp_cost": cost, "solver_race": summary, "ladder": ladder_rows, "symmetric_race": symmetric}
    write_results("engine", body, data_out, args.out)
    print(body)


if __name__ == "__main__":
    main()
