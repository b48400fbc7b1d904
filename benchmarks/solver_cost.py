"""Issue 6, tables 5 and 6: the GIF solve by Krylov methods vs the Richardson baseline, and GIF's cost relative
to retraining, on the default CNN and the larger model (class removal, gradient selector, 5% of parameters).

Table 5 counts Hessian-vector products to first reach each relative normal-equation residual (the curves go to
``solver_residuals.png``). Table 6 divides GIF's end-to-end seconds (``run_edit`` with GIF only: gradient of the
request, Hessian set-up, selection, solve, validation step search, evaluation) by the seconds the same run spent
retraining the same model without the class (table 1's ground truth, trained in this run unless cached).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from benchmarks.engine import solver_race, speedup_ladder
from benchmarks.paper_setup import ModelSetting, Profile, mean_sd, retrained_for, trained
from gif_core.experiment import run_edit
from gif_core.requests import ClassRemoval


def race(
    setting: ModelSetting, caps: tuple[int, int], cls: int, ratio: float, dtype: torch.dtype, restarts: int
) -> dict:
    original = trained(setting, 0)
    result = solver_race(
        original.model,
        original.card,
        original.bundle,
        ratio=ratio,
        hessian_samples=setting.hessian_samples,
        rtol=1e-6,
        maxiter=caps[0],
        richardson_maxiter=caps[1],
        removed_class=cls,
        dtype=dtype,
        krylov=("cgls",),
        richardson_restarts=restarts,
    )
    ladder = [{"model": setting.label, **row} for row in speedup_ladder(result)]
    seconds = {row["solver"]: row["seconds"] / max(row["hvps"], 1) for row in result["rows"]}
    return {
        "model": setting.label,
        "dtype": str(dtype).removeprefix("torch."),
        "ladder": ladder,
        "rows": [{"model": setting.label, **row} for row in result["rows"]],
        "curves": result["curves"],
        "seconds_per_hvp": seconds,
        "n_selected": result["n_selected"],
        "n_params": result["n_params"],
    }


def cost(setting: ModelSetting, seeds, cls: int, ratio: float, log: Callable[[str], None]) -> dict:
    rows = []
    for seed in seeds:
        original = trained(setting, seed)
        request = ClassRemoval(cls)
        _, retrain_seconds = retrained_for(original, request)
        config = setting.edit_config(seed, methods=("gif",), ratio=ratio)
        start = time.perf_counter()
        report = run_edit(original.model, original.card, original.bundle, request, config)
        gif_seconds = time.perf_counter() - start
        (outcome,) = report.outcomes
        solve = outcome.result.solver_summary()["seconds"]
        rows.append(
            {
                "seed": seed,
                "gif_seconds": gif_seconds,
                "solve_seconds": solve,
                "step_search_seconds": outcome.seconds - solve,
                "retrain_seconds": retrain_seconds,
            }
        )
        log(f"cost {setting.label} seed {seed}: GIF {gif_seconds:.1f} s, retraining {retrain_seconds:.1f} s")
    ratio_mean, ratio_sd = mean_sd([100 * r["gif_seconds"] / r["retrain_seconds"] for r in rows])
    gif_mean, gif_sd = mean_sd([r["gif_seconds"] for r in rows])
    retrain_mean, retrain_sd = mean_sd([r["retrain_seconds"] for r in rows])
    solve_mean, _ = mean_sd([r["solve_seconds"] for r in rows])
    search_mean, _ = mean_sd([r["step_search_seconds"] for r in rows])
    return {
        "model": setting.label,
        "hessian_samples": setting.hessian_samples,
        "maxiter": setting.maxiter,
        "GIF s": f"{gif_mean:.1f} ± {gif_sd:.1f}",
        "of which solve s": f"{solve_mean:.1f}",
        "of which step search s": f"{search_mean:.1f}",
        "retrain s": f"{retrain_mean:.1f} ± {retrain_sd:.1f}",
        "GIF / retrain (%)": f"{ratio_mean:.1f} ± {ratio_sd:.1f}",
        "ratio mean": ratio_mean,
        "rows": rows,
    }


def run(profile: Profile, out_dir, log: Callable[[str], None]) -> dict:
    cls = profile.classes[0]
    races = [
        race(
            profile.default,
            profile.solver_caps,
            cls,
            profile.headline_ratio,
            torch.float64,
            profile.richardson_restarts,
        ),
        race(
            profile.larger,
            profile.larger_solver_caps,
            cls,
            profile.headline_ratio,
            torch.float32,
            profile.richardson_restarts,
        ),
    ]
    log("solver races: done")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, result in zip(axes, races, strict=True):
        for name, curve in result["curves"].items():
            ax.semilogy([c[0] for c in curve], [c[1] for c in curve], label=name)
        ax.set_xlabel("Hessian-vector products")
        ax.set_ylabel("relative normal-equation residual")
        ax.set_title(f"{result['model']} ({result['dtype']}), {result['n_selected']:,} of {result['n_params']:,}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "solver_residuals.png", dpi=110)
    plt.close(fig)
    costs = [cost(s, profile.seeds, cls, profile.headline_ratio, log) for s in (profile.default, profile.larger)]
    return {"races": [{k: v for k, v in r.items() if k != "curves"} for r in races], "cost": costs}
