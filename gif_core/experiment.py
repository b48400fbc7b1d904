"""One what-if question end to end: a request, several estimators side by side, the step scale, the metrics of
DESIGN.md section 3, and optionally the retrained ground truth. The CLI, the dashboard and the benchmarks all run
edits through :func:`run_edit`, so they report the same numbers.

Evaluation sets (all numbers in percent):

* class removal of c:  forget = test images of class c, retain = the other test images;
* sample removal:      forget = the removed training samples, retain = the remaining training samples;
* label change:        forget = the relabelled training samples scored against their OLD labels (how much of the
  old labelling is gone), retain = the other training samples; ``relabelled_acc`` scores them against the new ones;
* backdoor:            as a label change, plus clean test accuracy and the attack success rate on triggered test
  images.

``test_acc`` is always on the whole test split and ``f1`` = 2(1−forget)·retain/((1−forget)+retain).
``mia`` is the confidence-based membership-inference efficacy on the forget set (retain vs test as the reference).

Step scale α: the edit is θ + α·Δ. ``step="auto"`` searches α open-endedly (:mod:`gif_core.steps`: doubling
from 1 while the objective still rises, up to a stated cap, then refining) and keeps the α that maximises a
VALIDATION objective only (never the test split):

* class removal: the F1 of (forget accuracy on the validation images of the removed class, validation accuracy on
  the other classes) — a model retrained without the class cannot predict it;
* sample removal: validation accuracy − |accuracy on the removed samples − validation accuracy| — a model retrained
  without some samples treats them like held-out data (they are not "forgotten" to 0%: F1 here would reward
  destroying the model, as the random-forgetting benchmark showed);
* label change: the harmonic mean of (accuracy on the relabelled samples against their new labels, validation
  accuracy).

Each candidate α is scored by one forward pass over those validation images with θ + α·Δ put in place of the
model's parameters (no copy of the model); the whole curve, and whether the search hit its cap or floor, is kept
in the result.

Iterated edits (``iterations = k > 1``): after the first step θ₁ = θ + α₁Δ₁, each further step re-linearises at
the current point θ_j: H is re-evaluated there (same Hessian sample rows), g becomes the exact ``newton`` gradient
−∇L_{S∖U}(θ_j) (or −∇L_{S'}(θ_j) for a label change), the same method solves for Δ_{j+1} on the SAME selected
parameters T, and α_{j+1} is chosen again (auto: on validation only). With T = all parameters and α = 1 this is
Newton's method on the edited objective, so on a strongly convex model it converges to the retrained optimum.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from gif_core.backdoor import BackdoorSpec
from gif_core.checkpoints import ModelCard
from gif_core.constraints import Alternatives, InstanceOf, Interval, OneOf, validate
from gif_core.data import DataBundle, LabelledSet
from gif_core.evaluate import (
    accuracy,
    avg_gap,
    backdoor_metrics,
    compare_to_retrained,
    forget_f1,
    mia_efficacy,
    predict_proba,
)
from gif_core.influence import (
    METHOD_LABELS,
    METHOD_SUMMARIES,
    METHODS,
    SELECTIVE_METHODS,
    EstimatorConfig,
    InfluenceResult,
    estimate,
)
from gif_core.params import apply_delta, shifted_parameters
from gif_core.problem import EditProblem, HessianConfig, ProblemConfig, prepare
from gif_core.requests import EditRequest
from gif_core.selection import Selection, SelectionConfig, select
from gif_core.steps import StepSearch, StepSearchConfig, search_step

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class EditConfig:
    """Everything about how an edit is computed (not what is asked: that is the request), in sections:

    * ``methods``: the estimators to run side by side (:data:`gif_core.influence.METHODS`);
    * ``selection``: which parameters GIF/FIF/PIF move (:class:`~gif_core.selection.SelectionConfig`);
    * ``curvature``: the Hessian sample, damping δ, Gauss-Newton, precision (:class:`~gif_core.problem.HessianConfig`);
    * ``solver``: the Krylov solvers, GIF's ridge ρ and the stopping rule (:class:`~gif_core.influence.EstimatorConfig`);
    * ``step``, ``step_search``: the scale α of θ + α·Δ, fixed or searched on validation (``"auto"``);
    * ``iterations``: re-linearised steps (1 = one first-order step; see the module docstring).

    Each setting has one default, held by its section, and each section validates its own fields from their declared
    constraints (:mod:`gif_core.constraints`) when it is made. The defaults of selector, ratio, Hessian sample, damping,
    ridge, iterations and tolerance were chosen by ``benchmarks/defaults.py`` (class removal on every class of the
    default CNN, three seeds, α on validation only; ``benchmarks/results/defaults_joint.md``): early-stopped Krylov
    iterations, a little damping and a ridge all regularise the solve, and together they edit better than a converged
    undamped solve (stage 1, test split, reported: 50 undamped LSMR iterations left 4.6% of the removed class
    recognised on average, 3 left 0.1%). With 3 iterations GIF costs 10 Hessian-vector products, and ``converged``
    is usually False: the solve is stopped by design, not by failure.

    ``curvature.linearize`` traces the Hessian's products once per question (:class:`gif_core.curvature.CurvatureConfig`):
    the same numbers, each product then about one gradient's cost (benchmarks/results/hvp.md). The trace costs
    about as much as the ten products of one default GIF solve save, so it is off by default (one question, one
    solve: benchmarks/results/profile_edit.md) and on where the trace is done before the click (the dashboard).
    """

    methods: tuple[str, ...] = ("gif",)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    curvature: HessianConfig = field(default_factory=HessianConfig)
    solver: EstimatorConfig = field(default_factory=EstimatorConfig)
    step: float | str = "auto"
    step_search: StepSearchConfig = field(default_factory=StepSearchConfig)
    iterations: int = 1

    CONSTRAINTS: ClassVar[dict[str, Alternatives]] = {
        "methods": (InstanceOf(tuple),),
        "selection": (InstanceOf(SelectionConfig),),
        "curvature": (InstanceOf(HessianConfig),),
        "solver": (InstanceOf(EstimatorConfig),),
        "step": (OneOf(("auto",)), Interval(0, None, closed="neither")),
        "step_search": (InstanceOf(StepSearchConfig),),
        "iterations": (Interval(1, None, integer=True),),
    }

    def __post_init__(self) -> None:
        validate(self)
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise ValueError(f"Unknown method(s) {unknown or '(none given)'}; choose from {', '.join(METHODS)}")

    def with_seed(self, seed: int) -> EditConfig:
        """The same settings with ``seed`` for every random choice: the Hessian sample and a random selector."""
        return dataclasses.replace(
            self,
            selection=dataclasses.replace(self.selection, seed=seed),
            curvature=dataclasses.replace(self.curvature, seed=seed),
        )

    def to_dict(self) -> dict:
        """The settings as nested plain values (the ``config`` of the JSON report)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Scenario:
    """The data a question is judged on (see module docstring)."""

    request: EditRequest
    train: LabelledSet
    forget: LabelledSet
    retain: LabelledSet
    test: LabelledSet
    validation: LabelledSet
    step_forget: LabelledSet
    relabelled: LabelledSet | None = None
    backdoor: BackdoorSpec | None = None
    forget_in_test: torch.Tensor | None = None
    """For a class removal: the test rows that form ``forget`` (``retain`` is the rest), so one pass over the test
    split scores all three."""


