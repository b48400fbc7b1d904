"""Data loading: bundled sets, and tiny files written in torchvision's real on-disk formats."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from gif_core.data import DataBundle, LabelledSet, load_data


@pytest.fixture(scope="module")
def mnist_bundled() -> DataBundle:
    return load_data("mnist-bundled", seed=0)


def _assert_partition(bundle: DataBundle, n_source: int) -> None:
    """train / val / test are disjoint and cover the source pool exactly once."""
    indices = torch.cat([bundle.train.source_index, bundle.val.source_index, bundle.test.source_index])
    assert sorted(indices.tolist()) == list(range(n_source))


def test_bundled_mnist_split_sizes_and_stratification(mnist_bundled: DataBundle) -> None:
    assert (len(mnist_bundled.train), len(mnist_bundled.val), len(mnist_bundled.test)) == (3500, 500, 1000)
    assert mnist_bundled.input_shape == (1, 28, 28)
    assert mnist_bundled.num_classes == 10
    _assert_partition(mnist_bundled, 5000)
    # The source has 500 images per class: a stratified split keeps 70 / 10 / 20 % of each class.
    assert mnist_bundled.train.labels.bincount().tolist() == [350] * 10
    assert mnist_bundled.val.labels.bincount().tolist() == [50] * 10
    assert mnist_bundled.test.labels.bincount().tolist() == [100] * 10


def test_bundled_mnist_pixels(mnist_bundled: DataBundle) -> None:
    train = mnist_bundled.train
    assert train.inputs.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert float(train.inputs.min()) == 0.0 and float(train.inputs.max()) == 1.0  # [0, 1], not standardised
    assert train.images is not None and train.images.dtype == torch.uint8
    assert torch.equal(train.inputs[:, 0], train.images.float() / 255)
    assert train.display_image(3).shape == (28, 28)


def test_bundled_mnist_split_is_fixed_by_seed(mnist_bundled: DataBundle) -> None:
    again = load_data("mnist-bundled", seed=0)
    other = load_data("mnist-bundled", seed=1)
    assert torch.equal(again.test.source_index, mnist_bundled.test.source_index)
    assert torch.equal(again.train.inputs, mnist_bundled.train.inputs)
    assert not torch.equal(other.test.source_index, mnist_bundled.test.source_index)
    assert other.split_seed == 1 and mnist_bundled.split_seed == 0


def test_iris_is_tabular_and_standardised_with_train_statistics() -> None:
    iris = load_data("iris", seed=0)
    assert iris.input_shape == (4,) and iris.num_classes == 3
    assert iris.classes == ("setosa", "versicolor", "virginica")
    assert (len(iris.train), len(iris.val), len(iris.test)) == (105, 15, 30)
    _assert_partition(iris, 150)
    assert torch.allclose(iris.train.inputs.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(iris.train.inputs.std(0), torch.ones(4), atol=1e-5)
    assert not torch.allclose(iris.test.inputs.mean(0), torch.zeros(4), atol=1e-5)  # test stats not used
    assert iris.train.images is None
    with pytest.raises(ValueError, match="tabular"):
        iris.train.display_image(0)


def test_digits_are_8x8_images_in_unit_range() -> None:
    digits = load_data("digits", seed=0)
    assert digits.input_shape == (1, 8, 8)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    _assert_partition(digits, 1797)
    assert float(digits.train.inputs.max()) == 1.0 and float(digits.train.inputs.min()) == 0.0
    assert digits.train.display_image(0).dtype == np.uint8


def test_labelled_set_subset_and_relabel(mnist_bundled: DataBundle) -> None:
    test = mnist_bundled.test
    picked = test.subset([5, 2])
    assert picked.source_index.tolist() == [int(test.source_index[5]), int(test.source_index[2])]
    mask = test.labels == 3
    threes = test.subset(mask)
    assert len(threes) == 100 and bool((threes.labels == 3).all())
    relabelled = threes.with_labels(torch.full((100,), 8))
    assert bool((relabelled.labels == 8).all()) and bool((threes.labels == 3).all())
    assert torch.equal(relabelled.inputs, threes.inputs)
    with pytest.raises(ValueError, match="must match"):
        LabelledSet(test.inputs[:3], test.labels[:2], test.source_index[:3])
    with pytest.raises(ValueError, match="mask"):
        test.subset(torch.ones(3, dtype=torch.bool))


# ---- tiny files in torchvision's on-disk formats ----------------------------------------------------------


def _idx(path: Path, array: np.ndarray) -> None:
    """IDX file (big-endian dims; magic 0x08 = uint8, then the number of dimensions), as in yann.lecun.com."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _random_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def test_mnist_from_idx_files(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train_x, test_x = _random_images(40, (28, 28), 0), _random_images(12, (28, 28), 1)
    train_y, test_y = np.arange(40) % 10, np.arange(12) % 10
    _idx(raw / "train-images-idx3-ubyte", train_x)
    _idx(raw / "train-labels-idx1-ubyte", train_y)
    _idx(raw / "t10k-images-idx3-ubyte", test_x)
    _idx(raw / "t10k-labels-idx1-ubyte", test_y)

    bundle = load_data("mnist", root=tmp_path, seed=0)
    assert bundle.input_shape == (1, 28, 28)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (36, 4, 12)
    assert sorted(torch.cat([bundle.train.source_index, bundle.val.source_index]).tolist()) == list(range(40))
    row = 7
    source = int(bundle.train.source_index[row])
    assert np.array_equal(bundle.train.display_image(row), train_x[source])
    assert int(bundle.train.labels[row]) == train_y[source]
    assert torch.equal(bundle.test.labels, torch.as_tensor(test_y))
    assert torch.allclose(bundle.test.inputs[3, 0], torch.from_numpy(test_x[3]).float() / 255)


