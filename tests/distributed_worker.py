"""What tests/test_distributed.py computes in each process: run as ``torchrun --nproc-per-node 2
tests/distributed_worker.py OUT_DIR`` (each rank saves its results to OUT_DIR/rank<r>.pt), and imported by the test
for the single-process reference. The same functions serve both: only the process group differs."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
from pathlib import Path

import torch
from conftest import blobs, tiny_convnet, tiny_mlp
from torch.nn.utils import parameters_to_vector

from gif_core import cli, distributed
from gif_core.checkpoints import load_checkpoint
from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.data import DataBundle, load_data
from gif_core.experiment import EditConfig, run_edit
from gif_core.requests import ClassRemoval, LabelChange
from gif_core.selection import SelectionConfig
from gif_core.zoo import bundled_model_path

SHARDED_METHODS = ("gif", "fif", "pif", "if", "sif", "tracin", "datainf", "hyperinf")
"""Every estimator but EK-FAC, which refuses a sharded curvature (curvlinops sums over one process's data)."""
N_ROWS = 61  # odd: the two shards differ in size
SUBSET = 25  # rows of a second gradient, over another set than the Hessian sample


def curvature_products(kind: str) -> dict[str, torch.Tensor]:
    """Products, gradients, Fisher and per-sample gradients of a tiny float64 MLP or conv net (λ = 0.01, δ = 0.1),
    in batches of 16 rows: each shard spans two batches, and a linearised product traces once per batch."""
    model, data = (tiny_mlp(), blobs(N_ROWS)) if kind == "mlp" else (tiny_convnet(), blobs(N_ROWS, image=True))
    sample = (data.inputs, data.labels)
    config = CurvatureConfig(weight_decay=0.01, damping=0.1, batch_size=16)
    plain = Curvature(model, sample, config)
    traced = Curvature(model, sample, dataclasses.replace(config, linearize=True))
    ggn = Curvature(model, sample, dataclasses.replace(config, gauss_newton=True))
    vectors = torch.randn(3, plain.space.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    blocks = list(plain.per_sample_gradients(data.inputs, data.labels, shard=True))
    local = torch.cat(blocks) if blocks else torch.zeros(0, plain.space.numel, dtype=torch.float64)
    return {
        "hvp": torch.stack([plain.hvp(v) for v in vectors]),
        "hvp_linearized": torch.stack([traced.hvp(v) for v in vectors]),
        "hvp_gauss_newton": torch.stack([ggn.hvp(v) for v in vectors]),
        "gradient": plain.gradient(data.inputs, data.labels),
        "gradient_subset": plain.gradient(data.inputs[:SUBSET], data.labels[:SUBSET], regulariser=False),
        "fisher": plain.fisher_diagonal(),
        "per_sample": distributed.assemble_rows(local, plain.shard_of(N_ROWS), N_ROWS),
        "n_samples": torch.tensor(plain.n_samples),
        "local_rows": torch.tensor(sum(len(y) for _, y in plain._batches())),
    }


def iris_float64() -> tuple[torch.nn.Module, object, DataBundle]:
    """The bundled iris MLP and its data in float64 (so that 1e-6 is far above the summation-order noise)."""
    model, card = load_checkpoint(bundled_model_path("iris_mlp"))
    bundle = load_data(card.dataset, seed=card.split_seed)
    splits = {
        name: dataclasses.replace(getattr(bundle, name), inputs=getattr(bundle, name).inputs.double())
        for name in ("train", "val", "test")
    }
    return model.double(), card, dataclasses.replace(bundle, **splits)


def edits() -> dict[str, object]:
    """A class removal with every estimator that runs sharded (all but EK-FAC) at the library's defaults, and a label change with the
    curvature-aware selector (the Fisher) and a re-linearised second step (the exact newton gradient)."""
    model, card, bundle = iris_float64()
    removal = run_edit(model, card, bundle, ClassRemoval(0), EditConfig(methods=SHARDED_METHODS))
    change = run_edit(
        model,
        card,
        bundle,
        LabelChange((0, 1, 2), tuple((int(y) + 1) % 3 for y in bundle.train.labels[:3])),
        EditConfig(("gif",), SelectionConfig("curvature"), iterations=2),
    )
    out: dict[str, object] = {}
    for name, report in (("removal", removal), ("change", change)):
        out[f"{name}_report"] = report.to_dict()
        for outcome in report.outcomes:
            out[f"{name}_{outcome.method}_delta"] = outcome.result.delta
            out[f"{name}_{outcome.method}_edited"] = parameters_to_vector(outcome.model.parameters()).detach()
    return out


def refused_retrain() -> tuple[int, str]:
    """``gif remove --retrain`` inside the process group: the exit status and what this rank printed."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = cli.main(["remove", "--model", str(bundled_model_path("iris_mlp")), "--class", "0", "--retrain"])
    return status, stderr.getvalue()


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    with distributed.process_group_from_env() as world:
        if world is None:
            raise RuntimeError("the worker must run under torchrun with 2 processes")
        results = {
            f"{kind}_{key}": value for kind in ("mlp", "conv") for key, value in curvature_products(kind).items()
        }
        results.update(edits())
        results["retrain_status"], results["retrain_stderr"] = refused_retrain()
        torch.save(results, out_dir / f"rank{world.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
