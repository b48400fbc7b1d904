"""One process against several (torch.distributed, issue 13): the bundled CNN's class-0 GIF removal at the library's
defaults (``EditConfig()``), and Hessian-vector products over a larger Hessian sample, where sharding can pay off.

    python -m benchmarks.distributed [--quick] [--out DIR] [--procs 1,2] [--threads-total T]
    python -m benchmarks.distributed --device cuda --backend nccl --procs 1,2,4      # on a GPU machine

The machine's T CPU threads (default: all cores) are shared fairly: one process is timed with 1 thread and with T
threads (the two single-process baselines), N processes with T/N threads each, launched by ``torchrun`` on
loopback. Sharded, every rank holds 1/N of the Hessian sample's rows and of the request's rows; each product and
gradient is the all-reduced sum of the ranks' partial sums, H v = Σ_ranks Σ_{i∈shard} w_i ∇²ℓ_i v + (λ+δ) v with
w_i = 1/N_global, and the solver runs replicated on every rank (the edit's Δ is checked to be bit-identical across
ranks). Everything else of an edit (selection, the validation step search, the metrics) is replicated, not sharded.

Timings are medians over repeats after one untimed warm-up run (none with ``--quick``), each between barriers so
that they cover the slowest rank. Δ and H v are compared with the 1-process, 1-thread run: the relative difference
‖a − b‖/‖b‖ is float summation-order noise (the CNN is float32), of the same order as what changing the thread
count alone does (the 1×T row).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from benchmarks.common import RESULTS, edit_config, markdown_table, provenance, write_results
from gif_core import distributed
from gif_core.checkpoints import load_checkpoint
from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.data import DataBundle, load_data, seeded_subset
from gif_core.experiment import EditConfig, run_edit
from gif_core.requests import ClassRemoval
from gif_core.zoo import default_model_path


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one configuration measures: the edit's config and repeats, the HVP sample size and products."""

    edit: EditConfig
    edit_repeats: int
    warm_up: bool
    hvp_samples: int
    hvp_products: int


FULL = Setting(EditConfig(), edit_repeats=3, warm_up=True, hvp_samples=2000, hvp_products=5)
QUICK = Setting(
    edit_config(hessian_samples=32),
    edit_repeats=1,
    warm_up=False,
    hvp_samples=128,
    hvp_products=2,
)


