"""What the three on-disk caches share: retrained models (:mod:`gif_core.retrain`), per-sample gradients
(:mod:`gif_core.gradient_store`) and Hessian eigenpairs (:class:`gif_core.browse.InfluenceBrowser`).

* **One file per entry, written atomically.** :func:`atomic_path` hands out a temporary name in the entry's own
  folder and moves the finished file into place with ``os.replace``: a reader sees no file or a complete one, and
  two processes writing the same entry at once both succeed (the last replace wins; both wrote the same answer).
* **Every entry says what it is.** Each is a safetensors file whose string metadata holds its ``gif_cache`` kind,
  the ``key`` it was computed for (the fingerprint of its inputs, which also names the file) and a ``sha256`` of
  its tensors (:class:`TensorDigest`: every tensor's name, dtype, shape and bytes).
* **Verify, or it is a miss.** A reader checks the kind, the key, the checksum and (where asked) the dtypes, shapes
  and finiteness of the tensors. A half-written, truncated, unparsable, foreign or mismatching entry raises
  :class:`InvalidEntry` inside the reader; :func:`read_or_miss` turns that into a :class:`CacheWarning` naming the
  file and the reason, and returns None, so the caller recomputes the entry and replaces it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError

T = TypeVar("T")

KIND_FIELD = "gif_cache"
KEY_FIELD = "key"
CHECKSUM_FIELD = "sha256"
MAX_HEADER_BYTES = 100 * 2**20
"""safetensors' own limit on the JSON header; a larger length field means the file is not a safetensors file."""


def default_cache_dir() -> Path:
    """The root of every cache: ``$GIF_CACHE_DIR``, default ``~/.cache/gif-explorer`` (retrained models under
    ``retrained/``, per-sample gradients and eigenpairs under ``gradients/``, benchmark models under ``benchmarks/``)."""
    return Path(os.environ.get("GIF_CACHE_DIR", Path.home() / ".cache" / "gif-explorer"))


class InvalidEntry(ValueError):
    """A cache entry that must not be served (the message says which file and why)."""


class CacheWarning(UserWarning):
    """A cache entry was unusable and is being recomputed."""


def tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The raw bytes of ``tensor`` (moved to the CPU, made contiguous) as a flat uint8 array, without a copy when
    the tensor already is a contiguous CPU tensor."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


class TensorDigest:
    """A SHA-256 over named tensors: for each, ``name|dtype|shape|`` and then its bytes. :meth:`begin` starts a
    tensor and :meth:`update` feeds its bytes, possibly block by block, so a tensor too large for memory (the
    gradient store) gets the same digest as :func:`tensors_sha256` would give it whole."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def begin(self, name: str, dtype: torch.dtype, shape: Sequence[int]) -> None:
        self._digest.update(f"{name}|{dtype}|{tuple(int(d) for d in shape)}|".encode())

    def update(self, data: np.ndarray | torch.Tensor | bytes) -> None:
        if isinstance(data, torch.Tensor):
            data = tensor_bytes(data)
        elif isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        self._digest.update(data)  # type: ignore[arg-type]  # numpy stubs give ndarray __buffer__ only on 3.12+

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """One whole tensor: :meth:`begin` and :meth:`update`."""
        self.begin(name, tensor.dtype, tensor.shape)
        self.update(tensor)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of named tensors (names, dtypes, shapes and bytes, in name order)."""
    digest = TensorDigest()
    for name in sorted(tensors):
        digest.add(name, tensors[name])
    return digest.hexdigest()


def data_fingerprint(inputs: torch.Tensor, labels: torch.Tensor) -> str:
    """Fingerprint of a training set: the hex SHA-256 of its inputs' and labels' dtypes, shapes and bytes. Two sets
    share it only when they hold the same samples with the same labels in the same order (e.g. the same data set
    loaded from two roots whose files differ gets two fingerprints)."""
    return tensors_sha256({"inputs": inputs, "labels": labels})


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder (created if needed) to write the entry to; when the block ends
    normally the file is moved onto ``path`` with ``os.replace`` (atomic on one file system: readers and concurrent
    writers never see a partial file), otherwise it is deleted. Nothing of it is left behind either way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def read_or_miss(path: Path, read: Callable[[Path], T], what: str) -> T | None:
    """``read(path)`` if the entry exists and ``read`` accepts it; None for a miss. An entry that ``read`` rejects
    (:class:`InvalidEntry`) or that cannot be read (OSError) is a miss too, with a :class:`CacheWarning` naming
    ``what``, the file and the reason: the caller then recomputes it and replaces the file."""
    try:
        return read(path)
    except FileNotFoundError:
        return None
    except (InvalidEntry, OSError) as error:
        warnings.warn(f"{what} {path} is not usable and will be recomputed: {error}", CacheWarning, stacklevel=3)
        return None


