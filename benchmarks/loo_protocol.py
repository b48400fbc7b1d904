"""What the leave-one-out benchmark (:mod:`benchmarks.loo`) compares, and against what truth.

The settings (architecture × data set × weight decay λ) and the choices they share; how θ* is trained (seeded
initialisation, optional Adam epochs, then full-batch L-BFGS on L(θ) = mean CE + (λ/2)·|θ|²); the ground truth,
leave-one-out retraining warm-started from θ*,

    actual(z, test) = ℓ_test(θ_{−z}) − ℓ_test(θ_control);

and the measures of agreement between a method's predicted effects and that truth (Spearman, Pearson, sign).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch import nn

from gif_core.data import DataBundle, LabelledSet, load_data
from gif_core.models import build_model
from gif_core.objective import data_loss, training_loss

NAMES = {"logreg": "logreg", "mlp": "MLP", "cnn": "CNN", "mnist-bundled": "MNIST", "iris": "Iris"}
HISTORY = 100  # L-BFGS memory
WEIGHT_DECAY = 1e-3  # λ of the regularised settings
GOAL_SPEARMAN = 0.9  # IF on L2-regularised logistic regression (a published library reaches about 0.88 on MNIST)


@dataclass(frozen=True)
class Setting:
    """One group of table rows: ``arch`` trained on a seeded subset of ``n_train`` samples (None = the whole split).

    ``dtype`` is the precision of training, retraining and every estimator. ``retrain_iterations`` is the L-BFGS
    budget of the warm-started leave-one-out schedule (see :class:`Protocol` for when L-BFGS stops earlier).
    ``gif_ratio`` is the GIF selection budget (per layer, whole neurons, gradient selector on the test point).
    """

    arch: str
    dataset: str
    weight_decay: float = 0.0
    n_train: int | None = None
    dtype: torch.dtype = torch.float64
    adam_epochs: int = 0
    train_iterations: int = 1000
    retrain_iterations: int = 300
    top_k: int = 20
    gif_ratio: float = 0.05
    solve_maxiter: int = 2000
    captum: tuple[str, ...] = ("tracincp", "arnoldi")
    arnoldi_dim: int = 200

    @property
    def label(self) -> str:
        return f"{NAMES[self.arch]} / {NAMES[self.dataset]}"


@dataclass(frozen=True)
class Protocol:
    """Shared choices. ``damping`` δ is added to H (and n·δ to Captum's summed-loss Hessian) only where λ = 0, since
    the Hessian of a softmax model is singular there. L-BFGS stops at ‖∇L‖_∞ ≤ the floor of the precision
    (``floor64`` / ``floor32``) or at its iteration budget, except that training without weight decay stops at
    ``unregularised_tolerance``: the training sets here are linearly separable (the MNIST subsets entirely, Iris's
    setosa from the rest), so L has no minimiser, and driving ∇L to the floor only scales θ up until the losses
    saturate (those of correctly classified test points underflow). The
    leave-one-out schedule keeps the floor even then: from a θ* at that looser tolerance, removing one sample moves
    ∇L by less than it, and a schedule stopping there would not move at all. Test points: the first ``n_test`` of a
    seeded permutation of the test split."""

    n_test: int = 3
    damping: float = 1e-3
    seed: int = 0
    adam_lr: float = 1e-3
    adam_batch: int = 64
    rtol: float = 1e-10
    floor64: float = 1e-10
    floor32: float = 1e-6
    unregularised_tolerance: float = 1e-5

    def tolerance(self, setting: Setting, training: bool) -> float:
        """‖∇L‖_∞ at which L-BFGS stops, for training θ* (``training``) or for the leave-one-out schedule."""
        floor = self.floor64 if setting.dtype == torch.float64 else self.floor32
        return max(floor, self.unregularised_tolerance) if training and setting.weight_decay == 0 else floor


def _with_and_without_decay(*templates: Setting) -> tuple[Setting, ...]:
    """Every template with λ = WEIGHT_DECAY, then every template with λ = 0."""
    return tuple(dataclasses.replace(t, weight_decay=wd) for wd in (WEIGHT_DECAY, 0.0) for t in templates)


WITH_NAIVE = ("tracincp", "naive", "arnoldi")
FULL = _with_and_without_decay(
    Setting("logreg", "mnist-bundled", n_train=1000, retrain_iterations=150, gif_ratio=0.2, solve_maxiter=600),
    Setting("logreg", "iris", gif_ratio=0.2, captum=WITH_NAIVE),
    Setting("mlp", "mnist-bundled", n_train=300, adam_epochs=30, retrain_iterations=100, solve_maxiter=600),
    Setting(
        "cnn",
        "mnist-bundled",
        n_train=200,
        dtype=torch.float32,
        adam_epochs=30,
        train_iterations=300,
        retrain_iterations=40,
        solve_maxiter=250,
        arnoldi_dim=100,
    ),
)
LOGREG_MNIST_ALL = (
    Setting(
        "logreg", "mnist-bundled", weight_decay=WEIGHT_DECAY, retrain_iterations=150, gif_ratio=0.2, solve_maxiter=600
    ),
)
"""Logistic regression on all 3,500 bundled MNIST training samples (the full run uses a 1,000-sample subset)."""
QUICK = (
    *_with_and_without_decay(Setting("logreg", "iris", top_k=8, gif_ratio=0.2, captum=WITH_NAIVE)),
    Setting(
        "logreg", "mnist-bundled", weight_decay=WEIGHT_DECAY, n_train=100, train_iterations=200, retrain_iterations=50,
        top_k=5, gif_ratio=0.2, solve_maxiter=40, arnoldi_dim=20,
    ),
    Setting(
        "mlp", "mnist-bundled", weight_decay=WEIGHT_DECAY, n_train=64, adam_epochs=3, train_iterations=50,
        retrain_iterations=20, top_k=4, solve_maxiter=10, arnoldi_dim=10,
    ),
    Setting(
        "cnn", "mnist-bundled", weight_decay=WEIGHT_DECAY, n_train=32, dtype=torch.float32, adam_epochs=2,
        train_iterations=20, retrain_iterations=5, top_k=3, solve_maxiter=5, arnoldi_dim=5,
    ),
)  # fmt: skip
"""The smoke run: Iris with and without weight decay (the unregularised path: δ added, the looser training stop),
the MNIST settings with it only."""


@cache
def _bundle(name: str) -> DataBundle:
    return load_data(name)


def setting_data(setting: Setting, protocol: Protocol) -> tuple[LabelledSet, LabelledSet, DataBundle]:
    """The seeded training subset (the first ``n_train`` of a seeded permutation, so smaller subsets nest inside
    larger ones) and the test points (the first ``n_test`` of another seeded permutation of the test split)."""
    bundle = _bundle(setting.dataset)
    train = bundle.train
    if setting.n_train is not None and setting.n_train < len(train):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(protocol.seed))
        train = train.subset(order[: setting.n_train].sort().values)
    order = torch.randperm(len(bundle.test), generator=torch.Generator().manual_seed(protocol.seed + 1))
    return train, bundle.test.subset(order[: protocol.n_test]), bundle


def objective(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, weight_decay: float) -> torch.Tensor:
    """L(θ) of :mod:`gif_core.objective` over all trainable parameters (what :class:`Curvature` differentiates)."""
    return training_loss(model(inputs), labels, model.parameters(), weight_decay)


def run_lbfgs(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, weight_decay: float, iterations: int, tolerance: float
) -> None:
    """Deterministic full-batch L-BFGS on L (in place): at most ``iterations`` iterations, stopping early once
    ‖∇L‖_∞ ≤ ``tolerance``."""
    optimizer = torch.optim.LBFGS(
        model.parameters(),
        lr=1,
        max_iter=iterations,
        history_size=HISTORY,
        tolerance_grad=tolerance,
        tolerance_change=0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective(model, inputs, labels, weight_decay)
        loss.backward()
        return loss

    optimizer.step(closure)


def gradient_norm(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, weight_decay: float) -> float:
    """‖∇L(θ)‖₂ over the training set."""
    model.zero_grad()
    objective(model, inputs, labels, weight_decay).backward()
    norm = math.sqrt(sum(float(p.grad.square().sum()) for p in model.parameters()))
    model.zero_grad()
    return norm


def train(
    setting: Setting, protocol: Protocol, inputs: torch.Tensor, labels: torch.Tensor, bundle: DataBundle
) -> nn.Module:
    """θ*: a seeded initialisation, ``adam_epochs`` of mini-batch Adam (coupled L2 λ, the same objective), then
    full-batch L-BFGS."""
    torch.manual_seed(protocol.seed)
    model = build_model(setting.arch, bundle.input_shape, bundle.num_classes).to(setting.dtype)
    if setting.adam_epochs:
        optimizer = torch.optim.Adam(model.parameters(), lr=protocol.adam_lr, weight_decay=setting.weight_decay)
        generator = torch.Generator().manual_seed(protocol.seed)
        for _ in range(setting.adam_epochs):
            for rows in torch.randperm(len(labels), generator=generator).split(protocol.adam_batch):
                optimizer.zero_grad()
                data_loss(model(inputs[rows]), labels[rows]).backward()  # λθ: the optimiser's weight decay
                optimizer.step()
    tolerance = protocol.tolerance(setting, training=True)
    run_lbfgs(model, inputs, labels, setting.weight_decay, setting.train_iterations, tolerance)
    return model.eval()


@dataclass(frozen=True)
class Estimate:
    """Predicted removal effects [n_test, n_train] (positive = helpful) of one method, its cost and diagnostics."""

    method: str
    scores: np.ndarray
    seconds: float
    notes: dict


def leave_one_out(
    setting: Setting,
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    rows: list[int],
    tolerance: float,
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """actual[z] = ℓ_test(θ_{−z}) − ℓ_test(θ_control) for every test point, both warm-started from θ* with the same
    L-BFGS schedule; also the control's own drift ℓ_test(θ_control) − ℓ_test(θ*)."""

    def retrained(keep: torch.Tensor) -> np.ndarray:
        copy_ = copy.deepcopy(model)
        run_lbfgs(copy_, inputs[keep], labels[keep], setting.weight_decay, setting.retrain_iterations, tolerance)
        return point_losses(copy_, test_x, test_y)

    everything = torch.ones(len(labels), dtype=torch.bool)
    control = retrained(everything)
    actual = {}
    for z in rows:
        keep = everything.clone()
        keep[z] = False
        actual[z] = retrained(keep) - control
    return actual, control - point_losses(model, test_x, test_y)


def point_losses(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per-point cross-entropy in float64, accurate when it is tiny: with margins m_j = l_j − l_y (j ≠ y),
    CE = log1p(Σ_j e^{m_j}) where every m_j ≤ 0 (F.cross_entropy rounds 1 + Σ e^{m_j} to 1 and returns exactly 0 once
    the margins pass ~37, which a fit without weight decay reaches), and logsumexp(0, m) otherwise."""
    with torch.no_grad():
        logits = model(inputs).double()
    margins = logits - logits.gather(1, labels[:, None])
    others = margins.scatter(1, labels[:, None], -math.inf)
    small = torch.log1p(others.clamp_max(0).exp().sum(1))
    losses = torch.where(others.amax(1) <= 0, small, torch.logsumexp(margins, 1))
    return losses.numpy()


def agreement(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Spearman and Pearson correlation, and the share of candidates whose predicted and actual effects agree in sign."""
    return {
        "spearman": float(spearmanr(predicted, actual).statistic),
        "pearson": float(pearsonr(predicted, actual).statistic),
        "sign": float(np.mean(np.sign(predicted) == np.sign(actual))),
    }
