"""The `gif` command end to end (its report and saved model on the bundled iris MLP), and its argument errors."""

import json

import pytest
import torch

from gif_core.cli import main
from gif_core.influence import METHOD_LABELS, METHOD_SUMMARIES
from gif_core.zoo import bundled_model_path

FAST = ["--hessian-samples", "200", "--maxiter", "40", "--quiet"]
IRIS = ["--model", str(bundled_model_path("iris_mlp"))]
"""The report's keys and structure need no CNN: on the iris MLP a retrain takes a second, not a minute and a half."""
IRIS_PARAMETERS = (4 * 64 + 64) + (64 * 64 + 64) + (64 * 3 + 3)  # 4 → 64 → 64 → 3 weights and biases: 4,675

pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_remove_class_with_retrain_writes_a_well_formed_report(tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = ["remove", *IRIS, "--class", "0", "--method", "gif,if", "--retrain", "--json", str(out), *FAST]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"request", "original", "retrained", "results"}
    assert report["request"] == {"kind": "class-removal", "class": 0}
    assert [r["method"] for r in report["results"]] == ["gif", "if"]
    for result in report["results"]:
        assert set(result) >= {
            "method",
            "selector",
            "ratio",
            "n_selected",
            "step",
            "forget_acc",
            "retain_acc",
            "test_acc",
            "f1",
            "solver",
            "vs_retrain",
        }
        assert set(result["solver"]) == {"name", "iterations", "hvps", "rel_residual", "converged", "seconds"}
        assert set(result["vs_retrain"]) == {"agreement", "kl", "avg_gap"}
        assert 0 <= result["forget_acc"] <= 100 and 0 <= result["test_acc"] <= 100
    gif, full = report["results"]
    assert gif["ratio"] == 0.05 and 0 < gif["n_selected"] < 0.06 * IRIS_PARAMETERS
    assert gif["n_selected"] == round(gif["ratio_obtained"] * IRIS_PARAMETERS)
    assert full["selector"] == "all" and full["n_selected"] == IRIS_PARAMETERS == 4675
    assert report["retrained"]["forget_acc"] == 0.0  # a model never shown class 0 never predicts it
    assert report["original"]["forget_acc"] > 90
    assert gif["forget_acc"] < report["original"]["forget_acc"]  # the edit forgets
    printed = capsys.readouterr().out
    assert "retrained" in printed and "GIF 5%" in printed