def build_scenario(
    request: EditRequest, bundle: DataBundle, train: LabelledSet | None = None, backdoor: BackdoorSpec | None = None
) -> Scenario:
    """Evaluation sets for ``request`` on ``bundle`` (``train`` overrides the training split, e.g. poisoned)."""
    train = train if train is not None else bundle.train
    edit = request.edit(train.labels, bundle.num_classes)
    cls = request.held_out_class
    if cls is not None:  # judged on held-out images of the class
        test_in = bundle.test.labels == cls
        val_in = bundle.val.labels == cls
        return Scenario(
            request,
            train,
            forget=bundle.test.subset(test_in),
            retain=bundle.test.subset(~test_in),
            test=bundle.test,
            validation=bundle.val.subset(~val_in),
            step_forget=bundle.val.subset(val_in),
            forget_in_test=test_in,
        )
    forget = train.subset(edit.rows)
    relabelled = forget.with_labels(edit.new_labels) if edit.new_labels is not None else None
    return Scenario(
        request,
        train,
        forget=forget,
        retain=train.subset(~edit.in_u),
        test=bundle.test,
        validation=bundle.val,
        step_forget=relabelled if relabelled is not None else forget,
        relabelled=relabelled,
        backdoor=backdoor,
    )


def _acc(model: nn.Module, data: LabelledSet) -> float:
    return accuracy(predict_proba(model, data.inputs), data.labels) if len(data) else float("nan")


