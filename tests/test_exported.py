"""Issue 17: a model brought as a ``.pt2`` exported program (an architecture we do not know) loads without running
anything the file brings, computes what the module it was exported from computes, and answers a class removal in
the CLI with GIF vs IF vs the retrained ground truth; hostile archives are refused."""

import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp
from torch.nn import functional as F

from gif_core.checkpoints import load_checkpoint
from gif_core.cli import main
from gif_core.curvature import FORWARD_MODE
from gif_core.data import load_data
from gif_core.experiment import EditConfig
from gif_core.exported import check_archive, export_bytes, load_exported, reinitialised
from gif_core.requests import ClassRemoval
from gif_core.selection import SelectionConfig
from gif_core.train import Recipe, train_model
from gif_core.workspace import open_workspace_path

pytestmark = pytest.mark.usefixtures("isolated_cache")
SHAPE = (1, 8, 8)  # the bundled 8x8 digits: small enough to train and retrain in a test
RECIPE = Recipe("adam", 1e-2, 0.9, 1e-4, 8, 64, 0)


class DigitNet(nn.Module):
    """A module the library does not know: a conv with BatchNorm, a residual add, a hand-written head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.mix = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.head = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm(self.stem(x)))
        h = F.avg_pool2d(h + torch.tanh(self.mix(h)), 2)
        return self.head(h.flatten(1))


def exported_bytes(module: nn.Module) -> bytes:
    program = torch.export.export(
        module.eval(), (torch.rand(4, *SHAPE),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def trained_digit_net() -> nn.Module:
    torch.manual_seed(0)
    module = DigitNet()
    train_model(module, load_data("digits").train, RECIPE, show_bar=False)
    return module.eval()


def test_the_loaded_program_computes_what_its_module_computes(trained_digit_net):
    loaded = load_exported(exported_bytes(trained_digit_net), "net.pt2", SHAPE)
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in trained_digit_net.named_parameters()]
    assert isinstance(loaded.head, nn.Linear) and isinstance(loaded.stem, nn.Conv2d)
    assert isinstance(loaded.norm, nn.BatchNorm2d) and loaded.mix.groups == 2  # real layers: hooks and reset work
    x, y = torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3, 4])
    assert torch.allclose(loaded(x), trained_digit_net(x), atol=1e-6)
    params = {n: p.detach() for n, p in trained_digit_net.named_parameters()}
    tangent = {n: torch.randn_like(p) for n, p in params.items()}

    def hvp(model: nn.Module) -> dict[str, torch.Tensor]:
        def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return F.cross_entropy(functional_call(model, p, (x,)), y)

        with FORWARD_MODE:  # forward-mode levels are per process: a dashboard test's job may run HVPs meanwhile
            return jvp(grad(loss), (params,), (tangent,))[1]

    ours, theirs = hvp(loaded), hvp(trained_digit_net)
    for name in params:
        assert torch.allclose(ours[name], theirs[name], atol=1e-6), name


def test_batch_norm_of_a_loaded_program_trains_on_batch_statistics_and_evaluates_on_running_ones(trained_digit_net):
    loaded = load_exported(exported_bytes(trained_digit_net), "net.pt2", SHAPE)
    x = torch.rand(16, *SHAPE) * 3
    before = loaded.norm.running_mean.clone()
    with torch.no_grad():
        eval_out = loaded.eval()(x)
        train_out = loaded.train()(x)
    assert not torch.allclose(eval_out, train_out) and not torch.equal(before, loaded.norm.running_mean)


def test_reinitialised_draws_pytorchs_default_initialisation_and_refuses_loose_parameters(trained_digit_net):
    loaded = load_exported(exported_bytes(trained_digit_net), "net.pt2", SHAPE)
    fresh, again = reinitialised(loaded, 3), reinitialised(loaded, 3)
    torch.manual_seed(3)
    reference = DigitNet()  # the same layers in the same order, initialised by their own reset_parameters
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    for name in ("stem.weight", "head.weight", "head.bias"):
        assert torch.equal(fresh.state_dict()[name], reference.state_dict()[name]), name
    assert torch.equal(fresh.norm.running_var, torch.ones(6)) and not torch.equal(fresh.head.weight, loaded.head.weight)

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(10))
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x.flatten(1)) * self.scale

    with pytest.raises(ValueError, match="scale lie outside any layer with a stated initialisation"):
        reinitialised(load_exported(exported_bytes(Scaled()), "scaled.pt2", SHAPE), 0)


def test_a_program_exported_with_a_fixed_batch_size_is_refused_with_the_fix():
    program = torch.export.export(DigitNet().eval(), (torch.rand(4, *SHAPE),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    with pytest.raises(ValueError, match="dynamic batch dimension"):
        load_exported(buffer.getvalue(), "fixed.pt2", SHAPE)


def test_class_removal_of_an_exported_program_in_the_cli_against_the_retrained_program(trained_digit_net, tmp_path):
    weights = tmp_path / "net.pt2"
    weights.write_bytes(exported_bytes(trained_digit_net))
    argv = ["card", str(weights), "--data", "digits", "--epochs", "8", "--lr", "0.01", "--batch-size", "64"]
    assert main([*argv, "--arch", "cnn"]) == 2  # a .pt2's architecture is its graph
    assert main(argv) == 0
    card = json.loads((tmp_path / "net.json").read_text())
    assert card["arch"] == "exported" and card["recipe"]["epochs"] == 8 and card["input_shape"] == [1, 8, 8]
    model, _ = load_checkpoint(weights)
    report_path, edited = tmp_path / "report.json", tmp_path / "edited.pt2"
    remove = ["remove", "--model", str(weights), "--class", "3", "--method", "gif,if", "--retrain", "--quiet"]
    assert main([*remove, "--json", str(report_path), "--save", str(edited)]) == 0
    report = json.loads(report_path.read_text())
    retrained, outcomes = report["retrained"], {o["method"]: o for o in report["results"]}
    assert set(outcomes) == {"gif", "if"} and retrained["forget_acc"] == 0.0  # retrained never predicts class 3
    assert report["original"]["forget_acc"] > 80 and not retrained["from_cache"]
    for method in ("gif", "if"):
        outcome = outcomes[method]
        assert not outcome["diverged"] and outcome["forget_acc"] < report["original"]["forget_acc"]
        assert outcome["vs_retrain"]["avg_gap"] >= 0
    layers = report["selection"]["layers"]
    assert layers["head"]["units_selected"] >= 1 and set(layers) == {"stem", "mix", "head"}
    reloaded, edited_card = load_checkpoint(edited)  # the edit is saved as a new .pt2, loadable like the original
    assert edited_card.arch == "exported" and edited_card.extra["edited_from"]
    x = load_data("digits").test.inputs[:8]
    assert not torch.allclose(reloaded(x), model(x))
    workspace = open_workspace_path(weights)  # the retrained program is served from the cache the CLI filled
    assert workspace.cached_retrain(ClassRemoval(3)) is not None


def test_a_workspace_edit_selects_units_of_the_programs_layers(trained_digit_net, tmp_path):
    weights = tmp_path / "net.pt2"
    weights.write_bytes(exported_bytes(trained_digit_net))
    assert main(["card", str(weights), "--data", "digits"]) == 0
    workspace = open_workspace_path(weights)
    with pytest.raises(ValueError, match="no training recipe"):
        workspace.retrain(ClassRemoval(3))
    config = EditConfig(methods=("gif",), selection=SelectionConfig(method="output", ratio=0.05))
    report = workspace.answer(ClassRemoval(3), config)
    assert report.selection is not None and report.selection.n_selected > 0
    assert {layer.module for layer in report.selection.layers} >= {"stem", "mix", "head"}


def test_export_bytes_round_trips_an_edited_layered_module(trained_digit_net):
    loaded = load_exported(exported_bytes(trained_digit_net), "net.pt2", SHAPE)
    with torch.no_grad():
        loaded.head.bias += 1.0
    again = load_exported(export_bytes(loaded, SHAPE), "edited.pt2", SHAPE)
    x = torch.rand(3, *SHAPE)
    assert torch.allclose(again(x), loaded(x), atol=1e-6)


# Hostile archives. Each attack is first shown to work on torch.export.load itself (in a child process, so a payload
# that runs cannot touch this one), then refused by our loader with the payload never run.


class _Touch:
    """A pickled object that creates a file when it is unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rewrite(content: bytes, change) -> bytes:
    """The archive ``content`` with ``change(entries)`` applied to its {relative name: bytes}."""
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        root = archive.namelist()[0].split("/")[0]
        entries = {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}
    change(entries)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(f"{root}/{name}", data)
    return out.getvalue()


