"""What a Hessian-vector product costs against a gradient, and what makes it cheaper (issue 13).

    python -m benchmarks.hvp [--quick] [--compile] [--out DIR]

On the bundled default CNN, over batches of 128 and 512 training images, every variant below is timed in the same
run, interleaved round by round (so a busy moment of the shared machine hits all of them alike), and reported as the
median over rounds, divided by the median of the gradient (``torch.func.grad`` of the mean cross-entropy, the
cost unit):

* ``jvp(grad)`` — forward-over-reverse, what :class:`gif_core.curvature.Curvature` did before issue 13;
* ``autograd double backward`` — reverse-over-reverse with ``torch.autograd.grad(create_graph=True)``;
* ``linearized`` — ``torch.func.linearize`` of the gradient at θ, traced once per batch: each product evaluates only
  the tangent pass (``CurvatureConfig(linearize=True)``); its one-off trace is reported with the break-even
  number of products (trace seconds / seconds saved per product);
* ``jvp(grad), float64`` — the same product in double precision (the Krylov recurrences are float64 either way:
  scipy's solvers run on float64 host vectors, only the products are in the model's precision);
* ``jvp(grad), 1 thread`` — torch's intra-op threads at 1 instead of the machine's default;
* ``jvp(grad), strided input`` — the batch as a non-contiguous view (every other image of a larger tensor), to see
  whether keeping the Hessian sample as one contiguous tensor matters;
* ``torch.compile(jvp(grad))`` — only with ``--compile`` (its compile takes tens of seconds on this CPU).

Every product is checked against the float64 one (relative error reported), so a fast wrong variant cannot win.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.func import functional_call, grad, jvp, linearize
from torch.nn import functional as F

from benchmarks.common import RESULTS, markdown_table, write_results
from gif_core.checkpoints import load_checkpoint
from gif_core.data import load_data
from gif_core.zoo import default_model_path

Params = dict[str, torch.Tensor]


def _loss(model: torch.nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(functional_call(model, params, (x,)), y)


def _flat(tensors: Params | tuple[torch.Tensor, ...]) -> torch.Tensor:
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return torch.cat([t.reshape(-1).to(torch.float64) for t in values])


def variants(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, with_compile: bool) -> dict[str, dict]:
    """name → {"run": zero-argument callable returning the product (or gradient), "setup_seconds": one-off cost}."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    tangent = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in params.items()}
    loss = partial(_loss, model)

    def loss_grad(p: Params, inputs: torch.Tensor = x) -> Params:
        return grad(loss)(p, inputs, y)

    def double_backward() -> tuple[torch.Tensor, ...]:
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
        grads = torch.autograd.grad(loss(leaves, x, y), list(leaves.values()), create_graph=True)
        dot = sum((g * tangent[k]).sum() for g, k in zip(grads, leaves, strict=True))
        return torch.autograd.grad(dot, list(leaves.values()))

    start = time.perf_counter()
    _, tangent_map = linearize(loss_grad, params)
    trace_seconds = time.perf_counter() - start
    model64 = copy.deepcopy(model).double()
    params64 = {k: v.double() for k, v in params.items()}
    tangent64 = {k: v.double() for k, v in tangent.items()}
    x64 = x.double()
    strided = torch.stack([x, x], dim=1).reshape(2 * len(x), *x.shape[1:])[::2]

    def with_one_thread() -> Params:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return jvp(loss_grad, (params,), (tangent,))[1]
        finally:
            torch.set_num_threads(threads)

    out = {
        "gradient": {"run": lambda: loss_grad(params), "setup_seconds": 0.0},
        "jvp(grad)": {"run": lambda: jvp(loss_grad, (params,), (tangent,))[1], "setup_seconds": 0.0},
        "autograd double backward": {"run": double_backward, "setup_seconds": 0.0},
        "linearized": {"run": lambda: tangent_map(tangent), "setup_seconds": trace_seconds},
        "jvp(grad), float64": {
            "run": lambda: jvp(lambda p: grad(partial(_loss, model64))(p, x64, y), (params64,), (tangent64,))[1],
            "setup_seconds": 0.0,
        },
        "jvp(grad), 1 thread": {"run": with_one_thread, "setup_seconds": 0.0},
        "jvp(grad), strided input": {
            "run": lambda: jvp(partial(loss_grad, inputs=strided), (params,), (tangent,))[1],
            "setup_seconds": 0.0,
        },
    }
    if with_compile:
        compiled = torch.compile(lambda p, t: jvp(loss_grad, (p,), (t,))[1])
        start = time.perf_counter()
        compiled(params, tangent)
        out["torch.compile(jvp(grad))"] = {
            "run": lambda: compiled(params, tangent),
            "setup_seconds": time.perf_counter() - start,
        }
    return out


def time_rounds(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each callable over ``rounds`` interleaved rounds (after one warm-up call each)."""
    for run in runs.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def measure(batch: int, rounds: int, with_compile: bool) -> list[dict]:
    model, card = load_checkpoint(default_model_path())
    model.eval()
    bundle = load_data(card.dataset, seed=card.split_seed)
    x, y = bundle.train.inputs[:batch].contiguous(), bundle.train.labels[:batch]
    found = variants(model, x, y, with_compile)
    reference = _flat(found["jvp(grad), float64"]["run"]())
    seconds = time_rounds({name: v["run"] for name, v in found.items()}, rounds)
    rows = []
    for name, spec in found.items():
        row = {
            "batch": batch,
            "variant": name,
            "median ms": 1e3 * seconds[name],
            "× gradient": seconds[name] / seconds["gradient"],
            "one-off setup s": spec["setup_seconds"],
        }
        if name != "gradient":
            product = _flat(spec["run"]())
            row["rel. error vs float64"] = float((product - reference).norm() / reference.norm())
            saved = seconds["jvp(grad)"] - seconds[name]
            if spec["setup_seconds"] > 0:
                row["break-even products"] = spec["setup_seconds"] / saved if saved > 0 else float("inf")
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batches of 16 and 32, 3 rounds (a smoke test)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    batches, rounds = ((16, 32), 3) if args.quick else ((128, 512), args.rounds)
    rows = [row for batch in batches for row in measure(batch, rounds, args.compile)]
    goal = {(r["batch"], r["variant"]): r["× gradient"] for r in rows if r["variant"] in ("jvp(grad)", "linearized")}
    summary = [
        {
            "batch": b,
            "before: jvp(grad) × gradient": goal[(b, "jvp(grad)")],
            "after: linearized × gradient": goal[(b, "linearized")],
            "goal ≤ 2.0 met": goal[(b, "linearized")] <= 2.0,
        }
        for b in batches
    ]
    columns = [
        "batch", "variant", "median ms", "× gradient", "one-off setup s", "break-even products",
        "rel. error vs float64",
    ]  # fmt: skip
    body = f"""# Hessian-vector product vs gradient on the bundled CNN (issue 13)

Median of {rounds} interleaved rounds per variant; the gradient is the cost unit. What the library keeps:
`CurvatureConfig(linearize=True)` (see `gif_core/curvature.py`), used where one Hessian serves many products.

## Before / after
{markdown_table(summary, list(summary[0]))}

## Every variant
{markdown_table(rows, columns)}
"""
    print(write_results("hvp", body, {"rounds": rounds, "rows": rows, "summary": summary}, args.out))


if __name__ == "__main__":
    main()
