"""Loading a model with its data from a path or from uploaded bytes, and the files an edit is saved as."""

import pytest
import torch

from gif_core.checkpoints import checkpoint_id, load_checkpoint_bytes, weights_bytes
from gif_core.experiment import EditConfig, run_edit
from gif_core.influence import EstimatorConfig
from gif_core.params import state_hash
from gif_core.requests import ClassRemoval
from gif_core.selection import SelectionConfig
from gif_core.workspace import edited_card, open_workspace, open_workspace_path
from gif_core.zoo import bundled_model_path


def test_bytes_and_path_give_the_same_workspace():
    path = bundled_model_path("iris_mlp")
    from_path = open_workspace_path(path)
    from_bytes = open_workspace(path.read_bytes(), path.with_suffix(".json").read_bytes(), path.name, "upload")
    assert from_path.model_id == from_bytes.model_id == checkpoint_id(path)
    assert state_hash(from_path.model) == state_hash(from_bytes.model)
    assert torch.equal(from_path.train.labels, from_bytes.train.labels)
    assert from_path.backdoor is None and from_path.backdoor_request is None
    assert from_path.weight_decay == from_path.card.recipe["weight_decay"] > 0


def test_backdoored_workspace_trains_on_the_poisoned_split_and_knows_how_to_undo_it():
    loaded = open_workspace_path(bundled_model_path("mnist_cnn_backdoor"))
    request = loaded.backdoor_request
    rows = torch.tensor(request.indices)
    assert len(rows) == round(0.1 * len(loaded.train)) and (loaded.train.labels[rows] == loaded.backdoor.target).all()
    assert torch.equal(torch.tensor(request.new_labels), loaded.bundle.train.labels[rows])  # the true labels
    untouched = torch.ones(len(loaded.train), dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(loaded.train.inputs[untouched], loaded.bundle.train.inputs[untouched])


def test_edited_checkpoint_bytes_round_trip_and_record_the_edit():
    loaded = open_workspace_path(bundled_model_path("iris_mlp"))
    before = state_hash(loaded.model)
    report = run_edit(
        loaded.model,
        loaded.card,
        loaded.bundle,
        ClassRemoval(1),
        EditConfig(selection=SelectionConfig(ratio=0.2), solver=EstimatorConfig(maxiter=10)),
    )
    outcome = report.outcomes[0]
    card = edited_card(loaded, outcome, report.request.describe())
    model, reloaded_card = load_checkpoint_bytes(weights_bytes(outcome.model), card.to_json(), "edited.safetensors")
    assert state_hash(model) == state_hash(outcome.model) != before
    assert reloaded_card.extra["edited_from"] == loaded.model_id and reloaded_card.extra["edit"]["method"] == "gif"
    assert state_hash(loaded.model) == before  # the original is never modified


def test_bad_paths_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="check the path"):
        open_workspace_path(tmp_path / "nothing.safetensors")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(bundled_model_path("iris_mlp").read_bytes())
    with pytest.raises(FileNotFoundError, match="JSON card beside it"):
        open_workspace_path(weights)


def test_answer_returns_the_frozen_report_with_its_model_and_ground_truth(private_cache):
    """One entry answers a question end to end: the same numbers as run_edit, the model named, the retrained model's
    seconds and cache state recorded (the second time from the cache), and the report cannot be patched."""
    import dataclasses

    loaded = open_workspace_path(bundled_model_path("iris_mlp"))
    config = EditConfig(("gif", "if"), SelectionConfig(ratio=0.2), solver=EstimatorConfig(maxiter=10))
    first = loaded.answer(ClassRemoval(1), config, retrain=True, show_bar=False)
    again = loaded.answer(ClassRemoval(1), config, retrain=True, show_bar=False)
    direct = run_edit(
        loaded.model, loaded.card, loaded.bundle, ClassRemoval(1), config, retrained_model=first.retrained_model
    )
    record = first.to_dict()
    assert record["model"] == {"path": loaded.source, "id": loaded.model_id}
    assert record["retrained"]["from_cache"] is False and record["retrained"]["seconds"] > 0
    assert again.to_dict()["retrained"]["from_cache"] is True
    assert [o.metrics for o in first.outcomes] == [o.metrics for o in direct.outcomes]
    assert first.retrained == direct.retrained
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.retrain_seconds = 0.0


def test_the_public_face_exports_what_it_lists_and_shadows_no_module():
    """``from gif_core import X`` works for every name of ``__all__``, and no exported name hides a submodule
    (``import gif_core.retrain`` must stay the module, not a function of that name)."""
    import pkgutil

    import gif_core

    modules = {module.name for module in pkgutil.iter_modules(gif_core.__path__)}
    assert [name for name in gif_core.__all__ if not hasattr(gif_core, name)] == []
    assert [name for name in gif_core.__all__ if name in modules] == []


def test_a_report_and_its_outcomes_are_frozen():
    import dataclasses

    loaded = open_workspace_path(bundled_model_path("iris_mlp"))
    report = loaded.answer(ClassRemoval(1), EditConfig(("gif", "if")), show_bar=False)
    assert isinstance(report.outcomes, tuple) and isinstance(report.outcomes[0].later_steps, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.outcomes[0].vs_retrain = {"agreement": 100.0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.retrained = {}
