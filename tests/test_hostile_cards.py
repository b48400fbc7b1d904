"""Hostile checkpoints: every bad card or weights file is one clear ValueError, from the library and from the CLI
(`gif: error: ...`, exit 2), and the ones built to exhaust memory are refused before anything is allocated.

The hostile files are made here, in tmp_path: a card nested 100,000 lists deep, absurd input shapes, cards naming
the wrong data set for their weights, malformed recipes, a 1 MB .pt that expands to 1 GiB, a 578-byte card whose
model would hold 640 million parameters."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

from gif_core import checkpoints
from gif_core.checkpoints import (
    DEFAULT_MAX_PARAMETERS,
    DEFAULT_MAX_WEIGHT_BYTES,
    ModelCard,
    count_parameters,
    load_checkpoint,
    load_checkpoint_bytes,
)
from gif_core.cli import main
from gif_core.models import ARCHITECTURES
from gif_core.workspace import open_workspace, open_workspace_path
from gif_core.zoo import bundled_model_path

IRIS = bundled_model_path("iris_mlp")
MNIST = bundled_model_path("mnist_cnn")
BOMB_NUMEL = 2**28  # float32: expands to 1 GiB
HUGE_INPUT = 10_000_000  # an mlp on 10 million features: 640 million parameters, 2.6 GB of float32


def card_of(weights: Path, **changes: object) -> dict:
    return {**json.loads(weights.with_suffix(".json").read_text()), **changes}


def checkpoint(tmp_path: Path, name: str, weights: Path, card: dict | str, suffix: str = ".safetensors") -> Path:
    """A copy of ``weights`` as ``tmp_path/name<suffix>`` with ``card`` (a dict, or raw JSON text) beside it."""
    path = tmp_path / f"{name}{suffix}"
    path.write_bytes(weights.read_bytes())
    path.with_suffix(".json").write_text(card if isinstance(card, str) else json.dumps(card))
    return path


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI, check it failed cleanly (exit 2, `gif: error:`) and return its message."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("gif: error: ") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Records of every real (non-meta) model build and every weights read, which the refusals must not reach."""
    calls: dict[str, list] = {"build": [], "torch.load": [], "safetensors": []}
    build, torch_load, st_load = checkpoints.build_model, torch.load, safetensors.torch.load

    def spy_build(*args, **kwargs):
        if torch.get_default_device().type != "meta":
            calls["build"].append(args)
        return build(*args, **kwargs)

    def spy(name, real):
        def recorded(*args, **kwargs):
            calls[name].append(args[1:])
            return real(*args, **kwargs)

        return recorded

    monkeypatch.setattr(checkpoints, "build_model", spy_build)
    monkeypatch.setattr(torch, "load", spy("torch.load", torch_load))
    monkeypatch.setattr(safetensors.torch, "load", spy("safetensors", st_load))
    return calls


# ---------------------------------------------------------------- the cases reported in issue 14 §4


def test_deeply_nested_card_is_a_value_error_not_a_recursion_error(tmp_path, capsys):
    path = checkpoint(tmp_path, "nested", IRIS, "[" * 100_000)
    for load in (lambda: ModelCard.from_json("[" * 100_000), lambda: load_checkpoint(path)):
        with pytest.raises(ValueError, match="not valid JSON: it nests lists/objects too deeply"):
            load()
    assert "nests lists/objects too deeply" in cli_error(capsys, "info", str(path))


def test_absurd_input_shape_is_refused_before_building(tmp_path, capsys, spies):
    path = checkpoint(tmp_path, "vast", MNIST, card_of(MNIST, input_shape=[100_000, 100_000, 100_000]))
    with pytest.raises(ValueError, match=r"'input_shape' must be at most 16,777,216 numbers per sample") as caught:
        load_checkpoint(path)
    assert "it has 1,000,000,000,000,000" in str(caught.value) and "fix the model card" in str(caught.value)
    assert spies == {"build": [], "torch.load": [], "safetensors": []}
    assert "input_shape" in cli_error(capsys, "info", str(path))


