"""Stopping long work from outside, at the model's next forward pass, and counting those passes as progress.

Every long influence computation (an exact solve, the per-sample gradient pass, Lanczos, Captum's set-up) is a
long run of forward passes of one model: a Hessian-vector product through ``torch.func`` calls the module's
``forward`` once per batch of the Hessian sample, a ``vmap``'d per-sample gradient once per block. A forward
pre-hook is therefore the one place that sees all of them, ours and Captum's alike, without threading a flag
through scipy's solvers. :func:`watched_forward` installs such a hook for the duration of a computation.

The hook acts only in the thread that installed it, so a model shared by two threads (two dashboard sessions on
one browser) is stopped only where its own caller asked. Raising from the hook unwinds the computation: nothing
half-done is kept (cache files are written to temporary names and only renamed when complete).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

StopCheck = Callable[[], str | None]
"""Returns None to go on, or the reason to stop (e.g. "cancelled by the user", "the browser session ended")."""


class Cancelled(Exception):
    """Long work stopped before it finished because its ``stop`` check gave a reason (the exception's message)."""


@dataclass
class PassCounter:
    """Forward passes seen by a :func:`watched_forward` so far."""

    passes: int = 0


@contextmanager
def watched_forward(
    modules: Iterable[nn.Module],
    stop: StopCheck | None = None,
    on_pass: Callable[[int], None] | None = None,
) -> Iterator[PassCounter]:
    """While the block runs, every forward pass of any of ``modules`` made by this thread first counts itself,
    calls ``on_pass(passes)`` and then raises :class:`Cancelled` if ``stop()`` gives a reason. The hooks are removed
    when the block ends, however it ends."""
    counter = PassCounter()
    owner = threading.get_ident()

    def before_forward(_module: nn.Module, _args: tuple) -> None:
        if threading.get_ident() != owner:
            return
        counter.passes += 1
        if on_pass is not None:
            on_pass(counter.passes)
        reason = stop() if stop is not None else None
        if reason:
            raise Cancelled(reason)

    handles = [module.register_forward_pre_hook(before_forward) for module in modules]
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()


def check(stop: StopCheck | None) -> None:
    """Raise :class:`Cancelled` now if ``stop()`` gives a reason (for loops between forward passes)."""
    reason = stop() if stop is not None else None
    if reason:
        raise Cancelled(reason)
