"""Checkpoints: safetensors round trip, no overwrite, clear mismatch errors, and no unpickling of payloads."""

from __future__ import annotations

import hashlib
import json
import pathlib
from pathlib import Path

import pytest
import torch
from torch import nn

from gif_core.checkpoints import (
    ModelCard,
    card_path_for,
    checkpoint_id,
    file_sha256,
    load_checkpoint,
    load_checkpoint_bytes,
    save_checkpoint,
)
from gif_core.models import build_model

CARD = ModelCard(
    arch="mlp",
    input_shape=(4,),
    num_classes=3,
    classes=("setosa", "versicolor", "virginica"),
    dataset="iris",
    split_seed=0,
    recipe={"optimizer": "adam", "lr": 0.01},
    accuracy={"test": 96.5},
    train_seconds=0.4,
    notes="test model",
    extra={"backdoor": {"trigger": "none"}},
)


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", (4,), 3)


def _card(**changes: object) -> ModelCard:
    return ModelCard.from_dict({**CARD.to_dict(), **changes})


def test_round_trip(tmp_path: Path, model: nn.Module) -> None:
    path = save_checkpoint(model, CARD, tmp_path / "sub" / "m.safetensors")
    assert path.is_file() and card_path_for(path) == tmp_path / "sub" / "m.json"
    loaded, card = load_checkpoint(path, device="cpu")
    assert card == CARD
    assert not loaded.training
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert name == name_b and torch.equal(a, b)
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), model(x))


def test_card_json_round_trip_and_validation() -> None:
    assert ModelCard.from_json(CARD.to_json()) == CARD
    with pytest.raises(ValueError, match="unknown architecture"):
        _card(arch="bert")
    with pytest.raises(ValueError, match="format_version"):
        _card(format_version=2)
    with pytest.raises(ValueError, match="unknown fields"):
        _card(colour="blue")
    with pytest.raises(ValueError, match="3 classes but num_classes is 4"):
        _card(num_classes=4)
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelCard.from_json("{arch: mlp")
    incomplete = CARD.to_dict()
    del incomplete["arch"]
    with pytest.raises(ValueError, match="incomplete"):
        ModelCard.from_dict(incomplete)


def test_refuses_to_overwrite(tmp_path: Path, model: nn.Module) -> None:
    path = save_checkpoint(model, CARD, tmp_path / "m.safetensors")
    before = file_sha256(path)
    with pytest.raises(FileExistsError, match="choose a new name"):
        save_checkpoint(build_model("mlp", (4,), 3), CARD, path)
    assert file_sha256(path) == before
    (tmp_path / "n.json").write_text("{}")  # a stray card also blocks the name
    with pytest.raises(FileExistsError, match=r"n\.json"):
        save_checkpoint(model, CARD, tmp_path / "n.safetensors")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_checkpoint(model, CARD, tmp_path / "m.pt")


def _save_pt(state: dict[str, torch.Tensor], card: ModelCard, path: Path) -> Path:
    torch.save(state, path)
    card_path_for(path).write_text(card.to_json())
    return path


def test_pt_state_dict_loads_with_weights_only(tmp_path: Path, model: nn.Module) -> None:
    path = _save_pt(model.state_dict(), CARD, tmp_path / "m.pt")
    loaded, _ = load_checkpoint(path, device="cpu")
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_wrong_architecture_in_card_is_one_clear_error(tmp_path: Path, model: nn.Module) -> None:
    path = save_checkpoint(model, CARD, tmp_path / "m.safetensors")
    card_path_for(path).write_text(_card(arch="logreg").to_json())
    with pytest.raises(ValueError, match="'logreg'") as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "unexpected keys" in message and "5.weight" in message and "shape mismatches" in message


