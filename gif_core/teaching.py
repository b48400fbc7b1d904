"""Small, exact examples behind the dashboard's Learn page: numbers only, no plotting.

* :func:`toy_example` — the GIF paper's figure 2 idea on a classifier with exactly two parameters θ = (θ₁, θ₂):
  logits (0, θ·x) for two classes, objective L(θ) = mean_i CE_i + (λ/2)|θ|², trained to its exact optimum θ*.
  Part of one cluster of training samples is removed; the library's estimators (:func:`gif_core.influence.estimate`
  on :func:`gif_core.problem.prepare`) give θ* + Δ for IF, PIF, FIF, GIF and SIF, and L-BFGS (polished by Newton
  steps) on the retained data gives the true retrained optimum. GIF, FIF and PIF may move one of the two parameters. A grid of the retained
  objective L_{S∖U} around those points is returned for contour plots.
* :func:`hessian_spectra` — the paper's figure 3 idea: a small tanh MLP on Iris, trained once per weight decay λ
  with a short Adam recipe (so not at an exact minimum), and the full eigenvalue spectrum of
  H = ∇²(mean CE + (λ/2)|θ|²) at the trained θ, with the share of negative eigenvalues. At a FIXED θ, adding λ
  shifts every eigenvalue by +λ; retraining with λ also moves θ.
* :data:`EXPLANATIONS` — plain-language descriptions of every estimator of :data:`gif_core.influence.METHODS`,
  with formula and sign, in the notation of :mod:`gif_core.influence` and :mod:`gif_core.problem` (g = "the gradient the edit removes";
  for a removal of U, g = (m/(n−m))·mean_{i∈U} ∇ℓ_i(θ) = −∇L_{S∖U}(θ) at a stationary θ; the edit is θ + Δ).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from gif_core.curvature import FORWARD_MODE, CurvatureConfig
from gif_core.data import LabelledSet, load_data, seeded_subset
from gif_core.influence import METHODS, EstimatorConfig, estimate
from gif_core.objective import training_loss
from gif_core.params import ParamSpace, flat_parameters
from gif_core.problem import EditProblem, ProblemConfig, prepare
from gif_core.requests import SampleRemoval
from gif_core.scores import SCORE_FORMULA, SCORE_MEANING
from gif_core.selection import Selection, SelectionConfig, from_mask, select
from gif_core.train import Recipe, train_model


# -- explanations -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Explanation:
    """One estimator in plain words: the idea, its formula (LaTeX) and what its sign means."""

    name: str
    idea: str
    formula: str
    sign: str


SIGN_CONVENTION = (
    "Every estimator returns a step Δ and the edited model is θ + Δ (step scale α = 1). g is the gradient the edit "
    "removes: for removing m of n training samples, g = m/(n−m) · mean of their gradients, which equals −∇L of the "
    "retained data at a trained (stationary) θ. So the estimators solve H·Δ ≈ +g, and Δ points downhill on the "
    "retained objective wherever H is positive definite."
)

EXPLANATIONS: dict[str, Explanation] = {
    "if": Explanation(
        name="Influence function (IF, Koh & Liang 2017)",
        idea="Pretend the loss is a bowl around the trained parameters and take one Newton step to the bottom of "
        "the bowl of the edited objective. Every parameter moves.",
        formula=r"\Delta = H^{-1} g",
        sign="H·Δ = +g over all parameters. A network's H may be indefinite: MINRES or damping H + δI is used. "
        f"Per training sample z, the influence on a test loss is {SCORE_FORMULA}: {SCORE_MEANING}.",
    ),
    "pif": Explanation(
        name="Projected influence function (PIF)",
        idea="Compute the full IF step, then keep only the selected parameters T and throw the rest away.",
        formula=r"\Delta_T = \left(H^{-1} g\right)_T,\quad \Delta_F = 0",
        sign="Δ_T has exactly IF's entries on T, same signs; Δ_F = 0. It still needs the full H⁻¹g, so it is as "
        "costly as IF.",
    ),
    "fif": Explanation(
        name="Frozen influence function (FIF)",
        idea="Freeze every parameter outside T and compute the influence function of the small sub-network alone, "
        "as if the frozen parameters did not exist.",
        formula=r"\Delta_T = H_{TT}^{-1}\, g_T,\quad \Delta_F = 0",
        sign="H_TT·Δ_T = +g_T: a Newton step on the retained objective along T only. It ignores how moving T "
        "changes the gradient on the frozen parameters F.",
    ),
    "gif": Explanation(
        name="Generalized influence function (GIF, Lyu et al. 2023)",
        idea="Move only the selected parameters T, but choose their move so that the gradient change it causes "
        "cancels g on ALL parameters as well as possible, the frozen ones included (least squares).",
        formula=r"\Delta_T = \arg\min_x \left\lVert H_{:,T}\, x - g \right\rVert^2"
        r" \;\Leftrightarrow\; H_{:,T}^\top H_{:,T}\, \Delta_T = H_{:,T}^\top g,\quad \Delta_F = 0",
        sign="H[:, T]·Δ_T ≈ +g on every coordinate. The normal matrix H[:, T]ᵀ H[:, T] is positive semi-definite "
        "even when H is not, so the solve always converges.",
    ),
    "sif": Explanation(
        name="Second-order group influence (SIF, Basu et al. 2020)",
        idea="For a large removed group one Newton step is not enough: add a second-order correction that accounts "
        "for how the curvature itself changes when the group goes.",
        formula=r"I_1 = H_L^{-1} g,\quad I_2 = -c\, H_L^{-1}\!\left(\nabla^2 D\; I_1\right),\quad \Delta = I_1 + I_2,"
        r"\quad c = \tfrac{r}{1-r},\; D = L - L_U",
        sign="I1 is IF's step expanded around the full objective (H_L, the Hessian over all n samples); I2 corrects it "
        "by the change of curvature, with a minus sign and the scale c; r = m/n is the removed fraction. Third "
        "derivatives are neglected.",
    ),
    "tracin": Explanation(
        name="First-order update (TRACIN, Pruthi et al. 2020, as the GIF authors edit with it)",
        idea="Skip the curvature altogether: step along g itself, the gradient of the removed samples' loss, as if H "
        "were the identity. Every parameter moves.",
        formula=r"\Delta = g",
        sign="Δ = +g: the step raises the loss of the removed samples (for a relabelling, lowers that of the new "
        "labels). Its size means nothing by itself; the step search chooses α.",
    ),
    "datainf": Explanation(
        name="Layer-wise closed-form inverse (DATAINF, Kwon et al. 2024)",
        idea="Approximate H by the Fisher of each layer separately, and invert each layer's Fisher in closed form by "
        "swapping the inverse with the average over samples: every rank-one term inverts exactly (Sherman–Morrison).",
        formula=r"\Delta_l = \frac{1}{\lambda_l}\left(g_l - \frac{1}{n}\sum_i "
        r"\frac{g_{il}^\top g_l}{\lambda_l + \lVert g_{il}\rVert^2}\, g_{il}\right)",
        sign="Δ_l ≈ (G_l + λ_l I)⁻¹ g_l, a positive definite inverse: gᵀΔ > 0, IF's direction under a block-diagonal "
        "Fisher. No Hessian-vector product; λ_l is 0.1 × the layer's mean squared gradient entry.",
    ),
    "hyperinf": Explanation(
        name="Layer-wise Schulz inverse (HYPERINF, Zhou et al. 2024)",
        idea="Approximate each layer's curvature by its generalized Fisher, a small out × out matrix built from the "
        "layer's gradient matrices, and invert it with Schulz's iteration, which converges for any invertible matrix.",
        formula=r"\Delta_l = \left(G_l + \lambda_l I\right)^{-1} V_l,\quad G_l = \tfrac{1}{nc}\sum_i M_i M_i^\top,"
        r"\quad X_{k+1} = X_k\left(2I - A X_k\right)",
        sign="V_l is g's layer as a matrix; (G_l + λ_l I)⁻¹ is positive definite, so gᵀΔ > 0, IF's direction. No "
        "Hessian-vector product; the Schulz residual ‖I − AX‖ is reported.",
    ),
    "ekfac": Explanation(
        name="Eigenvalue-corrected Kronecker factors (EKFAC, George et al. 2018; Grosse et al. 2023)",
        idea="Approximate each layer's curvature by a Kronecker product of two small matrices — the covariance of "
        "its inputs and of its output gradients — then correct the eigenvalues in their eigenbasis to the true "
        "second moments of the gradients. Inverting it is cheap: one small eigendecomposition per factor.",
        formula=r"\Delta = \left(\mathrm{EKFAC}(G) + (\lambda + \delta) I\right)^{-1} g,\quad "
        r"G_l \approx (Q_A \otimes Q_S)\, \Lambda\, (Q_A \otimes Q_S)^\top",
        sign="G is the Gauss-Newton matrix (positive semi-definite), λ the weight decay, δ the damping: the inverse "
        "is positive definite, so gᵀΔ > 0, IF's direction. No Hessian-vector product.",
    ),
}


# -- the objective, as a function of the flat θ --------------------------------------------------------------------
def training_objective(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, weight_decay: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    """θ ↦ L(θ) = mean_i CE(f_θ(x_i), y_i) + (λ/2)|θ|² over the given data, θ flat in ParamSpace layout."""
    space = ParamSpace.from_model(model)
    frozen = dict(model.named_buffers())

    def objective(theta: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(model, {**frozen, **space.unflatten(theta)}, (inputs,))
        return training_loss(logits, labels, [theta], weight_decay)

    return objective


def dense_hessian(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, weight_decay: float) -> torch.Tensor:
    """H = ∇²L(θ) at the model's θ as a dense p×p matrix (``torch.func.hessian``; for small models only)."""
    objective = training_objective(model, inputs, labels, weight_decay)
    with FORWARD_MODE:  # torch.func.hessian is forward-over-reverse: one thread at a time (see gif_core.curvature)
        hessian = torch.func.hessian(objective)(flat_parameters(model))
    return 0.5 * (hessian + hessian.T)