def _pickled_weight(marker: Path):
    def change(entries):
        config = json.loads(entries["data/weights/model_weights_config.json"])
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        buffer = io.BytesIO()
        torch.save(_Touch(marker), buffer)
        entries[f"data/weights/{first['path_name']}"] = buffer.getvalue()
        entries["data/weights/model_weights_config.json"] = json.dumps(config).encode()

    return change


def _pickled_sample_inputs(marker: Path):
    def change(entries):
        buffer = io.BytesIO()
        torch.save(_Touch(marker), buffer)
        entries["data/sample_inputs/model.pt"] = buffer.getvalue()

    return change


def _sympy_expression(marker: Path):
    def change(entries):
        text = entries["models/model.json"].decode()
        code = f"open({str(marker)!r}, 'w')"
        symbol = r"Symbol\('[su]\d+', positive=True, integer=True\)"
        hostile, count = re.subn(symbol, lambda m: f"{m.group(0)} + 0*len(str({code}))", text)
        assert count, "the export has a symbolic batch size"
        entries["models/model.json"] = hostile.encode()

    return change


def _run_torch_export_load(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "hostile.pt2"
    path.write_bytes(content)
    script = "import sys, torch\ntry:\n    torch.export.load(sys.argv[1])\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=300, capture_output=True)


@pytest.mark.parametrize("attack", [_pickled_weight, _pickled_sample_inputs, _sympy_expression])
def test_a_hostile_program_runs_code_in_torch_export_load_but_is_refused_here(attack, tmp_path):
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    program = torch.export.export(
        module.eval(), (torch.rand(4, *SHAPE),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    torch_marker, our_marker = tmp_path / "torch-ran-it", tmp_path / "we-ran-it"
    _run_torch_export_load(_rewrite(buffer.getvalue(), attack(torch_marker)), tmp_path)
    assert torch_marker.exists(), "the attack must be real: torch.export.load runs it"
    with pytest.raises(ValueError, match="refused to load"):
        load_exported(_rewrite(buffer.getvalue(), attack(our_marker)), "hostile.pt2", SHAPE)
    assert not our_marker.exists()


def _declared(entries):
    config = json.loads(entries["data/weights/model_weights_config.json"])
    next(iter(config["config"].values()))["tensor_meta"]["sizes"] = [{"as_int": 100_000}, {"as_int": 100_000}]
    entries["data/weights/model_weights_config.json"] = json.dumps(config).encode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.update({"data/aotinductor/model/model.so": b"\x7fELF"}), "not part of an exported program"),
        (lambda e: e.update({"data/constants/custom_obj_0": b"x"}), "not part of an exported program"),
        (lambda e: e.update({"../escape": b"x"}), "leaves the archive"),
        (_declared, "declares shape"),
        (
            lambda e: e.update(
                {
                    "models/model.json": e["models/model.json"].replace(
                        b"torch.ops.aten.linear", b"torch.ops.aten.from_file"
                    )
                }
            ),
            "not an allowed ATen operator",
        ),
        (
            lambda e: e.update(
                {"models/model.json": e["models/model.json"].replace(b'"guards_code": []', b'"guards_code": ["1"]')}
            ),
            "guard code",
        ),
    ],
)
def test_archives_outside_what_an_exported_program_holds_are_refused(change, message):
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    content = exported_bytes(module)
    with pytest.raises(ValueError, match=message):
        check_archive(_rewrite(content, change), "hostile.pt2")
    check_archive(content, "fine.pt2")  # the unchanged archive passes
