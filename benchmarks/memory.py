"""Peak memory of a class removal and of self-influence (issue 13), and the size of the dense per-sample gradient store.

    python -m benchmarks.memory [--quick] [--out DIR]

Every measurement is a fresh Python process run under ``/usr/bin/time -v``, which reports its "Maximum resident set
size" and its "Elapsed (wall clock) time":

* **baseline**: the imports alone (``import gif_core.cli, gif_core.browse, gif_core.workspace``; importing any
  module of the package loads ``gif_core/__init__``, which imports all three): torch and the library loaded,
  nothing computed, so that each measurement's increment over its imports shows;
* **class removal**: ``python -m gif_core remove --class 0 --quiet --json TMP/report.json --model M`` (GIF at the
  library's defaults; the report goes to a temporary folder);
* **self-influence**: the dashboard's "most self-influential training samples" through the library (the CLI has no
  such command): ``InfluenceBrowser(...).suspicious()`` — the per-sample gradients G = [∇ℓ_z] of every training
  sample computed into the gradient store (:mod:`gif_core.gradient_store`, a safetensors file under a cold
  temporary cache, then read in row blocks), H's top eigenpairs by Lanczos, and the low-rank IF scores
  Σ_j (v_jᵀ∇ℓ_z)²/λ_j/n.

The dense store holds n_train × n_params float32 values (4 bytes each); its size is given for the measured model,
with its actual bytes on disk, and computed (the same product, parameters counted on the built model) for the
larger settings of issue 13. Where a store exceeds this machine's memory, the page cache cannot hold it and every
product streams it from disk (or it does not fit on the disk at all): a low-memory path is then needed, and its rank
agreement is measured here on the measured model, where the exact scores exist. The path (TRAK / dattri style)
keeps only P G, with P a seeded Gaussian [n_params, k] matrix of N(0, 1/k) entries generated block by block and never
stored: inner products are kept in expectation (Johnson–Lindenstrauss), so the same low-rank IF self-influence uses
(P v_j)ᵀ(P ∇ℓ_z) for v_jᵀ∇ℓ_z, and a train-test score uses (P s_test)ᵀ(P ∇ℓ_z)/n for s_testᵀ∇ℓ_z/n. Agreement with
the exact scores: Spearman's ρ and the overlap of the top 1%.

Writes memory.md / memory.json into benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from benchmarks.common import RESULTS, markdown_table, provenance, write_results
from gif_core.browse import BrowserConfig, InfluenceBrowser
from gif_core.models import build_model
from gif_core.scores import self_influence
from gif_core.train import Recipe
from gif_core.workspace import open_workspace_path
from gif_core.zoo import default_model_path, train_and_save

TIME = Path("/usr/bin/time")
BYTES_PER_VALUE = 4  # the store is float32
MIB = 2**20
GIB = 2**30

SELF_INFLUENCE = """
import json, sys, time
from pathlib import Path
from gif_core.browse import BrowserConfig, InfluenceBrowser
from gif_core.workspace import open_workspace_path
path, cache, samples, rank, out = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
start = time.perf_counter()
workspace = open_workspace_path(path)
config = BrowserConfig(hessian_samples=samples, lowrank_rank=rank, cache_dir=cache)
browser = InfluenceBrowser(workspace.model, workspace.train, workspace.weight_decay, config)
top = browser.suspicious(16)
record = {"store": str(browser.gradients.path), "shape": browser.gradients.shape, "top_rows": [s.row for s in top]}
Path(out).write_text(json.dumps({**record, "seconds": time.perf_counter() - start}))
"""
"""The self-influence child: argv = checkpoint, cache folder, Hessian samples, Lanczos rank, JSON output path."""


@dataclass(frozen=True)
class MemoryConfig:
    """What is measured: the model (None = the bundled default), the class removed, self-influence's Hessian sample
    and Lanczos rank, and the projection dimensions and test points of the low-memory path's agreement check."""

    name: str
    removed_class: int = 0
    hessian_samples: int = BrowserConfig().hessian_samples
    rank: int = BrowserConfig().lowrank_rank
    projection_dims: tuple[int, ...] = (256, 1024, 4096)
    test_points: int = 10
    seed: int = 0


FULL = MemoryConfig("full")
QUICK = MemoryConfig("quick", hessian_samples=64, rank=8, projection_dims=(16, 64), test_points=3)
LARGER = (
    ("default CNN, the 35,000-image set of benchmarks/scaling.py", "cnn", (1, 28, 28), 35_000),
    ("default CNN, full MNIST (60,000 images)", "cnn", (1, 28, 28), 60_000),
    ("VGG-11, bundled MNIST (3,500 images)", "vgg11", (1, 28, 28), 3_500),
)
"""Issue 13's larger settings: (label, architecture, input shape, training images); 10 classes each."""


