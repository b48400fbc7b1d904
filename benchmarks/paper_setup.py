"""Shared set-up of the paper benchmarks (issue 6): the profiles, the seeded models, and mean ± sd summaries.

Protocol (DESIGN.md section 3): the data split is fixed (split seed 0); seed s sets the initial weights and the
shuffling of the original model AND of its retrained ground truth (same recipe, same seed), the Hessian sample and
the random selector. The step scale is chosen on the validation split only (``step="auto"``); every number is on
the test split or on the forget/retain training subsets. Trained models are cached on disk
(``$GIF_CACHE_DIR/benchmarks`` and ``…/retrained``), so a re-run repeats only the edits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from benchmarks.common import edit_config
from gif_core.backdoor import BackdoorSpec, Trigger, poison_training_set
from gif_core.cache_files import default_cache_dir
from gif_core.checkpoints import ModelCard, load_checkpoint
from gif_core.data import DataBundle, LabelledSet, load_data
from gif_core.experiment import EditConfig
from gif_core.requests import EditRequest
from gif_core.retrain import retrain
from gif_core.train import TRAINING_PROCEDURE, Recipe
from gif_core.zoo import MNIST_CNN_RECIPE, train_and_save

ALL_RATIOS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class ModelSetting:
    """One model of the benchmarks and how its edits are solved (Hessian sample size, solver iterations)."""

    label: str
    arch: str
    dataset: str
    recipe: Recipe
    hessian_samples: int
    maxiter: int
    backdoor_trigger: int = 4

    def edit_config(self, seed: int, **changes) -> EditConfig:
        """The library's defaults with this model's Hessian sample and iterations, seed ``seed`` and the auto step
        (α on validation); float32 products. ``changes`` are named as in :data:`benchmarks.common.SETTINGS`."""
        settings = {"step": "auto", "hessian_samples": self.hessian_samples, "maxiter": self.maxiter, **changes}
        return edit_config(seed=seed, **settings)


@dataclass(frozen=True)
class Profile:
    """How much of each table to run."""

    name: str
    seeds: tuple[int, ...]
    default: ModelSetting
    larger: ModelSetting
    classes: tuple[int, ...]
    ratios: tuple[float, ...]
    larger_ratios: tuple[float, ...]
    ablation_ratios: tuple[float, ...]
    iterations: tuple[int, ...]
    solver_caps: tuple[int, int]  # (Krylov iterations, Richardson iterations)
    larger_solver_caps: tuple[int, int]
    headline_ratio: float = 0.05  # the ratio of tables 3-7 (the paper's 5%)
    larger_methods: tuple[str, ...] = ("gif", "fif", "pif")
    larger_full_methods: tuple[str, ...] = ("if", "sif")
    richardson_restarts: int = 100  # the reference scheme's restarts with a larger normaliser c on divergence


CNN = ModelSetting(
    "default CNN",
    "cnn",
    "mnist-bundled",
    MNIST_CNN_RECIPE,
    hessian_samples=EditConfig().curvature.samples,  # the library's defaults, chosen by benchmarks/defaults.py
    maxiter=EditConfig().solver.maxiter,
)
VGG = ModelSetting(
    "VGG-11",
    "vgg11",
    "mnist-bundled",
    Recipe(optimizer="adam", lr=3e-4, weight_decay=1e-4, epochs=3, batch_size=64, seed=0),
    hessian_samples=64,  # 200 images of VGG-11 per product is the CPU's limit; the rest are the library's defaults
    maxiter=EditConfig().solver.maxiter,
)

FULL = Profile(
    "full",
    seeds=(0, 1, 2, 3, 4),
    default=CNN,
    larger=VGG,
    classes=(0, 3),
    ratios=ALL_RATIOS,
    larger_ratios=ALL_RATIOS,
    ablation_ratios=ALL_RATIOS,
    iterations=(1, 2, 3, 5),
    solver_caps=(200, 600),
    larger_solver_caps=(40, 120),
)

PROFILES = {
    "full": FULL,
    # The headline cells of every table at the full profile's seeds: the larger model at 5% (and IF at 100%) only,
    # without the 1–100% sweep and SIF (an hour of CPU).
    "headline": dataclasses.replace(FULL, name="headline", larger_ratios=(0.05,), larger_full_methods=("if",)),
    "quick": Profile(
        "quick",
        seeds=(0,),
        default=dataclasses.replace(CNN, hessian_samples=64, maxiter=10),
        larger=dataclasses.replace(VGG, recipe=dataclasses.replace(VGG.recipe, epochs=1), hessian_samples=8, maxiter=3),
        classes=(0,),
        ratios=(0.05, 1.0),
        larger_ratios=(0.05,),
        ablation_ratios=(0.05,),
        iterations=(1, 2),
        solver_caps=(20, 40),
        larger_solver_caps=(3, 6),
        larger_methods=("gif",),
        larger_full_methods=(),
        richardson_restarts=3,
    ),
    # For the test that keeps the scripts from rotting: tabular-sized models on the 8x8 digits.
    "tiny": Profile(  # one seed: the smoke test checks the tables' plumbing; mean ± sd over seeds is tested apart
        "tiny",
        seeds=(0,),
        default=ModelSetting(
            "digits MLP", "mlp", "digits", Recipe(lr=1e-2, weight_decay=1e-3, epochs=3, seed=0), 32, 5, 2
        ),
        larger=ModelSetting(
            "digits logreg", "logreg", "digits", Recipe(lr=1e-2, weight_decay=1e-3, epochs=3, seed=0), 32, 5, 2
        ),
        classes=(0,),
        ratios=(0.1, 1.0),
        larger_ratios=(0.1,),
        ablation_ratios=(0.1,),
        iterations=(1, 2),
        solver_caps=(5, 10),
        larger_solver_caps=(3, 6),
        headline_ratio=0.1,  # 5% of the digits models fits no whole neuron
    ),
}


@dataclass
class Trained:
    """A model trained with one seed, its card, and the training set it saw."""

    model: nn.Module
    card: ModelCard
    bundle: DataBundle
    train: LabelledSet
    key: str


def _data_key(train: LabelledSet) -> str:
    digest = hashlib.sha256(train.labels.numpy().tobytes())
    digest.update(train.inputs.numpy().tobytes())
    return digest.hexdigest()[:16]


def trained(setting: ModelSetting, seed: int, backdoor: BackdoorSpec | None = None) -> Trained:
    """``setting``'s model trained with seed ``seed`` (on the poisoned training set when ``backdoor`` is given),
    loaded from the disk cache when it was trained before."""
    bundle = load_data(setting.dataset, seed=0)
    train = bundle.train if backdoor is None else poison_training_set(bundle.train, backdoor, bundle.num_classes)[0]
    recipe = dataclasses.replace(setting.recipe, seed=seed)
    payload = {
        "arch": setting.arch,
        "dataset": setting.dataset,
        "recipe": recipe.to_dict(),
        "data": _data_key(train),
        "training": TRAINING_PROCEDURE,
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    path = default_cache_dir() / "benchmarks" / f"{key}.safetensors"
    if not path.is_file():
        train_and_save(
            setting.arch,
            setting.dataset,
            recipe,
            path,
            backdoor=backdoor,
            notes=f"benchmark model, seed {seed}",
            show_bar=False,
        )
    model, card = load_checkpoint(path)
    return Trained(model, card, bundle, train, key)


def retrained_for(original: Trained, request: EditRequest) -> tuple[nn.Module, float]:
    """The ground truth: the same architecture, recipe and seed trained without U (or with U relabelled)."""
    result = retrain(original.card, original.bundle, original.train, request, original.key, show_bar=False)
    return result.model, result.seconds


def backdoor_spec(setting: ModelSetting, seed: int) -> BackdoorSpec:
    """The paper's backdoor: a checkerboard in the corner of a seeded 10% of the training images, label 0."""
    return BackdoorSpec(target=0, fraction=0.1, trigger=Trigger("checkerboard", setting.backdoor_trigger), seed=seed)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: Iterable[dict], group: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """One row per distinct ``group`` value: each metric as "mean ± sd" over the seeds (plus raw means and sds)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[g] for g in group), []).append(row)
    summary = []
    for key, members in groups.items():
        out = dict(zip(group, key, strict=True))
        out["seeds"] = len(members)
        for metric in metrics:
            values = [m[metric] for m in members if metric in m]
            if values:
                mean, sd = mean_sd(values)
                out[metric] = f"{mean:.2f} ± {sd:.2f}"
                out[f"{metric} mean"], out[f"{metric} sd"] = mean, sd
        summary.append(out)
    return summary


def flatten_outcome(outcome_record: dict) -> dict:
    """A run_edit result record with its comparison to the retrained model lifted to the top, its solver totals
    over every step (products and seconds summed, the worst residual), and the first step's α search as
    [α, objective] pairs."""
    flat = {k: v for k, v in outcome_record.items() if k not in ("vs_retrain", "solver", "step_search", "later_steps")}
    flat.update(outcome_record.get("vs_retrain", {}))
    if "step_search" in outcome_record:  # the validation objective against α: the evidence behind the chosen step
        search = outcome_record["step_search"]
        flat["step_search"] = [[point["step"], point["objective"]] for point in search["curve"]]
        flat["step_cap_hit"], flat["step_floor_hit"] = search["cap_hit"], search["floor_hit"]
    solvers = [outcome_record["solver"], *(step["solver"] for step in outcome_record.get("later_steps", []))]
    flat["hvps"] = sum(s["hvps"] for s in solvers)  # every step's products
    flat["rel_residual"] = max(s["rel_residual"] for s in solvers)
    flat["solve_seconds"] = sum(s["seconds"] for s in solvers)
    return flat
