"""The step scale α of an edit θ + α·Δ, chosen by an open-ended search on a validation objective.

A first-order Δ has no fixed scale: its length follows the gradient of a loss the model may already have driven
near zero, and a truncated least-squares solve returns a shorter Δ than a converged one. On the bundled CNN a
well-fit class needed α ≈ 1000–4000 while another class peaked at α ≈ 4, so no fixed grid serves. Methods whose
curvature is damped only slightly along directions the Hessian sample never spans return far longer Δ: DataInf and
HyperINF on the bundled CNN (class 0, seed 0) forget the class at α ≈ 6e-5–8e-5 and wreck the model (20% on
validation) at every α ≥ 1e-3, so the floor lies at 1e-9 (a floor of 1e-3 had reported them as wrecks). The search is
geometric and says where it stopped:

1. **Bracket.** Evaluate α = ``start``, ``start``·f, ``start``·f², … (f = ``factor``) while the objective is still
   rising or level — it stops once ``patience`` consecutive candidates score more than ``tolerance`` below the best
   so far, or at ``cap`` (the last candidate is the cap itself). A candidate within ``tolerance`` of the best is
   level, not a fall: before a well-fit class starts to be forgotten the objective sits on a plateau where one
   validation image more or less wrong moves it by a fraction of a point, and stopping there (as a strict rule did,
   on the bundled CNN with the param-gradient selector) never reaches the α that forgets. When the best is ``start``
   itself, go down instead: ``start``/f, ``start``/f², … to ``floor`` by the same rule.
2. **Refine.** Evaluate ``refine`` points on each side of the best α*, spaced evenly in log α strictly inside
   (α*/f, α*·f) (those outside [floor, cap] are skipped).

The chosen α maximises the objective over every evaluated candidate; ties go to the smallest α (the least change).
``cap_hit`` / ``floor_hit`` say that the best candidate is the cap / floor (the objective had not started falling
there: a larger / smaller α might do better), ``flat`` that every candidate scored within ``tolerance`` of the others
(no α changes what the objective measures). Each candidate costs one evaluation of the objective (on the bundled CNN: one forward pass
over the 500 validation images); the search evaluates candidates one at a time so that it stops exactly where the
rule says (batching several steps into one vmapped forward pass was measured slower on CPU:
``benchmarks/step_search.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from gif_core.constraints import Alternatives, Interval, validate

Objective = Callable[[float], float]


@dataclass(frozen=True)
class StepSearchConfig:
    """Where the geometric search starts, how it grows, its stated limits, what counts as a fall (objective units:
    percentage points for the objectives of :mod:`gif_core.experiment`), and how finely it refines."""

    start: float = 1.0
    factor: float = 2.0
    cap: float = 1e4
    floor: float = 1e-9
    patience: int = 2
    tolerance: float = 1.0
    refine: int = 2

    CONSTRAINTS: ClassVar[dict[str, Alternatives]] = {
        "start": (Interval(0, None, closed="neither"),),
        "factor": (Interval(1, None, closed="neither"),),
        "cap": (Interval(0, None, closed="neither"),),
        "floor": (Interval(0, None, closed="neither"),),
        "patience": (Interval(1, None, integer=True),),
        "tolerance": (Interval(0, None),),
        "refine": (Interval(0, None, integer=True),),
    }

    def __post_init__(self) -> None:
        if not 0 < self.floor <= self.start <= self.cap or not math.isfinite(self.cap):  # the one cross-field rule
            raise ValueError(
                f"The step search needs 0 < floor ≤ start ≤ cap < inf, got floor {self.floor}, start {self.start}, "
                f"cap {self.cap}"
            )
        validate(self)


@dataclass(frozen=True)
class StepSearch:
    """The chosen α, every evaluated (α, objective) pair sorted by α, and where the search stopped."""

    step: float
    curve: tuple[tuple[float, float], ...]
    cap: float
    floor: float
    cap_hit: bool
    floor_hit: bool
    flat: bool
    tolerance: float
    seconds: float
    diverged: tuple[float, ...] = ()
    """The α tried where the edited model's outputs were not finite (falls, never chosen)."""

    @property
    def objective(self) -> float:
        return dict(self.curve)[self.step]

    @property
    def evaluations(self) -> int:
        return len(self.curve)

    @property
    def warnings(self) -> list[str]:
        """Where the search stopped at one of its limits, in words (empty when the best α lies inside)."""
        notes = []
        if self.flat:
            notes.append(
                f"the validation objective stays within {self.tolerance:g} point(s) at every α tried: the edit "
                "changes nothing it measures"
            )
        elif self.cap_hit:
            notes.append(
                f"α reached the search's cap {self.cap:g} with the validation objective still at its best there: "
                "a larger step might do better (raise the cap)"
            )
        elif self.floor_hit:
            notes.append(f"α is the search's floor {self.floor:g}: the validation objective prefers (almost) no edit")
        if self.diverged:
            notes.append(
                f"the edited model diverged (non-finite outputs) at α = {', '.join(f'{a:g}' for a in self.diverged)}"
            )
        return notes

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "objective": self.objective,
            "curve": [{"step": a, "objective": o} for a, o in self.curve],
            "cap": self.cap,
            "floor": self.floor,
            "cap_hit": self.cap_hit,
            "floor_hit": self.floor_hit,
            "flat": self.flat,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "diverged": list(self.diverged),
            "warnings": self.warnings,
        }