def _synchronise() -> None:
    """Wait for every rank (and the GPU): a timing then covers the slowest rank."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    if distributed.world() is not None:
        dist.barrier()


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    _synchronise()
    start = time.perf_counter()
    value = fn()
    _synchronise()
    return time.perf_counter() - start, value


def measure_edit(model: torch.nn.Module, card, bundle: DataBundle, setting: Setting) -> dict:
    """Seconds of one class-0 removal (GIF) end to end, and its Δ, step and metrics."""

    def edit():
        return run_edit(model, card, bundle, ClassRemoval(0), setting.edit)

    if setting.warm_up:
        edit()
    runs = [_timed(edit) for _ in range(setting.edit_repeats)]
    report = runs[-1][1]
    gif = report.outcomes[0]
    distributed.check_replicated("The GIF Δ", gif.result.delta)
    return {
        "edit_s": statistics.median(s for s, _ in runs),
        "edit_runs_s": [s for s, _ in runs],
        "delta": gif.result.delta.detach().to("cpu", torch.float64),
        "step": gif.step,
        "hvps": gif.result.hvps,
        "forget_acc": gif.metrics["forget_acc"],
        "retain_acc": gif.metrics["retain_acc"],
    }


def measure_hvp(model: torch.nn.Module, card, bundle: DataBundle, setting: Setting, device: torch.device) -> dict:
    """Seconds per product over ``hvp_samples`` seeded training rows, plain and linearised (and the trace)."""
    rows = seeded_subset(torch.arange(len(bundle.train)), setting.hvp_samples, seed=0)
    sample = (bundle.train.inputs[rows], bundle.train.labels[rows])
    config = CurvatureConfig(
        weight_decay=float(card.recipe.get("weight_decay", 0.0)), damping=EditConfig().curvature.damping
    )
    out: dict = {}
    for name, linearize in (("plain", False), ("linearized", True)):
        curvature = Curvature(model, sample, dataclasses.replace(config, linearize=linearize))
        v = torch.randn(curvature.space.numel, generator=torch.Generator().manual_seed(0)).to(device)
        out[f"trace_{name}_s"], _ = _timed(curvature.warm)
        curvature.hvp(v)  # warm-up
        runs = [_timed(lambda c=curvature, v=v: c.hvp(v)) for _ in range(setting.hvp_products)]
        out[f"hvp_{name}_s"] = statistics.median(s for s, _ in runs)
        out[f"hv_{name}"] = runs[-1][1].detach().to("cpu", torch.float64)
    return out


def worker(args: argparse.Namespace) -> None:
    """One configuration: every rank measures, rank 0 saves the records to ``args.result``."""
    setting = QUICK if args.quick else FULL
    device = distributed.rank_device(args.device)
    with distributed.process_group_from_env(args.device, args.backend) as world:
        model, card = load_checkpoint(default_model_path(), device=device)
        bundle = load_data(card.dataset, seed=card.split_seed)
        records = []
        for threads in args.threads:
            torch.set_num_threads(threads)
            edit = measure_edit(model, card, bundle, setting)
            records.append({"threads": threads, **edit, **measure_hvp(model, card, bundle, setting, device)})
        if world is None or world.lead:
            torch.save({"procs": world.size if world else 1, "records": records}, args.result)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(procs: int, threads: list[int], args: argparse.Namespace, folder: Path) -> dict:
    """Run the worker in ``procs`` processes (torchrun on loopback for more than one) and read rank 0's records."""
    result = folder / f"procs{procs}.pt"
    command = ["-m", "benchmarks.distributed", "--worker", "--result", str(result), "--device", args.device]
    command += ["--threads", ",".join(map(str, threads))] + (["--quick"] if args.quick else [])
    command += ["--backend", args.backend] if args.backend else []
    if procs > 1:
        launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(procs)]
        command = [*launcher, "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(threads))}
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    subprocess.run([sys.executable, *command], env=env, check=True)
    return torch.load(result, weights_only=True)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def table_rows(runs: list[dict], total_threads: int) -> list[dict]:
    """One row per processes × threads, with speed-ups against both single-process baselines."""
    records = [(run["procs"], r) for run in runs for r in run["records"]]
    base = {r["threads"]: r for procs, r in records if procs == 1}
    one, full = base[1], base.get(total_threads, base[1])
    rows = []
    for procs, r in records:
        row = {"config": f"{procs}×{r['threads']}", "processes": procs, "threads each": r["threads"]}
        for key, label in (("edit_s", "edit"), ("hvp_plain_s", "HVP"), ("hvp_linearized_s", "HVP lin.")):
            row[f"{label} s"] = r[key]
            row[f"{label} speed-up vs 1×1"] = one[key] / r[key]
            row[f"{label} speed-up vs 1×{total_threads}"] = full[key] / r[key]
        row["trace s"] = r["trace_linearized_s"]
        row["Δ rel. diff vs 1×1"] = _rel(r["delta"], one["delta"])
        row["Hv rel. diff vs 1×1"] = _rel(r["hv_plain"], one["hv_plain"])
        row["Hv lin. rel. diff vs 1×1"] = _rel(r["hv_linearized"], one["hv_linearized"])
        row.update({k: r[k] for k in ("step", "hvps", "forget_acc", "retain_acc")})
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: small samples, one repeat, no warm-up")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts (1 is always run)")
    parser.add_argument("--threads-total", type=int, default=os.cpu_count() or 1, help="CPU threads to share")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: one GPU per process")
    parser.add_argument("--backend", choices=("gloo", "nccl"), help="default: nccl for cuda, gloo for cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    meta = provenance()
    total = args.threads_total
    procs = sorted({1, *(int(p) for p in args.procs.split(","))})
    setting = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory() as folder:
        runs = [launch(1, sorted({1, total}), args, Path(folder))]
        runs += [launch(n, [max(1, total // n)], args, Path(folder)) for n in procs if n > 1]
    rows = table_rows(runs, total)
    edit_columns = ["config", "edit s", "edit speed-up vs 1×1", f"edit speed-up vs 1×{total}", "Δ rel. diff vs 1×1"]
    edit_columns += ["hvps", "step", "forget_acc", "retain_acc"]
    hvp_columns = ["config", "HVP s", "HVP speed-up vs 1×1", f"HVP speed-up vs 1×{total}", "Hv rel. diff vs 1×1"]
    hvp_columns += ["HVP lin. s", "HVP lin. speed-up vs 1×1", f"HVP lin. speed-up vs 1×{total}", "trace s"]
    hvp_columns += ["Hv lin. rel. diff vs 1×1"]
    edit = setting.edit
    backend = args.backend or ("nccl" if args.device == "cuda" else "gloo")
    quick = f", quick: Hessian sample {edit.curvature.samples}" if args.quick else ""
    body = f"""# One process against several: sharded curvature with torch.distributed

Config `P×T`: P processes with T torch threads each, on {args.device} ({backend}); rank r holds 1/P of the Hessian
sample's rows and of the request's rows, each product is the all-reduced sum of the ranks' partial sums, and the
solver runs replicated on every rank (Δ checked bit-identical across ranks). Selection, the validation step search
and the metrics are replicated, not sharded. Relative differences are ‖a − b‖/‖b‖ against the 1×1 run (float32
summation-order noise; the 1×{total} row shows what changing the thread count alone does).

## Class-0 GIF removal on the bundled CNN (`EditConfig()`{quick})

Hessian sample {edit.curvature.samples}, {edit.solver.maxiter} LSMR iterations, step α searched on validation; seconds end to end
(`run_edit`: g, selection, solve, step search, metrics), median of {setting.edit_repeats}
{"after one untimed warm-up" if setting.warm_up else "(no warm-up)"}.

{markdown_table(rows, edit_columns)}

## Hessian-vector products over {setting.hvp_samples} training images

Seconds per product (median of {setting.hvp_products} after one warm-up product), plain (`jvp` of `grad`) and
linearised (`CurvatureConfig(linearize=True)`, traced once, each rank tracing its own shard: `trace s`).

{markdown_table(rows, hvp_columns)}
"""
    data = {"setting": dataclasses.asdict(setting), "threads_total": total, "device": args.device, "rows": rows}
    write_results("distributed", body, data, args.out, meta)


if __name__ == "__main__":
    main()
