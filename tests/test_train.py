"""Training: determinism, convergence, progress reporting, and the coupled-L2 objective."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gif_core.data import DataBundle, LabelledSet, load_data
from gif_core.evaluate import accuracy, predict_proba
from gif_core.train import Recipe, build_and_train, make_optimizer, train_model

FAST = Recipe(optimizer="adam", lr=1e-2, weight_decay=1e-3, epochs=4, batch_size=16, seed=0)


@pytest.fixture(scope="module")
def iris() -> DataBundle:
    return load_data("iris", seed=0)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_same_seed_gives_identical_weights_and_other_seed_differs(iris: DataBundle) -> None:
    first, _ = build_and_train("mlp", iris, FAST, device="cpu", show_bar=False)
    second, _ = build_and_train("mlp", iris, FAST, device="cpu", show_bar=False)
    other, _ = build_and_train("mlp", iris, Recipe(**{**FAST.to_dict(), "seed": 1}), device="cpu", show_bar=False)
    assert all(torch.equal(a, b) for a, b in zip(_weights(first), _weights(second), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(_weights(first), _weights(other), strict=True))


def test_build_and_train_leaves_the_global_rng_alone(iris: DataBundle) -> None:
    state = torch.get_rng_state()
    build_and_train("logreg", iris, FAST, device="cpu", show_bar=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_loss_decreases_and_model_left_in_eval_mode(iris: DataBundle) -> None:
    model, report = build_and_train("mlp", iris, FAST, device="cpu", show_bar=False)
    assert report.epochs == 4 and len(report.epoch_losses) == 4
    assert report.final_loss < 0.5 * report.epoch_losses[0]
    assert report.seconds > 0
    assert not model.training


def test_logreg_on_iris_reaches_high_accuracy(iris: DataBundle) -> None:
    recipe = Recipe(optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=1e-3, epochs=10, batch_size=32)
    model, _ = build_and_train("logreg", iris, recipe, device="cpu", show_bar=False)
    assert accuracy(predict_proba(model, iris.train.inputs), iris.train.labels) >= 93.0
    assert accuracy(predict_proba(model, iris.test.inputs), iris.test.labels) >= 90.0


def test_progress_callback_counts_every_step(iris: DataBundle) -> None:
    calls: list[tuple[int, int]] = []
    build_and_train("logreg", iris, FAST, device="cpu", show_bar=False, progress=lambda s, t: calls.append((s, t)))
    total = 4 * -(-105 // 16)
    assert calls == [(step, total) for step in range(1, total + 1)]


def _zero_input_set(n: int = 8) -> LabelledSet:
    """All-zero inputs: the data gradient of a Linear layer's weight is exactly zero (only the bias learns)."""
    return LabelledSet(torch.zeros(n, 4), torch.arange(n) % 3, torch.arange(n))


def test_sgd_weight_decay_is_coupled_l2() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    before = model[0].weight.detach().clone()
    lr, lam = 0.1, 0.05
    recipe = Recipe(optimizer="sgd", lr=lr, momentum=0.0, weight_decay=lam, epochs=1, batch_size=8)
    train_model(model, _zero_input_set(), recipe, device="cpu", show_bar=False)
    assert torch.allclose(model[0].weight, before * (1 - lr * lam), rtol=0, atol=1e-7)


def test_adam_weight_decay_is_coupled_not_adamw() -> None:
    # Coupled L2 adds λθ to the gradient, and Adam normalises it: the first step moves every weight by ≈ lr
    # towards zero. AdamW would instead shrink by the factor (1 − lr·λ) and leave the weights almost in place.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    before = model[0].weight.detach().clone()
    recipe = Recipe(optimizer="adam", lr=1e-2, weight_decay=1e-2, epochs=1, batch_size=8)
    assert type(make_optimizer(model, recipe)) is torch.optim.Adam
    train_model(model, _zero_input_set(), recipe, device="cpu", show_bar=False)
    g = 1e-2 * before  # the coupled L2 gradient λθ; Adam's first step is lr·g/(|g| + ε) with ε = 1e-8
    assert torch.allclose(model[0].weight, before - 1e-2 * g / (g.abs() + 1e-8), rtol=0, atol=1e-6)


def test_recipe_round_trip_and_validation() -> None:
    recipe = Recipe(optimizer="sgd", lr=0.05, momentum=0.5, weight_decay=1e-4, epochs=3, batch_size=32, seed=7)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(ValueError, match="unknown recipe keys"):
        Recipe.from_dict({**recipe.to_dict(), "schedule": "cosine"})
    with pytest.raises(ValueError, match="adam, sgd"):
        Recipe(optimizer="adamw")
    with pytest.raises(ValueError, match="lr > 0"):
        Recipe(lr=0.0)
    with pytest.raises(ValueError, match="epochs >= 1"):
        Recipe(epochs=0)
