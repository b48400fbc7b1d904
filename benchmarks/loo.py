"""Leave-one-out retraining against influence estimates (the protocol of Basu, Pope & Feizi, ICLR 2021,
"Influence functions in deep learning are fragile").

For each setting (architecture × data set × weight decay λ) a model is trained to a near-stationary point θ* of

    L(θ) = mean_i CE(f_θ(x_i), y_i) + (λ/2)·|θ|²

by full-batch L-BFGS (strong Wolfe line search; deep models start with a few Adam epochs). For each of a few seeded
test points, every training sample z gets a predicted effect from each estimator, oriented as in
:mod:`gif_core.scores`: the predicted CHANGE of the test loss when z is REMOVED,

    IF:  I(z, test) = ∇ℓ_testᵀ (H + δI)⁻¹ ∇ℓ_z / n        (positive = z is helpful: removing it raises the loss),

with GIF (the same, restricted to the test point's neurons), TracInCP (∇ℓ_testᵀ∇ℓ_z) and Captum's naive / Arnoldi
influence beside it. The truth is leave-one-out retraining, warm-started from θ*: the same deterministic full-batch
L-BFGS schedule runs on S∖{z} and, as the control, on S, and

    actual(z, test) = ℓ_test(θ_{−z}) − ℓ_test(θ_control).

Candidates are the top-k training samples by |IF| per test point (Basu et al. retrain the most influential ones); every
method is correlated with the truth on that same candidate set (Spearman, Pearson, sign agreement), and the
correlations are averaged over the test points. Each retraining serves all test points of its setting.

    python -m benchmarks.loo [--quick] [--out DIR]

Writes loo.md / loo.json / loo_scatter.png into benchmarks/results/ (or --out). The settings, θ*, the
leave-one-out truth and the agreement measures are in :mod:`benchmarks.loo_protocol`, the tables, reading and plot
in :mod:`benchmarks.loo_report`; this module runs them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from benchmarks.common import RESULTS
from benchmarks.loo_protocol import (
    FULL,
    LOGREG_MNIST_ALL,
    QUICK,
    Estimate,
    Protocol,
    Setting,
    agreement,
    gradient_norm,
    leave_one_out,
    setting_data,
    train,
)
from benchmarks.loo_report import write_report
from gif_core.captum_baselines import CaptumConfig, captum_scores
from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.evaluate import accuracy, predict_proba
from gif_core.scores import influence_scores, training_gradients
from gif_core.selection import SelectionConfig, select_on_data
from gif_core.solvers import SolverConfig


def estimates(
    setting: Setting,
    protocol: Protocol,
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
) -> tuple[list[Estimate], list[dict]]:
    """IF and GIF (gif_core.scores, H over the whole training set) and the Captum baselines of ``setting``; the
    second list names the baselines Captum refused to compute, with its message."""
    damping = 0.0 if setting.weight_decay > 0 else protocol.damping
    curvature = Curvature(model, (inputs, labels), CurvatureConfig(weight_decay=setting.weight_decay, damping=damping))
    # float32 products cannot reach 1e-10: stop where they stall instead of spending the whole budget
    rtol = protocol.rtol if setting.dtype == torch.float64 else 1e-5
    solver = SolverConfig(rtol=rtol, maxiter=setting.solve_maxiter)
    start = time.perf_counter()
    grads = training_gradients(curvature, inputs, labels)
    gradient_seconds = time.perf_counter() - start

    start = time.perf_counter()
    result = influence_scores(curvature, grads, test_x, test_y, "if", solver=solver)
    notes = {**_solve_notes(result.reports), "training_gradients_s": gradient_seconds}
    found = [Estimate("if", result.scores.double().numpy(), time.perf_counter() - start, notes)]

    start, rows, reports, ratios = time.perf_counter(), [], [], []
    for i in range(len(test_y)):
        point = (test_x[i : i + 1], test_y[i : i + 1])
        selection = select_on_data(model, *point, SelectionConfig(method="gradient", ratio=setting.gif_ratio))
        result = influence_scores(curvature, grads, *point, "gif", selection, solver)
        rows.append(result.scores[0])
        reports += result.reports
        ratios.append(selection.ratio_obtained)
    notes = {**_solve_notes(reports), "ratio_asked": setting.gif_ratio, "ratio_obtained": float(np.mean(ratios))}
    found.append(Estimate("gif", torch.stack(rows).double().numpy(), time.perf_counter() - start, notes))

    n, p = len(labels), curvature.space.numel
    failures = []
    for method in setting.captum:
        config = CaptumConfig(
            weight_decay=setting.weight_decay,
            batch_size=256,
            hessian_reg=n * (setting.weight_decay + damping),
            projection_dim=p if method == "naive" else min(50, p),
            arnoldi_dim=min(setting.arnoldi_dim, p),
            seed=protocol.seed,
        )
        start = time.perf_counter()
        try:
            scores = captum_scores(method, model, inputs, labels, test_x, test_y, config)
        except Exception as error:  # Captum raises bare Exceptions, e.g. "Arnoldi basis is empty"
            failures.append(
                {"setting": setting.label, "λ": setting.weight_decay, "method": method, "error": str(error)}
            )
            continue
        notes = {} if method == "tracincp" else {"hessian_reg": config.hessian_reg, "rank": config.projection_dim}
        if method == "arnoldi":
            notes["arnoldi_dim"] = config.arnoldi_dim
        found.append(Estimate(method, scores.double().numpy(), time.perf_counter() - start, notes))
    return found, failures


def _solve_notes(reports: tuple) -> dict:
    return {
        "max_rel_residual": max(r.rel_residual for r in reports),
        "converged": all(r.converged for r in reports),
        "hvps": sum(r.hvps for r in reports),
    }


def run_setting(setting: Setting, protocol: Protocol) -> dict:
    """Train, estimate, retrain the candidates and correlate: the table rows and diagnostics of one setting."""
    start = time.perf_counter()
    train_set, test_points, bundle = setting_data(setting, protocol)
    inputs, labels = train_set.inputs.to(setting.dtype), train_set.labels
    test_x, test_y = test_points.inputs.to(setting.dtype), test_points.labels
    model = train(setting, protocol, inputs, labels, bundle)
    info = {
        "setting": setting.label,
        "λ": setting.weight_decay,
        "δ": 0.0 if setting.weight_decay > 0 else protocol.damping,
        "dtype": str(setting.dtype).removeprefix("torch."),
        "n_train": len(labels),
        "params": sum(p.numel() for p in model.parameters()),
        "grad-norm": gradient_norm(model, inputs, labels, setting.weight_decay),
        "train acc.": accuracy(predict_proba(model, inputs), labels) / 100,  # a fraction, as the report has it
        "test acc.": accuracy(predict_proba(model, bundle.test.inputs.to(setting.dtype)), bundle.test.labels) / 100,
        "train s": time.perf_counter() - start,
        "test rows": test_points.source_index.tolist(),
    }
    found, failures = estimates(setting, protocol, model, inputs, labels, test_x, test_y)
    influence = found[0].scores
    candidates = [np.argsort(-np.abs(row), kind="stable")[: setting.top_k] for row in influence]
    union = sorted({int(z) for c in candidates for z in c})
    start = time.perf_counter()
    tolerance = protocol.tolerance(setting, training=False)
    actual, drift = leave_one_out(setting, model, inputs, labels, test_x, test_y, union, tolerance)
    info |= {
        "retrains": len(union),
        "retrain s": time.perf_counter() - start,
        "control drift": float(np.abs(drift).max()),
    }
    rows = []
    for estimate in found:
        per_point = [
            agreement(estimate.scores[i, c], np.array([actual[int(z)][i] for z in c])) for i, c in enumerate(candidates)
        ]
        rows.append(
            {
                "setting": setting.label,
                "λ": setting.weight_decay,
                "n_train": info["n_train"],
                "params": info["params"],
                "grad-norm": info["grad-norm"],
                "method": estimate.method,
                "Spearman mean": float(np.mean([a["spearman"] for a in per_point])),
                "Spearman min": float(np.min([a["spearman"] for a in per_point])),
                "Pearson mean": float(np.mean([a["pearson"] for a in per_point])),
                "sign agreement": float(np.mean([a["sign"] for a in per_point])),
                "seconds": estimate.seconds,
                "per test point": per_point,
                "notes": estimate.notes,
            }
        )
    scatter = [
        {"predicted": influence[i, c].tolist(), "actual": [float(actual[int(z)][i]) for z in c], "rows": c.tolist()}
        for i, c in enumerate(candidates)
    ]
    return {"info": info, "rows": rows, "failures": failures, "if_scatter": scatter}


def run(settings: tuple[Setting, ...], protocol: Protocol, out_dir: Path, mode: str) -> dict:
    """Run every setting and write loo.md, loo.json and loo_scatter.png (loo_MODE.* for the extra modes) into
    ``out_dir``; returns the JSON data."""
    start, cpu_start = time.perf_counter(), time.process_time()
    results = []
    for setting in settings:
        result = run_setting(setting, protocol)
        by_method = {r["method"]: r for r in result["rows"]}
        result["info"] |= {
            "IF residual": by_method["if"]["notes"]["max_rel_residual"],
            "GIF residual": by_method["gif"]["notes"]["max_rel_residual"],
            "GIF ratio": by_method["gif"]["notes"]["ratio_obtained"],
        }
        results.append(result)
        summary = ", ".join(f"{r['method']} {r['Spearman mean']:.3f}" for r in result["rows"])
        print(
            f"{setting.label} λ={setting.weight_decay:g} ({time.perf_counter() - start:.0f} s): {summary}", flush=True
        )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return write_report(results, settings, protocol, out_dir, mode, seconds, cpu_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny subsets and few candidates, for a smoke run")
    parser.add_argument(
        "--logreg-mnist-all", action="store_true", help="only L2 logistic regression on all 3,500 MNIST samples"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    if args.logreg_mnist_all:
        settings, mode = LOGREG_MNIST_ALL, "logreg_mnist_all"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the benchmark machine's other core belongs to someone else (BLAS too, below)
    try:
        with threadpool_limits(limits=1):
            run(settings, Protocol(), args.out, mode)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