def evaluate_model(model: nn.Module, scenario: Scenario) -> dict[str, float]:
    """The metrics of one model on a scenario (see module docstring)."""
    return _evaluate(model, scenario)[0]


def _evaluate(model: nn.Module, scenario: Scenario) -> tuple[dict[str, float], torch.Tensor]:
    """The metrics, and the test-split probabilities they were computed from (reused against the retrained model)."""
    probs = {"test": predict_proba(model, scenario.test.inputs)}
    if scenario.forget_in_test is not None:
        probs["forget"], probs["retain"] = (
            probs["test"][scenario.forget_in_test],
            probs["test"][~scenario.forget_in_test],
        )
    else:
        probs.update({name: predict_proba(model, getattr(scenario, name).inputs) for name in ("forget", "retain")})
    forget_acc = accuracy(probs["forget"], scenario.forget.labels)
    retain_acc = accuracy(probs["retain"], scenario.retain.labels)
    metrics = {
        "forget_acc": forget_acc,
        "retain_acc": retain_acc,
        "test_acc": accuracy(probs["test"], scenario.test.labels),
        "f1": forget_f1(forget_acc, retain_acc),
    }
    if scenario.forget_in_test is None:  # U is training data: does the model still remember it?
        metrics["mia"] = mia_efficacy(
            probs["retain"],
            scenario.retain.labels,
            probs["test"],
            scenario.test.labels,
            probs["forget"],
            scenario.forget.labels,
        )
    if scenario.relabelled is not None:
        metrics["relabelled_acc"] = _acc(model, scenario.relabelled)
    if scenario.backdoor is not None:
        spec = scenario.backdoor
        result = backdoor_metrics(
            model, scenario.test.inputs, scenario.test.labels, spec.trigger.stamp(scenario.test.inputs), spec.target
        )
        metrics["clean_acc"] = result.clean_acc
        metrics["attack_success_rate"] = result.attack_success_rate
    return metrics, probs["test"]


def step_objective(model: nn.Module, scenario: Scenario) -> float:
    """The validation-only objective that ``step="auto"`` maximises (see module docstring)."""
    return scenario.request.objective(_acc(model, scenario.validation), _acc(model, scenario.step_forget))


def search_validation_step(
    model: nn.Module, result: InfluenceResult, scenario: Scenario, config: StepSearchConfig
) -> StepSearch:
    """The open-ended search of :mod:`gif_core.steps` on the validation objective, one forward pass a candidate."""
    validation, target = scenario.validation, scenario.step_forget
    if not len(validation) or not len(target):
        raise ValueError(
            "step='auto' needs validation images of the kept and of the questioned data, and the validation split "
            f"has {len(validation)} kept and {len(target)} questioned: give a fixed step instead."
        )
    inputs = torch.cat([validation.inputs, target.inputs])
    space, n_val = result.problem.space, len(validation)

    def objective(alpha: float) -> float:
        probs = predict_proba(model, inputs, parameters=shifted_parameters(model, space, result.delta, alpha))
        return scenario.request.objective(
            accuracy(probs[:n_val], validation.labels), accuracy(probs[n_val:], target.labels)
        )

    return search_step(objective, config)