def entry_metadata(kind: str, key: str, tensors: Mapping[str, torch.Tensor], **fields: str) -> dict[str, str]:
    """The metadata every entry carries: its kind, its key and its tensors' checksum, plus ``fields``."""
    return {"format": "pt", **fields, KIND_FIELD: kind, KEY_FIELD: key, CHECKSUM_FIELD: tensors_sha256(tensors)}


def save_entry(path: Path, kind: str, key: str, tensors: Mapping[str, torch.Tensor], **fields: str) -> None:
    """Write ``tensors`` to ``path`` as one safetensors file with :func:`entry_metadata`, atomically."""
    contiguous = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    with atomic_path(path) as temp:
        safetensors.torch.save_file(contiguous, str(temp), metadata=entry_metadata(kind, key, contiguous, **fields))


def read_header(handle: BinaryIO) -> tuple[dict, int]:
    """The JSON header of the safetensors file open in ``handle`` (read from its start, and only the header) and
    the offset of its data section (8 + header length). Raises :class:`InvalidEntry` when the file is too short or
    the header is not a JSON object."""
    handle.seek(0)
    prefix = handle.read(8)
    if len(prefix) < 8:
        raise InvalidEntry(f"the file is {len(prefix)} bytes long, too short for a safetensors header")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES:
        raise InvalidEntry(f"its header length field says {length} bytes: not a safetensors file")
    text = handle.read(length)
    if len(text) < length:
        raise InvalidEntry(f"the file ends inside its header ({len(text)} of {length} bytes): it was truncated")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidEntry(f"its header is not valid JSON ({error})") from error
    if not isinstance(header, dict):
        raise InvalidEntry("its header is not a JSON object")
    return header, 8 + length


def check_metadata(metadata: object, kind: str, key: str | None) -> dict[str, str]:
    """``metadata`` if it names this ``kind`` and ``key`` (None: any key) and has a checksum; otherwise
    :class:`InvalidEntry` saying which."""
    if not isinstance(metadata, dict) or metadata.get(KIND_FIELD) != kind:
        found = metadata.get(KIND_FIELD) if isinstance(metadata, dict) else None
        raise InvalidEntry(f"it is not a {kind!r} cache entry (its metadata names {found!r})")
    if key is not None and metadata.get(KEY_FIELD) != key:
        raise InvalidEntry(f"it was computed for key {metadata.get(KEY_FIELD)!r}, not for {key!r}")
    if not isinstance(metadata.get(KEY_FIELD), str) or not isinstance(metadata.get(CHECKSUM_FIELD), str):
        raise InvalidEntry("its metadata lacks a key or a checksum")
    return metadata


def check_finite(name: str, tensor: torch.Tensor | np.ndarray) -> None:
    """:class:`InvalidEntry` if a floating-point ``tensor`` holds a NaN or an infinity."""
    values = torch.as_tensor(tensor)
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise InvalidEntry(f"tensor {name!r} holds non-finite values (NaN or inf)")


def load_entry(
    path: Path,
    kind: str,
    key: str,
    expect: Mapping[str, tuple[torch.dtype, tuple[int, ...]]] | None = None,
    require_finite: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of the entry at ``path``, verified: a readable safetensors file of this ``kind``
    for this ``key`` whose tensors match their checksum; with ``expect``, exactly those tensor names with those
    dtypes and shapes; with ``require_finite``, no NaN or infinity. Anything else raises :class:`InvalidEntry`."""
    content = path.read_bytes()
    try:
        tensors = safetensors.torch.load(content)
    except SafetensorError as error:
        raise InvalidEntry(f"it is not a complete safetensors file ({error})") from error
    header, _ = read_header(io.BytesIO(content))
    metadata = check_metadata(header.get("__metadata__"), kind, key)
    if expect is not None:
        if set(tensors) != set(expect):
            raise InvalidEntry(f"it holds tensors {sorted(tensors)}, expected {sorted(expect)}")
        for name, (dtype, shape) in expect.items():
            found = tensors[name]
            if found.dtype != dtype or tuple(found.shape) != tuple(shape):
                raise InvalidEntry(
                    f"tensor {name!r} is {found.dtype} {tuple(found.shape)}, expected {dtype} {tuple(shape)}"
                )
    if tensors_sha256(tensors) != metadata[CHECKSUM_FIELD]:
        raise InvalidEntry("its tensors do not match their checksum (the file was modified or corrupted)")
    if require_finite:
        for name, tensor in tensors.items():
            check_finite(name, tensor)
    return tensors, metadata
