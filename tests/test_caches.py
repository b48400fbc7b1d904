"""The three on-disk caches (issue 14 §1): retrained models, per-sample gradients and Hessian eigenpairs.

Each must key on everything its content depends on, and serve an entry only after verifying it: a foreign, corrupt,
truncated or mismatching entry is recomputed with a CacheWarning, never served, and concurrent writers never fail.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blobs, rel_err
from conftest import fit_logreg as _fit_logreg
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gif_core.backdoor import BackdoorSpec
from gif_core.browse import EIGENPAIRS_KIND, BrowserConfig, InfluenceBrowser
from gif_core.cache_files import CacheWarning, InvalidEntry, atomic_path, data_fingerprint, save_entry
from gif_core.checkpoints import ModelCard, card_path_for, checkpoint_id
from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.data import LabelledSet, load_data
from gif_core.gradient_store import GradientStore, gradient_store, write_gradient_file
from gif_core.params import state_hash
from gif_core.requests import SampleRemoval
from gif_core.retrain import cached_retrain, retrain, retrain_key
from gif_core.scores import training_gradients
from gif_core.zoo import bundled_model_path

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def no_cache_warning() -> Iterator[None]:
    """Any CacheWarning inside is an error: the entry must be served as it is."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        yield


# ---------------------------------------------------------------------------------------------------------------
# Retrained models


@pytest.fixture(scope="module")
def iris():
    """The bundled iris MLP's card with a short recipe (a retrain takes a fraction of a second), its data and id."""
    path = bundled_model_path("iris_mlp")
    card = ModelCard.from_json(card_path_for(path).read_text())
    card = dataclasses.replace(card, recipe={**card.recipe, "epochs": 8})
    return card, load_data(card.dataset, seed=card.split_seed), checkpoint_id(path)


def _retrain(iris, cache: Path, train: LabelledSet | None = None, card: ModelCard | None = None):
    base_card, data, base_id = iris
    return retrain(
        card or base_card,
        data,
        data.train if train is None else train,
        SampleRemoval([0, 1]),
        base_id,
        cache_dir=cache,
        show_bar=False,
    )


def test_retrain_key_covers_the_training_data_and_the_backdoor(iris, tmp_path):
    card, data, base_id = iris
    a = _retrain(iris, tmp_path)
    other_root = dataclasses.replace(data.train, inputs=data.train.inputs + 0.25)  # same data set, other files
    b = _retrain(iris, tmp_path, train=other_root)
    assert not a.from_cache and not b.from_cache  # B is really retrained, not served A's model
    assert a.path != b.path and state_hash(a.model) != state_hash(b.model)
    same_content = dataclasses.replace(data.train, inputs=data.train.inputs.clone())
    again = _retrain(iris, tmp_path, train=same_content)
    assert again.from_cache and again.path == a.path and state_hash(again.model) == state_hash(a.model)
    assert data_fingerprint(same_content.inputs, same_content.labels) == data_fingerprint(
        data.train.inputs, data.train.labels
    )
    backdoored = dataclasses.replace(card, extra={**card.extra, "backdoor": BackdoorSpec(target=0).to_dict()})
    request = SampleRemoval([0, 1])
    assert retrain_key(base_id, request, backdoored, data.train) != retrain_key(base_id, request, card, data.train)
    assert cached_retrain(backdoored, data.train, request, base_id, cache_dir=tmp_path) is None
    assert not _retrain(iris, tmp_path, card=backdoored).from_cache
    assert len(list((tmp_path / "retrained").iterdir())) == 3  # one file per entry, no temporary files


