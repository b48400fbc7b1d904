"""Loading a model that came without its card (issue 18): training-checkpoint wrappers in .pt files, the card form,
the README's card template, and the gallery's mix of classes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import open_page
from streamlit.testing.v1 import AppTest

from gif_core.checkpoints import STATE_DICT_KEYS, load_checkpoint, load_checkpoint_bytes, load_weights
from gif_core.data import BUNDLED_DATASETS, DATASETS, class_mix, load_data
from gif_core.model_card import FORM_NOTE, CardForm, ModelCard, card_from_form
from gif_core.train import Recipe
from gif_core.workspace import open_workspace
from gif_core.zoo import bundled_model_path

ROOT = Path(__file__).resolve().parents[1]
IRIS = bundled_model_path("iris_mlp")
IRIS_CARD = IRIS.with_suffix(".json").read_text()


def _bundled_state() -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint(IRIS, device="cpu")
    return model.state_dict()


def _pt_bytes(tmp_path: Path, payload: object) -> bytes:
    path = tmp_path / "w.pt"
    torch.save(payload, path)
    return path.read_bytes()


# ---------------------------------------------------------------- .pt wrappers


@pytest.mark.parametrize("key", STATE_DICT_KEYS)
def test_a_wrapped_state_dict_loads_the_same_weights_as_the_plain_one(tmp_path, key):
    state = _bundled_state()
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))]).state_dict()
    wrapped = {key: state, "epoch": 7, "optimizer_state_dict": optimizer}  # what training loops save
    plain, _ = load_checkpoint_bytes(_pt_bytes(tmp_path, state), IRIS_CARD, "plain.pt", device="cpu")
    loaded, _ = load_checkpoint_bytes(_pt_bytes(tmp_path, wrapped), IRIS_CARD, "wrapped.pt", device="cpu")
    assert list(loaded.state_dict()) == list(state)
    assert all(torch.equal(loaded.state_dict()[n], plain.state_dict()[n]) for n in state)
    assert all(torch.equal(loaded.state_dict()[n], state[n]) for n in state)
    on_disk = tmp_path / "m.pth"  # by path, with its card beside it
    torch.save(wrapped, on_disk)
    on_disk.with_suffix(".json").write_text(IRIS_CARD)
    from_path, _ = load_checkpoint(on_disk, device="cpu")
    assert all(torch.equal(from_path.state_dict()[n], state[n]) for n in state)
    workspace = open_workspace(_pt_bytes(tmp_path, wrapped), IRIS_CARD, "up.pt", "upload:up.pt")  # the dashboard's
    assert all(torch.equal(workspace.model.state_dict()[n].cpu(), state[n]) for n in state)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"state_dict": {"0.weight": [1.0, 2.0]}}, r"its 'state_dict' entry maps '0\.weight' to a list, not a tensor"),
        (
            {"state_dict": {"state_dict": {"0.weight": torch.zeros(2)}}},
            r"'state_dict' entry maps 'state_dict' to a dict",
        ),
        ({"model_state_dict": [torch.zeros(2)]}, r"its 'model_state_dict' entry is a list"),
        ({"state_dict": {3: torch.zeros(2)}}, r"has the key 3 of type int, not a parameter name"),
        ({"weights": {"0.weight": torch.zeros(2)}}, r"does not hold a state dict .*: it maps 'weights' to a dict"),
        (torch.zeros(3), r"does not hold a state dict .*: it is a Tensor"),
        ({"state_dict": {}, "model_state_dict": {}}, r"holds both 'state_dict' and 'model_state_dict'"),
    ],
)
def test_junk_in_a_pt_is_one_clear_error(tmp_path, payload, message):
    with pytest.raises(ValueError, match=message) as caught:
        load_checkpoint_bytes(_pt_bytes(tmp_path, payload), IRIS_CARD, "junk.pt", device="cpu")
    assert "torch.save(model.state_dict(), path)" in str(caught.value)


# ---------------------------------------------------------------- the card form


def test_the_form_writes_the_bundled_models_card_and_it_round_trips():
    bundled = ModelCard.from_json(IRIS_CARD)
    recipe = Recipe.from_dict(bundled.recipe)
    card = card_from_form(CardForm("mlp", "iris", bundled.split_seed, recipe, "my notes"))
    for name in ("arch", "input_shape", "num_classes", "classes", "dataset", "split_seed", "recipe"):
        assert getattr(card, name) == getattr(bundled, name), name
    assert card.notes == f"{FORM_NOTE} my notes" and card.accuracy == {} and card.train_seconds == 0.0
    assert ModelCard.from_dict(card.to_dict()) == card and ModelCard.from_json(card.to_json()) == card
    model, _ = load_weights(card, IRIS.read_bytes(), IRIS.name, device="cpu")  # and the weights load with it
    assert all(torch.equal(model.state_dict()[n], v) for n, v in _bundled_state().items())


def test_the_form_reads_shape_and_classes_from_the_data_set():
    for dataset, arch in (("mnist-bundled", "cnn"), ("digits", "mlp")):
        bundle = load_data(dataset, seed=5)
        card = card_from_form(CardForm(arch, dataset, split_seed=5))
        assert (card.input_shape, card.classes, card.recipe) == (bundle.input_shape, bundle.classes, {})


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (CardForm("cnn", "digits"), r"'cnn' does not fit data set 'digits': 'cnn' needs images of at least 16x16"),
        (CardForm("lenet", "iris"), r"'lenet' needs image inputs"),
        (CardForm("cnn", "cifar10"), r"loads without a folder \(mnist-bundled, iris, digits\), got 'cifar10'"),
        (CardForm("bert", "iris"), r"unknown architecture 'bert'"),
        (CardForm("mlp", "iris", split_seed=-1), r"'split_seed' must be a whole number"),
    ],
)
def test_the_form_refuses_a_card_that_cannot_be(form, message):
    with pytest.raises(ValueError, match=message):
        card_from_form(form)


def test_bundled_datasets_are_those_that_need_no_folder():
    for name in DATASETS:
        if name in BUNDLED_DATASETS:
            assert len(load_data(name).train) > 0
        else:
            with pytest.raises(ValueError, match="needs a local folder"):
                load_data(name)


# ---------------------------------------------------------------- the README's template


def test_the_readme_card_template_is_valid_and_loads_the_bundled_weights():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Model card template", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```json\n(.*?)\n```", section, re.DOTALL)
    card = ModelCard.from_dict(json.loads(block))
    model, _ = load_weights(card, bundled_model_path(card.extra["bundled_name"]).read_bytes(), "w.safetensors")
    assert sum(p.numel() for p in model.parameters()) > 0
    explained = re.findall(r"^- `(\w+)`:", section, re.MULTILINE)
    assert sorted(explained) == sorted(card.to_dict())  # one line for every field


# ---------------------------------------------------------------- class mix


def test_class_mix_takes_the_classes_in_turn():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)  # sorted by label, as a source file may be
    rows = class_mix(labels, 7, seed=0)
    assert len(set(rows)) == 7
    assert [int(labels[r]) for r in rows] == [0, 1, 2, 0, 1, 2, 0]
    assert class_mix(labels, 7, seed=0) == rows and class_mix(labels, 7, seed=1) != rows


def test_class_mix_with_uneven_classes_and_edge_cases():
    labels = [2, 2, 2, 2, 5]
    assert sorted(class_mix(labels, 10)) == [0, 1, 2, 3, 4]  # fewer rows than k: all of them, once
    assert [labels[r] for r in class_mix(labels, 3)] == [2, 5, 2]  # class 5 runs out after one turn
    assert class_mix(labels, 0) == [] and class_mix([], 3) == []
    with pytest.raises(ValueError, match="k must be a whole number >= 0"):
        class_mix(labels, -1)


# ---------------------------------------------------------------- the page


@pytest.fixture
def model_page(private_cache) -> AppTest:
    at = open_page().run()
    assert not at.exception, at.exception
    return at


def _written(at: AppTest) -> list[dict]:
    cards = [json.loads(j.proto.body) for j in at.get("json")]
    return [c for c in cards if isinstance(c, dict) and c.get("notes", "").startswith(FORM_NOTE)]


@pytest.mark.slow
def test_the_upload_page_writes_a_card_with_the_form(model_page):
    at = model_page
    at.radio(key="source").set_value("Upload").run()
    assert not _written(at)
    at.checkbox(key="write_card").check().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert {"card_arch", "card_dataset", "card_seed", "card_lr", "card_wd", "card_epochs"} <= {
        w.key for w in [*at.selectbox, *at.number_input]
    }
    assert [ModelCard.from_dict(c) for c in _written(at)] == [
        card_from_form(CardForm("cnn", "mnist-bundled", 0, Recipe()))
    ]
    assert [b.key for b in at.get("download_button")] == ["card_download"]
    at.selectbox(key="card_dataset").select("iris").run()  # a CNN cannot read iris: said in place, form kept
    assert "'cnn' does not fit data set 'iris'" in at.error[0].value and not _written(at)
    assert at.button(key="load_upload") is not None
    at.selectbox(key="card_arch").select("mlp").run()
    at.checkbox(key="card_recipe").uncheck().run()
    (written,) = _written(at)
    assert written["recipe"] == {} and written["input_shape"] == [4]
    at.button(key="load_upload").click().run()  # AppTest cannot upload: the weights are still missing
    assert "Upload both the weights and the model card" in at.error[0].value


@pytest.mark.slow
def test_the_gallery_shows_a_mix_of_classes_by_default(model_page):
    captions = [image.proto.imgs[0].caption for image in model_page.get("image")]
    classes = [caption.split(" · ")[1] for caption in captions]
    assert len(captions) == 24 and set(classes) == {str(d) for d in range(10)}
    assert classes[:10] == [str(d) for d in range(10)]  # one of each class in turn
