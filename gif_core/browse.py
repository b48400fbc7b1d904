"""Browse influence for one model: which training samples made a prediction, and which look mislabelled.

:class:`InfluenceBrowser` holds, for one model and its training set, the Hessian operator over a seeded sample of
the training data and the cached per-sample gradients G (:mod:`gif_core.gradient_store`), so that explaining a new
test point costs one solve plus one product G·s. Scores follow :mod:`gif_core.scores`: the predicted change of the
test loss when the training sample is removed, **positive = helpful** (removing it would raise the test loss),
negative = harmful. Captum's estimators (:mod:`gif_core.captum_baselines`) are offered beside ours on the same model
and data; each is set up once per browser and reused.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gif_core.cache_files import InvalidEntry, load_entry, read_or_miss, save_entry, tensors_sha256
from gif_core.captum_baselines import CaptumConfig, CaptumEstimator, captum_estimator
from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.data import LabelledSet, seeded_subset
from gif_core.evaluate import predict_proba
from gif_core.gradient_store import DTYPE, GradientStore, default_gradient_dir, gradient_key, gradient_store
from gif_core.interrupt import ForwardWatch, StopCheck, check
from gif_core.projection import TrakConfig, TrakKernel, trak_kernel, true_class_complement
from gif_core.scores import (
    APPROXIMATE_INVERSES,
    SCORE_METHODS,
    LowRankInverse,
    SelfInfluence,
    influence_of_gradient,
    influence_scores,
    lowrank_inverse,
    self_influence,
)
from gif_core.selection import Selection, SelectionConfig, select_on_data
from gif_core.solvers import SolverConfig, SolveReport

OUR_METHODS = SCORE_METHODS
CAPTUM_METHODS = ("captum-tracincp", "captum-naive", "captum-arnoldi")
BROWSE_METHODS = (*OUR_METHODS, *CAPTUM_METHODS)
METHOD_LABELS = {
    "if": "Influence function (IF, exact solve)",
    "if-lowrank": "Influence function (IF, low-rank H)",
    "gif": "GIF-restricted",
    "tracin": "TracIn (final checkpoint)",
    "datainf": "DataInf (layer-wise closed form)",
    "hyperinf": "HyperINF (layer-wise Schulz)",
    "ekfac": "EK-FAC IF",
    "trak": "TRAK (random projection)",
    "captum-tracincp": "Captum TracInCP",
    "captum-naive": "Captum naive IF",
    "captum-arnoldi": "Captum Arnoldi IF",
}
CACHED_SCORE_METHODS = ("if", "gif", *APPROXIMATE_INVERSES, *CAPTUM_METHODS)
"""Methods whose scores for one test point are kept on disk (:data:`SCORES_KIND`): each costs a solve, passes over
the Hessian sample (DataInf, HyperINF, EK-FAC) or Captum's work per point, so asking again, in any session, is served from the cache. The others are a product with G."""
SCORES_KIND = "browse-scores/1"
EIGENPAIRS_KIND = "eigenpairs/1"
"""The ``gif_cache`` kind of an eigenpair entry (see :mod:`gif_core.cache_files`)."""
LAYERWISE_PASSES = {"datainf": 2, "hyperinf": 1}
"""Passes over the Hessian sample's per-sample gradients per test point (:mod:`gif_core.layerwise`)."""
NAIVE_FULL_LIMIT = 5_000
"""Captum's naive IF materialises the Hessian of its parameters; above this many, it is restricted to the last
Linear layer (and the result says so)."""


@dataclass(frozen=True)
class BrowserConfig:
    """Hessian sample (size, seed), damping δ added to H, the solver, the selector behind GIF-restricted scores, the
    Lanczos rank of low-rank self-influence, Captum's settings and the gradient cache folder (None = default)."""

    hessian_samples: int = 500
    seed: int = 0
    damping: float = 0.0
    solver: SolverConfig = field(default_factory=lambda: SolverConfig(rtol=1e-3, maxiter=100))
    selection: SelectionConfig = field(default_factory=lambda: SelectionConfig(method="gradient", ratio=0.05))
    lowrank_rank: int = 50
    trak: TrakConfig = field(default_factory=TrakConfig)
    captum_hessian_samples: int = 500
    captum_arnoldi_dim: int = 100
    cache_dir: Path | None = None


Progress = Callable[[str, float], None]
"""``progress(message, fraction)``: the phase under way and the fraction of it done (0 when unknown)."""
LANCZOS_PRODUCTS_PER_RANK = 10
"""Lanczos (scipy's ``eigsh``, ``ncv = 2·rank + 1``) took 4.1 Hessian-vector products per eigenpair for rank 50 on the
bundled CNN (206 products) and 9.7 on the Iris MLP (483): the estimate allows 10 per eigenpair, an upper bound."""
ARNOLDI_MAX_WORK = 200 * 46_730
"""Captum's Arnoldi IF is offered only while training samples × parameters stay at most this. On the bundled CNN
(46,730 parameters, one thread, a busy machine) its set-up took 16 s for 100 training samples, 34 s for 200 and
176 s for 400 (faster than linear growth), and at 3,500 it did not finish in 25 minutes (issue 18)."""