def _corrupt(kind: str, entry: Path, iris, folder: Path) -> None:
    if kind == "foreign checkpoint":  # any checkpoint copied over the entry
        shutil.copy(bundled_model_path("iris_mlp"), entry)
        shutil.copy(card_path_for(bundled_model_path("iris_mlp")), card_path_for(entry))
    elif kind == "truncated":
        os.truncate(entry, entry.stat().st_size // 2)
    elif kind == "empty":
        entry.write_bytes(b"")
    elif kind == "weights changed":  # a valid file whose weights no longer match their checksum
        with safe_open(str(entry), "pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(entry)
        first = sorted(tensors)[0]
        tensors[first] = tensors[first] * 1.5
        save_file(tensors, str(entry), metadata=metadata)
    elif kind == "another question's entry":
        _, data, base_id = iris
        other = retrain(iris[0], data, data.train, SampleRemoval([7]), base_id, cache_dir=folder, show_bar=False)
        shutil.copy(other.path, entry)


@pytest.mark.parametrize(
    "kind", ["foreign checkpoint", "truncated", "empty", "weights changed", "another question's entry"]
)
def test_an_invalid_retrain_entry_is_recomputed_with_a_warning(iris, tmp_path, kind):
    first = _retrain(iris, tmp_path)
    _corrupt(kind, first.path, iris, tmp_path)
    with pytest.warns(CacheWarning, match=rf"retrained-model cache entry .*{first.path.name}.* recomputed"):
        again = _retrain(iris, tmp_path)
    assert not again.from_cache and again.path == first.path
    assert state_hash(again.model) == state_hash(first.model)
    with no_cache_warning():
        third = _retrain(iris, tmp_path)  # the replaced entry is valid
    assert third.from_cache and state_hash(third.model) == state_hash(first.model)
    assert third.card.notes.startswith("Retrained ground truth")


CONCURRENT = textwrap.dedent(
    """
    import dataclasses, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from gif_core.checkpoints import ModelCard, card_path_for, checkpoint_id
    from gif_core.data import load_data
    from gif_core.requests import ClassRemoval
    from gif_core.retrain import retrain
    from gif_core.zoo import bundled_model_path

    cache, me, other, out = (Path(a) for a in sys.argv[1:5])
    path = bundled_model_path("iris_mlp")
    card = ModelCard.from_json(card_path_for(path).read_text())
    card = dataclasses.replace(card, recipe={**card.recipe, "epochs": 60})
    data = load_data(card.dataset, seed=card.split_seed)
    me.touch()
    deadline = time.monotonic() + 120
    while not other.exists() and time.monotonic() < deadline:  # start retraining together
        time.sleep(0.005)
    result = retrain(card, data, data.train, ClassRemoval(1), checkpoint_id(path), cache_dir=cache, show_bar=False)
    save_file({k: v.cpu().contiguous() for k, v in result.model.state_dict().items()}, str(out))
    print("from_cache", result.from_cache)
    """
)


def test_two_processes_retraining_the_same_question_both_succeed(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    ready = [tmp_path / "ready-0", tmp_path / "ready-1"]
    outs = [tmp_path / "model-0.safetensors", tmp_path / "model-1.safetensors"]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT, str(cache), str(ready[i]), str(ready[1 - i]), str(outs[i])],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    results = [child.communicate(timeout=240) for child in children]
    for child, (stdout, stderr) in zip(children, results, strict=True):
        assert child.returncode == 0, stderr[-3000:]
        assert "from_cache" in stdout
    first, second = load_file(outs[0]), load_file(outs[1])
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    entries = list((cache / "retrained").iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".safetensors", entries  # no temporary file left behind
    served = load_file(entries[0])
    assert all(torch.equal(served[k], first[k]) for k in first)


def test_atomic_path_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "entry.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as temp:
        temp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]


# ---------------------------------------------------------------------------------------------------------------
# Per-sample gradients


@pytest.fixture(scope="module")
def logreg():
    torch.manual_seed(0)
    data = blobs(n=60, n_in=5, n_classes=3, seed=5)
    model = _fit_logreg(data.inputs, data.labels, 0.05).float()
    x, y = data.inputs.float(), data.labels
    curvature = Curvature(model, (x, y), CurvatureConfig(weight_decay=0.05))
    return model, x, y, curvature, training_gradients(curvature, x, y)


def _overwrite_values_with_noise(path: Path) -> None:
    """Random float32 values over the data (the last n·p·4 bytes), the header left as it is."""
    size = path.stat().st_size
    noise = np.random.default_rng(0).standard_normal(60 * 18).astype(np.float32).tobytes()
    with path.open("r+b") as handle:
        handle.seek(size - len(noise))
        handle.write(noise)


@pytest.mark.parametrize("kind", ["random values", "another key's file", "truncated"])
def test_an_invalid_gradient_store_is_recomputed_with_a_warning(tmp_path, logreg, kind):
    _, x, y, curvature, expected = logreg
    store = gradient_store(curvature, x, y, tmp_path)
    if kind == "random values":
        _overwrite_values_with_noise(store.path)
    elif kind == "another key's file":
        other = gradient_store(curvature, x, (y + 1) % 3, tmp_path)
        store.path.unlink()
        shutil.copy(other.path, store.path)
    else:
        os.truncate(store.path, store.path.stat().st_size - 4)
    with pytest.warns(CacheWarning, match=rf"gradient store .*{store.path.name}.* recomputed"):
        again = gradient_store(curvature, x, y, tmp_path)
    assert not again.from_cache and again.path == store.path
    assert torch.equal(again.rows(torch.arange(60)), expected)
    with no_cache_warning():
        third = gradient_store(curvature, x, y, tmp_path)
    assert third.from_cache and torch.equal(third.rows(torch.arange(60)), expected)
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*"))


def test_a_non_finite_gradient_is_never_served(tmp_path, logreg):
    _, x, y, curvature, expected = logreg
    store = gradient_store(curvature, x, y, tmp_path)
    poisoned = expected.clone()
    poisoned[17, 3] = float("nan")
    write_gradient_file(store.path, store.key, store.shape, [poisoned[:30], poisoned[30:]])  # a valid checksum
    with pytest.warns(CacheWarning, match="non-finite"):
        again = gradient_store(curvature, x, y, tmp_path)
    assert not again.from_cache and torch.equal(again.rows(torch.arange(60)), expected)


def test_gradient_store_reads_blocks_and_matches_a_fresh_computation(tmp_path, logreg):
    _, x, y, curvature, expected = logreg
    store = gradient_store(curvature, x, y, tmp_path)
    small = GradientStore(store.path, True, 0.0, block_bytes=4 * 18 * 7)  # 7 rows per block
    assert [start for start, _ in small.blocks()] == list(range(0, 60, 7))
    v = torch.randn(18, 2, dtype=torch.float64)
    assert torch.allclose(small.matmul(v), expected.double() @ v)
    assert torch.allclose(small.square_norms(), expected.double().square().sum(1))
    assert torch.equal(small.rows(torch.tensor([59, -1, 0])), expected[[59, 59, 0]])
    with pytest.raises(IndexError, match="out of range"):
        small.rows(torch.tensor([60]))
    with safe_open(str(store.path), "pt") as handle:  # an ordinary safetensors file for any other tool
        assert torch.equal(handle.get_tensor("gradients"), expected)
        assert handle.metadata()["key"] == store.key


TRUNCATE_WHILE_OPEN = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import torch
    from gif_core.gradient_store import GradientStore

    path = Path(sys.argv[1])
    store = GradientStore(path, True, 0.0, block_bytes=4 * 18 * 5)  # 5 rows per block

    class TruncateOnFirstProduct(torch.Tensor):
        done = False

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if not cls.done and "matmul" in getattr(func, "__name__", ""):
                cls.done = True  # the app holds the store; something truncates the file under it
                os.truncate(path, os.path.getsize(path) // 3)
            return super().__torch_function__(func, types, args, kwargs or {})

    right = torch.ones(18).as_subclass(TruncateOnFirstProduct)
    try:
        store.matmul(right)
    except (ValueError, OSError) as error:
        print("ERROR", type(error).__name__, error)
    else:
        print("NO ERROR")
    """
)


def test_truncating_the_store_while_it_is_open_is_a_clear_error_not_a_crash(tmp_path, logreg):
    _, x, y, curvature, expected = logreg
    store = gradient_store(curvature, x, y, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-c", TRUNCATE_WHILE_OPEN, str(store.path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, f"the reader died (status {child.returncode}, -7 is SIGBUS): {child.stderr[-2000:]}"
    assert "ERROR" in child.stdout and "truncated" in child.stdout, child.stdout
    with pytest.raises(InvalidEntry, match="truncated"):
        store.matmul(torch.ones(18))  # in this process too: an error, not a crash
    with pytest.warns(CacheWarning, match="truncated"):
        again = gradient_store(curvature, x, y, tmp_path)
    assert not again.from_cache and torch.equal(again.rows(torch.arange(60)), expected)


# ---------------------------------------------------------------------------------------------------------------
# Eigenpairs


def _browser(logreg, cache: Path, damping: float = 0.0) -> InfluenceBrowser:
    model, x, y, _, _ = logreg
    train = LabelledSet(x, y, torch.arange(len(y)))
    config = BrowserConfig(hessian_samples=60, cache_dir=cache, lowrank_rank=6, damping=damping)
    return InfluenceBrowser(model, train, 0.05, config)


def _lowrank_scores(browser: InfluenceBrowser) -> torch.Tensor:
    return browser.explain(browser.train.inputs[:1] * 0.7, 2, "if-lowrank").scores


@pytest.fixture(scope="module")
def fresh_scores(logreg, tmp_path_factory):
    return _lowrank_scores(_browser(logreg, tmp_path_factory.mktemp("fresh")))


@pytest.mark.parametrize("kind", ["nan eigenvalues", "rescaled eigenvalues", "truncated", "wrong key"])
def test_an_invalid_eigenpair_entry_is_recomputed_with_a_warning(tmp_path, logreg, fresh_scores, kind):
    first = _browser(logreg, tmp_path)
    _ = first.lowrank
    (entry,) = tmp_path.glob("eigenpairs-*.safetensors")
    with safe_open(str(entry), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(entry)
    if kind == "nan eigenvalues":  # with a valid checksum: only the values are wrong
        save_entry(entry, EIGENPAIRS_KIND, metadata["key"], {**tensors, "eigenvalues": tensors["eigenvalues"] * np.nan})
        reason = "non-finite"
    elif kind == "rescaled eigenvalues":
        save_file({**tensors, "eigenvalues": tensors["eigenvalues"] * 3}, str(entry), metadata=metadata)
        reason = "checksum"
    elif kind == "truncated":
        os.truncate(entry, entry.stat().st_size - 100)
        reason = "safetensors"
    else:
        _ = _browser(logreg, tmp_path, damping=0.5).lowrank  # another question's eigenpairs, same shapes
        (other,) = set(tmp_path.glob("eigenpairs-*.safetensors")) - {entry}
        shutil.copy(other, entry)
        reason = "key"
    with pytest.warns(CacheWarning, match=rf"eigenpair cache entry .*{entry.name}.*{reason}"):
        scores = _lowrank_scores(_browser(logreg, tmp_path))
    assert rel_err(scores, fresh_scores) < 1e-5  # float32 noise; a wrong entry is off by far more
    with no_cache_warning():
        reopened = _browser(logreg, tmp_path)  # the replaced entry is valid and served
        assert rel_err(_lowrank_scores(reopened), fresh_scores) < 1e-5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
