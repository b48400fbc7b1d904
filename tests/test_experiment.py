"""run_edit, the validation-only step search, scenarios, and the retraining cache (on the bundled iris MLP)."""

import pytest
import torch

import gif_core.retrain as retrain_module
from gif_core.backdoor import BackdoorSpec, Trigger, poison_training_set
from gif_core.checkpoints import checkpoint_id, load_checkpoint
from gif_core.data import load_data
from gif_core.experiment import STEP_GRID, EditConfig, build_scenario, run_edit, step_objective
from gif_core.params import apply_delta, state_hash
from gif_core.requests import ClassRemoval, LabelChange, SampleRemoval
from gif_core.retrain import edited_training_set, retrain
from gif_core.zoo import bundled_model_path


@pytest.fixture(scope="module")
def iris():
    path = bundled_model_path("iris_mlp")
    model, card = load_checkpoint(path)
    return model, card, load_data(card.dataset, seed=card.split_seed), path


def test_retrain_is_cached_and_never_repeated(iris, tmp_path, monkeypatch):
    _, card, data, path = iris
    request = SampleRemoval([0, 1, 2])
    first = retrain(card, data, data.train, request, checkpoint_id(path), cache_dir=tmp_path, show_bar=False)
    assert not first.from_cache and first.path.is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("retrained a second time")

    monkeypatch.setattr(retrain_module, "build_and_train", refuse)
    second = retrain(card, data, data.train, request, checkpoint_id(path), cache_dir=tmp_path, show_bar=False)
    assert second.from_cache and second.path == first.path
    assert state_hash(second.model) == state_hash(first.model)
    with pytest.raises(AssertionError, match="second time"):  # another question is a new key
        retrain(card, data, data.train, SampleRemoval([5]), checkpoint_id(path), cache_dir=tmp_path, show_bar=False)


def test_edited_training_set(iris):
    _, card, data, _ = iris
    removed = edited_training_set(data.train, SampleRemoval([0, 3]), card.num_classes)
    assert len(removed) == len(data.train) - 2 and torch.equal(removed.inputs[0], data.train.inputs[1])
    new = (int(data.train.labels[4]) + 1) % 3
    relabelled = edited_training_set(data.train, LabelChange([4], [new]), card.num_classes)
    assert int(relabelled.labels[4]) == new and len(relabelled) == len(data.train)
    assert torch.equal(relabelled.labels[:4], data.train.labels[:4])


def test_class_scenario_uses_test_images_of_the_class(iris):
    _, _, data, _ = iris
    scenario = build_scenario(ClassRemoval(1), data)
    assert (scenario.forget.labels == 1).all() and (scenario.retain.labels != 1).all()
    assert len(scenario.forget) + len(scenario.retain) == len(data.test)
    assert (scenario.step_forget.labels == 1).all() and len(scenario.step_forget) == int((data.val.labels == 1).sum())


def test_auto_step_maximises_the_validation_objective(iris):
    model, card, data, _ = iris
    before = state_hash(model)
    config = EditConfig(methods=("gif", "if"), ratio=0.2, step="auto", hessian_samples=None)
    report = run_edit(model, card, data, ClassRemoval(0), config)
    assert state_hash(model) == before
    for outcome in report.outcomes:
        assert [a for a, _ in outcome.step_curve] == list(STEP_GRID)
        assert outcome.step == max(outcome.step_curve, key=lambda p: p[1])[0]
        scenario = build_scenario(ClassRemoval(0), data)
        chosen = apply_delta(model, outcome.result.problem.space, outcome.result.delta, outcome.step)
        assert step_objective(chosen, scenario) == pytest.approx(max(o for _, o in outcome.step_curve))
        assert outcome.to_dict()["step_search"][0]["step"] == STEP_GRID[0]
    gif = report.outcomes[0]
    assert gif.metrics["forget_acc"] < report.original["forget_acc"]  # class 0 of iris is forgotten


def test_report_against_retrained_model(iris, tmp_path):
    model, card, data, path = iris
    request = SampleRemoval(list(range(10)))
    truth = retrain(card, data, data.train, request, checkpoint_id(path), cache_dir=tmp_path, show_bar=False)
    report = run_edit(model, card, data, request, EditConfig(methods=("if",)), retrained_model=truth.model)
    result = report.to_dict()["results"][0]
    assert set(result["vs_retrain"]) == {"agreement", "kl", "avg_gap"}
    assert 0 <= result["vs_retrain"]["agreement"] <= 100 and result["vs_retrain"]["kl"] >= 0
    assert "mia" in report.original and "mia" in report.retrained


def test_backdoor_scenario_reports_attack_success(tmp_path):
    model, card = load_checkpoint(bundled_model_path("mnist_cnn_backdoor"))
    data = load_data(card.dataset, seed=card.split_seed)
    spec = BackdoorSpec.from_dict(card.extra["backdoor"])
    assert spec == BackdoorSpec(0, 0.1, Trigger("checkerboard", 4), 0)
    train, poisoned = poison_training_set(data.train, spec, data.num_classes)
    request = LabelChange(poisoned.poisoned_rows[:20], poisoned.true_labels[:20])
    scenario = build_scenario(request, data, train, spec)
    from gif_core.experiment import evaluate_model

    metrics = evaluate_model(model, scenario)
    assert metrics["attack_success_rate"] > 90  # the bundled model did learn the backdoor
    assert metrics["clean_acc"] > 95 and metrics["forget_acc"] > 90  # it fits the poisoned labels


def test_invalid_edit_config():
    with pytest.raises(ValueError, match="Unknown method"):
        EditConfig(methods=("gif", "nope"))
    with pytest.raises(ValueError, match="step must be"):
        EditConfig(step="sometimes")
    with pytest.raises(ValueError, match="step must be"):
        EditConfig(step=0.0)
    with pytest.raises(ValueError, match="ratio"):
        EditConfig(ratio=2.0)
