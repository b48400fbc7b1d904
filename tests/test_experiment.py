"""run_edit, the validation-only step search, scenarios, and the retraining cache (on the bundled iris MLP)."""

import pytest
import torch
from conftest import fit_logreg
from torch import nn
from torch.nn import functional as F

import gif_core.retrain as retrain_module
from gif_core.backdoor import BackdoorSpec, Trigger, poison_training_set
from gif_core.checkpoints import checkpoint_id, load_checkpoint
from gif_core.data import DataBundle, LabelledSet, load_data
from gif_core.experiment import EditConfig, build_scenario, evaluate_model, run_edit, step_objective
from gif_core.influence import EstimatorConfig
from gif_core.params import apply_delta, state_hash
from gif_core.problem import HessianConfig
from gif_core.requests import ClassRemoval, LabelChange, SampleRemoval
from gif_core.retrain import edited_training_set, retrain
from gif_core.selection import SelectionConfig
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
    config = EditConfig(("gif", "if"), SelectionConfig(ratio=0.2), HessianConfig(samples=None), step="auto")
    report = run_edit(model, card, data, ClassRemoval(0), config)
    assert state_hash(model) == before
    for outcome in report.outcomes:
        curve = outcome.step_curve
        assert len(curve) >= 3 and curve == sorted(curve) and (1.0, dict(curve)[1.0]) in curve  # starts at α = 1
        assert outcome.step == min(a for a, o in curve if o == max(o for _, o in curve))  # best, smallest on ties
        scenario = build_scenario(ClassRemoval(0), data)
        chosen = apply_delta(model, outcome.result.problem.space, outcome.result.delta, outcome.step)
        # the search scores candidates without copying the model: the copied model must score the same
        assert step_objective(chosen, scenario) == pytest.approx(max(o for _, o in curve))
        record = outcome.to_dict()["step_search"]
        assert record["step"] == outcome.step and record["evaluations"] == len(curve)
        assert record["cap"] == 1e4 and record["cap_hit"] is False and record["floor_hit"] is False
    gif = report.outcomes[0]
    assert gif.metrics["forget_acc"] < report.original["forget_acc"]  # class 0 of iris is forgotten


def test_auto_step_goes_beyond_32_where_the_objective_is_flat_below(iris):
    """A truncated GIF solve (2 LSMR iterations) returns a short Δ: on iris class 0 the validation objective is 0 at
    every α ≤ 32, the end of the old fixed grid, which then kept the class. The open-ended search finds the step."""
    model, card, data, _ = iris
    config = EditConfig(
        ("gif",), SelectionConfig(ratio=0.2), HessianConfig(samples=None), EstimatorConfig(maxiter=2), step="auto"
    )
    report = run_edit(model, card, data, ClassRemoval(0), config)
    outcome = report.outcomes[0]
    assert {o for a, o in outcome.step_curve if a <= 32} == {0.0}
    assert outcome.step > 32 and outcome.step_search.objective > 50
    assert outcome.metrics["forget_acc"] == 0 < report.original["forget_acc"]


def test_a_step_search_stopped_by_its_cap_says_so(iris):
    """With one LSMR iteration of the undamped, unridged solve the objective is still rising at the cap α = 1e4: the
    report says so."""
    model, card, data, _ = iris
    config = EditConfig(
        ("gif",),
        SelectionConfig(ratio=0.2),
        HessianConfig(samples=None, damping=0.0),
        EstimatorConfig(gif_ridge=0.0, maxiter=1),
        step="auto",
    )
    record = run_edit(model, card, data, ClassRemoval(0), config).to_dict()["results"][0]["step_search"]
    assert record["cap_hit"] and record["step"] == record["cap"] == 1e4
    assert max(p["step"] for p in record["curve"]) == 1e4


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
        EditConfig(selection=SelectionConfig(ratio=2.0))
    with pytest.raises(ValueError, match="iterations"):
        EditConfig(iterations=0)


