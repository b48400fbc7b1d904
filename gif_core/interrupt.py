"""Stopping long work from outside, at the model's next forward pass, and counting those passes as progress.

Every long influence computation (an exact solve, the per-sample gradient pass, Lanczos, Captum's set-up and
scoring) is a long run of forward passes of one model: a Hessian-vector product through ``torch.func`` calls the
module's ``forward`` once per batch of the Hessian sample, a ``vmap``'d per-sample gradient once per block. A forward
pre-hook is therefore the one place that sees all of them, ours and Captum's alike, without threading a flag through
scipy's solvers.

A :class:`ForwardWatch` installs one permanent hook per module, once. The hook looks up what the *calling thread*
asked for (:meth:`ForwardWatch.active`): its stop checks and pass counters. So a module shared by several threads
(two dashboard sessions on one browser) is stopped only where its own caller asked, no hook is added or removed
while another thread runs the module, and a copy of the module (Captum deep-copies the model) carries the same hook
and is watched too. Raising from the hook unwinds the computation: nothing half-done is kept (cache files are
written to temporary names and only renamed when complete).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

StopCheck = Callable[[], str | None]
"""Returns None to go on, or the reason to stop (e.g. "cancelled by you", "the browser session ended")."""


class Cancelled(Exception):
    """Long work stopped before it finished because its ``stop`` check gave a reason (the exception's message)."""


@dataclass
class PassCounter:
    """Forward passes seen by one :meth:`ForwardWatch.active` block so far, and what to do at each."""

    stop: StopCheck | None
    on_pass: Callable[[int], None] | None
    passes: int = 0


class ForwardWatch:
    """Per-thread stop checks and pass counters for the modules it is installed on (see the module docstring)."""

    def __init__(self) -> None:
        self._active: dict[int, list[PassCounter]] = {}
        self._guard = threading.Lock()

    def install(self, modules: Iterable[nn.Module]) -> None:
        """Add the watch's forward pre-hook to each module (once per module; it stays for the module's life). The
        hook is a plain function, so ``copy.deepcopy`` of a module keeps it pointing at this watch."""
        watch = self

        def before_forward(_module: nn.Module, _args: tuple) -> None:
            watch.before_forward()

        for module in modules:
            module.register_forward_pre_hook(before_forward)

    @contextmanager
    def active(
        self, stop: StopCheck | None = None, on_pass: Callable[[int], None] | None = None
    ) -> Iterator[PassCounter]:
        """While the block runs, every forward pass this thread makes through a watched module counts itself,
        calls ``on_pass(passes)`` and then raises :class:`Cancelled` if ``stop()`` gives a reason. Blocks nest."""
        counter = PassCounter(stop, on_pass)
        thread = threading.get_ident()
        with self._guard:
            self._active.setdefault(thread, []).append(counter)
        try:
            yield counter
        finally:
            with self._guard:
                counters = self._active[thread]
                counters.remove(counter)
                if not counters:
                    del self._active[thread]

    def before_forward(self) -> None:
        """What the hook does: the calling thread's counters count, report and check their stops."""
        for counter in tuple(self._active.get(threading.get_ident(), ())):
            counter.passes += 1
            if counter.on_pass is not None:
                counter.on_pass(counter.passes)
            check(counter.stop)


def check(stop: StopCheck | None) -> None:
    """Raise :class:`Cancelled` now if ``stop()`` gives a reason (for loops between forward passes)."""
    reason = stop() if stop is not None else None
    if reason:
        raise Cancelled(reason)