# -- figure 2: the two-parameter toy --------------------------------------------------------------------------------
class ZeroLogit(nn.Module):
    """Prepend a constant zero logit: z ↦ (0, z), so a single score is a two-class cross-entropy problem."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(z), z], dim=1)


@dataclass(frozen=True)
class ToyCluster:
    """A Gaussian cluster of 2-D training points with one label."""

    name: str
    centre: tuple[float, float]
    label: int


# Each class is two clusters strung along the direction (1, −1), on either side of the line x₁ + x₂ = 0: the points
# near the decision boundary spread along it, so H is strongly coupled (correlation of θ₁, θ₂ about −0.8 at small λ)
# and moving one parameter alone visibly differs from moving both.
TOY_CLUSTERS: tuple[ToyCluster, ...] = (
    ToyCluster("A (class 1, lower right)", (2.5, -1.0), 1),
    ToyCluster("B (class 1, upper left)", (-1.0, 2.5), 1),
    ToyCluster("C (class 0, lower right)", (1.0, -2.5), 0),
    ToyCluster("D (class 0, upper left)", (-2.5, 1.0), 0),
)


@dataclass(frozen=True)
class ToyConfig:
    """Which cluster loses which fraction of its points, the weight decay λ, which parameter (0 or 1) GIF/FIF/PIF
    may move (None: the ``param-gradient`` selector picks the one with the largest |g|), and the data/grid sizes."""

    removed_cluster: int = 0
    removed_fraction: float = 0.8
    weight_decay: float = 0.01
    selected: int | None = None
    points_per_cluster: int = 25
    spread: float = 0.7
    grid_size: int = 61
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.removed_cluster < len(TOY_CLUSTERS):
            raise ValueError(f"removed_cluster must be 0 … {len(TOY_CLUSTERS) - 1}, got {self.removed_cluster}")
        if not 0 < self.removed_fraction <= 1:
            raise ValueError(f"removed_fraction must lie in (0, 1], got {self.removed_fraction}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay}")
        if self.selected not in (None, 0, 1):
            raise ValueError(f"selected must be None, 0 or 1 (the toy has two parameters), got {self.selected}")
        if self.points_per_cluster < 2 or self.grid_size < 2 or self.spread <= 0:
            raise ValueError("need points_per_cluster ≥ 2, grid_size ≥ 2 and spread > 0")


@dataclass(frozen=True)
class ToyData:
    """2-D inputs (float64), labels and the cluster of every point; satisfies ``evaluate.LabelledData``."""

    inputs: torch.Tensor
    labels: torch.Tensor
    cluster: torch.Tensor


@dataclass(frozen=True)
class ToyResult:
    """Points in parameter space θ = (θ₁, θ₂) and the retained objective on a grid.

    ``loss[i, j]`` is L_{S∖U}((grid_x[j], grid_y[i])) (rows follow θ₂, columns θ₁, as contour plots expect).
    ``updates[method]`` is θ* + Δ for each estimator; ``retrained`` the exact optimum of L_{S∖U}. Per method:
    ``distances`` |θ* + Δ − retrained|, ``retained_losses`` L_{S∖U}(θ* + Δ) and ``gradient_norms`` |∇L_{S∖U}(θ* + Δ)|
    (what GIF drives to zero in least squares, to first order, on all coordinates).
    """

    config: ToyConfig
    data: ToyData
    removed_rows: torch.Tensor
    theta_star: torch.Tensor
    retrained: torch.Tensor
    updates: dict[str, torch.Tensor]
    selected: int
    grid_x: torch.Tensor
    grid_y: torch.Tensor
    loss: torch.Tensor
    retained_loss_at_star: float
    retained_loss_at_retrained: float
    distances: dict[str, float]
    retained_losses: dict[str, float]
    gradient_norms: dict[str, float]


def toy_model(theta: Sequence[float] | torch.Tensor = (0.0, 0.0)) -> nn.Module:
    """The two-parameter classifier x ↦ (0, θ·x), float64, with θ set."""
    linear = nn.Linear(2, 1, bias=False)
    model = nn.Sequential(linear, ZeroLogit()).double()  # .double() converts linear in place
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(theta, dtype=torch.float64).view(1, 2))
    return model


def toy_data(config: ToyConfig) -> ToyData:
    """``points_per_cluster`` seeded Gaussian points (std ``spread``) around each centre of :data:`TOY_CLUSTERS`."""
    generator = torch.Generator().manual_seed(config.seed)
    k = config.points_per_cluster
    centres = torch.tensor([c.centre for c in TOY_CLUSTERS], dtype=torch.float64)
    cluster = torch.arange(len(TOY_CLUSTERS)).repeat_interleave(k)
    noise = torch.randn(len(cluster), 2, generator=generator, dtype=torch.float64)
    labels = torch.tensor([c.label for c in TOY_CLUSTERS], dtype=torch.long)[cluster]
    return ToyData(centres[cluster] + config.spread * noise, labels, cluster)


def removed_rows(data: ToyData, config: ToyConfig) -> torch.Tensor:
    """A seeded ``removed_fraction`` of the rows of cluster ``removed_cluster`` (at least one), sorted."""
    rows = torch.nonzero(data.cluster == config.removed_cluster).reshape(-1)
    count = max(1, round(config.removed_fraction * len(rows)))
    return seeded_subset(rows, count, config.seed + 1)


def fit_toy(
    inputs: torch.Tensor, labels: torch.Tensor, weight_decay: float, start: torch.Tensor | None = None
) -> torch.Tensor:
    """argmin_θ mean CE + (λ/2)|θ|² of the toy: L-BFGS (strong Wolfe line search, float64), then Newton steps
    θ ← θ − H⁻¹∇L with the dense 2×2 Hessian until |∇L| < 1e-12 (close to the optimum the loss changes fall below
    float64 resolution, which stalls a line search near |∇L| ≈ 1e-10; Newton steps compare no losses).

    Raises ``RuntimeError`` when no such point is reached (e.g. separable data and λ = 0: no finite optimum)."""
    model = toy_model(torch.zeros(2) if start is None else start)
    objective = training_objective(model, inputs, labels, weight_decay)
    theta = flat_parameters(model).clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [theta], lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=0.0, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective(theta)
        loss.backward()
        return loss

    optimizer.step(closure)
    theta = theta.detach()
    for _ in range(5):
        gradient = torch.func.grad(objective)(theta)
        if float(gradient.norm()) < 1e-12:
            return theta
        with FORWARD_MODE:  # torch.func.hessian is forward-over-reverse: one thread at a time (gif_core.curvature)
            hessian = torch.func.hessian(objective)(theta)
        theta = theta - torch.linalg.solve(hessian, gradient)
    raise RuntimeError(
        f"The toy objective did not reach a stationary point (|∇L| = {float(gradient.norm()):.2e}); "
        "with weight decay 0 the data may be separable and have no finite optimum: raise the weight decay."
    )


def _toy_selection(problem: EditProblem, config: ToyConfig) -> Selection:
    """The one parameter GIF/FIF/PIF may move: the largest |g_j| (``param-gradient`` at ratio 0.5) or the asked one."""
    if config.selected is None:
        return select(problem, SelectionConfig(method="param-gradient", ratio=0.5))
    return from_mask(problem.space, torch.arange(2) == config.selected, method=f"parameter {config.selected}")


def toy_example(config: ToyConfig | None = None) -> ToyResult:
    """Train the toy, remove part of one cluster, and compare every estimator with exact retraining."""
    config = config or ToyConfig()
    data = toy_data(config)
    theta_star = fit_toy(data.inputs, data.labels, config.weight_decay)
    model = toy_model(theta_star)
    removed = removed_rows(data, config)
    problem = prepare(
        model,
        data,
        SampleRemoval(tuple(removed.tolist())),
        num_classes=2,
        config=ProblemConfig(curvature=CurvatureConfig(weight_decay=config.weight_decay)),
    )
    selection = _toy_selection(problem, config)
    estimator = EstimatorConfig(gif_ridge=0.0, rtol=1e-12, maxiter=20)
    updates = {}
    for method in METHODS:
        result = estimate(method, problem, selection, estimator)
        if not result.converged:
            raise RuntimeError(f"The {method.upper()} solve did not converge on the toy problem.")
        updates[method] = theta_star + result.delta
    keep = problem.retain_rows
    retained_inputs, retained_labels = data.inputs[keep], data.labels[keep]
    retrained = fit_toy(retained_inputs, retained_labels, config.weight_decay, start=theta_star)
    retained_objective = training_objective(model, retained_inputs, retained_labels, config.weight_decay)
    points = torch.stack([theta_star, retrained, *updates.values()])
    grid_x, grid_y = _grid_axes(points, config.grid_size)
    thetas = torch.stack(torch.meshgrid(grid_x, grid_y, indexing="xy"), dim=-1).reshape(-1, 2)
    loss = torch.func.vmap(retained_objective)(thetas).reshape(config.grid_size, config.grid_size)
    return ToyResult(
        config=config,
        data=data,
        removed_rows=removed,
        theta_star=theta_star,
        retrained=retrained,
        updates=updates,
        selected=int(selection.indices[0]),
        grid_x=grid_x,
        grid_y=grid_y,
        loss=loss,
        retained_loss_at_star=float(retained_objective(theta_star)),
        retained_loss_at_retrained=float(retained_objective(retrained)),
        distances={m: float(torch.linalg.vector_norm(p - retrained)) for m, p in updates.items()},
        retained_losses={m: float(retained_objective(p)) for m, p in updates.items()},
        gradient_norms={m: float(torch.func.grad(retained_objective)(p).norm()) for m, p in updates.items()},
    )


def _grid_axes(points: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Axes of a square-ish box around ``points`` [k, 2], padded by 40 % of the larger extent (at least 0.25)."""
    low, high = points.min(0).values, points.max(0).values
    pad = max(0.4 * float((high - low).max()), 0.25)
    return (
        torch.linspace(float(low[0]) - pad, float(high[0]) + pad, size, dtype=torch.float64),
        torch.linspace(float(low[1]) - pad, float(high[1]) + pad, size, dtype=torch.float64),
    )