@pytest.mark.parametrize(("request_", "removes"), [(SampleRemoval(list(range(0, 60, 2))), True), (None, False)])
def test_iterated_steps_converge_to_the_retrained_optimum_on_a_convex_model(request_, removes):
    """On L2 logistic regression, k re-linearised full-parameter steps (α = 1) are Newton's method on the edited
    objective (H of S∖U, or of S relabelled): they must land on the exactly retrained optimum, far closer than one
    first-order step."""
    import copy
    import dataclasses

    from gif_core.checkpoints import ModelCard
    from gif_core.models import build_model
    from gif_core.params import flat_parameters

    data = load_data("iris", seed=0)
    data = dataclasses.replace(
        data,
        **{
            s: dataclasses.replace(getattr(data, s), inputs=getattr(data, s).inputs.double())
            for s in ("train", "val", "test")
        },
    )
    weight_decay = 0.05
    torch.manual_seed(0)
    start = build_model("logreg", data.input_shape, 3).double()
    model = fit_logreg(data.train.inputs, data.train.labels, weight_decay, start)
    if request_ is None:  # a label change: 8 samples of class 0 relabelled as class 1
        rows = torch.nonzero(data.train.labels == 0).reshape(-1)[:8].tolist()
        request_ = LabelChange(rows, [1] * len(rows))
    card = ModelCard("logreg", data.input_shape, 3, data.classes, "iris", 0, recipe={"weight_decay": weight_decay})
    edited = edited_training_set(data.train, request_, 3)
    truth = fit_logreg(edited.inputs, edited.labels, weight_decay, copy.deepcopy(model))
    theta, target = flat_parameters(model), flat_parameters(truth)
    errors = {}
    for k in (1, 5):
        config = EditConfig(  # Newton's method: the exact Hessian, no damping and no ridge (the defaults have both)
            methods=("gif", "if"),
            selection=SelectionConfig(ratio=1.0),
            curvature=HessianConfig(samples=None, damping=0.0),
            solver=EstimatorConfig(gif_ridge=0.0, rtol=1e-10, maxiter=500),
            step=1.0,
            iterations=k,
        )
        report = run_edit(model, card, data, request_, config)
        for outcome in report.outcomes:
            errors[outcome.method, k] = float(
                (flat_parameters(outcome.model) - target).norm() / (target - theta).norm()
            )
            assert len(outcome.later_steps) == k - 1 and outcome.step == 1.0
        assert len(report.to_dict()["results"][0].get("later_steps", [])) == k - 1
    for method in ("gif", "if"):
        assert errors[method, 1] > 0.01, "one step is not already exact: the test would have no teeth"
        assert errors[method, 5] < 1e-4 and errors[method, 5] < errors[method, 1] / 100, (method, errors)
    assert torch.equal(flat_parameters(model), theta)  # the original is never modified


def _split(predicted: list[int], labels: list[int]) -> LabelledSet:
    """Samples whose input is the one-hot code of the class the model below predicts for them, with ``labels``."""
    inputs = F.one_hot(torch.tensor(predicted), 3).float()
    return LabelledSet(inputs, torch.tensor(labels), torch.arange(len(labels)))


SCRIPTED = nn.Identity()
"""Logits = the one-hot input: the model predicts exactly the class each :func:`_split` sample names."""
# 10 samples of classes 0 and 2, 8 predicted right (the last two swapped): 80 % accuracy
KEPT = ([0, 2, 0, 2, 0, 2, 0, 2, 2, 0], [0, 2, 0, 2, 0, 2, 0, 2, 0, 2])
# 4 samples of class 1, one predicted as 1: 25 %
CLASS_1 = ([1, 0, 2, 0], [1, 1, 1, 1])
# 4 training rows: rows 0 and 2 predicted right, rows 1 and 3 wrong
TRAIN = ([0, 1, 2, 0], [0, 2, 2, 1])


def _scripted_bundle(val: tuple[list[int], list[int]], test: tuple[list[int], list[int]]) -> DataBundle:
    classes = ("a", "b", "c")
    return DataBundle("scripted", classes, (3,), 0, _split(*TRAIN), _split(*val), _split(*test))