@dataclass(frozen=True)
class MethodOutcome:
    """One estimator's answer, frozen once made: the influence result, the chosen step, the edited model, its
    metrics and (with a retrained model) how close it came to it.

    A *diverged* outcome (``diverged`` holds why: Δ, the edited weights or its outputs were not finite) has no model,
    no metrics and no step (NaN, never reported): it is shown as diverged and cannot be saved. ``result`` is None
    when the solve itself produced the non-finite Δ."""

    method: str
    result: InfluenceResult | None
    step: float
    step_search: StepSearch | None
    model: nn.Module | None
    metrics: dict[str, float]
    seconds: float
    vs_retrain: dict[str, float] | None = None
    later_steps: tuple[tuple[InfluenceResult, float], ...] = ()
    """Re-linearised steps 2…k (their result and α); ``result``/``step`` are step 1's, ``model`` the final one."""
    test_probs: torch.Tensor | None = field(default=None, repr=False)
    """The edited model's probabilities on the test split (what the metrics were computed from)."""
    diverged: str | None = None
    flags: tuple[str, ...] = ()
    """What a reader must know before trusting the row, in words (:func:`edit_flags`); empty when nothing is off."""

    @property
    def step_curve(self) -> list[tuple[float, float]]:
        """The validation objective at every α the search tried (empty for a fixed step)."""
        return list(self.step_search.curve) if self.step_search is not None else []

    def to_dict(self) -> dict:
        if self.diverged:
            record = {
                "method": self.method,
                "summary": METHOD_SUMMARIES[self.method],
                "diverged": True,
                "reason": self.diverged,
                "seconds": self.seconds,
            }
            if self.result is not None:
                record["solver"] = self.result.solver_summary()
            return record
        assert self.result is not None  # only a diverged outcome can lack its result
        selection = self.result.selection
        record = {
            "method": self.method,
            "summary": METHOD_SUMMARIES[self.method],
            "diverged": False,
            "flags": list(self.flags),
            "selector": selection.method,
            "ratio": selection.ratio_asked,
            "ratio_obtained": selection.ratio_obtained,
            "n_selected": selection.n_selected,
            "step": self.step,
            **self.metrics,
            "solver": self.result.solver_summary(),
            "solved": self.result.solved,
            "seconds": self.seconds,
        }
        if self.step_search is not None:
            record["step_search"] = self.step_search.to_dict()
        if self.vs_retrain is not None:
            record["vs_retrain"] = self.vs_retrain
        if self.later_steps:
            record["later_steps"] = [{"step": a, "solver": r.solver_summary()} for r, a in self.later_steps]
        return record


@dataclass(frozen=True)
class EditReport:
    """The whole answer to one question, frozen once made; :meth:`to_dict` is the JSON report of
    ``gif remove --json``. ``model_info`` names the model asked about (``{"path": …, "id": …}``); the retrained
    model's training seconds and whether it came from the cache are those of the ground truth given."""

    request: EditRequest
    config: EditConfig
    original: dict[str, float]
    outcomes: tuple[MethodOutcome, ...]
    selection: Selection | None
    retrained: dict[str, float] | None = None
    retrained_model: nn.Module | None = None
    retrain_seconds: float | None = None
    retrain_from_cache: bool | None = None
    model_info: dict | None = None
    original_test_probs: torch.Tensor | None = field(default=None, repr=False)
    retrained_test_probs: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        report = {
            "request": self.request.describe(),
            "config": self.config.to_dict(),
            "selection": self.selection.describe() if self.selection is not None else None,
            "original": self.original,
            "results": [o.to_dict() for o in self.outcomes],
        }
        if self.retrained is not None:
            report["retrained"] = {
                **self.retrained,
                "seconds": self.retrain_seconds,
                "from_cache": self.retrain_from_cache,
            }
        if self.model_info is not None:
            report["model"] = self.model_info
        return report

    def to_json(self) -> str:
        """:meth:`to_dict` as strict JSON: a NaN or inf anywhere is a bug and raises ValueError here, never a
        ``NaN`` token that JSON readers reject."""
        try:
            return json.dumps(self.to_dict(), indent=2, default=str, allow_nan=False)
        except ValueError as error:
            raise ValueError(f"the report holds a non-finite number and cannot be written as JSON: {error}") from error