@pytest.mark.parametrize(
    ("weights", "dataset", "card_shape", "data_shape"),
    [(IRIS, "mnist-bundled", "[4] and 3 classes", "[1, 28, 28] and 10 classes"),
     (MNIST, "iris", "[1, 28, 28] and 10 classes", "[4] and 3 classes")],
    ids=["iris-weights-card-says-mnist", "mnist-weights-card-says-iris"],
)  # fmt: skip
def test_card_naming_another_data_set_is_one_clear_error(tmp_path, capsys, weights, dataset, card_shape, data_shape):
    path = checkpoint(tmp_path, "wrong", weights, card_of(weights, dataset=dataset))
    expected = re.escape(
        f"the model card does not fit its data set: the card describes inputs of shape {card_shape}, but "
        f"data set '{dataset}' has inputs of shape {data_shape}. Check the card's dataset, input_shape and "
        "num_classes (these weights may have been trained on another data set)"
    )
    with pytest.raises(ValueError, match=expected):
        open_workspace_path(path)
    with pytest.raises(ValueError, match=expected):
        open_workspace(path.read_bytes(), path.with_suffix(".json").read_bytes(), path.name, "upload")
    message = cli_error(capsys, "remove", "--model", str(path), "--class", "0", "--quiet")
    assert "does not fit its data set" in message and dataset in message and "mat1 and mat2" not in message


def test_recipe_that_is_not_an_object(tmp_path, capsys):
    path = checkpoint(tmp_path, "listed", IRIS, card_of(IRIS, recipe=[1, 2]))
    with pytest.raises(ValueError, match=r"field 'recipe' must be an object of training settings"):
        load_checkpoint(path)
    message = cli_error(capsys, "remove", "--model", str(path), "--class", "0", "--quiet")
    assert "'recipe' must be an object" in message


