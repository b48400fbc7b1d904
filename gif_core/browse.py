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
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gif_core.cache_files import load_entry, read_or_miss, save_entry
from gif_core.captum_baselines import CaptumConfig, captum_estimator
from gif_core.curvature import Curvature, CurvatureConfig
from gif_core.data import LabelledSet, seeded_subset
from gif_core.gradient_store import GradientStore, gradient_store
from gif_core.scores import LowRankInverse, SelfInfluence, influence_scores, lowrank_inverse, self_influence
from gif_core.selection import Selection, SelectionConfig, select_on_data
from gif_core.solvers import SolverConfig, SolveReport

OUR_METHODS = ("if", "if-lowrank", "gif", "tracin")
CAPTUM_METHODS = ("captum-tracincp", "captum-naive", "captum-arnoldi")
BROWSE_METHODS = (*OUR_METHODS, *CAPTUM_METHODS)
METHOD_LABELS = {
    "if": "Influence function (IF, exact solve)",
    "if-lowrank": "Influence function (IF, low-rank H)",
    "gif": "GIF-restricted",
    "tracin": "TracIn (final checkpoint)",
    "captum-tracincp": "Captum TracInCP",
    "captum-naive": "Captum naive IF",
    "captum-arnoldi": "Captum Arnoldi IF",
}
EIGENPAIRS_KIND = "eigenpairs/1"
"""The ``gif_cache`` kind of an eigenpair entry (see :mod:`gif_core.cache_files`)."""
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
    captum_hessian_samples: int = 500
    captum_arnoldi_dim: int = 100
    cache_dir: Path | None = None


TIE_TOLERANCE = 1e-6
"""A score within ``TIE_TOLERANCE · max|score|`` of zero is a tie: neither helpful nor harmful (float32 products
leave scores of ~1e-14 where the exact score is 0, e.g. TracIn on a sample the model fits perfectly)."""


def helpful_and_harmful(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of the k largest scores above the tie band (helpful, most helpful first) and of the k smallest below
    it (harmful, most harmful first); either may hold fewer than k rows, and a score in the band is in neither.
    Equal scores keep their row order (a stable sort)."""
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    tie = TIE_TOLERANCE * float(scores.abs().max()) if scores.numel() else 0.0
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


class InfluenceBrowser:
    """Influence scores of every training sample of ``train`` for test inputs of ``model`` (see module docstring).

    ``weight_decay`` is the model's training λ (from its card): the objective is mean CE + λ/2·|θ|². The model is
    copied; nothing here modifies it. ``progress(done, total)`` reports the per-sample gradient pass (first use
    of a model only; later browsers find G in the cache).
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
        self.num_classes = int(self.predict(train.inputs[:1]).shape[1])
        self.gradients: GradientStore = gradient_store(
            self.curvature, train.inputs, train.labels, self.config.cache_dir, progress
        )
        self._captum: dict[str, object] = {}
        self._self_influence: dict[str, SelfInfluence] = {}
        self._lowrank: LowRankInverse | None = None

    @property
    def lowrank(self) -> LowRankInverse:
        """H's top ``lowrank_rank`` eigenpairs over the Hessian sample (Lanczos), found on first use and kept beside
        the gradient cache, keyed by the gradients' key (model, weight decay, training data), the Hessian rows, the
        rank and the damping. The entry holds its key and a checksum (:mod:`gif_core.cache_files`); it is served
        only if its key and checksum match and it holds float64 eigenvalues [rank] and eigenvectors [p, rank], all
        finite. Otherwise (NaN, rescaled or truncated values, another question's file) a
        :class:`~gif_core.cache_files.CacheWarning` names it and the eigenpairs are recomputed and the file
        replaced atomically."""
        if self._lowrank is None:
            rank = min(self.config.lowrank_rank, self.curvature.space.numel - 1)
            key = hashlib.sha256(
                f"{self.gradients.key}|{self.hessian_rows.tolist()}|{rank}|{self.config.damping!r}".encode()
            ).hexdigest()[:24]
            path = self.gradients.path.parent / f"eigenpairs-{key}.safetensors"
            p = self.curvature.space.numel
            expect = {"eigenvalues": (torch.float64, (rank,)), "eigenvectors": (torch.float64, (p, rank))}

            def read(entry: Path) -> LowRankInverse:
                tensors, _ = load_entry(entry, EIGENPAIRS_KIND, key, expect, require_finite=True)
                return LowRankInverse(**tensors)

            self._lowrank = read_or_miss(path, read, "The eigenpair cache entry")
            if self._lowrank is None:
                self._lowrank = lowrank_inverse(self.curvature, rank)
                tensors = {"eigenvalues": self._lowrank.eigenvalues, "eigenvectors": self._lowrank.eigenvectors}
                save_entry(path, EIGENPAIRS_KIND, key, tensors)
        return self._lowrank

    def prepare(self, method: str) -> float:
        """Do ``method``'s one-off set-up now (eigenpairs for low-rank IF, Captum's estimator); returns seconds."""
        start = time.perf_counter()
        if method == "if-lowrank":
            _ = self.lowrank
        elif method in CAPTUM_METHODS:
            self._captum_estimator(method)
        elif method not in OUR_METHODS:
            raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(BROWSE_METHODS)}")
        return time.perf_counter() - start

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B, classes] of the (private copy of the) model."""
        param = next(self._model.parameters())
        with torch.no_grad():
            return torch.softmax(self._model(inputs.to(param.device, param.dtype)), dim=1).cpu()

    def explain(self, inputs: torch.Tensor, label: int, method: str = "if", k: int = 8) -> Explanation:
        """Top-k helpful and harmful training samples for one test input (``inputs`` of shape [1, ...])."""
        if method not in BROWSE_METHODS:
            raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(BROWSE_METHODS)}")
        if inputs.shape[0] != 1:
            raise ValueError(f"Explain one test input at a time (got a batch of {inputs.shape[0]}).")
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label must be a class index 0 … {self.num_classes - 1}, got {label}")
        start = time.perf_counter()
        labels = torch.tensor([label])
        report, selection, note = None, None, ""
        if method in OUR_METHODS:
            if method == "gif":
                selection = select_on_data(self._model, inputs, labels, self.config.selection)
            lowrank = self.lowrank if method == "if-lowrank" else None
            result = influence_scores(
                self.curvature, self.gradients, inputs, labels, method, selection, self.config.solver, lowrank
            )
            scores = result.scores[0]
            report = result.reports[0] if result.reports else None
        else:
            estimator, note = self._captum_estimator(method)
            param = next(self._model.parameters())
            scores = estimator.influence((inputs.to(param.dtype), labels))[0].detach().cpu()
        if not torch.isfinite(scores).all():
            raise FloatingPointError(f"{METHOD_LABELS[method]} produced NaN or inf scores; add damping and retry.")
        probabilities = self.predict(inputs)[0]
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
        )

    def suspicious(self, k: int = 16, method: str = "if-lowrank") -> tuple[InfluentialSample, ...]:
        """The k most self-influential training samples (the first to inspect for mislabels), computed once."""
        if method not in self._self_influence:
            lowrank = self.lowrank if method == "if-lowrank" else None
            self._self_influence[method] = self_influence(self.gradients, method, self.curvature, lowrank=lowrank)
        result = self._self_influence[method]
        return self._records(result.ranking()[:k], result.values)

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

    def _captum_estimator(self, method: str) -> tuple[object, str]:
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
            self._captum[method] = captum_estimator(
                name, self._model, self.train.inputs.to(param.dtype), self.train.labels, config
            )
        return self._captum[method], note