def search_step(objective: Objective, config: StepSearchConfig | None = None) -> StepSearch:
    """Maximise ``objective`` over α > 0 by the bracket-and-refine search of the module docstring.

    An α where ``objective`` raises FloatingPointError or returns NaN/inf is *diverged* (the edited model's outputs
    are not finite there): it counts as a fall, is listed in ``diverged`` and is never chosen. If every α tried
    diverged, FloatingPointError is raised.
    """
    config = config or StepSearchConfig()
    start_time = time.perf_counter()
    scores: dict[float, float] = {}
    diverged: set[float] = set()

    def evaluate(alpha: float) -> float:
        if alpha in diverged:
            return -math.inf
        if alpha not in scores:
            try:
                value = float(objective(alpha))
            except FloatingPointError:
                value = math.nan
            if not math.isfinite(value):
                diverged.add(alpha)
                return -math.inf
            scores[alpha] = value
        return scores[alpha]

    _walk(evaluate, config, up=True)
    if not scores or (_best(scores) == config.start and config.start > config.floor):
        _walk(evaluate, config, up=False)
    if not scores:
        raise FloatingPointError(
            f"The edit diverged at every step α tried ({', '.join(f'{a:g}' for a in sorted(diverged))}): the "
            "edited model's outputs are not finite; the update Δ is unusable (try more damping)."
        )
    best = _best(scores)
    for k in (*range(-config.refine, 0), *range(1, config.refine + 1)):
        alpha = best * config.factor ** (k / (config.refine + 1))
        if config.floor <= alpha <= config.cap:
            evaluate(alpha)
    best = _best(scores)
    curve = tuple(sorted(scores.items()))
    values = [o for _, o in curve]
    return StepSearch(
        step=best,
        curve=curve,
        cap=config.cap,
        floor=config.floor,
        cap_hit=best == config.cap,
        floor_hit=best == config.floor,
        flat=max(values) - min(values) <= config.tolerance,
        tolerance=config.tolerance,
        seconds=time.perf_counter() - start_time,
        diverged=tuple(sorted(diverged)),
    )


def _best(scores: dict[float, float]) -> float:
    """The α with the highest objective; the smallest such α on ties."""
    top = max(scores.values())
    return min(a for a, o in scores.items() if o == top)


def _walk(evaluate: Callable[[float], float], config: StepSearchConfig, up: bool) -> None:
    """Grow (``up``) or shrink α geometrically from ``start`` until ``patience`` consecutive candidates score more
    than ``tolerance`` below the best of this walk, or the cap / floor has been evaluated."""
    alpha, best, below = config.start, -math.inf, 0
    while True:
        value = evaluate(alpha)
        best = max(best, value)
        below = below + 1 if value < best - config.tolerance else 0
        if below >= config.patience or alpha == (config.cap if up else config.floor):
            return
        alpha = min(alpha * config.factor, config.cap) if up else max(alpha / config.factor, config.floor)
