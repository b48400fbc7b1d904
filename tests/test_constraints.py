"""Declared constraints: each configuration refuses what its fields do not accept, in one kind of message."""

import math

import pytest
import torch

from gif_core.constraints import ConfigError, InstanceOf, Interval, OneOf
from gif_core.curvature import CurvatureConfig
from gif_core.experiment import EditConfig
from gif_core.influence import EstimatorConfig
from gif_core.problem import HessianConfig, ProblemConfig
from gif_core.selection import SelectionConfig
from gif_core.solvers import SolverConfig
from gif_core.steps import StepSearchConfig


def test_an_interval_takes_finite_numbers_between_its_ends_and_only_its_closed_ends():
    unit = Interval(0, 1, closed="right")
    assert [unit.accepts(v) for v in (0, 1e-9, 0.5, 1, 1.0 + 1e-9)] == [False, True, True, True, False]
    assert not any(unit.accepts(v) for v in (math.nan, math.inf, True, "0.5", None))
    whole = Interval(1, None, integer=True)
    assert whole.accepts(3) and not whole.accepts(3.0) and not whole.accepts(0) and not whole.accepts(False)
    assert unit.describe() == "a finite number in (0, 1]" and whole.describe() == "a whole number ≥ 1"
    assert Interval(0, None, closed="neither").describe() == "a finite number > 0"


def test_one_of_and_instance_of():
    names = OneOf(("auto",))
    assert names.accepts("auto") and not names.accepts("Auto") and not names.accepts(None)
    assert OneOf((1, 2)).accepts(2) and not OneOf((1, 2)).accepts(2.0)  # the type counts: 2.0 is not the option 2
    assert InstanceOf(bool).accepts(False) and not InstanceOf(bool).accepts(0)
    assert InstanceOf(bool).describe() == "True or False"


@pytest.mark.parametrize(
    ("make", "config", "field"),
    [
        (lambda: SelectionConfig(seed=-1), "SelectionConfig", "seed"),
        (lambda: SelectionConfig(batch_size=0), "SelectionConfig", "batch_size"),
        (lambda: HessianConfig(samples=0), "HessianConfig", "samples"),
        (lambda: HessianConfig(samples=2.5), "HessianConfig", "samples"),
        (lambda: HessianConfig(damping=math.nan), "HessianConfig", "damping"),
        (lambda: HessianConfig(damping=1e7), "HessianConfig", "damping"),
        (lambda: HessianConfig(dtype="float16"), "HessianConfig", "dtype"),
        (lambda: HessianConfig(data="test"), "HessianConfig", "data"),
        (lambda: HessianConfig(gauss_newton="yes"), "HessianConfig", "gauss_newton"),
        (lambda: EstimatorConfig(gif_ridge=-1), "EstimatorConfig", "gif_ridge"),
        (lambda: EstimatorConfig(least_squares_solver="qr"), "EstimatorConfig", "least_squares_solver"),
        (lambda: EstimatorConfig(maxiter=0), "SolverConfig", "maxiter"),
        (lambda: EstimatorConfig(rtol=1.0), "SolverConfig", "rtol"),
        (lambda: SolverConfig(richardson_scale_step=0), "SolverConfig", "richardson_scale_step"),
        (lambda: CurvatureConfig(weight_decay=-1e-4), "CurvatureConfig", "weight_decay"),
        (lambda: CurvatureConfig(dtype="float64"), "CurvatureConfig", "dtype"),
        (lambda: ProblemConfig(hessian_samples=0), "ProblemConfig", "hessian_samples"),
        (lambda: StepSearchConfig(refine=-1), "StepSearchConfig", "refine"),
        (lambda: EditConfig(step=math.inf), "EditConfig", "step"),
        (lambda: EditConfig(iterations=1.5), "EditConfig", "iterations"),
        (lambda: EditConfig(curvature=SelectionConfig()), "EditConfig", "curvature"),
    ],
)
def test_each_configuration_refuses_a_value_its_field_does_not_accept(make, config, field):
    with pytest.raises(ConfigError) as caught:
        make()
    assert (caught.value.config, caught.value.field) == (config, field)
    assert str(caught.value).startswith(f"{config}: {field} must be ") and ", got " in str(caught.value)


def test_the_accepted_edges_are_accepted():
    HessianConfig(samples=None, damping=0.0, dtype="float64", data="all", gauss_newton=True)
    HessianConfig(damping=1e6)
    EstimatorConfig(gif_ridge=0.0, rtol=1e-12, maxiter=1)
    CurvatureConfig(dtype=torch.float64)
    EditConfig(step=1e-9, iterations=3)


def test_an_edit_s_sections_each_hold_their_one_default():
    config = EditConfig()
    assert (config.selection.method, config.selection.ratio, config.selection.budget) == ("gradient", 0.05, "per-layer")
    assert (config.curvature.samples, config.curvature.damping, config.curvature.dtype) == (200, 0.03, None)
    assert (config.solver.gif_ridge, config.solver.maxiter, config.solver.rtol) == (0.01, 3, 1e-4)
    assert config.step == "auto" and config.iterations == 1
    seeded = config.with_seed(7)
    assert (seeded.selection.seed, seeded.curvature.seed) == (7, 7) and seeded.solver == config.solver
