"""Per-sample training gradients ∇ℓ_z (z = every training sample), computed once per model and kept on disk.

Browsing influence needs G = [∇ℓ_z]_z ∈ R^{n×p} (float32; the default CNN on bundled MNIST: 3,500 × 46,730 ≈ 650 MB).
It is computed with ``torch.func.vmap`` (:meth:`gif_core.curvature.Curvature.per_sample_gradients`, weight-decay term
λθ included, as in :mod:`gif_core.scores`) and written block by block into a ``.npy`` file under
``$GIF_CACHE_DIR/gradients`` (default ``~/.cache/gif-explorer/gradients``), named by a key that hashes the model's
state dict, the weight decay and the training inputs and labels: a different checkpoint or data set never reuses
another's gradients. The file is then read memory-mapped, and every product walks it in row blocks of at most
``block_bytes``, so memory stays bounded however large G is. A new test point then costs one solve plus G·s.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gif_core.curvature import Curvature


def default_gradient_dir() -> Path:
    return Path(os.environ.get("GIF_CACHE_DIR", Path.home() / ".cache" / "gif-explorer")) / "gradients"


def gradient_key(curvature: Curvature, inputs: torch.Tensor, labels: torch.Tensor) -> str:
    """Hash of (model state, weight decay, training inputs, training labels): what G depends on."""
    digest = hashlib.sha256()
    digest.update(curvature.model_hash.encode())
    digest.update(repr(curvature.config.weight_decay).encode())
    for tensor in (inputs, labels):
        t = tensor.detach().cpu().contiguous()
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class GradientStore:
    """A read-only, memory-mapped G [n, p] (float32) with row-blocked products. ``from_cache`` tells whether it
    was found on disk rather than computed now; ``seconds`` is the time it took to get it."""

    path: Path
    from_cache: bool
    seconds: float
    block_bytes: int = 64 * 2**20

    @property
    def matrix(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")

    @property
    def shape(self) -> tuple[int, int]:
        n, p = self.matrix.shape
        return n, p

    def __len__(self) -> int:
        return self.shape[0]

    def _blocks(self) -> list[slice]:
        n, p = self.shape
        rows = max(1, self.block_bytes // (4 * p))
        return [slice(start, min(n, start + rows)) for start in range(0, n, rows)]

    def matmul(self, right: torch.Tensor) -> torch.Tensor:
        """G @ right for right [p] or [p, k] (computed in right's dtype on the CPU, block by block)."""
        right = right.detach().cpu()
        matrix = self.matrix
        return torch.cat([torch.from_numpy(np.array(matrix[b])).to(right.dtype) @ right for b in self._blocks()])

    def square_norms(self) -> torch.Tensor:
        """‖∇ℓ_z‖² for every row (float64)."""
        matrix = self.matrix
        return torch.cat([torch.from_numpy(np.array(matrix[b])).double().square().sum(1) for b in self._blocks()])

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The gradients of the given training rows, [len(index), p] float32."""
        return torch.from_numpy(np.array(self.matrix[index.cpu().numpy()]))


def gradient_store(
    curvature: Curvature,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GradientStore:
    """G for the training set (inputs, labels) under ``curvature``'s model and weight decay, from the cache when it
    was computed before; otherwise computed now in vmap batches and written to the cache (atomically: a file that
    exists is always complete)."""
    start = time.perf_counter()
    folder = cache_dir or default_gradient_dir()
    path = folder / f"{gradient_key(curvature, inputs, labels)}.npy"
    if path.is_file():
        return GradientStore(path, True, time.perf_counter() - start)
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".partial-{os.getpid()}.npy")
    n = len(labels)
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, curvature.space.numel))
    try:
        done = 0
        for block in curvature.per_sample_gradients(inputs, labels):
            out[done : done + len(block)] = block.to("cpu", torch.float32).numpy()
            done += len(block)
            if progress is not None:
                progress(done, n)
        out.flush()
        del out
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return GradientStore(path, False, time.perf_counter() - start)
