"""Cost where retraining is expensive (issue 13): GIF end to end against retraining as the training set grows.

    python -m benchmarks.scaling [--quick] [--out DIR]

For training sets of 500, 1,000, 2,000 and 3,500 bundled-MNIST images (nested seeded subsets of the bundled training
split) and a 10× set built from the 3,500 (each image plus 9 seeded random shifts of ±2 px and rotations of ±10°:
35,000 real training samples), the default CNN is trained with the bundled CNN's recipe (cached on disk, keyed by
the training content, recipe and torch's thread count). Then, side by side in one run, for the removal of class 0:

* **retraining**: the same architecture, recipe and seed trained on the set without the class, really trained
  (never from a cache); its seconds are the whole ``build_and_train`` call;
* **GIF end to end**: :func:`gif_core.experiment.run_edit` with the library defaults for GIF alone (request
  gradient and Hessian sample, selection, solve, the validation step search, and the metrics of the original and
  edited model), the median wall-clock of ``gif_repeats`` runs.

Per size: both times, their ratio, the Hessian-vector products, and the forget/retain accuracy (test split) of the
edited and of the retrained model, so that a fast but useless edit shows. Straight lines fitted to both times
against the training-set size give the crossover and an extrapolation to 60,000 (full MNIST) and 50,000 (CIFAR-10)
images, marked as such. The same for VGG-11 (its paper-benchmark recipe and Hessian sample, 28×28 inputs: its
pools round up, so no padding). Validation and test splits are the bundled ones (500 / 1,000 images) at every size.

Writes scaling.md / scaling.json / scaling.png into benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.common import RESULTS, edit_config, markdown_table, provenance, write_results
from benchmarks.paper_setup import VGG, flatten_outcome
from gif_core.cache_files import default_cache_dir
from gif_core.checkpoints import ModelCard, load_checkpoint, save_checkpoint
from gif_core.data import DataBundle, LabelledSet, load_data, seeded_subset
from gif_core.experiment import EditConfig, build_scenario, evaluate_model, run_edit
from gif_core.requests import ClassRemoval
from gif_core.retrain import edited_training_set
from gif_core.train import Recipe, build_and_train
from gif_core.zoo import MNIST_CNN_RECIPE

DATASET = "mnist-bundled"
EXTRAPOLATE_TO = (
    (60_000, "full MNIST (60,000 images)", "the measured per-image costs of 1×28×28 MNIST, extended linearly"),
    (
        50_000,
        "CIFAR-10 size (50,000 images)",
        "rough lower bound: the same recipe per image as on MNIST, but CIFAR-10's 3×32×32 inputs make every "
        "forward and backward pass dearer (3 input channels, 1.3× the pixels), for retraining and GIF alike",
    ),
)
GOALS = {"default CNN": 5.0, "VGG-11": 20.0}
"""The issue's goals: GIF/retraining (%) at most this, on the 10× set (CNN) and at 3,500 images (VGG-11)."""


@dataclass(frozen=True)
class ModelScaling:
    """One architecture of the benchmark: its training recipe, the edit's settings, the sizes it is measured at,
    whether the 10× augmented set is measured too, and how many GIF runs the median is over."""

    label: str
    arch: str
    recipe: Recipe
    edit: EditConfig
    sizes: tuple[int, ...]
    augmented: bool
    gif_repeats: int


@dataclass(frozen=True)
class ScalingConfig:
    """The models, the class removed, and the augmented set (built from ``augment_source`` training images)."""

    name: str
    models: tuple[ModelScaling, ...]
    augment_source: int
    removed_class: int = 0
    copies: int = 10
    max_shift: int = 2
    max_degrees: float = 10.0
    seed: int = 0


GIF_DEFAULTS = EditConfig(methods=("gif",))
FULL = ScalingConfig(
    "full",
    models=(
        ModelScaling("default CNN", "cnn", MNIST_CNN_RECIPE, GIF_DEFAULTS, (500, 1000, 2000, 3500), True, 3),
        # VGG-11 with its paper-benchmark recipe and Hessian sample (benchmarks/paper_setup.py); one GIF run a
        # size (a minute each: the noise of one run is small against it)
        ModelScaling(
            "VGG-11",
            "vgg11",
            VGG.recipe,
            edit_config(GIF_DEFAULTS, hessian_samples=VGG.hessian_samples),
            (500, 1000, 2000, 3500),
            False,
            1,
        ),
    ),
    augment_source=3500,
)
QUICK = ScalingConfig(
    "quick",
    models=(
        ModelScaling(
            "default CNN", "cnn", dataclasses.replace(MNIST_CNN_RECIPE, epochs=1), GIF_DEFAULTS, (200, 400), True, 1
        ),
    ),
    augment_source=40,
)


