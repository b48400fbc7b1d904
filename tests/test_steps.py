"""The open-ended step search (gif_core.steps), on objectives whose best α is known."""

import math

import pytest

from gif_core.steps import StepSearchConfig, search_step


def _peaked(peak: float, width: float = 1.0):
    """A smooth bump in log α with its maximum (100, in percent like the real objectives) at ``peak``; records
    every α it is asked about."""
    calls: list[float] = []

    def objective(alpha: float) -> float:
        calls.append(alpha)
        return 100 * math.exp(-((math.log2(alpha) - math.log2(peak)) ** 2) / width)

    return objective, calls


@pytest.mark.parametrize("peak", [0.01, 0.3, 1.0, 5.0, 1000.0, 3000.0])
def test_the_search_finds_the_peak_within_one_refinement(peak):
    objective, calls = _peaked(peak)
    search = search_step(objective)
    assert abs(math.log2(search.step) - math.log2(peak)) <= 1 / 3 + 1e-9  # refinement spacing: 2^(1/3)
    assert not search.cap_hit and not search.floor_hit and not search.flat
    assert len(calls) == len(set(calls)) == search.evaluations  # no candidate is evaluated twice


def test_a_flat_start_that_needs_a_step_beyond_32_is_found():
    """The bug this search replaces: a well-fit class scores 0 on every α up to 32 and forgets only near α ≈ 1000;
    a fixed grid ending at 32 chose its smallest α and kept the class."""

    def objective(alpha: float) -> float:  # F1-like: zero until forgetting starts, then a peak, then collapse
        return 0.0 if alpha < 300 else 90.0 - abs(math.log2(alpha / 1200)) * 10

    search = search_step(objective)
    assert 600 <= search.step <= 2400 and search.objective > 80
    assert max(a for a, _ in search.curve) > 32


def test_reaching_the_cap_is_reported_not_hidden():
    search = search_step(lambda alpha: 10 * math.log(alpha))  # still rising at every α
    assert search.step == search.cap == 1e4 and search.cap_hit
    assert max(a for a, _ in search.curve) == 1e4  # nothing beyond the stated cap was tried
    small = search_step(lambda alpha: 10 * math.log(alpha), StepSearchConfig(cap=50.0))
    assert small.step == 50.0 and small.cap_hit


def test_the_floor_and_a_flat_objective_are_reported():
    falling = search_step(lambda alpha: -10 * alpha)  # the less change the better
    assert falling.step == falling.floor == 1e-9 and falling.floor_hit and not falling.cap_hit
    flat = search_step(lambda alpha: 7.0)
    assert flat.flat and flat.step == 1e-9  # ties go to the smallest α: no α changes what is measured


def test_a_peak_far_below_one_is_found():
    """DataInf on the bundled CNN (class 0): the objective is a level wreck (20) for every α ≥ 1e-3 and peaks near
    α ≈ 6e-5; the downward walk must reach it, not stop at a floor above it."""

    def objective(alpha: float) -> float:
        return 20.0 if alpha >= 1e-3 else 98.0 - 30 * abs(math.log10(alpha / 6e-5))

    search = search_step(objective)
    assert 3e-5 < search.step < 1.2e-4 and not search.floor_hit and search.objective > 90


def test_ties_go_to_the_smallest_step_and_plateaus_are_crossed():
    search = search_step(lambda alpha: 10 * min(alpha, 8.0))  # rises to 8, level beyond
    assert search.step == 8.0 and not search.cap_hit
    # a plateau is not a fall: the level values from 8 on do not stop the search, the patience rule needs drops
    plateau_then_peak = search_step(lambda alpha: 10.0 if alpha < 64 else (50.0 if alpha < 200 else 0.0))
    assert 64 <= plateau_then_peak.step < 200


def test_small_drops_on_a_plateau_are_level_not_a_fall():
    """Seen on the bundled CNN (param-gradient selector, class 0): F1 sits at 3.9 until forgetting starts near
    α ≈ 100, and one validation image more wrong at α = 4 and 8 lowered it by a fraction of a point. A strict
    'two drops and stop' rule stopped at 8 and chose the floor; drops within the tolerance are level."""

    def objective(alpha: float) -> float:
        if alpha < 100:
            return 3.92 - (0.3 if alpha >= 4 else 0.0)
        return 95.0 if alpha < 600 else 10.0

    search = search_step(objective)
    assert 100 <= search.step < 600 and search.objective == 95.0
    strict = search_step(objective, StepSearchConfig(tolerance=0.0))
    assert strict.step < 4  # what the strict rule did: it never saw the forgetting


def test_a_non_finite_objective_is_a_diverged_fall_never_a_candidate():
    def objective(alpha: float) -> float:
        if alpha >= 8:
            raise FloatingPointError("the model's outputs are not finite")
        return float("nan") if alpha >= 4 else alpha

    search = search_step(objective)
    assert search.diverged == (4.0, 8.0)  # two falls in a row: the walk stops (patience 2)
    assert search.step == pytest.approx(2 * 2 ** (2 / 3)) and search.step < 4
    assert all(math.isfinite(o) for _, o in search.curve) and 4.0 not in dict(search.curve)
    assert any("diverged" in w and "α = 4, 8" in w for w in search.warnings)
    assert search.to_dict()["diverged"] == [4.0, 8.0]


def test_an_objective_diverged_everywhere_is_an_error():
    with pytest.raises(FloatingPointError, match="diverged at every step"):
        search_step(lambda alpha: float("inf"), StepSearchConfig(start=1.0, floor=0.25))


def test_invalid_search_config():
    with pytest.raises(ValueError, match="floor ≤ start ≤ cap"):
        StepSearchConfig(cap=0.5)
    with pytest.raises(ValueError, match="floor ≤ start ≤ cap"):
        StepSearchConfig(cap=math.inf)
    with pytest.raises(ValueError, match="factor"):
        StepSearchConfig(factor=1.0)
    with pytest.raises(ValueError, match="patience"):
        StepSearchConfig(patience=0)
    with pytest.raises(ValueError, match="tolerance"):
        StepSearchConfig(tolerance=-1.0)