def test_recipe_with_a_mistyped_value_fails_before_retraining(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GIF_CACHE_DIR", str(tmp_path / "cache"))
    path = checkpoint(tmp_path, "lr", IRIS, card_of(IRIS, recipe={"lr": "x"}))
    with pytest.raises(ValueError, match=r"field 'recipe.lr' must be a finite number, got 'x'"):
        open_workspace_path(path)
    message = cli_error(capsys, "remove", "--model", str(path), "--class", "0", "--retrain", "--quiet")
    assert "'recipe.lr' must be a finite number" in message
    assert not (tmp_path / "cache").exists()  # nothing was trained


# ---------------------------------------------------------------- every field is checked


def _bad_card(**changes: object) -> str:
    return json.dumps(card_of(IRIS, **changes))


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": 3}, "unknown architecture 3"),
        ({"format_version": True}, "format_version True is not supported"),
        ({"input_shape": 4}, r"'input_shape' must be a list of 1 to 3 whole numbers >= 1"),
        ({"input_shape": [1, 1, 2, 2]}, "'input_shape' must be a list of 1 to 3"),
        ({"input_shape": [0]}, "'input_shape' must be a list of 1 to 3"),
        ({"input_shape": ["4"]}, "'input_shape' must be a list of 1 to 3"),
        ({"input_shape": [4.5]}, "'input_shape' must be a list of 1 to 3"),
        ({"input_shape": [True]}, "'input_shape' must be a list of 1 to 3"),
        ({"num_classes": 1, "classes": ["a"]}, "'num_classes' must be a whole number from 2 to 100,000"),
        ({"num_classes": 10**9}, "'num_classes' must be a whole number from 2 to 100,000"),
        ({"num_classes": "3"}, "'num_classes' must be a whole number"),
        ({"classes": "abc"}, "'classes' must be a list of class names"),
        ({"classes": [1, 2, 3]}, "'classes' must be a list of strings; this entry is not a string, got 1"),
        ({"dataset": "imagenet"}, "'dataset' must be one of mnist-bundled, iris"),
        ({"dataset": ["iris"]}, "'dataset' must be one of"),
        ({"split_seed": "0"}, "'split_seed' must be a whole number from 0 to 4294967295"),
        ({"split_seed": -1}, "'split_seed' must be a whole number from 0"),
        ({"recipe": {"learning_rate": 0.1}}, r"recipe has unknown keys \['learning_rate'\]; known keys are"),
        ({"recipe": {"epochs": 2.5}}, "'recipe.epochs' must be a whole number, got 2.5"),
        ({"recipe": {"epochs": 10**9}}, "'recipe.epochs' must be a whole number from 1 to 10,000"),
        ({"recipe": {"batch_size": 0}}, "'recipe.batch_size' must be a whole number from 1"),
        ({"recipe": {"optimizer": "rmsprop"}}, "'recipe.optimizer' must be one of adam, sgd"),
        ({"recipe": {"optimizer": 1}}, "'recipe.optimizer' must be a string"),
        ({"recipe": {"weight_decay": True}}, "'recipe.weight_decay' must be a finite number"),
        ({"recipe": {"lr": 10**400}}, "'recipe.lr' must be a finite number"),
        ({"recipe": {"lr": -1.0}}, "recipe is out of range: need lr > 0"),
        ({"recipe": {"seed": 2**70}}, "'recipe.seed' must be a seed torch.manual_seed accepts"),
        ({"accuracy": [97.0]}, "'accuracy' must be an object of split names and numbers"),
        ({"accuracy": {"test": "high"}}, "'accuracy' must be an object of split names and numbers"),
        ({"train_seconds": -1}, "'train_seconds' must be a number of seconds >= 0"),
        ({"notes": 5}, "'notes' must be a string"),
        ({"extra": [1]}, "'extra' must be an object"),
        ({"extra": _nested(40)}, "'extra' must be nested at most 32 lists/objects deep"),
    ],
    ids=lambda value: json.dumps(value)[:40] if isinstance(value, dict) else None,
)
def test_every_card_field_is_validated(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelCard.from_json(_bad_card(**changes))


def test_card_edge_values_that_are_fine_still_load():
    card = ModelCard.from_json(_bad_card(recipe={}, accuracy={}, extra=_nested(30), split_seed=2**32 - 1))
    assert card.recipe == {} and card.split_seed == 2**32 - 1
    assert ModelCard.from_json(_bad_card(input_shape=[1, 1, 4], classes=["x", "y", "z"])).input_shape == (1, 1, 4)


def test_other_malformed_json_is_a_value_error():
    for text in ("{arch: mlp", b"\xff\xfe{", '{"split_seed": ' + "9" * 5000 + "}", "[1, 2]", "x" * (5 * 2**20)):
        with pytest.raises(ValueError, match="model card"):
            ModelCard.from_json(text)


def test_malformed_backdoor_entry_is_a_value_error(tmp_path):
    for number, (backdoor, message) in enumerate((
        ([0], "it must be an object"),
        ({"target": 0, "fraction": "x", "trigger": {}, "seed": 0}, "extra.backdoor is malformed"),
        ({"target": 0, "fraction": 0.1, "seed": 0, "trigger": {"kind": "checkerboard", "size": 4,
          "corner": "bottom-right"}}, "a trigger needs image inputs"),
    )):  # fmt: skip
        path = checkpoint(tmp_path, f"backdoor{number}", IRIS, card_of(IRIS, extra={"backdoor": backdoor}))
        with pytest.raises(ValueError, match=message):
            open_workspace_path(path)


# ---------------------------------------------------------------- sizes: refused before allocating


def write_pt(path: Path, numel: int) -> Path:
    """torch.save's zip layout for ``{"weight": torch.zeros(numel)}``, deflate-compressed, written without ever
    holding the tensor: the pickle names a storage of ``numel`` float32 numbers and the data entry is streamed."""
    marker = object()

    class _Tensor:
        def __reduce__(self):
            args = (marker, 0, (numel,), (1,), False, collections.OrderedDict())
            return (torch._utils._rebuild_tensor_v2, args)

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is marker else None

    pickled = io.BytesIO()
    _Pickler(pickled, protocol=2).dump({"weight": _Tensor()})
    template = io.BytesIO()
    torch.save({"weight": torch.zeros(1)}, template)
    chunk = bytes(1 << 20)
    with (
        zipfile.ZipFile(template) as source,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out,
    ):
        for name in source.namelist():
            if name.endswith("/data.pkl"):
                out.writestr(name, pickled.getvalue())
            elif name.endswith("/data/0"):
                with out.open(name, "w", force_zip64=True) as entry:
                    for start in range(0, numel * 4, len(chunk)):
                        entry.write(chunk[: min(len(chunk), numel * 4 - start)])
            else:
                out.writestr(name, source.read(name))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A .pt of a few MB that expands to 1 GiB, with a valid card beside it."""
    folder = tmp_path_factory.mktemp("bomb")
    path = write_pt(folder / "bomb.pt", BOMB_NUMEL)
    path.with_suffix(".json").write_text(IRIS.with_suffix(".json").read_text())
    return path


@pytest.fixture(scope="module")
def huge_card(tmp_path_factory) -> Path:
    """A 578-byte card describing an mlp of 640 million parameters, beside small weights."""
    folder = tmp_path_factory.mktemp("huge")
    card = {"arch": "mlp", "input_shape": [HUGE_INPUT], "num_classes": 10, "classes": list("0123456789"),
            "dataset": "mnist-bundled", "split_seed": 0, "recipe": {"epochs": 1}, "notes": "x" * 371}  # fmt: skip
    path = checkpoint(folder, "huge", IRIS, card)
    assert path.with_suffix(".json").stat().st_size == 578
    return path


def test_write_pt_makes_what_torch_load_reads(tmp_path):
    """The bomb writer is real: at a small size torch.load(weights_only=True) reads its file as the state dict."""
    state = torch.load(write_pt(tmp_path / "small.pt", 1000), weights_only=True)
    assert list(state) == ["weight"] and torch.equal(state["weight"], torch.zeros(1000))


def refused_by_every_loader(path: Path, filename: str, expected: str) -> None:
    """The file is refused with ``expected`` from disk, from its bytes (as an upload) and as a workspace."""
    with pytest.raises(ValueError, match=expected):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=expected):
        load_checkpoint_bytes(path.read_bytes(), path.with_suffix(".json").read_bytes(), filename)
    with pytest.raises(ValueError, match=expected):
        open_workspace_path(path)


def test_decompression_bomb_is_refused_before_reading(bomb, capsys, spies):
    assert bomb.stat().st_size < 8 * 2**20
    expected = (
        r"weights file 'bomb\.pt' expands to 1,073,74\d,\d{3} bytes, more than the limit of 268,435,456; "
        "raise the limit with the environment variable GIF_MAX_WEIGHT_BYTES"
    )
    refused_by_every_loader(bomb, "bomb.pt", expected)
    assert spies["torch.load"] == [] and spies["build"] == []
    assert "GIF_MAX_WEIGHT_BYTES" in cli_error(capsys, "info", str(bomb))


def test_huge_card_is_refused_before_building_or_reading(huge_card, capsys, spies):
    expected = (
        r"the model card describes a mlp with 640,004,874 parameters \(input_shape \[10000000\], 10 classes\), "
        r"more than the limit of 50,000,000; check the card's input_shape and num_classes, or raise the limit "
        "with the environment variable GIF_MAX_PARAMETERS"
    )
    refused_by_every_loader(huge_card, "h.safetensors", expected)
    assert spies == {"build": [], "torch.load": [], "safetensors": []}
    assert "GIF_MAX_PARAMETERS" in cli_error(capsys, "remove", "--model", str(huge_card), "--class", "0", "--quiet")


def test_refusals_allocate_almost_nothing(bomb, huge_card):
    """Peak RSS of a fresh process grows by less than 200 MB over both refusals (before the fix: 2.1 and 3.6 GB)."""
    script = textwrap.dedent(
        f"""
        import resource, sys
        from gif_core.checkpoints import load_checkpoint
        from gif_core.workspace import open_workspace_path
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for load, path in ((load_checkpoint, {str(bomb)!r}), (open_workspace_path, {str(huge_card)!r})):
            try:
                load(path)
            except ValueError as error:
                print("refused:", str(error)[:60])
            else:
                sys.exit("loaded " + path)
        print("grew_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GIF_MAX_PARAMETERS", "GIF_MAX_WEIGHT_BYTES")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env, cwd=IRIS.parents[1]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("refused:") == 2, done.stdout
    grew_kb = int(done.stdout.split("grew_kb")[1])
    assert grew_kb < 200 * 1024, done.stdout


def test_limits_are_configurable(tmp_path, monkeypatch):
    path = checkpoint(tmp_path, "iris", IRIS, card_of(IRIS))
    monkeypatch.setenv("GIF_MAX_PARAMETERS", "100")
    with pytest.raises(ValueError, match=r"4,675 parameters .* more than the limit of 100;"):
        load_checkpoint(path)
    monkeypatch.setenv("GIF_MAX_PARAMETERS", "lots")
    with pytest.raises(ValueError, match="GIF_MAX_PARAMETERS='lots' must be a whole number >= 1"):
        load_checkpoint(path)
    monkeypatch.delenv("GIF_MAX_PARAMETERS")
    monkeypatch.setenv("GIF_MAX_WEIGHT_BYTES", "1000")
    with pytest.raises(
        ValueError, match=r"weights file 'iris\.safetensors' is 19,148 bytes, more than the limit of 1,000;"
    ):
        load_checkpoint(path)
    monkeypatch.setenv("GIF_MAX_WEIGHT_BYTES", "100000")
    small = write_pt(tmp_path / "small.pt", 100_000)  # 400 KB expanded, a few KB compressed
    assert small.stat().st_size < 10_000
    with pytest.raises(ValueError, match=r"'small\.pt' expands to 400,\d{3} bytes, more than the limit of 100,000"):
        load_checkpoint_bytes(small.read_bytes(), json.dumps(card_of(IRIS)), "small.pt")
    monkeypatch.setenv("GIF_MAX_WEIGHT_BYTES", "1_000_000")
    assert load_checkpoint(path, device="cpu")[1].arch == "mlp"


def test_a_deflated_pt_state_dict_within_the_limit_still_loads(tmp_path):
    model, card = load_checkpoint(IRIS, device="cpu")
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as out:
        for name in source.namelist():
            out.writestr(name, source.read(name))
    loaded, _ = load_checkpoint_bytes(deflated.read_bytes(), card.to_json(), "deflated.pt", device="cpu")
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), model(x))


def test_a_pt_that_is_not_a_zip_archive_is_refused(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"weight": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"refused to load 'legacy\.pt': it is not the zip archive torch\.save"):
        load_checkpoint_bytes(legacy.read_bytes(), IRIS.with_suffix(".json").read_text(), "legacy.pt")


def test_default_limits_fit_every_architecture_at_cifar_size():
    """The defaults leave room for the biggest bundled architectures on 3x32x32 inputs, with 100 classes."""
    for arch in ARCHITECTURES:
        count = count_parameters(arch, (3, 32, 32), 100)
        assert count < DEFAULT_MAX_PARAMETERS / 4, (arch, count)
        assert count * 4 < DEFAULT_MAX_WEIGHT_BYTES / 4
    assert count_parameters("resnet18", (3, 32, 32), 10) == 11_183_582  # counted on the meta device