def test_the_newer_reference_rows_run_side_by_side_with_a_one_line_summary_each(tmp_path, capsys):
    """Issue 16: TracIn, DataInf, HyperINF and EK-FAC beside GIF and IF (IF by P-LiSSA): each has its report row with the
    summary of what it is, and the terminal table names it and prints that line under the table."""
    out = tmp_path / "report.json"
    methods = "gif,if,tracin,datainf,hyperinf,ekfac"
    argv = ["remove", *IRIS, "--class", "1", "--method", methods, "--json", str(out), *FAST]
    assert main([*argv, "--symmetric-solver", "plissa"]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == methods.split(",")
    assert all(r["summary"] == METHOD_SUMMARIES[r["method"]] and not r["diverged"] for r in results)
    assert results[1]["solver"]["name"] == "plissa" and results[1]["solver"]["hvps"] > 0
    assert all(r["solver"]["hvps"] == 0 and r["selector"] == "all" for r in results[2:])
    printed = capsys.readouterr().out
    for method in ("tracin", "datainf", "hyperinf", "ekfac"):
        assert f"{METHOD_LABELS[method]}: {METHOD_SUMMARIES[method]}" in printed
        assert any(line.lstrip().startswith(METHOD_LABELS[method] + " ") for line in printed.splitlines())


def test_relabel_and_save_edited_model(tmp_path):
    saved = tmp_path / "edited.safetensors"
    report = tmp_path / "report.json"
    # iris training rows 0 and 2 are setosas (class 0): relabelled as versicolor and virginica
    argv = ["remove", *IRIS, "--relabel", "0:1,2:2", "--method", "fif", "--iterations", "2", "--json", str(report)]
    assert main([*argv, "--save", str(saved), *FAST]) == 0
    assert saved.is_file() and saved.with_suffix(".json").is_file()
    (result,) = json.loads(report.read_text())["results"]
    assert [s["solver"]["hvps"] > 0 for s in result["later_steps"]] == [True]  # one re-linearised step after the first
    card = json.loads(saved.with_suffix(".json").read_text())
    assert card["extra"]["edit"]["method"] == "fif"
    assert card["arch"] == "mlp" and card["dataset"] == "iris"  # the edited model's card is the edited model's
    assert main(["info", str(saved)]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["remove", "--class", "12"], "Unknown class 12"),
        (["remove", "--samples", "1,x"], "comma-separated integers"),
        (["remove", "--samples", "99999"], "out of range"),
        (["remove", "--relabel", "3"], "ROW:LABEL"),
        (["remove", "--class", "1", "--ratio", "1.5"], "--ratio must be a finite number in (0, 1], got 1.5"),
        (["remove", "--class", "1", "--ratio", "0"], "--ratio must be a finite number in (0, 1], got 0"),
        (["remove", "--class", "1", "--hessian-samples", "0"], "--hessian-samples must be a whole number ≥ 1"),
        (["remove", "--class", "1", "--seed", "-1"], "--seed must be a whole number ≥ 0"),
        (["remove", "--class", "1", "--method", "gif,magic"], "Unknown method"),
        (["remove", "--class", "1", "--step", "big"], "--step must be"),
        (["remove", "--class", "1", "--iterations", "0"], "--iterations must be"),
        (["remove", "--class", "1", "--model", "missing.safetensors"], "not found"),
        (["info", "nowhere.safetensors"], "not found"),
    ],
)
def test_bad_arguments_print_one_line_and_exit_2(argv, message, capsys, tmp_path):
    out = tmp_path / "r.json"
    assert main([*argv, *(["--json", str(out)] if argv[0] == "remove" else [])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gif: error:") and message in err[0]
    assert not out.exists()


def test_existing_output_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("keep me")
    assert main(["remove", "--class", "1", "--json", str(out), *FAST]) == 2
    assert out.read_text() == "keep me" and "already exists" in capsys.readouterr().err


def test_backdoor_needs_a_backdoored_model(capsys):
    from gif_core.zoo import default_model_path

    assert main(["remove", "--backdoor", "--model", str(default_model_path()), *FAST]) == 2
    assert "not trained with a backdoor" in capsys.readouterr().err


def test_json_may_not_take_the_saved_cards_name(tmp_path, capsys):
    save, card = tmp_path / "x.safetensors", tmp_path / "x.json"
    assert main(["remove", "--class", "1", "--save", str(save), "--json", str(card), *FAST]) == 2
    assert "model card" in capsys.readouterr().err and not save.exists() and not card.exists()


def test_the_command_s_defaults_are_the_library_s():
    """One source of defaults: `gif remove` with no solver flags asks for exactly EditConfig()'s settings."""
    import dataclasses

    from gif_core.cli import _config, _parser
    from gif_core.experiment import EditConfig

    args = _parser().parse_args(["remove", "--class", "1"])
    assert _config(args) == dataclasses.replace(EditConfig(), methods=("gif",))


def test_solver_flags_reach_the_config():
    from gif_core.cli import _config, _parser

    argv = ["remove", "--class", "1", "--ridge", "1e-3", "--rtol", "0.05", "--step-cap", "500", "--damping", "0.01"]
    config = _config(_parser().parse_args(argv))
    assert (config.solver.gif_ridge, config.solver.rtol, config.step_search.cap, config.curvature.damping) == (
        1e-3,
        0.05,
        500.0,
        0.01,
    )
    argv = ["remove", "--class", "1", "--dtype", "float64", "--gauss-newton", "--hessian-data", "all", "--seed", "3"]
    argv += ["--budget", "global", "--symmetric-solver", "cg", "--maxiter", "7", "--hessian-samples", "64"]
    config = _config(_parser().parse_args(argv))
    curvature, selection, solver = config.curvature, config.selection, config.solver
    assert (curvature.dtype, curvature.gauss_newton, curvature.data, curvature.samples) == ("float64", True, "all", 64)
    assert (selection.budget, selection.seed, curvature.seed) == ("global", 3, 3)
    assert (solver.symmetric_solver, solver.maxiter) == ("cg", 7)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--ridge", "-1", "--ridge must be a finite number in [0, 1e+06], got -1.0"),
        ("--rtol", "2", "--rtol must be a finite number in (0, 1), got 2.0"),
        ("--step-cap", "0.5", "floor ≤ start ≤ cap"),
    ],
)
def test_bad_solver_flags_are_one_line_errors(flag, value, message, capsys):
    assert main(["remove", "--class", "1", flag, value, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_precision_and_gauss_newton_flags_reach_the_edit_and_its_report(tmp_path):
    out = tmp_path / "report.json"
    argv = ["remove", *IRIS, "--class", "0", "--dtype", "float64", "--gauss-newton", "--json", str(out), *FAST]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["config"]["curvature"]["dtype"] == "float64" and report["config"]["curvature"]["gauss_newton"]
    assert report["config"]["solver"]["gif_ridge"] == 0.01 and report["config"]["selection"]["ratio"] == 0.05
    (gif,) = report["results"]
    assert not gif["diverged"] and gif["forget_acc"] < report["original"]["forget_acc"]


def test_card_for_a_state_dict_checks_the_stated_classes_and_input_shape_against_the_data_set(tmp_path, capsys):
    """Issue 17: ``gif card --arch NAME --classes N --input-shape C,H,W --dataset D`` for weights trained elsewhere;
    the stated sizes must be the data set's, the weights must load strictly, and a refusal writes nothing."""
    from safetensors.torch import save_file

    from gif_core.checkpoints import load_checkpoint
    from gif_core.models import build_model

    weights = tmp_path / "mine.safetensors"
    model = build_model("mlp", (1, 8, 8), 10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    card = weights.with_suffix(".json")
    base = ["card", str(weights), "--arch", "mlp", "--dataset", "digits"]
    for stated, message in [
        (["--classes", "3"], "--classes 3 (the data set's: 10)"),
        (["--input-shape", "1,28,28"], "--input-shape (1, 28, 28) (the data set's: (1, 8, 8))"),
    ]:
        assert main([*base, *stated]) == 2
        err = capsys.readouterr().err
        assert message in err and "has 10 classes of 1×8×8 inputs" in err and not card.exists()
    with pytest.raises(SystemExit):
        main([*base, "--input-shape", "1,eight,8"])
    assert "not comma-separated sizes" in capsys.readouterr().err and not card.exists()
    assert main([*base, "--arch", "cnn", "--classes", "10"]) == 2  # an MLP's weights are not a CNN's
    assert not card.exists()
    capsys.readouterr()
    assert main([*base, "--classes", "10", "--input-shape", "1,8,8"]) == 0
    loaded, written = load_checkpoint(weights)
    assert (written.arch, written.num_classes, tuple(written.input_shape)) == ("mlp", 10, (1, 8, 8))
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