def _existence_only(fpath: str, md5: str | None = None) -> bool:
    return os.path.isfile(fpath)


def test_cifar10_from_python_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torchvision compares each CIFAR file's md5 with the official release's, which no tiny stand-in file can
    # match. Only that checksum comparison is replaced (files must still exist); parsing is torchvision's own.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", _existence_only)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    batches = {}
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = _random_images(10, (3 * 32 * 32,), b)
        batches[name] = (data, [(i + b) % 10 for i in range(10)])
        with (folder / name).open("wb") as handle:
            pickle.dump({"data": data, "labels": batches[name][1]}, handle)
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({"label_names": names}, handle)

    bundle = load_data("cifar10", root=tmp_path, seed=3)
    assert bundle.classes == tuple(names) and bundle.input_shape == (3, 32, 32)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (45, 5, 10)
    train_pixels = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    row = 11
    source = int(bundle.train.source_index[row])
    expected = train_pixels[source].reshape(3, 32, 32)
    assert np.array_equal(bundle.train.display_image(row), expected.transpose(1, 2, 0))
    assert torch.allclose(bundle.train.inputs[row], torch.from_numpy(expected).float() / 255)
    assert bundle.test.labels.tolist() == batches["test_batch"][1]


def test_svhn_from_mat_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As for CIFAR-10: only torchvision's md5 comparison with the official files is replaced.
    monkeypatch.setattr("torchvision.datasets.svhn.check_integrity", _existence_only)
    pixels = {}
    for split, n, seed in (("train", 30, 0), ("test", 10, 1)):
        images = _random_images(n, (32, 32, 3), seed)
        pixels[split] = images
        labels = (np.arange(n) % 10) + 1  # SVHN's .mat files label the digit 0 as 10
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": labels[:, None]})

    bundle = load_data("svhn", root=tmp_path, seed=0)
    assert bundle.input_shape == (3, 32, 32)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (27, 3, 10)
    assert bundle.test.labels.tolist() == [(i % 10 + 1) % 10 for i in range(10)]
    assert np.array_equal(bundle.test.display_image(4), pixels["test"][4])
    source = int(bundle.train.source_index[5])
    assert np.array_equal(bundle.train.display_image(5), pixels["train"][source])


def _write_pngs(
    root: Path, classes: list[str], per_class: int, size: int, mode: str
) -> dict[tuple[str, int], np.ndarray]:
    written = {}
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            array = _random_images(1, shape, 100 * c + i)[0]
            Image.fromarray(array, mode=mode).save(root / name / f"{i:03d}.png")
            written[(name, i)] = array
    return written


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_imagefolder_from_pngs(tmp_path: Path, mode: str) -> None:
    classes = ["cat", "dog", "emu"]
    written = _write_pngs(tmp_path, classes, per_class=10, size=12, mode=mode)

    bundle = load_data("imagefolder", root=tmp_path, seed=0)
    assert bundle.classes == tuple(classes)
    assert bundle.input_shape == ((3, 12, 12) if mode == "RGB" else (1, 12, 12))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (24, 3, 3)
    assert sorted(bundle.test.labels.tolist()) == [0, 1, 2]  # stratified: one of each class
    # ImageFolder orders samples by class, then file name: source index s is class s // 10, file s % 10.
    source = int(bundle.train.source_index[0])
    assert np.array_equal(bundle.train.display_image(0), written[(classes[source // 10], source % 10)])
    assert int(bundle.train.labels[0]) == source // 10


def test_imagefolder_with_mixed_sizes_is_refused(tmp_path: Path) -> None:
    _write_pngs(tmp_path, ["a", "b"], per_class=3, size=8, mode="L")
    Image.fromarray(np.zeros((9, 9), dtype=np.uint8)).save(tmp_path / "a" / "odd.png")
    with pytest.raises(ValueError, match="different sizes"):
        load_data("imagefolder", root=tmp_path)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn", "imagefolder"])
def test_missing_folder_says_what_to_do(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError, match="expected") as caught:
        load_data(name, root=tmp_path / "nowhere")
    message = str(caught.value)
    if name != "imagefolder":
        assert "download" in message


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn", "imagefolder"])
def test_empty_folder_says_what_to_do(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError, match="expected"):
        load_data(name, root=tmp_path)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="mnist-bundled"):
        load_data("imagenet")
    with pytest.raises(ValueError, match="root"):
        load_data("cifar10")
    with pytest.raises(ValueError, match="download"):
        load_data("iris", download=True)