# -- figure 3: Hessian spectrum against weight decay ---------------------------------------------------------------
@dataclass(frozen=True)
class SpectrumConfig:
    """The small network (4 → hidden → 3, tanh: smooth, so H exists everywhere), its short training recipe
    (``recipe.weight_decay`` is replaced by each λ), the Iris split seed, and the relative tolerance below which an
    eigenvalue counts as negative: λ_i < −tol·max_j |λ_j| (so exact zero modes, e.g. the softmax's shift invariance
    at λ = 0, are not counted)."""

    hidden: tuple[int, ...] = (8, 8)
    recipe: Recipe = field(default_factory=lambda: Recipe(optimizer="adam", lr=1e-2, epochs=20, batch_size=32))
    data_seed: int = 0
    negative_tolerance: float = 1e-9


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues (ascending) of H at the model trained with ``weight_decay``, the share counted negative, the
    trained flat θ, and the training objective L(θ) there."""

    weight_decay: float
    eigenvalues: torch.Tensor
    negative_share: float
    theta: torch.Tensor
    objective: float


def spectrum_data(seed: int = 0) -> LabelledSet:
    """Iris's standardised training split (``gif_core.data.load_data``), in float64."""
    train = load_data("iris", seed=seed).train
    return replace(train, inputs=train.inputs.double())


