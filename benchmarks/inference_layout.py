"""How the inputs of a forward pass are laid out and batched, and what that costs on CPU (issue 13).

    python -m benchmarks.inference_layout [--quick] [--out DIR]

Scoring a candidate step α is one forward pass of θ + α·Δ over the validation images (``functional_call``, no
gradient), and the What-if page's click runs about 30 of them (the step searches of GIF and IF, then the metrics):
profiled inside the dashboard, forward passes were about two thirds of the server's answer. Here the same pass over
560 images (the bundled default's validation split plus its questioned images) is timed for every architecture of
the table, in NCHW (``torch.contiguous_format``, how the data is stored) and NHWC (``torch.channels_last``: oneDNN's
convolutions and max-pooling run on it without reordering), in batches of 64, 128, 256 and 1024 (1024 was the
library's default: one batch). Variants are interleaved round by round and reported as the median over rounds, with
the largest deviation of their probabilities from the NCHW/1024 ones (so a fast wrong variant cannot win). The
weights are the bundled default's for the CNN and a seeded initialisation for the others (a forward pass costs the
same whatever the weights are).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch
from torch.func import functional_call

from benchmarks.common import RESULTS, markdown_table, provenance, write_results
from gif_core.checkpoints import load_checkpoint
from gif_core.data import load_data
from gif_core.models import build_model
from gif_core.zoo import default_model_path

IMAGES = 560
BATCHES = (64, 128, 256, 1024)
LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}
ARCHITECTURES = ("cnn", "lenet", "mlp", "vgg11", "resnet18", "mobilenet_v3_small")
BASELINE = ("NCHW", 1024)


def _forward(model: torch.nn.Module, inputs: torch.Tensor, batch: int) -> torch.Tensor:
    params = {k: v.detach() for k, v in model.named_parameters()}
    with torch.no_grad():
        chunks = [functional_call(model, params, (inputs[i : i + batch],)) for i in range(0, len(inputs), batch)]
    return torch.softmax(torch.cat(chunks).float(), dim=1)


def time_model(name: str, model: torch.nn.Module, images: torch.Tensor, rounds: int) -> list[dict]:
    """One row per (layout, batch): median seconds over interleaved rounds, speed-up over the baseline and the
    largest probability deviation from it."""
    model.eval()
    laid_out = {layout: images.to(memory_format=fmt) for layout, fmt in LAYOUTS.items()}  # restrides even C = 1
    variants = [(layout, batch) for layout in LAYOUTS for batch in BATCHES]
    reference = _forward(model, laid_out[BASELINE[0]], BASELINE[1])
    deviation = {v: float((_forward(model, laid_out[v[0]], v[1]) - reference).abs().max()) for v in variants}
    seconds: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for layout, batch in random.sample(variants, len(variants)):
            start = time.perf_counter()
            _forward(model, laid_out[layout], batch)
            seconds[(layout, batch)].append(time.perf_counter() - start)
    base = statistics.median(seconds[BASELINE])
    return [
        {
            "model": name,
            "layout": layout,
            "batch": batch,
            "seconds": statistics.median(seconds[(layout, batch)]),
            "speed-up over NCHW/1024": base / statistics.median(seconds[(layout, batch)]),
            "max |Δp| vs NCHW/1024": deviation[(layout, batch)],
        }
        for layout, batch in variants
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CNN only, few rounds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    meta = provenance()
    random.seed(0)
    cnn, card = load_checkpoint(default_model_path())
    images = load_data(card.dataset, seed=card.split_seed).train.inputs[:IMAGES]
    shape, classes = tuple(images.shape[1:]), card.num_classes
    rows = time_model("cnn (bundled default)", cnn, images, rounds=5 if args.quick else 30)
    for arch in () if args.quick else ARCHITECTURES[1:]:
        torch.manual_seed(0)
        heavy = arch in ("vgg11", "resnet18")
        rows += time_model(arch, build_model(arch, shape, classes), images, rounds=3 if heavy else 10)
    best = {}
    for row in rows:
        if row["model"] not in best or row["seconds"] < best[row["model"]]["seconds"]:
            best[row["model"]] = row
    summary = [
        {"model": m, "fastest": f"{r['layout']}/{r['batch']}", "speed-up over NCHW/1024": r["speed-up over NCHW/1024"]}
        for m, r in best.items()
    ]
    columns = ["model", "layout", "batch", "seconds", "speed-up over NCHW/1024", "max |Δp| vs NCHW/1024"]
    body = f"""# Forward passes: input layout and batch size (CPU)

{__doc__.split(chr(10) + chr(10))[2]}

## Fastest variant per model
{markdown_table(summary, ["model", "fastest", "speed-up over NCHW/1024"])}

## Every variant ({IMAGES} images of shape {shape})
{markdown_table(rows, columns)}
"""
    write_results("inference_layout", body, {"rows": rows, "images": IMAGES}, args.out, meta)
    print(body)


if __name__ == "__main__":
    main()