def test_missing_extra_and_misshapen_keys_are_all_listed(tmp_path: Path, model: nn.Module) -> None:
    state = dict(model.state_dict())
    del state["3.bias"]
    state["head.weight"] = torch.zeros(2, 2)
    state["5.weight"] = torch.zeros(5, 64)
    path = _save_pt(state, CARD, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="architecture 'mlp'") as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "missing keys (1): 3.bias" in message
    assert "unexpected keys (1): head.weight" in message
    assert "5.weight: file (5, 64) vs model (3, 64)" in message
    assert "Check that the card's arch" in message


def test_number_of_classes_mismatch(tmp_path: Path, model: nn.Module) -> None:
    path = save_checkpoint(model, CARD, tmp_path / "m.safetensors")
    card_path_for(path).write_text(_card(num_classes=4, classes=["a", "b", "c", "d"]).to_json())
    with pytest.raises(ValueError, match=r"5\.bias: file \(3,\) vs model \(4,\)"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this object calls Path.touch(marker): a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path, model: nn.Module) -> None:
    marker = tmp_path / "MARKER"
    state = {**model.state_dict(), "0.weight": _Payload(marker)}
    path = _save_pt(state, CARD, tmp_path / "evil.pt")
    assert not marker.exists()

    with pytest.raises(ValueError, match=r"refused to load 'evil\.pt'"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint_bytes(path.read_bytes(), CARD.to_json(), "upload.pth")
    assert not marker.exists()

    # The payload is live: an unsafe loader would have run it. This is what the two calls above must not do.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_uploads_from_bytes_and_file_objects(tmp_path: Path, model: nn.Module) -> None:
    path = save_checkpoint(model, CARD, tmp_path / "m.safetensors")
    card_json = card_path_for(path).read_text()
    from_bytes, card = load_checkpoint_bytes(path.read_bytes(), card_json, "m.safetensors", device="cpu")
    with path.open("rb") as handle:
        from_file, _ = load_checkpoint_bytes(handle, card_json.encode(), "m.safetensors", device="cpu")
    assert card == CARD
    x = torch.randn(3, 4)
    assert torch.equal(from_bytes(x), model(x)) and torch.equal(from_file(x), model(x))


def test_unsupported_or_corrupt_files(tmp_path: Path, model: nn.Module) -> None:
    with pytest.raises(ValueError, match="not a supported weights file"):
        load_checkpoint_bytes(b"\x80\x04N.", CARD.to_json(), "weights.pkl")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_checkpoint_bytes(b"garbage-bytes-here", CARD.to_json(), "w.safetensors")
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint_bytes(b"junk", CARD.to_json(), "w.pt")
    tensor_only = _save_pt(torch.zeros(3), CARD, tmp_path / "t.pt")  # a lone tensor, not a state dict
    with pytest.raises(ValueError, match="state dict"):
        load_checkpoint(tensor_only)


def test_missing_files(tmp_path: Path, model: nn.Module) -> None:
    with pytest.raises(FileNotFoundError, match="check the path"):
        load_checkpoint(tmp_path / "absent.safetensors")
    path = save_checkpoint(model, CARD, tmp_path / "m.safetensors")
    card_path_for(path).unlink()
    with pytest.raises(FileNotFoundError, match="model card"):
        load_checkpoint(path)
    other_card = tmp_path / "elsewhere.json"
    other_card.write_text(json.dumps(CARD.to_dict()))
    _, card = load_checkpoint(path, card_path=other_card)
    assert card == CARD


def test_hashes(tmp_path: Path, model: nn.Module) -> None:
    first = save_checkpoint(model, CARD, tmp_path / "a.safetensors")
    same = save_checkpoint(model, CARD, tmp_path / "b.safetensors")
    with torch.no_grad():
        model[1].weight[0, 0] += 1.0
    changed = save_checkpoint(model, CARD, tmp_path / "c.safetensors")
    assert file_sha256(first) == hashlib.sha256(first.read_bytes()).hexdigest()
    assert checkpoint_id(first) == checkpoint_id(same) != checkpoint_id(changed)
    assert len(checkpoint_id(first)) == 16
