"""The dashboard cannot be exhausted and leaks nothing: Streamlit's upload limit and loopback address are set, and
"Local path" opens checkpoints only under the allowed folders, answering one message for anything else."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import open_page
from streamlit.testing.v1 import AppTest

from gif_core.workspace import LOCAL_ROOTS_ENV, local_roots, resolve_local_checkpoint, resolve_local_folder
from gif_core.zoo import ASSETS_DIR

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPOSITORY = Path(__file__).resolve().parents[1]
IRIS = ASSETS_DIR / "iris_mlp.safetensors"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Gradient, eigenpair and retrain caches in a fresh folder; the allowed folders at their defaults."""
    monkeypatch.setenv("GIF_CACHE_DIR", str(tmp_path / "gif-cache"))
    monkeypatch.delenv(LOCAL_ROOTS_ENV, raising=False)


def test_streamlit_config_bounds_uploads_and_listens_on_loopback():
    config = tomllib.loads((REPOSITORY / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["address"] == "127.0.0.1"
    assert isinstance(server["maxUploadSize"], int) and 1 <= server["maxUploadSize"] <= 200
    assert config["runner"]["postScriptGC"] is False  # what was there is kept


def _checkpoint(folder: Path, name: str = "m") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    path.write_bytes(IRIS.read_bytes())
    path.with_suffix(".json").write_text(IRIS.with_suffix(".json").read_text())
    return path


def test_local_paths_resolve_only_under_the_allowed_folders(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    inside = _checkpoint(root / "models")
    secret = _checkpoint(outside, "secret")
    (root / "link.safetensors").symlink_to(secret)  # a link leading out
    (root / "link.json").symlink_to(secret.with_suffix(".json"))
    (root / "card_out.safetensors").write_bytes(IRIS.read_bytes())  # weights inside, card linked from outside
    (root / "card_out.json").symlink_to(secret.with_suffix(".json"))
    (root / "notes.txt").write_text("not a checkpoint")
    (root / "nocard.safetensors").write_bytes(IRIS.read_bytes())

    assert resolve_local_checkpoint(inside, [root]) == inside.resolve()
    assert resolve_local_checkpoint(root / "models" / ".." / "models" / "m.safetensors", [root]) == inside.resolve()
    messages = set()
    for path in (
        secret,  # exists, outside
        root / ".." / "outside" / "secret.safetensors",  # `..` escaping the root
        root / "link.safetensors",
        root / "card_out.safetensors",
        root / "missing.safetensors",
        root / "notes.txt",
        root / "nocard.safetensors",
        root / "models",  # a folder
        "/etc/passwd",
        "/etc",
        "relative/nothing.safetensors",
        "bad\x00name.safetensors",
    ):
        with pytest.raises(FileNotFoundError) as caught:
            resolve_local_checkpoint(path, [root])
        messages.add(str(caught.value))
    assert len(messages) == 1, messages
    (message,) = messages
    assert message.startswith("checkpoint not found: there is no checkpoint at this path under the allowed folders: ")
    assert str(root.resolve()) in message and "secret" not in message and LOCAL_ROOTS_ENV in message

    assert resolve_local_folder(root / "models", [root]) == (root / "models").resolve()
    folder_messages = set()
    for path in (outside, root / "missing", root / "notes.txt", "/etc", root / "models" / ".." / ".." / "outside"):
        with pytest.raises(FileNotFoundError) as caught:
            resolve_local_folder(path, [root])
        folder_messages.add(str(caught.value))
    assert len(folder_messages) == 1 and "under the allowed folders" in folder_messages.pop()


def test_allowed_folders_default_to_the_working_directory_and_assets_and_are_configurable(tmp_path, monkeypatch):
    assert local_roots() == (Path.cwd().resolve(), ASSETS_DIR.resolve())
    assert resolve_local_checkpoint(IRIS) == IRIS.resolve()
    monkeypatch.setenv(LOCAL_ROOTS_ENV, os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert local_roots() == ((tmp_path / "a").resolve(), (tmp_path / "b").resolve())
    with pytest.raises(FileNotFoundError, match="under the allowed folders"):
        resolve_local_checkpoint(IRIS)  # assets/ is no longer allowed
    assert resolve_local_checkpoint(_checkpoint(tmp_path / "b")) == (tmp_path / "b" / "m.safetensors").resolve()


def _load_path(at: AppTest, path: str, data_root: str = "") -> AppTest:
    at.text_input(key="local_path").input(path)
    at.text_input(key="data_root").input(data_root)
    at.button(key="load_path").click().run()
    assert not at.exception, at.exception
    return at


@pytest.mark.slow
def test_local_path_gives_one_message_for_server_files_and_missing_ones(tmp_path, monkeypatch):
    at = open_page().run()
    assert not at.exception, at.exception
    at.radio(key="source").set_value("Local path").run()

    outside = _load_path(at, "/etc/passwd").error[0].value
    missing = _load_path(at, str(ASSETS_DIR / "missing.safetensors")).error[0].value
    escaping = _load_path(at, str(ASSETS_DIR / ".." / ".." / ".." / "etc" / "passwd")).error[0].value
    assert outside == missing == escaping
    assert "no checkpoint at this path under the allowed folders" in outside and "passwd" not in outside
    assert "not found" in outside
    assert (
        _load_path(at, str(IRIS), data_root="/etc")
        .error[0]
        .value.startswith(
            "FileNotFoundError: folder not found: there is no folder at this path under the allowed folders"
        )
    )

    _load_path(at, str(IRIS))
    assert not at.error, [e.value for e in at.error]
    assert any("iris_mlp.safetensors" in m.value for m in at.markdown)

    # a folder added with GIF_LOCAL_ROOTS is allowed: its pickled .pt is refused unread, its wrong-data-set card
    # is one clear error, and the loaded model stays the one before
    monkeypatch.setenv(LOCAL_ROOTS_ENV, str(tmp_path))
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"weight": Payload()}, tmp_path / "bad.pt")
    (tmp_path / "bad.json").write_text(IRIS.with_suffix(".json").read_text())
    assert "refused to load 'bad.pt'" in _load_path(at, str(tmp_path / "bad.pt")).error[0].value
    assert not marker.exists()
    wrong = _checkpoint(tmp_path, "wrong")
    wrong.with_suffix(".json").write_text(json.dumps({**json.loads(wrong.with_suffix(".json").read_text()),
                                                      "dataset": "mnist-bundled"}))  # fmt: skip
    assert "does not fit its data set" in _load_path(at, str(wrong)).error[0].value
    assert any("iris_mlp.safetensors" in m.value for m in at.markdown)