WORSE_ON_RETAINED = 0.5
"""Percentage points of retained accuracy an edit may lose against the original before it is flagged."""


def edit_flags(
    metrics: dict[str, float],
    test_probs: torch.Tensor,
    original: dict[str, float],
    original_test_probs: torch.Tensor,
    search: StepSearch | None,
) -> tuple[str, ...]:
    """Warnings about an edited model, in words: it changes no test prediction (a no-op: the step was too small to
    matter), its α is at an end of the step search (the search's own warnings), or it scores more than
    :data:`WORSE_ON_RETAINED` points below the original on the retained data."""
    flags = []
    if torch.equal(test_probs.argmax(1), original_test_probs.argmax(1)):
        flags.append("changes no test prediction (a no-op edit: its test metrics are the original's)")
    if search is not None and (search.cap_hit or search.floor_hit):
        flags.extend(search.warnings)
    loss = original["retain_acc"] - metrics["retain_acc"]
    if loss > WORSE_ON_RETAINED:
        flags.append(f"worse than the original on the retained data ({loss:.1f} points lower)")
    return tuple(flags)


def _choose_step(
    model: nn.Module, result: InfluenceResult, scenario: Scenario, config: EditConfig
) -> tuple[float, StepSearch | None]:
    if config.step != "auto":
        return float(config.step), None
    search = search_validation_step(model, result, scenario, config.step_search)
    return search.step, search


PREPARATION_SECTIONS = ("curvature", "selection")
"""The :class:`EditConfig` sections that :func:`prepare_edit` depends on; every other setting only affects
:func:`answer`."""


def preparation_key(config: EditConfig) -> tuple:
    """What a :class:`PreparedEdit` must have been prepared with to serve ``config`` (its
    :data:`PREPARATION_SECTIONS`, frozen and comparable)."""
    return tuple(getattr(config, name) for name in PREPARATION_SECTIONS)


def _changed_settings(old: tuple, new: tuple) -> list[str]:
    """``section.field old → new`` for every preparation setting that differs between two keys."""
    return [
        f"{section}.{f.name} {getattr(before, f.name)!r} → {getattr(after, f.name)!r}"
        for section, before, after in zip(PREPARATION_SECTIONS, old, new, strict=True)
        for f in dataclasses.fields(before)
        if getattr(before, f.name) != getattr(after, f.name)
    ]


@dataclass(frozen=True)
class PreparedEdit:
    """The part of an answer that depends on the question and on :data:`PREPARATION_SECTIONS` but not on the methods,
    the solver or the step: the scenario, the problem (g and its Hessian, warmed), the selection, and the original's
    (and, when given, the retrained model's) metrics and test-split probabilities. One of these serves every
    :func:`answer` with a compatible config — the dashboard prepares it in the background before the click."""

    key: tuple
    model: nn.Module
    card: ModelCard | None
    bundle: DataBundle
    scenario: Scenario
    problem: EditProblem
    problem_config: ProblemConfig
    selection: Selection
    original: dict[str, float]
    original_test_probs: torch.Tensor
    retrained_model: nn.Module | None = None
    retrained: dict[str, float] | None = None
    retrained_test_probs: torch.Tensor | None = None
    retrain_seconds: float | None = None
    retrain_from_cache: bool | None = None
    model_info: dict | None = None

    def with_retrained(
        self, retrained_model: nn.Module, seconds: float | None = None, from_cache: bool | None = None
    ) -> PreparedEdit:
        """The same preparation with the retrained ground truth's metrics and probabilities added (``seconds``:
        its training time, ``from_cache``: whether it was read from the cache; both reported)."""
        metrics, probs = _evaluate(retrained_model, self.scenario)
        return dataclasses.replace(
            self, retrained_model=retrained_model, retrained=metrics, retrained_test_probs=probs,
            retrain_seconds=seconds, retrain_from_cache=from_cache,
        )  # fmt: skip


