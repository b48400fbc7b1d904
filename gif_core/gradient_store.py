"""Per-sample training gradients ∇ℓ_z (z = every training sample), computed once per model and kept on disk.

Browsing influence needs G = [∇ℓ_z]_z ∈ R^{n×p} (float32; the default CNN on bundled MNIST: 3,500 × 46,730 ≈ 650 MB).
It is computed with ``torch.func.vmap`` (:meth:`gif_core.curvature.Curvature.per_sample_gradients`, weight-decay term
λθ included, as in :mod:`gif_core.scores`) and written block by block into one safetensors file under
``$GIF_CACHE_DIR/gradients`` (default ``~/.cache/gif-explorer/gradients``), named by :func:`gradient_key`, a hash of
the model's state dict, the weight decay and the training inputs and labels: a different checkpoint or data set
never reuses another's gradients.

**What is verified.** The file's metadata records its key, and a SHA-256 of G (:class:`~gif_core.cache_files.
TensorDigest`); it is written to a temporary name and moved into place atomically. When the store is opened, the
header must name this key, the tensor must be float32 of shape [n, p] (n training samples, p parameters) filling
the file exactly, and one pass over the data must reproduce the checksum and find every value finite. An entry that
fails any of these (random bytes under a valid header, another model's gradients copied under this key, a
truncated file, a NaN) is never served: a :class:`~gif_core.cache_files.CacheWarning` names it and G is computed
again and the file replaced.

**How it is read.** No memory map: every product reads row blocks of at most ``block_bytes`` with ordinary file
reads, so memory stays bounded however large G is, and a file truncated or shrunk while a store is open gives an
:class:`~gif_core.cache_files.InvalidEntry` error saying so (a memory map would kill the process with SIGBUS).
A new test point then costs one solve plus G·s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from gif_core.cache_files import (
    CHECKSUM_FIELD,
    KEY_FIELD,
    KIND_FIELD,
    InvalidEntry,
    TensorDigest,
    atomic_path,
    check_finite,
    check_metadata,
    data_fingerprint,
    default_cache_dir,
    read_header,
    read_or_miss,
)
from gif_core.curvature import Curvature

ENTRY_KIND = "gradients/1"
"""The ``gif_cache`` kind of a gradient-store file (see :mod:`gif_core.cache_files`)."""
TENSOR = "gradients"
"""The name of G inside the file."""
DTYPE = np.dtype("<f4")
DEFAULT_BLOCK_BYTES = 64 * 2**20


def default_gradient_dir() -> Path:
    return default_cache_dir() / "gradients"


def gradient_key(curvature: Curvature, inputs: torch.Tensor, labels: torch.Tensor) -> str:
    """Hash of (model state, weight decay, training inputs, training labels): what G depends on. The data enter
    through :func:`~gif_core.cache_files.data_fingerprint` (bytes, dtypes and shapes)."""
    digest = hashlib.sha256()
    digest.update(curvature.model_hash.encode())
    digest.update(repr(curvature.config.weight_decay).encode())
    digest.update(data_fingerprint(inputs, labels).encode())
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class _Layout:
    """Where G lies in its file: key, checksum, shape and the byte offset of row 0."""

    key: str
    checksum: str
    rows: int
    columns: int
    offset: int

    @property
    def data_bytes(self) -> int:
        return self.rows * self.columns * DTYPE.itemsize


def _read_layout(handle: BinaryIO) -> _Layout:
    """The layout of the gradient file open in ``handle``; :class:`InvalidEntry` unless its header describes one
    float32 matrix filling the file exactly."""
    header, offset = read_header(handle)
    metadata = check_metadata(header.get("__metadata__"), ENTRY_KIND, None)
    entry = header.get(TENSOR)
    if set(header) != {"__metadata__", TENSOR} or not isinstance(entry, dict):
        raise InvalidEntry(f"its header does not describe one tensor {TENSOR!r}: {sorted(header)}")
    shape = entry.get("shape")
    if entry.get("dtype") != "F32" or not isinstance(shape, list) or len(shape) != 2:
        raise InvalidEntry(f"it holds {entry.get('dtype')} {shape}, not a float32 matrix")
    layout = _Layout(metadata[KEY_FIELD], metadata[CHECKSUM_FIELD], int(shape[0]), int(shape[1]), offset)
    if entry.get("data_offsets") != [0, layout.data_bytes]:
        raise InvalidEntry(f"its data offsets {entry.get('data_offsets')} do not fit shape {shape}")
    size = os.fstat(handle.fileno()).st_size
    if size != offset + layout.data_bytes:
        raise InvalidEntry(
            f"it is {size} bytes long, but its header promises {offset + layout.data_bytes}: it was truncated "
            "or altered"
        )
    return layout


def _read_rows(handle: io.RawIOBase, path: Path, layout: _Layout, start: int, count: int) -> np.ndarray:
    """Rows start … start + count − 1 of G, read with ordinary file reads (never a memory map); a short read
    raises :class:`InvalidEntry` instead of returning garbage or crashing."""
    out = np.empty((count, layout.columns), dtype=DTYPE)
    buffer = out.data.cast("B")  # ndarray.data: a memoryview of out
    handle.seek(layout.offset + start * layout.columns * DTYPE.itemsize)
    done = 0
    while done < len(buffer):
        got = handle.readinto(buffer[done:])
        if not got:
            raise InvalidEntry(
                f"the gradient store {path} ended after {done} of {len(buffer)} bytes of rows {start}…"
                f"{start + count - 1}: the file was truncated or replaced while in use; open the browser again "
                "to recompute it"
            )
        done += got
    return out


@dataclass(frozen=True)
class GradientStore:
    """A read-only G [n, p] (float32) on disk, with row-blocked products (see the module docstring for what was
    verified when :func:`gradient_store` opened it). ``from_cache`` tells whether it was found on disk rather than
    computed now; ``seconds`` is the time it took to get it (verification included). Every product reads at most
    ``block_bytes`` of G at a time."""

    path: Path
    from_cache: bool
    seconds: float
    block_bytes: int = DEFAULT_BLOCK_BYTES
    _layout: _Layout = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        with self._open() as handle:
            object.__setattr__(self, "_layout", _read_layout(handle))

    def _open(self) -> io.FileIO:
        return self.path.open("rb", buffering=0)

    @property
    def key(self) -> str:
        """The :func:`gradient_key` G was computed for."""
        return self._layout.key

    @property
    def shape(self) -> tuple[int, int]:
        return self._layout.rows, self._layout.columns

    def __len__(self) -> int:
        return self.shape[0]

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows [m, p] float32) of G, block after block, each at most ``block_bytes`` (one row at least)."""
        n, p = self.shape
        step = max(1, self.block_bytes // (DTYPE.itemsize * p))
        with self._open() as handle:
            for start in range(0, n, step):
                yield start, _read_rows(handle, self.path, self._layout, start, min(step, n - start))

    def matmul(self, right: torch.Tensor) -> torch.Tensor:
        """G @ right for right [p] or [p, k] (computed in right's dtype on the CPU, block by block)."""
        right = right.detach().cpu()
        return torch.cat([torch.from_numpy(block).to(right.dtype) @ right for _, block in self.blocks()])

    def square_norms(self) -> torch.Tensor:
        """‖∇ℓ_z‖² for every row (float64)."""
        return torch.cat([torch.from_numpy(block).double().square().sum(1) for _, block in self.blocks()])

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The gradients of the given training rows, [len(index), p] float32 (negative indices count from the end)."""
        n, p = self.shape
        wanted = [int(i) for i in index.reshape(-1).cpu()]
        out = torch.empty(len(wanted), p, dtype=torch.float32)
        with self._open() as handle:
            for slot, row in enumerate(wanted):
                if not -n <= row < n:
                    raise IndexError(f"row {row} is out of range for a gradient store of {n} rows")
                out[slot] = torch.from_numpy(_read_rows(handle, self.path, self._layout, row % n, 1)[0])
        return out

    def verify(self, key: str, shape: tuple[int, int]) -> None:
        """:class:`InvalidEntry` unless G was computed for ``key``, has ``shape``, and one pass over it finds every
        value finite and reproduces the checksum written with it."""
        if self.key != key:
            raise InvalidEntry(f"it was computed for key {self.key!r}, not for {key!r}")
        if self.shape != tuple(shape):
            raise InvalidEntry(f"it holds G of shape {self.shape}, expected {tuple(shape)}")
        digest = TensorDigest()
        digest.begin(TENSOR, torch.float32, self.shape)
        for start, block in self.blocks():
            check_finite(f"{TENSOR} (rows from {start})", block)
            digest.update(block)
        if digest.hexdigest() != self._layout.checksum:
            raise InvalidEntry("its values do not match their checksum (the file was modified or corrupted)")


def write_gradient_file(path: Path, key: str, shape: tuple[int, int], blocks: Iterable[torch.Tensor]) -> None:
    """Write G, given as consecutive row blocks, to ``path`` as a safetensors file whose metadata holds ``key`` and
    G's checksum, atomically (a temporary file in the same folder, then ``os.replace``). Memory: one block."""
    n, p = shape
    placeholder = "0" * 64  # the checksum is known at the end; a hex SHA-256 has this length, so the header keeps it
    header: dict[str, dict[str, Any]] = {
        "__metadata__": {"format": "pt", KIND_FIELD: ENTRY_KIND, KEY_FIELD: key, CHECKSUM_FIELD: placeholder},
        TENSOR: {"dtype": "F32", "shape": [n, p], "data_offsets": [0, n * p * DTYPE.itemsize]},
    }

    def encoded(values: dict) -> bytes:
        text = json.dumps(values, separators=(",", ":")).encode()
        text += b" " * (-(len(text) + 8) % 8)  # safetensors pads the header with spaces to 8-byte alignment
        return struct.pack("<Q", len(text)) + text

    digest = TensorDigest()
    digest.begin(TENSOR, torch.float32, shape)
    with atomic_path(path) as temp, temp.open("wb") as handle:
        handle.write(encoded(header))
        done = 0
        for block in blocks:
            values = block.detach().to("cpu", torch.float32).contiguous().numpy().astype(DTYPE, copy=False)
            if values.ndim != 2 or values.shape[1] != p or done + len(values) > n:
                raise ValueError(f"a block of shape {values.shape} does not fit G of shape {shape} at row {done}")
            handle.write(values.data.cast("B"))
            digest.update(values)
            done += len(values)
        if done != n:
            raise ValueError(f"the blocks gave {done} rows, G has {n}")
        header["__metadata__"][CHECKSUM_FIELD] = digest.hexdigest()
        handle.seek(0)
        handle.write(encoded(header))


def _open_verified(path: Path, key: str, shape: tuple[int, int], start: float) -> GradientStore:
    store = GradientStore(path, True, 0.0)
    store.verify(key, shape)
    return dataclasses.replace(store, seconds=time.perf_counter() - start)


def gradient_store(
    curvature: Curvature,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GradientStore:
    """G for the training set (inputs, labels) under ``curvature``'s model and weight decay, from the cache when a
    valid entry holds it (verified as the module docstring says); otherwise computed now in vmap batches and
    written to the cache atomically, replacing any invalid entry (with a warning)."""
    start = time.perf_counter()
    folder = cache_dir or default_gradient_dir()
    key = gradient_key(curvature, inputs, labels)
    path = folder / f"{key}.safetensors"
    shape = (len(labels), curvature.space.numel)
    cached = read_or_miss(path, lambda entry: _open_verified(entry, key, shape, start), "The gradient store")
    if cached is not None:
        return cached
    n = shape[0]

    def blocks() -> Iterator[torch.Tensor]:
        done = 0
        for block in curvature.per_sample_gradients(inputs, labels):
            yield block
            done += len(block)
            if progress is not None:
                progress(done, n)

    write_gradient_file(path, key, shape, blocks())
    return GradientStore(path, False, time.perf_counter() - start)


TrainGradients = torch.Tensor | GradientStore
"""G [n_train, p]: in memory (:func:`gif_core.scores.training_gradients`) or read block by block from the cache."""


def gradients_times(train_gradients: TrainGradients, right: torch.Tensor) -> torch.Tensor:
    """G @ right on the CPU, in right's dtype (block by block for a cached store)."""
    right = right.detach().cpu()
    if isinstance(train_gradients, GradientStore):
        return train_gradients.matmul(right)
    return train_gradients.to(right.dtype) @ right