QUICK_SECONDS = 1.0
"""Work estimated under this, with nothing to write to the cache, is :attr:`CostEstimate.quick`."""


@dataclass(frozen=True)
class CostEstimate:
    """What one method will cost on this browser before it runs. ``phases`` are (what, seconds) for the work still
    to do, timed from one Hessian-vector product and one per-sample gradient block on this machine (the products
    and gradients, which dominate; not the pass over G nor the page's drawing: measured beside it in
    benchmarks/results/dashboard.md); a solve that converges early stops sooner. ``seconds`` is their sum, None
    where it cannot be estimated (Captum's own loops). ``disk_bytes`` is what it adds to the cache. ``feasible``
    False: it cannot finish here, ``note`` says why."""

    method: str
    phases: tuple[tuple[str, float | None], ...]
    seconds: float | None
    disk_bytes: int
    feasible: bool = True
    note: str = ""

    @property
    def quick(self) -> bool:
        """Estimated under :data:`QUICK_SECONDS` with nothing to cache: not worth a background job."""
        return self.seconds is not None and self.seconds < QUICK_SECONDS and not self.disk_bytes

    def describe(self) -> str:
        """One line for a person: the time, the disk, and why it cannot run if it cannot."""
        if not self.feasible:
            return self.note
        if self.seconds is None:
            time_part = "time not estimated" + ("" if self.note else " (Captum's own loops)")
        elif self.seconds < 1:
            time_part = "under a second"
        else:
            time_part = f"about {_duration(self.seconds)}"
        disk = f", writes {self.disk_bytes / 2**20:,.0f} MB to the cache (once per model)" if self.disk_bytes else ""
        return time_part + disk + (f". {self.note}" if self.note else "")


def _times_or_none(count: int, seconds: float | None) -> float | None:
    return None if seconds is None else count * seconds


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


TIE_TOLERANCE = 1e-6
"""A score within ``TIE_TOLERANCE · max|score|`` of zero is a tie: neither helpful nor harmful (float32 products
leave scores of ~1e-14 where the exact score is 0, e.g. TracIn on a sample the model fits perfectly)."""


def _check_method(method: str) -> None:
    if method not in BROWSE_METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(BROWSE_METHODS)}")


def tie_band(scores: torch.Tensor) -> float:
    """The half-width ``TIE_TOLERANCE · max|score|`` of the band around zero whose scores are ties (0 when empty)."""
    return TIE_TOLERANCE * float(scores.abs().max()) if scores.numel() else 0.0


