"""Issue 14 §3: a non-finite weight, loss, Δ or logit is caught where it appears; never reported as an accuracy."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gif_core.cli import main
from gif_core.evaluate import NonFiniteOutput, predict_proba
from gif_core.experiment import EditConfig, run_edit
from gif_core.params import ParamSpace, apply_delta
from gif_core.problem import HessianConfig
from gif_core.requests import ClassRemoval
from gif_core.steps import StepSearchConfig
from gif_core.train import Recipe
from gif_core.workspace import open_workspace_path
from gif_core.zoo import default_model_path

FAST = ["--hessian-samples", "64", "--maxiter", "3", "--quiet"]


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(scope="module")
def bundled():
    return open_workspace_path(default_model_path())


def strict_json(text: str) -> dict:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_training_that_diverges_stops_and_saves_nothing(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["train", "--data", "iris", "--arch", "mlp", "--epochs", "1", "--lr", "1e30", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "training diverged in epoch 1" in err and "lower the learning rate" in err
    assert not any(tmp_path.glob("*m.*"))  # neither the weights, the card nor a temporary file


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308"])
def test_non_finite_or_absurd_damping_is_one_line(value, capsys):
    assert main(["remove", "--class", "1", f"--damping={value}", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damping must be" in err[0]


@pytest.mark.parametrize("flag", ["--ridge", "--step", "--rtol", "--ratio", "--step-cap"])
def test_nan_flags_are_refused(flag, capsys):
    assert main(["remove", "--class", "1", flag, "nan", *FAST]) == 2
    assert capsys.readouterr().err.startswith("gif: error:")


def test_recipe_numbers_must_be_finite():
    for bad in ({"lr": math.nan}, {"lr": math.inf}, {"weight_decay": math.nan}, {"lr": "x"}, {"epochs": 1.5}):
        with pytest.raises(ValueError, match=r"recipe .* must be a (finite|whole) number"):
            Recipe(**bad)


@pytest.mark.parametrize("step", ["1e37", "1e19"])
def test_an_overflowing_edit_is_reported_diverged_never_as_an_accuracy(tmp_path, capsys, step):
    report_path = tmp_path / "r.json"
    assert (
        main(["remove", "--class", "1", "--step", step, "--method", "gif,if", "--json", str(report_path), *FAST]) == 0
    )
    report = strict_json(report_path.read_text())
    for result in report["results"]:
        assert result["diverged"] is True and "not finite" in result["reason"]
        assert not {"forget_acc", "retain_acc", "test_acc", "f1", "step"} & set(result)
    printed = capsys.readouterr().out
    assert "GIF diverged" in printed and "20.00" not in printed.split("Request")[0]


def test_relinearised_steps_that_blow_up_end_diverged_not_in_a_traceback(tmp_path):
    report_path = tmp_path / "r.json"
    argv = ["remove", "--class", "1", "--iterations", "5", "--step", "1e6", "--json", str(report_path), *FAST]
    assert main(argv) == 0
    (result,) = strict_json(report_path.read_text())["results"]
    assert result["diverged"] is True


def test_library_edit_with_a_diverging_step_has_no_metrics_and_no_model(bundled):
    config = EditConfig(("gif",), curvature=HessianConfig(samples=64), step=1e37)
    report = run_edit(bundled.model, bundled.card, bundled.bundle, ClassRemoval(1), config)
    (outcome,) = report.outcomes
    assert outcome.diverged and outcome.model is None and outcome.metrics == {} and outcome.test_probs is None
    strict_json(report.to_json())


def test_the_auto_step_never_chooses_a_diverged_alpha(bundled):
    """With a cap far beyond overflow the search walks into non-finite outputs, records them and stops there."""
    search = StepSearchConfig(factor=1e4, cap=1e36, patience=20)
    config = EditConfig(("gif",), curvature=HessianConfig(samples=64), step_search=search)
    report = run_edit(bundled.model, bundled.card, bundled.bundle, ClassRemoval(1), config)
    (outcome,) = report.outcomes
    assert not outcome.diverged and outcome.step_search.diverged  # it reached α where the model overflows
    assert outcome.step < min(outcome.step_search.diverged) and math.isfinite(outcome.metrics["test_acc"])
    assert all(math.isfinite(o) for _, o in outcome.step_curve)
    strict_json(report.to_json())


def test_nan_logits_are_an_error_not_class_zero():
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 0] = math.nan
    with pytest.raises(NonFiniteOutput, match="not finite"):
        predict_proba(model, torch.ones(4, 3))


def test_an_edit_that_overflows_the_weights_is_refused():
    model = torch.nn.Linear(3, 2)
    space = ParamSpace.from_model(model)
    with pytest.raises(FloatingPointError, match="not finite"):
        apply_delta(model, space, torch.full((space.numel,), 1e30), step=1e30)


def test_a_checkpoint_with_nan_weights_is_refused_at_load(tmp_path, capsys):
    import safetensors.torch

    source = default_model_path()
    state = safetensors.torch.load_file(str(source))
    first = next(iter(state))
    state[first].view(-1)[0] = math.nan
    weights = tmp_path / "nan.safetensors"
    safetensors.torch.save_file(state, str(weights), metadata={"format": "pt"})
    (tmp_path / "nan.json").write_text(source.with_suffix(".json").read_text())
    assert main(["remove", "--class", "1", "--model", str(weights), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gif: error:") and "non-finite weights" in err and first in err


def test_a_model_with_nan_weights_is_never_saved(tmp_path, bundled):
    import copy

    from gif_core.checkpoints import save_checkpoint

    broken = copy.deepcopy(bundled.model)
    with torch.no_grad():
        next(broken.parameters()).view(-1)[0] = math.inf
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        save_checkpoint(broken, bundled.card, tmp_path / "x.safetensors")
    assert not any(tmp_path.glob("x.*"))