def affine_parameters(
    keys: torch.Tensor, copies: int, seed: int, max_shift: int, max_degrees: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation angles [N, copies] (degrees, uniform in ±``max_degrees``) and shifts [N, copies, 2] (whole pixels
    in ±``max_shift``, x then y), drawn for each image from a generator seeded by (``seed``, its key): an image gets
    the same copies whichever set it is in. Copy 0 is the identity."""
    angles = torch.zeros(len(keys), copies)
    shifts = torch.zeros(len(keys), copies, 2)
    for row, key in enumerate(keys.tolist()):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + key)
        angles[row, 1:] = (2 * torch.rand(copies - 1, generator=generator) - 1) * max_degrees
        shifts[row, 1:] = torch.randint(-max_shift, max_shift + 1, (copies - 1, 2), generator=generator).float()
    return angles, shifts


def shift_rotate(images: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Each image [N, C, H, W] rotated about its centre by ``angles`` [N] degrees and shifted by ``shifts`` [N, 2]
    pixels, bilinear with zero fill: torchvision's ``transforms.v2.functional.affine`` (same angle sign and
    translation), batched through one ``affine_grid``/``grid_sample`` call."""
    n, _, height, width = images.shape
    radians = torch.deg2rad(-angles)
    cos, sin = torch.cos(radians), torch.sin(radians)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    offset = torch.stack([2 * shifts[:, 0] / width, 2 * shifts[:, 1] / height], dim=1)
    theta[:, :, 2] = -(theta[:, :, :2] @ offset.unsqueeze(2)).squeeze(2)  # output → input: R⁻¹(x − t)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(
    images: torch.Tensor,
    keys: torch.Tensor,
    copies: int = 10,
    seed: int = 0,
    max_shift: int = 2,
    max_degrees: float = 10.0,
) -> torch.Tensor:
    """``copies`` versions of every image [N, C, H, W] → [N·copies, C, H, W], image i's at rows i·copies … : the
    original first, then seeded random shifts and rotations (:func:`affine_parameters`, keyed by ``keys``)."""
    angles, shifts = affine_parameters(keys, copies, seed, max_shift, max_degrees)
    repeated = images.repeat_interleave(copies, dim=0)
    moved = shift_rotate(repeated, angles.reshape(-1), shifts.reshape(-1, 2))
    moved[::copies] = images  # copy 0 is the image itself, not its bilinear resampling
    return moved


def augmented_set(train: LabelledSet, config: ScalingConfig) -> LabelledSet:
    """The 10× training set: every image of ``train`` and its shifted/rotated copies, keyed by the source index
    (which the copies keep, with the label)."""
    inputs = augment(train.inputs, train.source_index, config.copies, config.seed, config.max_shift, config.max_degrees)
    return LabelledSet(
        inputs=inputs,
        labels=train.labels.repeat_interleave(config.copies),
        source_index=train.source_index.repeat_interleave(config.copies),
    )


def augmentation_summary(source: LabelledSet, augmented: LabelledSet, copies: int) -> dict:
    """How many samples the 10× set has, and how many of the added copies differ from their source image."""
    grouped = augmented.inputs.reshape(len(source), copies, *source.inputs.shape[1:])
    added = grouped[:, 1:] - source.inputs.unsqueeze(1)
    changed = added.flatten(2).abs().amax(dim=2) > 0
    return {
        "source_images": len(source),
        "samples": len(augmented),
        "copies": copies,
        "first_copy_is_source": bool(torch.equal(grouped[:, 0], source.inputs)),
        "added_copies_changed_pct": 100.0 * float(changed.float().mean()),
        "mean_abs_pixel_change": float(added.abs().mean()),
    }


def subsets(bundle: DataBundle, sizes: tuple[int, ...], seed: int) -> list[tuple[str, LabelledSet]]:
    """(label, training set) for each size: nested seeded subsets of the bundled training split."""
    rows = torch.arange(len(bundle.train))
    return [(f"{n:,} images", bundle.train.subset(seeded_subset(rows, n, seed))) for n in sizes]