def _joined(*splits: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
    return [p for s in splits for p in s[0]], [y for s in splits for y in s[1]]


def test_step_objective_per_request_kind_by_hand():
    """The step objective of each request kind from accuracies set by hand (80 % on the validation data the edit
    must keep, 25 %, 50 %, 100 % or 0 % on the samples it is about), worked out here, not by the library's formulas:
    F1 of (1 − forget, retain) for a class removal, held-out likeness for a sample removal, harmonic mean for a label
    change. A sample removal must not reward pushing the removed samples to 0 % (retraining does not)."""
    bundle = _scripted_bundle(val=_joined(KEPT, CLASS_1), test=KEPT)
    # class 1 removed: retain = 80 % on the validation samples of classes 0 and 2, forget = 25 % on those of class 1;
    # F1 = 2·(1 − 0.25)·0.8 / ((1 − 0.25) + 0.8) = 1.2 / 1.55 = 0.774193548… → 77.42 %
    assert step_objective(SCRIPTED, build_scenario(ClassRemoval(1), bundle)) == pytest.approx(77.41935483870968)

    bundle = _scripted_bundle(val=KEPT, test=KEPT)  # validation accuracy 80 %
    # removed rows 0 and 1: 50 % of them right → 80 − |50 − 80| = 50
    assert step_objective(SCRIPTED, build_scenario(SampleRemoval([0, 1]), bundle)) == pytest.approx(50.0)
    # rows 0 and 2: 100 %, remembered better than held-out data → 80 − |100 − 80| = 60
    assert step_objective(SCRIPTED, build_scenario(SampleRemoval([0, 2]), bundle)) == pytest.approx(60.0)
    # rows 1 and 3: 0 %, destroyed rather than forgotten → 80 − |0 − 80| = 0, the worst score, not the best
    assert step_objective(SCRIPTED, build_scenario(SampleRemoval([1, 3]), bundle)) == pytest.approx(0.0)

    # rows 1 and 3 (predicted 1 and 0) relabelled 1 and 2: 50 % right against the new labels;
    # harmonic mean 2·50·80 / (50 + 80) = 8000 / 130 = 61.538461…
    change = LabelChange([1, 3], [1, 2])
    assert step_objective(SCRIPTED, build_scenario(change, bundle)) == pytest.approx(61.53846153846154)
    # rows 0 and 2 (predicted 0 and 2) relabelled 1 and 0: 0 % right; the harmonic mean of 0 and 80 is 0
    assert step_objective(SCRIPTED, build_scenario(LabelChange([0, 2], [1, 0]), bundle)) == 0.0
    # and of 0 and 0 (defined as 0, not a division by zero): nothing right on validation either
    none_right = _scripted_bundle(val=([1] * 10, KEPT[1]), test=KEPT)
    assert step_objective(SCRIPTED, build_scenario(LabelChange([0, 2], [1, 0]), none_right)) == 0.0


def test_step_objective_of_the_bundled_iris_mlp(iris):
    """The bundled model fits its training split (100 %) and gets 14 of 15 validation flowers (its card: 93.33 %):
    a sample removal scores 93.33 − |100 − 93.33| = 86.67, a good score for a well-fitted model."""
    model, card, data, _ = iris
    assert card.accuracy["train"] == 100.0 and card.accuracy["val"] == pytest.approx(93.3333)
    scenario = build_scenario(SampleRemoval([0, 1, 2, 3]), data)
    assert evaluate_model(model, scenario)["forget_acc"] == 100.0  # the removed rows, as fitted as the rest
    val = 100 * 14 / 15  # 93.33 %
    assert step_objective(model, scenario) == pytest.approx(val - (100 - val)) == pytest.approx(86.6667, abs=1e-4)


def test_one_preparation_serves_several_answers_with_the_numbers_of_run_edit(iris, monkeypatch):
    import gif_core.experiment as experiment

    model, card, data, _ = iris
    request = ClassRemoval(2)
    first = EditConfig(methods=("gif", "if"), step=1.0)
    prepared = experiment.prepare_edit(model, card, data, request, first)
    direct = run_edit(model, card, data, request, first)
    from_prepared = experiment.answer(prepared, first)
    for a, b in zip(direct.outcomes, from_prepared.outcomes, strict=True):
        assert torch.allclose(a.result.delta, b.result.delta, rtol=1e-5, atol=1e-7)
        assert a.metrics == pytest.approx(b.metrics)

    def refuse(*args, **kwargs):
        raise AssertionError("prepared again")

    monkeypatch.setattr(experiment, "prepare", refuse)  # a second answer reuses g, H and the selection
    other = experiment.answer(prepared, EditConfig(("fif", "pif"), solver=EstimatorConfig(maxiter=5), step=2.0))
    assert [o.method for o in other.outcomes] == ["fif", "pif"] and other.selection is prepared.selection
    assert other.original == prepared.original


def test_a_preparation_refuses_a_config_it_was_not_prepared_for(iris):
    import gif_core.experiment as experiment

    model, card, data, _ = iris
    prepared = experiment.prepare_edit(model, card, data, ClassRemoval(0), EditConfig())
    with pytest.raises(ValueError, match=r"selection\.ratio 0\.05 → 0\.1.*prepare it again"):
        experiment.answer(prepared, EditConfig(selection=SelectionConfig(ratio=0.1)))


def test_linearized_products_leave_the_edit_unchanged(iris):
    model, card, data, _ = iris
    plain, traced = (
        run_edit(
            model,
            card,
            data,
            SampleRemoval([0, 5, 9]),
            EditConfig(("gif", "if"), curvature=HessianConfig(linearize=flag)),
        )
        for flag in (False, True)
    )
    for a, b in zip(plain.outcomes, traced.outcomes, strict=True):
        assert torch.allclose(a.result.delta, b.result.delta, rtol=1e-4, atol=1e-6)
        assert a.step == pytest.approx(b.step) and a.metrics == pytest.approx(b.metrics)


def test_class_removal_scores_forget_and_retain_from_one_pass_over_the_test_split(iris):
    from gif_core.evaluate import accuracy, predict_proba

    model, _, data, _ = iris
    scenario = build_scenario(ClassRemoval(1), data)
    metrics = evaluate_model(model, scenario)
    assert metrics["forget_acc"] == accuracy(predict_proba(model, scenario.forget.inputs), scenario.forget.labels)
    assert metrics["retain_acc"] == accuracy(predict_proba(model, scenario.retain.inputs), scenario.retain.labels)
    # by hand, on the scripted model: test split = 10 samples of classes 0 and 2 (8 right) + 4 of class 1 (1 right)
    scripted = build_scenario(ClassRemoval(1), _scripted_bundle(val=KEPT, test=_joined(KEPT, CLASS_1)))
    assert evaluate_model(SCRIPTED, scripted) == pytest.approx(
        {
            "forget_acc": 25.0,  # 1 of the 4 class-1 samples
            "retain_acc": 80.0,  # 8 of the 10 others
            "test_acc": 100 * 9 / 14,  # 64.29 %: 9 of all 14
            "f1": 77.41935483870968,  # 2·0.75·0.8 / (0.75 + 0.8) = 1.2 / 1.55
        }
    )


def test_a_no_op_edit_is_flagged_on_its_row():
    """Issue 18, bug 3: GIF and IF chose α = 0.01 for 8 removed samples and matched the original; nothing warned."""
    from gif_core.experiment import EditConfig, run_edit
    from gif_core.requests import SampleRemoval
    from gif_core.workspace import open_workspace_path
    from gif_core.zoo import bundled_model_path

    loaded = open_workspace_path(bundled_model_path("iris_mlp"))
    config = EditConfig(("gif", "if"), curvature=HessianConfig(samples=64), step=1e-6)
    report = run_edit(loaded.model, loaded.card, loaded.bundle, SampleRemoval((0, 1, 2, 3, 4, 5, 6, 7)), config)
    for outcome in report.outcomes:
        assert any("changes no test prediction" in f for f in outcome.flags), outcome.flags
        assert outcome.to_dict()["flags"] == list(outcome.flags)


def test_edit_flags_name_the_step_at_an_end_of_the_search():
    from gif_core.experiment import edit_flags
    from gif_core.steps import search_step

    probs = torch.eye(3)
    floor = search_step(lambda alpha: -alpha)  # the objective prefers no edit: the floor
    flags = edit_flags({"retain_acc": 90.0}, probs, {"retain_acc": 90.0}, probs.flip(0), floor)
    assert flags == tuple(floor.warnings) and "floor" in flags[0]
    worse = edit_flags({"retain_acc": 80.0}, probs, {"retain_acc": 90.0}, probs.flip(0), None)
    assert worse == ("worse than the original on the retained data (10.0 points lower)",)
    assert edit_flags({"retain_acc": 89.6}, probs, {"retain_acc": 90.0}, probs.flip(0), None) == ()


def test_the_curvature_section_reaches_the_hessian_of_the_edit(iris):
    """Precision, Gauss-Newton, damping, the sample and the card's weight decay all arrive in the problem's H."""
    import gif_core.experiment as experiment

    model, card, data, _ = iris
    curvature = HessianConfig(samples=32, seed=4, damping=0.2, gauss_newton=True, dtype="float64")
    prepared = experiment.prepare_edit(model, card, data, ClassRemoval(1), EditConfig(curvature=curvature))
    hessian = prepared.problem.hessian
    assert hessian.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32  # the model untouched
    assert hessian.config.gauss_newton and hessian.config.damping == 0.2
    assert hessian.config.weight_decay == card.recipe["weight_decay"]
    assert prepared.problem_config.hessian_samples == 32 and prepared.problem_config.seed == 4
    report = experiment.answer(prepared, EditConfig(curvature=curvature))
    assert not report.outcomes[0].diverged and report.outcomes[0].result.delta.dtype == torch.float64
