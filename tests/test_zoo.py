"""The bundled checkpoints load, their cards are right, and their accuracy is what the card says."""

from __future__ import annotations

from pathlib import Path

import pytest

from gif_core.checkpoints import ModelCard, card_path_for, load_checkpoint
from gif_core.data import load_data
from gif_core.evaluate import accuracy, predict_proba
from gif_core.zoo import bundled, bundled_model_path, default_model_path, list_bundled, main, train_bundled

ONE_SAMPLE_IN_1000 = 0.1  # percentage points: room for one borderline test image on other hardware
CARD_ROUNDING = 1e-4  # cards store accuracy rounded to 4 decimals


def test_table() -> None:
    names = [entry.name for entry in list_bundled()]
    assert names[0] == "mnist_cnn" and "iris_mlp" in names
    assert default_model_path().name == "mnist_cnn.safetensors"
    with pytest.raises(ValueError, match="mnist_cnn"):
        bundled("imagenet_vit")


def test_default_model_matches_its_card() -> None:
    model, card = load_checkpoint(default_model_path(), device="cpu")
    entry = bundled("mnist_cnn")
    assert (card.arch, card.dataset, card.input_shape, card.num_classes) == ("cnn", "mnist-bundled", (1, 28, 28), 10)
    assert card.recipe == entry.recipe.to_dict()
    assert set(card.accuracy) == {"train", "val", "test"}
    assert 0 < card.train_seconds <= 60
    data = load_data(card.dataset, seed=card.split_seed)
    measured = accuracy(predict_proba(model, data.test.inputs), data.test.labels)
    assert measured == pytest.approx(card.accuracy["test"], abs=ONE_SAMPLE_IN_1000)
    assert measured >= 96.0


def test_iris_model_matches_its_card() -> None:
    model, card = load_checkpoint(bundled_model_path("iris_mlp"), device="cpu")
    data = load_data(card.dataset, seed=card.split_seed)
    measured = accuracy(predict_proba(model, data.test.inputs), data.test.labels)
    assert measured == pytest.approx(card.accuracy["test"], abs=CARD_ROUNDING)
    assert card.accuracy["test"] >= 90.0


def test_train_bundled_writes_a_card_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["--out", str(tmp_path), "--only", "iris_mlp"])
    assert "iris_mlp" in capsys.readouterr().out
    path = tmp_path / "iris_mlp.safetensors"
    card = ModelCard.from_json(card_path_for(path).read_text())
    assert card.extra["bundled_name"] == "iris_mlp" and card.recipe == bundled("iris_mlp").recipe.to_dict()
    model, _ = load_checkpoint(path, device="cpu")
    test = load_data("iris").test
    measured = accuracy(predict_proba(model, test.inputs), test.labels)
    assert measured == pytest.approx(card.accuracy["test"], abs=CARD_ROUNDING)
    with pytest.raises(FileExistsError, match="choose a new name"):
        train_bundled("iris_mlp", tmp_path, show_bar=False)