def helpful_and_harmful(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of the k largest scores above the tie band (helpful, most helpful first) and of the k smallest below
    it (harmful, most harmful first); either may hold fewer than k rows, and a score in the band is in neither.
    Equal scores keep their row order (a stable sort)."""
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    tie = tie_band(scores)
    order = torch.argsort(scores, descending=True, stable=True)
    helpful = order[scores[order] > tie][:k]
    harmful = order.flip(0)[scores[order.flip(0)] < -tie][:k]
    return helpful, harmful


@dataclass(frozen=True)
class InfluentialSample:
    """One training sample with its score (positive = helpful; for self-influence: larger = more suspicious)."""

    row: int
    score: float
    label: int
    source_index: int
    image: np.ndarray | None


@dataclass(frozen=True)
class Explanation:
    """Why the model predicts what it does for one test input: its prediction and the top-k helpful (score > 0) and
    harmful (score < 0) training samples under ``method`` (fewer when fewer lie outside the tie band of
    :func:`helpful_and_harmful`). ``scores`` holds every training sample's score; ``note`` says what was
    approximated (e.g. Captum restricted to a layer); ``report`` is the solve's diagnostics (None without a solve)."""

    method: str
    label: int
    predicted: int
    probabilities: tuple[float, ...]
    helpful: tuple[InfluentialSample, ...]
    harmful: tuple[InfluentialSample, ...]
    scores: torch.Tensor
    seconds: float
    report: SolveReport | None = None
    selection: Selection | None = None
    note: str = ""
    from_cache: bool = False


class InfluenceBrowser:
    """Influence scores of every training sample of ``train`` for test inputs of ``model`` (see module docstring).

    ``weight_decay`` is the model's training λ (from its card): the objective is mean CE + λ/2·|θ|². The model is
    copied; nothing here modifies it. Construction is cheap: the per-sample gradients G are read from the cache or
    computed on first use (:meth:`ensure_gradients`); ``progress(done, total)`` reports that pass.

    Long work is interruptible: :meth:`explain`, :meth:`suspicious`, :meth:`prepare` and :meth:`ensure_gradients`
    take ``stop`` (see :mod:`gif_core.interrupt`: checked at every forward pass of the model, ours and Captum's)
    and ``progress(message, fraction)``. One browser may serve several threads (dashboard sessions on one model):
    its computations run one at a time, and a waiting caller can still be stopped.
    """

    def __init__(
        self,
        model: nn.Module,
        train: LabelledSet,
        weight_decay: float,
        config: BrowserConfig | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.config = config or BrowserConfig()
        self.train = train
        self.weight_decay = weight_decay
        self.hessian_rows = seeded_subset(torch.arange(len(train)), self.config.hessian_samples, self.config.seed)
        curvature_config = CurvatureConfig(weight_decay=weight_decay, damping=self.config.damping)
        self.curvature = Curvature(
            model, (train.inputs[self.hessian_rows], train.labels[self.hessian_rows]), curvature_config
        )
        self._model = copy.deepcopy(model).eval()
        self.num_classes = int(predict_proba(self._model, train.inputs[:1]).shape[1])
        self.gradient_key = gradient_key(self.curvature, train.inputs, train.labels)
        self.cache_dir = self.config.cache_dir or default_gradient_dir()
        self._gradient_progress = progress
        self._gradients: GradientStore | None = None
        self._lock = threading.RLock()
        self._captum: dict[str, CaptumEstimator] = {}
        self._self_influence: dict[str, SelfInfluence] = {}
        self._lowrank: LowRankInverse | None = None
        self._trak: TrakKernel | None = None
        self._timings: dict[str, float] = {}
        self._watch = ForwardWatch()
        self._watch.install((self._model, self.curvature.module))  # Captum's copies of the model inherit it

    # -- interruptible work ------------------------------------------------------------------------------------
    @contextmanager
    def _working(self, stop: StopCheck | None, progress: Progress | None) -> Iterator[None]:
        """This browser's lock (waiting while another thread computes, stoppable) with the stop check on every
        forward pass of the model and its copies (the curvature's, Captum's)."""
        while not self._lock.acquire(timeout=0.25):
            check(stop)
            if progress is not None:
                progress("Waiting for another computation on this model to finish", 0.0)
        try:
            with self._watch.active(stop):
                yield
        finally:
            self._lock.release()

    @contextmanager
    def _phase(self, progress: Progress | None, message: str, expected_passes: int | None) -> Iterator[None]:
        """Report ``message`` now and, with ``expected_passes``, the fraction of them done at every forward pass
        (capped below 1: an estimate, not a promise)."""
        if progress is None:
            yield
            return
        progress(message, 0.0)
        if not expected_passes:
            yield
            return
        with self._watch.active(on_pass=lambda passes: progress(message, min(0.99, passes / expected_passes))):
            yield

    @property
    def gradients(self) -> GradientStore:
        """G = [∇ℓ_z] of every training sample, from the cache or computed now (:meth:`ensure_gradients`)."""
        return self.ensure_gradients()

    def ensure_gradients(self, stop: StopCheck | None = None, progress: Progress | None = None) -> GradientStore:
        """G from the verified cache entry, or computed now (once per model and training set) and cached."""
        with self._working(stop, progress):
            if self._gradients is None:
                if progress is not None:
                    cached = self.gradients_cached()
                    progress(
                        "Reading and verifying the cached per-sample gradients"
                        if cached
                        else "Per-sample gradients of the training set (once per model, then cached)",
                        0.0,
                    )

                def report(done: int, total: int) -> None:
                    if self._gradient_progress is not None:
                        self._gradient_progress(done, total)
                    if progress is not None:
                        progress(f"Per-sample gradients of the training set: {done:,} of {total:,}", done / total)

                self._gradients = gradient_store(
                    self.curvature, self.train.inputs, self.train.labels, self.cache_dir, report
                )
            return self._gradients

    def gradients_cached(self) -> bool:
        """Whether G is loaded or a cache file for it exists (its contents are verified when it is opened)."""
        return self._gradients is not None or (self.cache_dir / f"{self.gradient_key}.safetensors").exists()

    @property
    def lowrank(self) -> LowRankInverse:
        """H's top ``lowrank_rank`` eigenpairs over the Hessian sample (Lanczos); see :meth:`ensure_lowrank`."""
        return self.ensure_lowrank()

    def _eigenpairs_path(self) -> tuple[Path, str, int]:
        rank = min(self.config.lowrank_rank, self.curvature.space.numel - 1)
        key = hashlib.sha256(
            f"{self.gradient_key}|{self.hessian_rows.tolist()}|{rank}|{self.config.damping!r}".encode()
        ).hexdigest()[:24]
        return self.cache_dir / f"eigenpairs-{key}.safetensors", key, rank

    def ensure_lowrank(self, stop: StopCheck | None = None, progress: Progress | None = None) -> LowRankInverse:
        """H's top ``lowrank_rank`` eigenpairs over the Hessian sample (Lanczos), found on first use and kept beside
        the gradient cache, keyed by the gradients' key (model, weight decay, training data), the Hessian rows, the
        rank and the damping. The entry holds its key and a checksum (:mod:`gif_core.cache_files`); it is served
        only if its key and checksum match and it holds float64 eigenvalues [rank] and eigenvectors [p, rank], all
        finite. Otherwise (NaN, rescaled or truncated values, another question's file) a
        :class:`~gif_core.cache_files.CacheWarning` names it and the eigenpairs are recomputed and the file
        replaced atomically."""
        with self._working(stop, progress):
            if self._lowrank is None:
                path, key, rank = self._eigenpairs_path()
                p = self.curvature.space.numel
                expect = {"eigenvalues": (torch.float64, (rank,)), "eigenvectors": (torch.float64, (p, rank))}

                def read(entry: Path) -> LowRankInverse:
                    tensors, _ = load_entry(entry, EIGENPAIRS_KIND, key, expect, require_finite=True)
                    return LowRankInverse(**tensors)

                self._lowrank = read_or_miss(path, read, "The eigenpair cache entry")
                if self._lowrank is None:
                    message = f"Top {rank} eigenpairs of H by Lanczos (once per model)"
                    with self._phase(progress, message, LANCZOS_PRODUCTS_PER_RANK * rank * self._passes_per_product):
                        self._lowrank = lowrank_inverse(self.curvature, rank)
                    tensors = {"eigenvalues": self._lowrank.eigenvalues, "eigenvectors": self._lowrank.eigenvectors}
                    save_entry(path, EIGENPAIRS_KIND, key, tensors)
            return self._lowrank

    def trak_config(self) -> TrakConfig:
        """The browser's TRAK settings with k at most half of min(n, p), where ΦᵀΦ keeps full rank."""
        limit = min(len(self.train), self.curvature.space.numel) // 2
        return dataclasses.replace(self.config.trak, dim=max(1, min(self.config.trak.dim, limit)))

    def ensure_trak(self, stop: StopCheck | None = None, progress: Progress | None = None) -> TrakKernel:
        """TRAK's projected kernel (:mod:`gif_core.projection`), built on first use from G with one pass over it and
        kept in memory: G's rows are gradients of the regularised loss, so their shared λθ is taken out first."""
        gradients = self.ensure_gradients(stop, progress)
        with self._working(stop, progress):
            if self._trak is None:
                config = self.trak_config()
                message = f"TRAK: projecting {len(self.train):,} gradients to {config.dim} dimensions (once per model)"
                with self._phase(progress, message, None):
                    complements = true_class_complement(self._model, self.train.inputs, self.train.labels)
                    shared = self.curvature.config.weight_decay * self.curvature.theta
                    self._trak = trak_kernel(gradients, complements, config, shared)
            return self._trak

    def prepare(self, method: str, *, stop: StopCheck | None = None, progress: Progress | None = None) -> float:
        """Do ``method``'s one-off set-up now (G for our methods, eigenpairs for low-rank IF, Captum's estimator);
        returns seconds."""
        _check_method(method)
        start = time.perf_counter()
        if method in OUR_METHODS:
            self.ensure_gradients(stop, progress)
            if method == "if-lowrank":
                self.ensure_lowrank(stop, progress)
            if method == "trak":
                self.ensure_trak(stop, progress)
        else:
            with self._working(stop, progress):
                self._captum_estimator(method, progress)
        return time.perf_counter() - start

    # -- costs -------------------------------------------------------------------------------------------------
    @property
    def _passes_per_product(self) -> int:
        """Forward passes of one Hessian-vector product: one per batch of the Hessian sample."""
        return math.ceil(self.curvature.n_samples / self.curvature.config.batch_size)

    def _timed(self, what: str) -> float | None:
        """Seconds of one Hessian-vector product (``"product"``) or one per-sample gradient block of the training
        set (``"block"``), timed once per browser on this machine (the product after one warm-up product); None
        while another computation holds the browser (a page must not wait, and a timing beside it would be
        inflated)."""
        if what in self._timings:
            return self._timings[what]
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if what == "product":
                vector = torch.randn(self.curvature.space.numel, generator=torch.Generator().manual_seed(0))
                self.curvature.hvp(vector.to(self.curvature.dtype))
                start = time.perf_counter()
                self.curvature.hvp(vector.to(self.curvature.dtype))
            else:
                size = self.curvature.config.batch_size
                start = time.perf_counter()
                next(self.curvature.per_sample_gradients(self.train.inputs[:size], self.train.labels[:size]))
            self._timings[what] = time.perf_counter() - start
        finally:
            self._lock.release()
        return self._timings[what]

    @staticmethod
    def solve_products(method: str, solver: SolverConfig) -> int:
        """The most Hessian-vector products one test point's solve runs: MINRES's ``maxiter`` plus the explicit
        residual and one spare (``if``); LSMR's two per iteration plus three (``gif``); none for the others."""
        return {"if": solver.maxiter + 2, "gif": 2 * solver.maxiter + 3}.get(method, 0)

    def estimate(
        self, method: str, point: tuple[torch.Tensor, int] | None = None, solver: SolverConfig | None = None
    ) -> CostEstimate:
        """What ``method`` will cost for one test point now (see :class:`CostEstimate`): the set-up still missing
        (G: n·p float32 on disk; eigenpairs: p·rank float64) and the per-point work (:meth:`solve_products` at the
        time of one product). With ``point`` = (inputs [1, ...], label), scores already in the disk cache for it
        cost nothing. Captum's work is not estimated, and its Arnoldi IF is refused beyond
        :data:`ARNOLDI_MAX_WORK`. Seconds are None while another computation holds the browser."""
        _check_method(method)
        solver = solver or self.config.solver
        if point is not None and method in CACHED_SCORE_METHODS and self._scores_path(method, *point, solver).exists():
            return CostEstimate(method, (), 0.0, 0, note="Its scores for this test point are in the cache.")
        n, p = len(self.train), self.curvature.space.numel
        if method in CAPTUM_METHODS:
            if method == "captum-arnoldi" and n * p > ARNOLDI_MAX_WORK:
                return CostEstimate(
                    method,
                    (),
                    None,
                    0,
                    False,
                    f"Captum Arnoldi IF cannot finish here: {n:,} training samples × {p:,} parameters is beyond "
                    f"{ARNOLDI_MAX_WORK:,} (its set-up took 34 s at 200 × 46,730, 176 s at 400 × 46,730, and did not "
                    "finish in 25 minutes at 3,500 × 46,730). Use low-rank IF: the same idea on our cached gradients.",
                )
            return CostEstimate(method, (), None, 0)
        phases: list[tuple[str, float | None]] = []
        disk = 0
        if not self.gradients_cached():
            blocks = math.ceil(n / self.curvature.config.batch_size)
            phases.append(("per-sample gradients of the training set", _times_or_none(blocks, self._timed("block"))))
            disk += n * p * DTYPE.itemsize
        if method == "if-lowrank" and self._lowrank is None and not self._eigenpairs_path()[0].exists():
            rank = self._eigenpairs_path()[2]
            products = LANCZOS_PRODUCTS_PER_RANK * rank
            phases.append(("eigenpairs by Lanczos", _times_or_none(products, self._timed("product"))))
            disk += p * rank * 8 + rank * 8
        passes = LAYERWISE_PASSES.get(method, 0)
        if passes:
            blocks = passes * math.ceil(self.curvature.n_samples / self.curvature.config.batch_size)
            what = f"{passes} pass(es) over the Hessian sample's per-sample gradients"
            phases.append((what, _times_or_none(blocks, self._timed("block"))))
        if method == "ekfac":
            phases.append(("EK-FAC's Kronecker factors and eigenvalue corrections over the Hessian sample", None))
        if method == "trak" and self._trak is None:
            phases.append((f"TRAK's projection of G to {self.trak_config().dim} dimensions (one pass over it)", None))
        products = self.solve_products(method, solver)
        if products:
            what = f"the solve: at most {products} Hessian-vector products"
            phases.append((what, _times_or_none(products, self._timed("product"))))
        seconds = [value for _, value in phases if value is not None]
        total = sum(seconds) if len(seconds) == len(phases) else None
        if method == "ekfac":
            note = "EK-FAC's factors are curvlinops' own passes and are not estimated."
        elif method == "trak" and self._trak is None:
            note = "TRAK's one pass over the cached gradients is not estimated (a read of G and a product per block)."
        else:
            note = (
                "" if total is not None else "Another computation on this model is running; its time is measured after."
            )
        return CostEstimate(method, tuple(phases), total, disk, note=note)

    # -- scores ------------------------------------------------------------------------------------------------
    def explain(
        self,
        inputs: torch.Tensor,
        label: int,
        method: str = "if",
        k: int = 8,
        *,
        stop: StopCheck | None = None,
        progress: Progress | None = None,
        solver: SolverConfig | None = None,
    ) -> Explanation:
        """Top-k helpful and harmful training samples for one test input (``inputs`` of shape [1, ...]); ``solver``
        replaces the browser's for this call. Scores of the :data:`CACHED_SCORE_METHODS` are kept on disk, keyed by
        the model, its training data, this browser's settings and the solver, the test input and its label, and
        served (verified) when asked again."""
        _check_method(method)
        if inputs.shape[0] != 1:
            raise ValueError(f"Explain one test input at a time (got a batch of {inputs.shape[0]}).")
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label must be a class index 0 … {self.num_classes - 1}, got {label}")
        start = time.perf_counter()
        labels = torch.tensor([label])
        solver = solver or self.config.solver
        selection = None
        if method == "gif":
            with self._working(stop, progress):
                selection = select_on_data(self._model, inputs, labels, self.config.selection)
        path = self._scores_path(method, inputs, label, solver)
        cached = self._cached_scores(path) if method in CACHED_SCORE_METHODS else None
        if cached is not None:
            scores, report, note = cached
        else:
            scores, report, note = self._scores(inputs, labels, method, selection, solver, stop, progress)
            if method in CACHED_SCORE_METHODS:
                self._save_scores(path, scores, report, note)
        probabilities = predict_proba(self._model, inputs)[0]
        helpful, harmful = helpful_and_harmful(scores, k)
        return Explanation(
            method=method,
            label=label,
            predicted=int(probabilities.argmax()),
            probabilities=tuple(float(p) for p in probabilities),
            helpful=self._records(helpful, scores),
            harmful=self._records(harmful, scores),
            scores=scores,
            seconds=time.perf_counter() - start,
            report=report,
            selection=selection,
            note=note,
            from_cache=cached is not None,
        )

    def _scores(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        method: str,
        selection: Selection | None,
        solver: SolverConfig,
        stop: StopCheck | None,
        progress: Progress | None,
    ) -> tuple[torch.Tensor, SolveReport | None, str]:
        """Every training sample's score for one test point, its solve report and a note, computed now."""
        report, note = None, ""
        if method in OUR_METHODS:
            gradients = self.ensure_gradients(stop, progress)
            lowrank = self.ensure_lowrank(stop, progress) if method == "if-lowrank" else None
            trak = self.ensure_trak(stop, progress) if method == "trak" else None
            with self._working(stop, progress):
                expected = self.solve_products(method, solver) * self._passes_per_product + 1
                with self._phase(progress, f"{METHOD_LABELS[method]}: scoring {len(self.train):,} samples", expected):
                    result = influence_scores(
                        self.curvature, gradients, inputs, labels, method, selection, solver, lowrank, trak
                    )
            scores = result.scores[0]
            report = result.reports[0] if result.reports else None
        else:
            rows, note = self._captum_rows(inputs, labels, method, stop, progress)
            scores = rows[0]
        if not torch.isfinite(scores).all():
            raise FloatingPointError(f"{METHOD_LABELS[method]} produced NaN or inf scores; add damping and retry.")
        return scores, report, note

    def _scores_path(self, method: str, inputs: torch.Tensor, label: int, solver: SolverConfig) -> Path:
        """Where the scores of this question live: keyed by the gradients' key (model, weight decay, training
        data), the method, every browser setting with this solver, the test input's bytes and its label."""
        settings = repr(dataclasses.replace(self.config, cache_dir=None, solver=solver))
        point = tensors_sha256({"inputs": inputs.contiguous()})
        key = hashlib.sha256(f"{self.gradient_key}|{method}|{settings}|{point}|{label}".encode()).hexdigest()[:24]
        return self.cache_dir / f"scores-{key}.safetensors"

    def _cached_scores(self, path: Path) -> tuple[torch.Tensor, SolveReport | None, str] | None:
        """The verified cache entry's (scores, report, note) at ``path``, or None (a miss, or an entry that fails
        its checks: then a :class:`~gif_core.cache_files.CacheWarning` and a recompute)."""
        key = path.stem.removeprefix("scores-")

        def read(entry: Path) -> tuple[torch.Tensor, SolveReport | None, str]:
            expect = {"scores": (torch.float32, (len(self.train),))}
            tensors, metadata = load_entry(entry, SCORES_KIND, key, expect, require_finite=True)
            try:
                fields = json.loads(metadata.get("report", "null"))
                report = (
                    SolveReport(**{**fields, "residual_history": tuple(fields["residual_history"])}) if fields else None
                )
            except (TypeError, KeyError, json.JSONDecodeError) as error:
                raise InvalidEntry(f"its solve report is unreadable ({error})") from error
            return tensors["scores"], report, metadata.get("note", "")

        return read_or_miss(path, read, "The influence-score cache entry")

    def _save_scores(self, path: Path, scores: torch.Tensor, report: SolveReport | None, note: str) -> None:
        fields = {"report": json.dumps(report.to_dict() if report else None), "note": note}
        save_entry(path, SCORES_KIND, path.stem.removeprefix("scores-"), {"scores": scores.float()}, **fields)

    def suspicious(
        self,
        k: int = 16,
        method: str = "if-lowrank",
        *,
        stop: StopCheck | None = None,
        progress: Progress | None = None,
    ) -> tuple[InfluentialSample, ...]:
        """The k most self-influential training samples (the first to inspect for mislabels), computed once."""
        if method not in self._self_influence:
            gradients = self.ensure_gradients(stop, progress)
            lowrank = self.ensure_lowrank(stop, progress) if method == "if-lowrank" else None
            with self._working(stop, progress), self._phase(progress, "Self-influence of every sample", None):
                self._self_influence[method] = self_influence(gradients, method, self.curvature, lowrank=lowrank)
        result = self._self_influence[method]
        return self._records(result.ranking()[:k], result.values)

    def explain_set(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        method: str = "if",
        k: int = 8,
        *,
        stop: StopCheck | None = None,
        progress: Progress | None = None,
        solver: SolverConfig | None = None,
    ) -> SetExplanation:
        """Top-k helpful and harmful training samples for a set of B test points (``inputs`` [B, ...], ``labels``
        [B]): the influence on their MEAN test loss. Influence is linear in the test gradient, so

            I(z, set) = (1/B) Σ_i I(z, test_i) = ∇ℓ̄ᵀ H⁻¹ ∇ℓ_z / n,   ∇ℓ̄ = (1/B) Σ_i ∇ℓ_test_i,

        positive = removing z would raise the set's mean loss (helpful). Our methods need one solve on ∇ℓ̄ instead
        of B (:meth:`_mean_gradient_scores`); GIF-restricted selects its parameters on the whole set (so it is not
        the mean of per-point GIF scores, whose selections differ); Captum's estimators average their per-point
        rows. At most :data:`SET_LIMIT` points; ``stop``, ``progress`` and ``solver`` as in :meth:`explain`."""
        _check_method(method)
        if not 1 <= inputs.shape[0] <= SET_LIMIT or labels.shape != (inputs.shape[0],):
            raise ValueError(
                f"Explain a set of 1 … {SET_LIMIT} test inputs with one label each "
                f"(got {inputs.shape[0]} inputs, labels of shape {tuple(labels.shape)})."
            )
        labels = labels.long()
        if not bool(((labels >= 0) & (labels < self.num_classes)).all()):
            raise ValueError(f"labels must be class indices 0 … {self.num_classes - 1}, got {labels.tolist()}")
        start = time.perf_counter()
        report, selection, note = None, None, ""
        if method in OUR_METHODS:
            solver = solver or self.config.solver
            scores, report, selection = self._mean_gradient_scores(inputs, labels, method, solver, stop, progress)
        else:
            rows, note = self._captum_rows(inputs, labels, method, stop, progress)
            scores = rows.mean(0)
        if not torch.isfinite(scores).all():
            raise FloatingPointError(f"{METHOD_LABELS[method]} produced NaN or inf scores; add damping and retry.")
        predicted = predict_proba(self._model, inputs).argmax(1)
        helpful, harmful = helpful_and_harmful(scores, k)
        return SetExplanation(
            method=method,
            labels=tuple(int(y) for y in labels),
            accuracy=100.0 * float((predicted == labels).float().mean()),
            helpful=self._records(helpful, scores),
            harmful=self._records(harmful, scores),
            scores=scores,
            seconds=time.perf_counter() - start,
            report=report,
            selection=selection,
            note=note,
        )

    def _mean_gradient_scores(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        method: str,
        solver: SolverConfig,
        stop: StopCheck | None,
        progress: Progress | None,
    ) -> tuple[torch.Tensor, SolveReport | None, Selection | None]:
        """Scores G s / n for the set's mean test gradient ∇ℓ̄ with the direction s of
        :func:`~gif_core.scores.influence_scores`: s = H⁻¹∇ℓ̄ (``if``, MINRES), V Λ⁻¹ Vᵀ∇ℓ̄ (``if-lowrank``),
        A(AᵀA)⁻¹(∇ℓ̄)_T (``gif``, LSMR, T selected on the set), M⁻¹∇ℓ̄ (DataInf, HyperINF, EK-FAC), or s = ∇ℓ̄
        without the 1/n (``tracin``); TRAK's projected features times K⁻¹Pᵀ∇ℓ̄ (``trak``)."""
        gradients = self.ensure_gradients(stop, progress)
        lowrank = self.ensure_lowrank(stop, progress) if method == "if-lowrank" else None
        trak = self.ensure_trak(stop, progress) if method == "trak" else None
        selection = None
        if method == "gif":
            with self._working(stop, progress):
                selection = select_on_data(self._model, inputs, labels, self.config.selection)
            if selection.n_selected == 0:
                raise ValueError("GIF-restricted scores need a non-empty parameter selection for this set.")
        with self._working(stop, progress), self._phase(progress, f"{METHOD_LABELS[method]}: one solve", None):
            gradient = self.curvature.gradient(inputs, labels, regulariser=False)
            scores, report = influence_of_gradient(
                self.curvature, gradients, gradient, method, selection, solver, lowrank, trak
            )
        return scores, report, selection

    def _captum_rows(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        method: str,
        stop: StopCheck | None,
        progress: Progress | None,
    ) -> tuple[torch.Tensor, str]:
        """Captum's scores [B, n_train] for B test points, and its note on any restriction."""
        with self._working(stop, progress):
            estimator, note = self._captum_estimator(method, progress)
            param = next(self._model.parameters())
            with self._phase(progress, f"{METHOD_LABELS[method]}: scoring {len(self.train):,} samples", None):
                return estimator.influence((inputs.to(param.dtype), labels)).detach().cpu(), note

    def _records(self, rows: torch.Tensor, scores: torch.Tensor) -> tuple[InfluentialSample, ...]:
        images = self.train.images
        return tuple(
            InfluentialSample(
                row=int(r),
                score=float(scores[r]),
                label=int(self.train.labels[r]),
                source_index=int(self.train.source_index[r]),
                image=images[r].numpy() if images is not None else None,
            )
            for r in rows
        )

    def _captum_estimator(self, method: str, progress: Progress | None = None) -> tuple[CaptumEstimator, str]:
        """Captum's estimator for ``method`` (built once), on the model's own dtype, with a note on any restriction."""
        name = method.removeprefix("captum-")
        layers, note = None, ""
        if name == "naive" and self.curvature.space.numel > NAIVE_FULL_LIMIT:
            last = [n for n, m in self._model.named_modules() if isinstance(m, nn.Linear)][-1]
            layers = (last,)
            note = f"Captum naive IF restricted to layer {last!r} (the full Hessian would not fit)."
        if name == "arnoldi":
            note = f"Captum Arnoldi IF with {self.config.captum_arnoldi_dim} Arnoldi iterations."
        if method not in self._captum:
            samples = min(len(self.train), self.config.captum_hessian_samples)
            config = CaptumConfig(
                weight_decay=self.weight_decay,
                hessian_reg=(self.weight_decay + self.config.damping) * samples or None,
                arnoldi_dim=self.config.captum_arnoldi_dim,
                seed=self.config.seed,
                layers=layers,
                hessian_samples=samples,
            )
            param = next(self._model.parameters())
            with self._phase(progress, f"{METHOD_LABELS[method]}: Captum's set-up (once per model)", None):
                self._captum[method] = captum_estimator(
                    name, self._model, self.train.inputs.to(param.dtype), self.train.labels, config
                )
        return self._captum[method], note


SET_LIMIT = 64
"""The most test points :meth:`InfluenceBrowser.explain_set` takes at once (a whole class is sampled down to it)."""

SCORE_UNITS = {
    **dict.fromkeys(
        ("if", "if-lowrank", "gif"),
        "the predicted change of the test cross-entropy loss, in nats, if the training sample were removed",
    ),
    **dict.fromkeys(
        ("datainf", "hyperinf", "ekfac"),
        "IF's units (nats of test loss if the sample were removed) with H replaced by the method's approximation, "
        "damped by its own rule, so its values are of IF's kind but not equal to them; compare rankings first",
    ),
    **dict.fromkeys(
        ("trak",),
        "∇ℓ_testᵀ P K⁻¹ Pᵀ ∇ℓ_z with K the projected Gauss–Newton matrix of the margins summed over the training set "
        "(TRAK's score times the test point's 1 − p_y); no 1/n, so compare its ranking with IF's, not its values",
    ),
    **dict.fromkeys(
        ("tracin", "captum-tracincp"),
        "∇ℓ_testᵀ∇ℓ_z: the first-order drop of the test loss (nats) for one gradient step of size 1 on the sample; "
        "no Hessian, no 1/n, so compare its ranking with IF's, not its values",
    ),
    **dict.fromkeys(
        ("captum-naive", "captum-arnoldi"),
        "Captum's scale (its Hessian is of the loss summed over its Hessian sample, and its gradients leave out the "
        "weight decay), so compare its ranking with IF's, not its values",
    ),
}
"""What one unit of each method's score means (positive = helpful)."""


@dataclass(frozen=True)
class SetExplanation:
    """The training samples that most help and harm a set of test points' mean loss under ``method``
    (:meth:`InfluenceBrowser.explain_set`): ``labels`` of the B points, ``accuracy`` (%) of the model on them,
    ``scores`` = every training sample's influence on the set's mean test loss (positive = helpful; the mean of
    per-point scores, except GIF-restricted, whose selection is made on the whole set), the solve's ``report``
    (None without a solve), GIF's ``selection`` and a ``note`` on what was approximated."""

    method: str
    labels: tuple[int, ...]
    accuracy: float
    helpful: tuple[InfluentialSample, ...]
    harmful: tuple[InfluentialSample, ...]
    scores: torch.Tensor
    seconds: float
    report: SolveReport | None = None
    selection: Selection | None = None
    note: str = ""


@dataclass(frozen=True)
class RankingRow:
    """One training sample in a full ranking: ``rank`` 1 = most helpful, its ``row`` in the training set and index
    in the source data, its class name, its ``score``, the score relative to the largest |score| (in [−1, 1]) and
    whether it is ``helpful`` (> tie band), ``harmful`` (< −tie band) or a ``tie`` (:func:`helpful_and_harmful`)."""

    rank: int
    row: int
    source_index: int
    label: str
    score: float
    relative_score: float
    kind: str


def relative_scores(scores: torch.Tensor) -> torch.Tensor:
    """score / max|score| in [−1, 1] (all zeros when every score is 0): the scale-free reading of a score."""
    largest = float(scores.abs().max()) if scores.numel() else 0.0
    return scores / largest if largest > 0 else torch.zeros_like(scores)


def score_kinds(scores: torch.Tensor) -> list[str]:
    """``helpful`` / ``harmful`` / ``tie`` for every score, by the tie band of :func:`helpful_and_harmful`."""
    helpful, harmful = helpful_and_harmful(scores, max(1, len(scores)))
    kinds = ["tie"] * len(scores)
    for rows, kind in ((helpful, "helpful"), (harmful, "harmful")):
        for r in rows.tolist():
            kinds[r] = kind
    return kinds


def ranking_table(scores: torch.Tensor, train: LabelledSet, classes: Sequence[str]) -> tuple[RankingRow, ...]:
    """Every training sample of ``train`` ranked by ``scores`` (one per row of ``train``), most helpful first;
    equal scores keep their row order."""
    if scores.shape != (len(train),):
        raise ValueError(f"Expected one score per training sample ({len(train)}), got shape {tuple(scores.shape)}")
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    values, relative, kinds = scores.tolist(), relative_scores(scores).tolist(), score_kinds(scores)
    sources, labels = train.source_index.tolist(), train.labels.tolist()
    return tuple(
        RankingRow(rank, r, sources[r], classes[labels[r]], values[r], relative[r], kinds[r])
        for rank, r in enumerate(order, start=1)
    )