def spectrum_network(hidden: Sequence[int], seed: int) -> nn.Module:
    """A float64 tanh MLP 4 → hidden… → 3 with seeded initial weights (the caller's random state is kept)."""
    sizes = [4, *hidden]
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
        layers.append(nn.Linear(sizes[-1], 3))
        return nn.Sequential(*layers).double()


def negative_share(eigenvalues: torch.Tensor, tolerance: float = 1e-9) -> float:
    """Fraction of eigenvalues below −tolerance·max|λ| (in [0, 1])."""
    threshold = tolerance * float(eigenvalues.abs().max())
    return float((eigenvalues < -threshold).double().mean())


def hessian_spectra(weight_decays: Sequence[float], config: SpectrumConfig | None = None) -> tuple[Spectrum, ...]:
    """Train :func:`spectrum_network` once per λ (same seed and recipe, weight decay λ) and eigendecompose its H."""
    config = config or SpectrumConfig()
    if not weight_decays:
        raise ValueError("Give at least one weight decay.")
    if any(wd < 0 for wd in weight_decays):
        raise ValueError(f"Weight decays must be ≥ 0, got {list(weight_decays)}")
    data = spectrum_data(config.data_seed)
    spectra = []
    for wd in weight_decays:
        model = spectrum_network(config.hidden, config.recipe.seed)
        train_model(model, data, replace(config.recipe, weight_decay=float(wd)), device="cpu", show_bar=False)
        eigenvalues = torch.linalg.eigvalsh(dense_hessian(model, data.inputs, data.labels, float(wd)))
        theta = flat_parameters(model)
        objective = training_objective(model, data.inputs, data.labels, float(wd))
        spectra.append(
            Spectrum(
                float(wd),
                eigenvalues,
                negative_share(eigenvalues, config.negative_tolerance),
                theta,
                float(objective(theta).detach()),
            )
        )
    return tuple(spectra)