def _content_key(arch: str, recipe: Recipe, train: LabelledSet) -> str:
    """Hash of what a trained model depends on: architecture, recipe, training inputs and labels, thread count."""
    digest = hashlib.sha256(json.dumps({"arch": arch, "recipe": recipe.to_dict()}, sort_keys=True).encode())
    digest.update(f"threads={torch.get_num_threads()}".encode())
    for tensor in (train.inputs, train.labels):
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def cached_model(arch: str, recipe: Recipe, bundle: DataBundle, note: str) -> tuple[nn.Module, ModelCard]:
    """``arch`` trained with ``recipe`` on ``bundle.train``, from ``$GIF_CACHE_DIR/benchmarks`` when trained before."""
    path = default_cache_dir() / "benchmarks" / f"scaling-{_content_key(arch, recipe, bundle.train)}.safetensors"
    if not path.is_file():
        model, report = build_and_train(arch, bundle, recipe, show_bar=False)
        card = ModelCard(
            arch=arch,
            input_shape=bundle.input_shape,
            num_classes=bundle.num_classes,
            classes=bundle.classes,
            dataset=bundle.name,
            split_seed=bundle.split_seed,
            recipe=recipe.to_dict(),
            train_seconds=round(report.seconds, 2),
            notes=f"scaling benchmark model: {note}",
            extra={"train_samples": len(bundle.train)},
        )
        save_checkpoint(model, card, path)
    return load_checkpoint(path)


def timed_retrain(card: ModelCard, bundle: DataBundle, request: ClassRemoval) -> tuple[nn.Module, float]:
    """The model retrained without the class with the card's recipe (really trained, no cache), and its seconds."""
    edited = dataclasses.replace(bundle, train=edited_training_set(bundle.train, request, bundle.num_classes))
    start = time.perf_counter()
    model, _ = build_and_train(card.arch, edited, Recipe.from_dict(card.recipe), show_bar=False)
    return model, time.perf_counter() - start


def timed_gif(
    model: nn.Module, card: ModelCard, bundle: DataBundle, request: ClassRemoval, config: EditConfig, repeats: int
) -> tuple[dict, list[float]]:
    """GIF's result record (:func:`flatten_outcome`) and the wall-clock seconds of each of ``repeats``
    :func:`run_edit` calls (all identical: the edit is deterministic)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        report = run_edit(model, card, bundle, request, config)
        seconds.append(time.perf_counter() - start)
    return flatten_outcome(report.to_dict()["results"][0]), seconds


def measure(model: ModelScaling, label: str, augmented: bool, bundle: DataBundle, removed_class: int) -> dict:
    """One row: retraining and GIF end to end on ``bundle``'s training set, and what each model predicts."""
    original, card = cached_model(model.arch, model.recipe, bundle, label)
    request = ClassRemoval(removed_class)
    retrained, retrain_seconds = timed_retrain(card, bundle, request)
    gif, gif_runs = timed_gif(original, card, bundle, request, model.edit, model.gif_repeats)
    truth = evaluate_model(retrained, build_scenario(request, bundle))
    gif_seconds = statistics.median(gif_runs)
    row = {
        "model": model.label,
        "set": label,
        "augmented": augmented,
        "train size": len(bundle.train),
        "GIF s": gif_seconds,
        "retrain s": retrain_seconds,
        "GIF / retrain (%)": 100.0 * gif_seconds / retrain_seconds,
        "HVPs": gif["hvps"],
        "solve s": gif["solve_seconds"],
        "step": gif["step"],
        "GIF forget": gif["forget_acc"],
        "retrained forget": truth["forget_acc"],
        "GIF retain": gif["retain_acc"],
        "retrained retain": truth["retain_acc"],
        "GIF runs s": gif_runs,
    }
    for key, value in row.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise FloatingPointError(f"{model.label}, {label}: {key} is {value}")
    return row


