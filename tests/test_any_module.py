"""Issue 17: the library API for any nn.Module, without a model card: the README's example runs as written, and a
module without a card gives the same report as the same model behind a card."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from gif_core.any_module import Objective, edit_module, labelled_set, retrain_module, tensor_bundle
from gif_core.data import load_data
from gif_core.experiment import EditConfig, run_edit
from gif_core.model_card import ModelCard
from gif_core.requests import ClassRemoval
from gif_core.train import Recipe, train_model

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_example_for_any_module_runs_and_edits_against_the_retrained_model(capsys):
    readme = (ROOT / "README.md").read_text()
    (example,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "any_module" in block]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    report = namespace["report"]
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["gif", "if"]
    assert report.retrained["forget_acc"] == 0.0 and report.original["forget_acc"] > 80
    for outcome in report.outcomes:
        assert outcome.metrics["forget_acc"] < report.original["forget_acc"] and outcome.vs_retrain["avg_gap"] >= 0
    head = {layer.module: layer for layer in report.selection.layers}["classify"]
    assert head.n_selected > 0


def test_a_module_without_a_card_reports_what_the_same_model_behind_a_card_reports():
    bundle = load_data("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    recipe = Recipe(lr=1e-2, weight_decay=1e-3, epochs=3)
    train_model(model, bundle.train, recipe, show_bar=False)
    card = ModelCard("mlp", (1, 8, 8), 10, bundle.classes, "digits", 0, recipe=recipe.to_dict())
    config = EditConfig(methods=("gif", "if"), step=30.0)
    with_card = run_edit(model, card, bundle, ClassRemoval(2), config)
    data = tensor_bundle(*((s.inputs, s.labels) for s in (bundle.train, bundle.val, bundle.test)))
    without = edit_module(model, data, ClassRemoval(2), config, objective=Objective(weight_decay=1e-3))
    for a, b in zip(with_card.outcomes, without.outcomes, strict=True):
        assert torch.allclose(a.result.delta, b.result.delta, rtol=1e-5, atol=1e-8)
        assert a.metrics == pytest.approx(b.metrics)
    undecayed = edit_module(model, data, ClassRemoval(2), config)  # λ is part of H: another λ, another Δ
    assert not torch.allclose(undecayed.outcomes[1].result.delta, without.outcomes[1].result.delta)


def test_retrain_module_trains_a_fresh_copy_without_the_class_and_leaves_the_model_alone():
    bundle = load_data("digits")
    data = tensor_bundle(*((s.inputs, s.labels) for s in (bundle.train, bundle.val, bundle.test)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    truth = retrain_module(model, data, ClassRemoval(4), Recipe(lr=1e-2, epochs=3))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        predicted = truth(data.test.inputs).argmax(1)
    assert not bool((predicted == 4).any()) and float((predicted == data.test.labels).float().mean()) > 0.8


def test_bad_objectives_and_labels_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="cross-entropy"):
        Objective(loss="mse")
    with pytest.raises(ValueError, match="weight_decay"):
        Objective(weight_decay=-1.0)
    x = torch.rand(6, 4)
    with pytest.raises(ValueError, match="labels must lie in 0"):
        tensor_bundle((x, torch.tensor([0, 1, 2, 0, 1, 2])), (x, torch.zeros(6)), (x, torch.zeros(6)), ("a", "b"))
    assert labelled_set(torch.zeros(3, 2, dtype=torch.int64), [1, 0, 1]).inputs.dtype == torch.float32
