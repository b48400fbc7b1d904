"""Issue 14 §2: every output path is checked before any work, and a run that fails leaves no file behind."""

from __future__ import annotations

import os

import pytest
import torch

import gif_core.cli as cli
from gif_core.cli import main
from gif_core.outputs import check_new_outputs, write_new_files

FAST = ["--hessian-samples", "64", "--maxiter", "3", "--quiet"]


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the command gets as far as loading a model or training one."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the command started working before it had checked its outputs")

    monkeypatch.setattr(cli, "open_workspace_path", refuse)
    monkeypatch.setattr(cli, "train_and_save", refuse)


def files_in(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "cache" not in p.parts)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gif: error:"), err
    return err[0]


def test_the_same_file_for_save_and_json_is_refused_before_any_work(tmp_path, capsys, no_work):
    target = tmp_path / "x.safetensors"
    assert main(["remove", "--class", "1", "--save", str(target), "--json", str(target), *FAST]) == 2
    assert "is also the file of" in one_error_line(capsys) and files_in(tmp_path) == []


@pytest.mark.parametrize(
    ("save", "message"),
    [
        ("afile/x.safetensors", "is a file, not a folder"),
        ("missing/x.safetensors", "does not exist"),
        ("", "needs a file name"),
        ("folder", "checkpoints are saved as .safetensors"),
    ],
)
def test_a_bad_save_target_fails_first_and_leaves_the_json_unwritten(tmp_path, capsys, no_work, save, message):
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "folder").mkdir()
    before = files_in(tmp_path)
    argv = ["remove", "--class", "1", "--json", str(tmp_path / "ok.json"), *FAST]
    assert main([*argv, "--save", str(tmp_path / save) if save else ""]) == 2
    assert message in one_error_line(capsys) and files_in(tmp_path) == before


@pytest.mark.parametrize(("json_target", "message"), [("", "needs a file name"), ("folder", "is a directory")])
def test_a_bad_json_target_fails_first(tmp_path, capsys, no_work, json_target, message):
    (tmp_path / "folder").mkdir()
    target = str(tmp_path / json_target) if json_target else ""
    assert main(["remove", "--class", "1", "--json", target, *FAST]) == 2
    assert message in one_error_line(capsys) and files_in(tmp_path) == ["folder"]


def test_a_read_only_folder_fails_first(tmp_path, capsys, no_work, monkeypatch):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: make os.access answer as for anyone else
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda path, mode: False if str(path) == str(readonly) else real_access(path, mode)
        )
    argv = ["remove", "--class", "1", "--json", str(tmp_path / "ok.json"), "--save", str(readonly / "x.safetensors")]
    assert main([*argv, *FAST]) == 2
    assert "is not writable" in one_error_line(capsys) and files_in(tmp_path) == ["ro"]


def test_train_checks_its_output_before_training(tmp_path, capsys, no_work):
    (tmp_path / "afile").write_text("a file")
    assert main(["train", "--data", "iris", "--arch", "mlp", "--out", str(tmp_path / "afile" / "m.safetensors")]) == 2
    assert "is a file, not a folder" in one_error_line(capsys)
    assert main(["train", "--data", "iris", "--arch", "mlp", "--out", ""]) == 2
    assert "needs a file name" in one_error_line(capsys)


def test_a_save_that_cannot_happen_writes_no_json_either(tmp_path, capsys):
    """The edit diverges (α = 1e37), so --save is refused after the work: the report is not written either."""
    report, saved = tmp_path / "r.json", tmp_path / "e.safetensors"
    argv = ["remove", "--class", "1", "--step", "1e37", "--json", str(report), "--save", str(saved), *FAST]
    assert main(argv) == 2
    assert "diverged" in capsys.readouterr().err and files_in(tmp_path) == []


def test_all_files_or_none(tmp_path, monkeypatch):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    calls = []
    real_link = os.link

    def link_then_fail(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_link(source, target)

    monkeypatch.setattr(os, "link", link_then_fail)
    with pytest.raises(OSError, match="No space"):
        write_new_files({first: b"1", second: b"2"})
    assert files_in(tmp_path) == []  # the first file was removed again, no temporary file is left


def test_a_file_made_by_someone_else_meanwhile_is_kept(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    (path,) = check_new_outputs([(target, "--json")])
    target.write_text("theirs")  # appears after the check, during the work
    with pytest.raises(FileExistsError, match="created by someone else"):
        write_new_files({path: b"ours"})
    assert target.read_text() == "theirs" and files_in(tmp_path) == ["r.json"]


def test_outputs_are_written_whole(tmp_path):
    contents = {tmp_path / "a.bin": os.urandom(1 << 20), tmp_path / "b.json": b"{}"}
    write_new_files(contents)
    assert {p: p.read_bytes() for p in contents} == contents and files_in(tmp_path) == ["a.bin", "b.json"]


def test_save_checkpoint_writes_both_files_or_neither(tmp_path):
    """The card's name taken between the check and the write (the old check-then-write gap): nothing is written."""
    from gif_core.checkpoints import checkpoint_files, load_checkpoint, save_checkpoint
    from gif_core.zoo import default_model_path

    model, card = load_checkpoint(default_model_path(), device="cpu")
    target = tmp_path / "m.safetensors"
    files = checkpoint_files(model, card, target)  # checked: both names are free
    (tmp_path / "m.json").write_text("someone else's card")
    with pytest.raises(FileExistsError):
        write_new_files(files)
    assert files_in(tmp_path) == ["m.json"] and (tmp_path / "m.json").read_text() == "someone else's card"
    with pytest.raises(FileExistsError, match="already exists"):
        save_checkpoint(model, card, target)
    (tmp_path / "m.json").unlink()
    save_checkpoint(model, card, target)
    reloaded, _ = load_checkpoint(target, device="cpu")
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(), strict=True)
    )