@dataclass(frozen=True)
class Measured:
    """One process under /usr/bin/time -v: its peak resident set size and wall-clock seconds."""

    label: str
    command: str
    peak_rss_bytes: int
    wall_seconds: float


def parse_time_report(text: str) -> tuple[int, float]:
    """(peak RSS in bytes, wall-clock seconds) from GNU time's ``-v`` report."""
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if rss is None or wall is None:
        raise ValueError(f"not a GNU time -v report:\n{text}")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = 60 * seconds + float(part)
    return int(rss.group(1)) * 1024, seconds


def measure_process(label: str, command: list[str], folder: Path) -> Measured:
    """Run ``command`` under ``/usr/bin/time -v`` with ``$GIF_CACHE_DIR`` in ``folder`` (nothing is written
    elsewhere); a failing command is an error that shows its output."""
    if not TIME.is_file():
        raise FileNotFoundError(f"{TIME} is missing: install GNU time (apt-get install time)")
    report = folder / f"time-{label.replace(' ', '_')}.txt"
    env = {**os.environ, "GIF_CACHE_DIR": str(folder / "cache")}
    done = subprocess.run(
        [str(TIME), "-v", "-o", str(report), *command], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{label} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    rss, seconds = parse_time_report(report.read_text())
    shown = " ".join(a if len(a) < 60 else "<snippet>" for a in ["python", *command[1:]]).replace(str(folder), "TMP")
    return Measured(label, shown, rss, seconds)


def measure_all(model_path: Path, config: MemoryConfig, folder: Path) -> tuple[list[Measured], dict]:
    """The baseline, the class removal and self-influence, one process each; and the self-influence child's record
    (the store's path, left in ``folder``, and its shape)."""
    python = sys.executable
    out = folder / "self_influence.json"
    removal = [python, "-m", "gif_core", "remove", "--class", str(config.removed_class), "--quiet"]
    removal += ["--json", str(folder / "report.json"), "--model", str(model_path)]
    scores = [python, "-c", SELF_INFLUENCE, str(model_path), str(folder / "cache" / "gradients")]
    scores += [str(config.hessian_samples), str(config.rank), str(out)]
    imports = [python, "-c", "import gif_core.cli, gif_core.browse, gif_core.workspace"]
    measured = [
        measure_process("baseline: import gif_core", imports, folder),
        measure_process("class removal (gif remove)", removal, folder),
        measure_process("self-influence (if-lowrank)", scores, folder),
    ]
    return measured, json.loads(out.read_text())


def process_rows(measured: list[Measured]) -> list[dict]:
    """Peak RSS and wall-clock per process; each measurement's increment over the baseline measured before it."""
    rows, baseline = [], None
    for m in measured:
        row = {"process": m.label, "peak RSS MiB": m.peak_rss_bytes / MIB, "wall s": m.wall_seconds}
        if m.label.startswith("baseline"):
            baseline = m
        elif baseline is not None:
            row["over its baseline MiB"] = (m.peak_rss_bytes - baseline.peak_rss_bytes) / MIB
        rows.append({**row, "command": f"`{m.command}`"})
    return rows


def machine_limits(folder: Path) -> dict:
    """This machine's physical memory and the free disk space where the store is written."""
    return {
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "free_disk_bytes": shutil.disk_usage(folder).free,
    }


def store_rows(measured_label: str, n_train: int, n_params: int, disk_bytes: int, limits: dict) -> list[dict]:
    """The dense store's size n_train × n_params × 4 bytes: measured on disk for the measured model, computed for
    :data:`LARGER` (parameters counted on the built model), each against the machine's memory and free disk."""
    settings = [(measured_label, n_train, n_params, disk_bytes)]
    for label, arch, shape, n in LARGER:
        settings.append((label, n, sum(p.numel() for p in build_model(arch, shape, 10).parameters()), None))
    rows = []
    for label, n, p, on_disk in settings:
        dense = n * p * BYTES_PER_VALUE
        rows.append(
            {
                "setting": label,
                "n_train": n,
                "n_params": p,
                "dense store GiB": dense / GIB,
                "on disk GiB": on_disk / GIB if on_disk is not None else "not built",
                "of memory (%)": 100.0 * dense / limits["memory_bytes"],
                "fits in memory": "yes" if dense <= limits["memory_bytes"] else "no",
                "fits on free disk": "yes" if dense <= limits["free_disk_bytes"] else "no",
            }
        )
    return rows


def gaussian_projection(matrix: np.ndarray, k: int, seed: int, block: int = 4096) -> torch.Tensor:
    """``matrix`` [m, p] (an array, e.g. a row block of the store) times P [p, k] of i.i.d. N(0, 1/k) entries, float32.

    P's rows are generated ``block`` at a time from generators seeded by (``seed``, block index) and never held
    whole, so every matrix meets the same P and the memory is m·block + block·k values."""
    m, p = matrix.shape
    out = torch.zeros(m, k)
    for index, start in enumerate(range(0, p, block)):
        stop = min(p, start + block)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        piece = torch.randn(stop - start, k, generator=generator) / math.sqrt(k)
        out += torch.from_numpy(np.ascontiguousarray(matrix[:, start:stop], dtype=np.float32)) @ piece
    return out


def top_overlap(exact: torch.Tensor, approximate: torch.Tensor, share: float = 0.01) -> float:
    """Percentage of the top ``share`` of ``exact`` (largest values) that is also in ``approximate``'s top."""
    count = max(1, round(share * len(exact)))
    top = set(torch.topk(exact, count).indices.tolist())
    return 100.0 * len(top & set(torch.topk(approximate, count).indices.tolist())) / count


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(stats.spearmanr(a.double().numpy(), b.double().numpy()).statistic)


def projection_agreement(model_path: Path, config: MemoryConfig, folder: Path) -> list[dict]:
    """The low-memory path against the exact scores, on the store and eigenpairs the self-influence child left in
    ``folder`` (see module docstring): per projection dimension k, self-influence and train-test scores of the
    first ``test_points`` test images, Spearman's ρ and the top-1% overlap, the projected store's size and seconds."""
    workspace = open_workspace_path(model_path)
    browser_config = BrowserConfig(
        hessian_samples=config.hessian_samples, lowrank_rank=config.rank, cache_dir=folder / "cache" / "gradients"
    )
    browser = InfluenceBrowser(workspace.model, workspace.train, workspace.weight_decay, browser_config)
    store, lowrank = browser.gradients, browser.lowrank
    n = len(store)
    exact_self = self_influence(store, "if-lowrank", browser.curvature, lowrank=lowrank).values
    test = workspace.bundle.test
    directions = torch.stack(
        [
            lowrank.apply(browser.curvature.gradient(test.inputs[i : i + 1], test.labels[i : i + 1], regulariser=False))
            for i in range(config.test_points)
        ]
    ).float()
    exact_test = store.matmul(directions.T).T / n
    keep = lowrank.eigenvalues > 0
    eigenvalues = lowrank.eigenvalues[keep].float()
    small = torch.cat([lowrank.eigenvectors[:, keep].T.float(), directions]).numpy()  # [r + test points, p]
    rows = []
    for k in config.projection_dims:
        start = time.perf_counter()
        # P depends only on (seed, column block), so projecting G row block by row block gives P G exactly
        projected = torch.cat([gaussian_projection(block, k, config.seed) for _, block in store.blocks()])
        seconds = time.perf_counter() - start
        projected_vectors, projected_directions = gaussian_projection(small, k, config.seed).split(
            [len(eigenvalues), len(directions)]
        )
        approx_self = ((projected @ projected_vectors.T).square() / eigenvalues).sum(1) / n
        approx_test = (projected_directions @ projected.T) / n
        rows.append(
            {
                "k": k,
                "projected store MiB": n * k * BYTES_PER_VALUE / MIB,
                "projection s": seconds,
                "self-influence Spearman": spearman(exact_self, approx_self),
                "self-influence top-1% overlap (%)": top_overlap(exact_self, approx_self),
                "train-test Spearman (mean)": float(
                    np.mean([spearman(e, a) for e, a in zip(exact_test, approx_test, strict=True)])
                ),
                "train-test top-1% helpful overlap (%, mean)": float(
                    np.mean([top_overlap(e, a) for e, a in zip(exact_test, approx_test, strict=True)])
                ),
            }
        )
    return rows


def quick_model(folder: Path) -> Path:
    """A small MLP on scikit-learn's 8×8 digits (3 epochs), for the quick run."""
    recipe = Recipe(lr=1e-2, weight_decay=1e-3, epochs=3, seed=0)
    return train_and_save("mlp", "digits", recipe, folder / "digits_mlp.safetensors", show_bar=False)


def report_body(config: MemoryConfig, result: dict) -> str:
    """The markdown of the result files."""
    limits = result["machine"]
    needed = result["low_memory_needed"]
    lines = [
        "# Peak memory of a class removal and of self-influence (issue 13)",
        "",
        f"Profile `{config.name}`, model `{result['model']}`. Each row is one fresh process under `/usr/bin/time -v`: "
        "its maximum resident set size and wall-clock time. The class removal is GIF at the library's defaults "
        f"(class {config.removed_class}); self-influence is the low-rank IF of every training sample (rank "
        f"{config.rank}, {config.hessian_samples}-image Hessian sample) from a cold gradient cache, the dashboard's "
        "'most self-influential samples'.",
        "",
        markdown_table(result["processes"], ["process", "peak RSS MiB", "over its baseline MiB", "wall s", "command"]),
        "",
        f"## The dense per-sample gradient store (n_train × n_params × {BYTES_PER_VALUE} bytes, float32)",
        f"This machine: {limits['memory_bytes'] / GIB:.1f} GiB of memory, {limits['free_disk_bytes'] / GIB:.1f} GiB "
        "free disk where the store is written. The store is read in 64 MB row blocks (plain file reads), so a "
        "process's resident memory stays bounded; a store larger than memory cannot stay in the page cache (every "
        "product reads it from disk again), and one larger than the free disk cannot be built.",
        "",
        markdown_table(
            result["stores"],
            [
                "setting",
                "n_train",
                "n_params",
                "dense store GiB",
                "on disk GiB",
                "of memory (%)",
                "fits in memory",
                "fits on free disk",
            ],
        ),
        "",
        "## Low-memory path: random projection of the gradients",
        result["low_memory_reason"],
    ]
    if needed:
        lines += [
            "",
            "Agreement on the measured model between the low-rank IF scores computed from the dense store "
            f"(exact) and from the projected one: self-influence of every training sample, and the train-test "
            f"scores of every training sample for the first {config.test_points} test images (mean over them). "
            "P is seeded Gaussian and never stored; 'projection s' is the pass over the dense store.",
            markdown_table(
                result["projection"],
                [
                    "k",
                    "projected store MiB",
                    "projection s",
                    "self-influence Spearman",
                    "self-influence top-1% overlap (%)",
                    "train-test Spearman (mean)",
                    "train-test top-1% helpful overlap (%, mean)",
                ],
            ),
        ]
    return "\n".join(lines)


def low_memory_decision(stores: list[dict]) -> tuple[bool, str]:
    """Needed when any listed setting's dense store does not fit in this machine's memory; the reason in words."""
    too_big = [s["setting"] for s in stores if s["fits in memory"] == "no"]
    if too_big:
        return True, (
            "Needed: the dense store exceeds this machine's memory for " + "; ".join(too_big) + ". Its rank "
            "agreement is measured on the measured model, where the exact scores exist."
        )
    return False, "Not needed: every listed setting's dense store fits in this machine's memory."


def run(config: MemoryConfig, out_dir: Path) -> dict:
    """Every measurement (see module docstring) on the bundled default (quick: a digits MLP trained first); writes
    the result files."""
    meta = provenance()
    with tempfile.TemporaryDirectory(prefix="gif-memory-") as scratch:
        folder = Path(scratch)
        path = quick_model(folder) if config is QUICK else default_model_path()
        measured, child = measure_all(path, config, folder)
        n_train, n_params = child["shape"]
        limits = machine_limits(folder)
        stores = store_rows(f"{path.name} (measured)", n_train, n_params, Path(child["store"]).stat().st_size, limits)
        needed, reason = low_memory_decision(stores)
        projection = projection_agreement(path, config, folder) if needed else []
    for row in projection:
        if not all(math.isfinite(v) for v in row.values()):
            raise FloatingPointError(f"projection agreement at k = {row['k']} is not finite: {row}")
    result = {
        "profile": config.name,
        "model": path.name,
        "machine": limits,
        "processes": process_rows(measured),
        "raw": [m.__dict__ for m in measured],
        "self_influence_top_rows": child["top_rows"],
        "stores": stores,
        "low_memory_needed": needed,
        "low_memory_reason": reason,
        "projection": projection,
    }
    write_results("memory", report_body(config, result), result, out_dir, meta)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small digits MLP, rank 8, two projection dimensions")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    config = QUICK if args.quick else FULL
    print(report_body(config, run(config, args.out)))


if __name__ == "__main__":
    main()
