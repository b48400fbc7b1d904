"""The process group's view, for curvature sharded over ranks: who this rank is, which rows it holds, and the sums.

Launched as ``torchrun --nproc-per-node N -m gif_core remove …``, every rank runs the same program on the same data.
A sum over rows i = 0 … n−1 is split by rows: rank r holds the contiguous slice ``shard_rows(n, r, N)`` (sizes differ
by at most one; the assignment depends on nothing but n, r and N), sums its own rows, and :func:`all_reduce_sum`
adds the partial sums:

    Σ_i x_i = Σ_{r<N} Σ_{i ∈ shard(r)} x_i

so a rank's result equals the single-process one up to the order of float additions. Every rank receives the same
bits from an all-reduce (gloo and NCCL finish by giving each rank the same reduced buffer), so computations that
follow it on every rank, such as a Krylov solve fed by these sums, run in lock-step; :func:`check_replicated`
verifies such a result by comparing a SHA-256 digest of its bytes across ranks.

No state is kept here beyond torch.distributed's own default process group.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place in the default process group: ``rank`` of ``size`` (size ≥ 2)."""

    rank: int
    size: int

    @property
    def lead(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0


def world() -> World | None:
    """The default process group's rank and size, or None when torch.distributed is not initialised or the
    group has a single rank (nothing to share)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return World(dist.get_rank(), dist.get_world_size())


def is_lead() -> bool:
    """Whether this process prints and writes: rank 0 of a process group, or the only process."""
    current = world()
    return current is None or current.lead


def _launched_size() -> int:
    """How many processes the launcher (torchrun) started: ``WORLD_SIZE``, 1 when unset."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_device(device_type: str) -> torch.device:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` for CUDA (one GPU per process, as NCCL needs),
    the CPU otherwise."""
    if device_type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device_type)


@contextmanager
def process_group_from_env(device_type: str = "cpu", backend: str | None = None) -> Iterator[World | None]:
    """Join the process group torchrun describes in the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``) when ``WORLD_SIZE`` > 1 — with ``backend``, by default NCCL for ``device_type="cuda"`` (after
    selecting ``cuda:LOCAL_RANK``) and gloo otherwise — and leave it on exit. Yields :func:`world`. Without a
    launcher nothing is created; a group the caller initialised already is used as it is and left alone."""
    create = _launched_size() > 1 and not (dist.is_available() and dist.is_initialized())
    if create:
        if device_type == "cuda":
            torch.cuda.set_device(rank_device("cuda"))
        dist.init_process_group(backend or ("nccl" if device_type == "cuda" else "gloo"))
    try:
        yield world()
    finally:
        if create:
            dist.destroy_process_group()


def shard_rows(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous share of rows 0 … n−1 among ``size`` ranks: rows ⌊rank·n/size⌋ … ⌊(rank+1)·n/size⌋−1.
    The slices of all ranks are disjoint and cover every row; a rank may get none when n < size."""
    if not 0 <= rank < size:
        raise ValueError(f"rank must lie in 0 … {size - 1}, got {rank}")
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    return slice(rank * n // size, (rank + 1) * n // size)


def _backend_device(tensor: torch.Tensor) -> torch.device:
    """Where the default group's backend takes its tensors: the current CUDA device for NCCL, else the tensor's
    own device."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Σ over ranks of ``tensor``, written into ``tensor`` and returned (unchanged without a process group).
    Every rank must call it, in the same order, with a tensor of the same shape and dtype."""
    if world() is None:
        return tensor
    device = _backend_device(tensor)
    buffer = tensor.to(device).contiguous()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    if buffer is not tensor:
        tensor.copy_(buffer)
    return tensor


def assemble_rows(local: torch.Tensor, rows: slice, n: int) -> torch.Tensor:
    """The n-row tensor whose rows ``rows`` are this rank's ``local`` (e.g. per-sample scores computed from the
    sharded per-sample gradients of :meth:`gif_core.curvature.Curvature.per_sample_gradients`), on every rank.
    Built as an all-reduced sum of zero-padded shards: each row has one non-zero term, so it is exact."""
    if len(range(n)[rows]) != len(local):
        raise ValueError(f"rows {rows} of {n} hold {len(range(n)[rows])} rows, but local has {len(local)}")
    full = local.new_zeros((n, *local.shape[1:]))
    full[rows] = local
    return all_reduce_sum(full)


def digest(*tensors: torch.Tensor) -> int:
    """A 63-bit integer from the SHA-256 of the tensors' shapes, dtypes and bytes (equal iff bit-identical,
    barring a hash collision)."""
    sha = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().to("cpu").contiguous()
        sha.update(f"{tuple(flat.shape)}{flat.dtype}".encode())
        sha.update(flat.reshape(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(sha.digest()[:8], "big") >> 1


def check_replicated(what: str, *tensors: torch.Tensor) -> None:
    """Raise on every rank unless ``tensors`` are bit-identical on all ranks (a no-op without a process group).
    Sharded sums are only right when every rank gives the same rows, and a replicated solve only agrees with
    itself when every rank got the same vectors: this checks both."""
    current = world()
    if current is None:
        return
    mine = torch.tensor([digest(*tensors)], dtype=torch.int64)
    everyone = assemble_rows(mine, slice(current.rank, current.rank + 1), current.size)
    differing = [r for r in range(current.size) if int(everyone[r]) != int(everyone[0])]
    if differing:
        raise RuntimeError(
            f"{what} differs between ranks: ranks {differing} disagree with rank 0. Every rank must run the same "
            "program on the same data (same files, seeds and settings)."
        )