def prepare_edit(
    model: nn.Module,
    card: ModelCard | None,
    bundle: DataBundle,
    request: EditRequest,
    config: EditConfig | None = None,
    *,
    train: LabelledSet | None = None,
    backdoor: BackdoorSpec | None = None,
    retrained_model: nn.Module | None = None,
    model_info: dict | None = None,
    progress: Progress | None = None,
    weight_decay: float | None = None,
) -> PreparedEdit:
    """Validate ``request`` and do the work every method shares (see :class:`PreparedEdit`); ``model`` is never
    modified. The Hessian includes the weight decay λ of the training objective: the card's recipe's, or
    ``weight_decay`` for a model without a card (``card=None``; :mod:`gif_core.any_module`). With
    ``config.linearize`` its products are traced here, so that the solves of :func:`answer` pay only the tangent
    passes."""
    config = config or EditConfig()
    weight_decay = _weight_decay(card, weight_decay)
    report_progress = progress or (lambda _message, _fraction: None)
    scenario = build_scenario(request, bundle, train, backdoor)
    problem_config = config.curvature.problem_config(weight_decay=weight_decay)
    report_progress("Computing the gradient of the request", 0.0)
    problem = prepare(model, scenario.train, request, bundle.num_classes, problem_config)
    report_progress("Tracing the Hessian-vector product" if problem.hessian.linearizes else "Hessian ready", 0.3)
    problem.hessian.warm()
    report_progress(f"Selecting {config.selection.ratio:.0%} of the parameters ({config.selection.method})", 0.6)
    selection = select(problem, config.selection)
    report_progress("Scoring the original model", 0.8)
    original, original_probs = _evaluate(model, scenario)
    prepared = PreparedEdit(
        preparation_key(config), model, card, bundle, scenario, problem, problem_config, selection, original,
        original_probs, model_info=model_info,
    )  # fmt: skip
    if retrained_model is not None:
        report_progress("Scoring the retrained model", 0.9)
        prepared = prepared.with_retrained(retrained_model)
    report_progress("Prepared", 1.0)
    return prepared


def _weight_decay(card: ModelCard | None, weight_decay: float | None) -> float:
    """λ of the training objective: the card's recipe's, or the one given for a model without a card (not both)."""
    if card is not None and weight_decay is not None:
        raise ValueError("give the weight decay through the model card's recipe or as weight_decay, not both")
    if card is not None:
        return float(card.recipe.get("weight_decay", 0.0))
    value = 0.0 if weight_decay is None else float(weight_decay)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    return value