def fit_lines(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """Least-squares lines (slope s per image, intercept s) of GIF and retraining seconds against the size."""
    sizes = np.array([r["train size"] for r in rows], dtype=float)
    return {
        method: tuple(float(c) for c in np.polyfit(sizes, [r[f"{method} s"] for r in rows], 1))
        for method in ("GIF", "retrain")
    }


def crossover(fits: dict[str, tuple[float, float]], sizes: list[int]) -> dict:
    """Where the fitted lines cross (GIF = retraining), and whether that lies in the measured range of sizes."""
    (gif_slope, gif_intercept), (retrain_slope, retrain_intercept) = fits["GIF"], fits["retrain"]
    low, high = min(sizes), max(sizes)
    if gif_slope == retrain_slope:
        return {"size": None, "in_range": False, "text": "the fitted lines are parallel: no crossover"}
    size = (gif_intercept - retrain_intercept) / (retrain_slope - gif_slope)
    in_range = low <= size <= high
    if in_range:
        text = f"GIF = retraining at about {size:,.0f} images (fitted lines, within the measured {low:,}–{high:,})"
    elif size > 0:
        text = f"none in the measured range {low:,}–{high:,} (the fitted lines meet at {size:,.0f} images)"
    else:
        text = f"none in the measured range {low:,}–{high:,} (the fitted lines meet only at a negative size)"
    return {"size": size, "in_range": in_range, "text": text}


def extrapolate(label: str, fits: dict[str, tuple[float, float]]) -> list[dict]:
    """Both fitted lines evaluated at 60,000 and 50,000 images: an extrapolation, never a measurement."""
    rows = []
    for size, target, assumption in EXTRAPOLATE_TO:
        gif, retrain = (fits[m][0] * size + fits[m][1] for m in ("GIF", "retrain"))
        meaningful = gif > 0 and retrain > 0
        rows.append(
            {
                "model": label,
                "target": target,
                "train size": size,
                "GIF s": gif,
                "retrain s": retrain,
                "GIF / retrain (%)": 100.0 * gif / retrain if meaningful else None,
                "extrapolated": True,
                "assumption": assumption,
                "note": ""
                if meaningful
                else "a fitted line falls below 0 s here: its measured slope is noise around a flat cost, no ratio",
            }
        )
    return rows


def goal_rows(rows: list[dict]) -> list[dict]:
    """The issue's goals against the measured rows: the CNN on the 10× set, VGG-11 at 3,500 images."""
    goals = []
    for row in rows:
        cnn_goal = row["model"] == "default CNN" and row["augmented"]
        if cnn_goal or (row["model"] == "VGG-11" and row["train size"] == 3500):
            ratio = row["GIF / retrain (%)"]
            goals.append(
                {
                    "model": row["model"],
                    "set": row["set"],
                    "goal (%)": f"≤ {GOALS[row['model']]:g}",
                    "GIF / retrain (%)": ratio,
                    "met": "yes" if ratio <= GOALS[row["model"]] else "no",
                }
            )
    return goals


def plot(rows: list[dict], fits: dict[str, dict], path: Path) -> None:
    """Seconds against training-set size per model: measured points, fitted lines, extrapolation dashed."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r["model"] == model]
        sizes = [r["train size"] for r in mine]
        measured = np.geomspace(min(sizes), max(sizes), 50)
        beyond = np.geomspace(max(sizes), max(s for s, _, _ in EXTRAPOLATE_TO), 50)
        for method, colour in (("GIF", "tab:blue"), ("retrain", "tab:red")):
            slope, intercept = fits[model][method]
            ax.plot(sizes, [r[f"{method} s"] for r in mine], "o", color=colour, label=f"{method} (measured)")
            ax.plot(measured, slope * measured + intercept, "-", color=colour, lw=1, label=f"{method} (fitted line)")
            ax.plot(beyond, slope * beyond + intercept, "--", color=colour, lw=1, label=f"{method} (extrapolated)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for size, target, _ in EXTRAPOLATE_TO:
            ax.axvline(size, color="grey", ls=":", lw=1)
            ax.annotate(target.split(" (")[0], (size, ax.get_ylim()[0]), rotation=90, fontsize=7, va="bottom")
        ax.set_xlabel("training-set size (images)")
        ax.set_ylabel("seconds")
        ax.set_title(f"{model}: GIF end to end vs retraining (class removal)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


ROW_COLUMNS = [
    "model",
    "set",
    "train size",
    "GIF s",
    "retrain s",
    "GIF / retrain (%)",
    "HVPs",
    "solve s",
    "step",
    "GIF forget",
    "retrained forget",
    "GIF retain",
    "retrained retain",
]


def report_body(config: ScalingConfig, result: dict) -> str:
    """The markdown of the result files."""
    augmentation = result["augmentation"]
    lines = [
        "# Cost where retraining is expensive: GIF end to end vs retraining (issue 13)",
        "",
        f"Profile `{config.name}`. Removal of class {config.removed_class}, timed side by side in one run. GIF = "
        "`run_edit` with the library's defaults for GIF alone (VGG-11: its paper-benchmark Hessian sample), wall-clock "
        "median of the runs listed in the JSON, including the request's gradient and Hessian sample, the selection, "
        "the solve, the validation step search and the metrics; retraining = the same architecture, recipe and seed "
        "trained without the class, really trained. Accuracies (%) on the test split: forget = the removed class, "
        "retain = the other classes.",
        "",
        f"The 10× set: each of {augmentation['source_images']:,} training images plus {config.copies - 1} seeded "
        f"copies shifted by up to ±{config.max_shift} px and rotated by up to ±{config.max_degrees:g}° = "
        f"{augmentation['samples']:,} samples; {augmentation['added_copies_changed_pct']:.1f}% of the added copies "
        f"differ from their source (mean |pixel change| {augmentation['mean_abs_pixel_change']:.3f}).",
        "",
        "## Measured",
        markdown_table(result["rows"], ROW_COLUMNS),
        "",
        "## Goals",
        markdown_table(result["goals"], ["model", "set", "goal (%)", "GIF / retrain (%)", "met"])
        if result["goals"]
        else "Not measured in this profile.",
        "",
        "## Fitted lines and crossover",
    ]
    for model, fit in result["fits"].items():
        lines.append(
            f"- {model}: GIF ≈ {fit['GIF'][1]:.3g} s + {fit['GIF'][0] * 1000:.3g} ms/image; retraining ≈ "
            f"{fit['retrain'][1]:.3g} s + {fit['retrain'][0] * 1000:.3g} ms/image. Crossover: "
            f"{result['crossover'][model]['text']}."
        )
    lines += [
        "",
        "## Extrapolated (NOT measured: the fitted lines evaluated beyond the data)",
        markdown_table(
            [{**r, "GIF / retrain (%)": r["GIF / retrain (%)"] or "n/a"} for r in result["extrapolation"]],
            ["model", "target", "GIF s", "retrain s", "GIF / retrain (%)", "note"],
        ),
        "",
        *(f"- {target}: {assumption}." for _, target, assumption in EXTRAPOLATE_TO),
        "",
        "Plot: `scaling.png` (log–log; the fitted straight lines curve there).",
    ]
    return "\n".join(lines)


def run(config: ScalingConfig, out_dir: Path) -> dict:
    """Every model at every size, the fits, the extrapolation and the goals; writes the result files."""
    meta = provenance()
    bundle = load_data(DATASET, seed=config.seed)
    source = bundle.train.subset(seeded_subset(torch.arange(len(bundle.train)), config.augment_source, config.seed))
    augmented = augmented_set(source, config)
    augmentation = augmentation_summary(source, augmented, config.copies)
    augmented_label = f"{len(source):,} × {config.copies} augmented"
    rows, fits, crossings, extrapolation = [], {}, {}, []
    for model in config.models:
        sets = [(label, train, False) for label, train in subsets(bundle, model.sizes, config.seed)]
        sets += [(augmented_label, augmented, True)] if model.augmented else []
        mine = []
        for label, train, is_augmented in sets:
            trained_on = dataclasses.replace(bundle, train=train)
            mine.append(measure(model, label, is_augmented, trained_on, config.removed_class))
            print(f"{model.label}, {label}: GIF {mine[-1]['GIF s']:.1f} s, retrain {mine[-1]['retrain s']:.1f} s")
        rows += mine
        fits[model.label] = fit_lines(mine)
        crossings[model.label] = crossover(fits[model.label], [r["train size"] for r in mine])
        extrapolation += extrapolate(model.label, fits[model.label])
    result = {
        "profile": config.name,
        "config": dataclasses.asdict(config),
        "augmentation": augmentation,
        "rows": [{**r, "extrapolated": False} for r in rows],
        "fits": {m: {k: list(v) for k, v in f.items()} for m, f in fits.items()},
        "crossover": crossings,
        "extrapolation": extrapolation,
        "goals": goal_rows(rows),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(rows, fits, out_dir / "scaling.png")
    write_results("scaling", report_body(config, result), result, out_dir, meta)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200/400 images, 1 epoch, 10× set from 40, no VGG-11")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    config = QUICK if args.quick else FULL
    print(report_body(config, run(config, args.out)))


if __name__ == "__main__":
    main()