def answer(prepared: PreparedEdit, config: EditConfig, progress: Progress | None = None) -> EditReport:
    """Answer the prepared question with every method of ``config`` (whose preparation fields must match).

    Per method: solve for Δ, choose α (``step="auto"``: the validation search), apply θ + α·Δ to a copy, and score
    it; ``progress(message, fraction)`` is called at each of these phases."""
    if preparation_key(config) != prepared.key:
        changed = _changed_settings(prepared.key, preparation_key(config))
        raise ValueError(f"This preparation does not serve the config ({', '.join(changed)}): prepare it again.")
    report_progress = progress or (lambda _message, _fraction: None)
    model, scenario, problem, request = prepared.model, prepared.scenario, prepared.problem, prepared.scenario.request
    newton_config = dataclasses.replace(prepared.problem_config, gradient="newton")
    selective = any(m in SELECTIVE_METHODS for m in config.methods)
    estimator = config.solver
    outcomes = []
    for i, method in enumerate(config.methods):
        name, share = METHOD_LABELS[method], 1 / len(config.methods)
        report_progress(f"{name}: solving for Δ", i * share)
        start = time.perf_counter()
        method_selection = prepared.selection if method in SELECTIVE_METHODS else None
        result = None
        try:
            result = estimate(method, problem, method_selection, estimator)
            report_progress(f"{name}: choosing the step α", (i + 0.5) * share)
            step, search = _choose_step(model, result, scenario, config)
            edited = apply_delta(model, problem.space, result.delta, step)
            later_steps: list[tuple[InfluenceResult, float]] = []
            for j in range(config.iterations - 1):
                report_progress(f"{name}: step {j + 2} of {config.iterations}", (i + 0.6) * share)
                relinearised = prepare(edited, scenario.train, request, prepared.bundle.num_classes, newton_config)
                later = estimate(method, relinearised, method_selection, estimator)
                later_step, _ = _choose_step(edited, later, scenario, config)
                edited = apply_delta(edited, relinearised.space, later.delta, later_step)
                later_steps.append((later, later_step))
            report_progress(f"{name}: scoring the edited model", (i + 0.9) * share)
            metrics, test_probs = _evaluate(edited, scenario)
        except FloatingPointError as error:  # a non-finite Δ, weight or output: diverged, never an accuracy
            outcomes.append(
                MethodOutcome(
                    method, result, math.nan, None, None, {}, time.perf_counter() - start, diverged=str(error)
                )
            )
            continue
        seconds = time.perf_counter() - start
        vs_retrain = None
        if prepared.retrained is not None:
            assert prepared.retrained_test_probs is not None  # with_retrained sets both
            vs_retrain = {
                **compare_to_retrained(test_probs, prepared.retrained_test_probs),
                "avg_gap": avg_gap(metrics, prepared.retrained),
            }
        outcomes.append(
            MethodOutcome(
                method, result, step, search, edited, metrics, seconds, vs_retrain, tuple(later_steps), test_probs,
                flags=edit_flags(metrics, test_probs, prepared.original, prepared.original_test_probs, search),
            )
        )  # fmt: skip
    report_progress("Done", 1.0)
    return EditReport(
        request,
        config,
        prepared.original,
        tuple(outcomes),
        prepared.selection if selective else None,
        prepared.retrained,
        prepared.retrained_model,
        prepared.retrain_seconds,
        prepared.retrain_from_cache,
        prepared.model_info,
        original_test_probs=prepared.original_test_probs,
        retrained_test_probs=prepared.retrained_test_probs,
    )


def run_edit(
    model: nn.Module,
    card: ModelCard | None,
    bundle: DataBundle,
    request: EditRequest,
    config: EditConfig | None = None,
    *,
    train: LabelledSet | None = None,
    backdoor: BackdoorSpec | None = None,
    retrained_model: nn.Module | None = None,
    progress: Progress | None = None,
    weight_decay: float | None = None,
) -> EditReport:
    """Answer ``request`` with every method of ``config``: :func:`prepare_edit`, then :func:`answer`; ``model`` is
    never modified.

    ``retrained_model`` (optional) is the ground truth to compare against (see :mod:`gif_core.retrain`).
    ``progress(message, fraction)`` is called between stages.
    """
    config = config or EditConfig()
    prepared = prepare_edit(
        model, card, bundle, request, config, train=train, backdoor=backdoor, retrained_model=retrained_model,
        progress=stage(progress, 0.0, PREPARE_SHARE), weight_decay=weight_decay,
    )  # fmt: skip
    return answer(prepared, config, stage(progress, PREPARE_SHARE, 1 - PREPARE_SHARE))


PREPARE_SHARE = 0.15
"""The share of an edit's progress bar that :func:`prepare_edit` fills in :func:`run_edit` and ``Workspace.answer``."""


def stage(progress: Progress | None, start: float, share: float) -> Progress:
    """``progress`` for one stage of a longer run: its fractions 0…1 mapped to ``start … start + share``."""
    report = progress or (lambda _message, _fraction: None)
    return lambda message, fraction: report(message, start + share * fraction)
