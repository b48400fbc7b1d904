"""TRAK-style scores from random projections of the per-sample gradients (Park et al. 2023, one model, no ensemble).

For softmax cross-entropy the model-output function TRAK uses, the margin f = log p_y − log(1 − p_y), has
∇f = −∇ℓ / (1 − p_y) exactly (ℓ = −log p_y, and ∇log(1 − p_y) = −p_y ∇log p_y / (1 − p_y)). With a seeded
Gaussian projection P [p, k] of variance 1/k, TRAK's features, kernel and weights are

    φ_i = Pᵀ∇f_i,   K = ΦᵀΦ + λI  (Φ = [φ_i], n × k),   Q_i = 1 − p_{y,i},
    τ(z, i) = φ_zᵀ K⁻¹ φ_i Q_i = (Pᵀ∇ℓ_z)ᵀ K⁻¹ (Pᵀ∇ℓ_i) / Q_z.

The score here is Q_z·τ(z, i) = ∇ℓ_zᵀ (P K⁻¹ Pᵀ) ∇ℓ_i: TRAK times a positive factor of the test point alone, so the
same order, sign and LDS per test point, and — like every score of :mod:`gif_core.scores` — linear in ∇ℓ_z (IF with
H⁻¹ replaced by P K⁻¹ Pᵀ, the projected Gauss–Newton inverse of the margins), so the mean gradient of a set scores
the set. Positive = training on i raises z's margin: i is **helpful**, the sign of
:data:`gif_core.scores.SCORE_MEANING`. TRAK itself uses λ = 0; here λ = ``ridge`` · mean diag(ΦᵀΦ) keeps the
Cholesky factor defined when k approaches the rank of the gradients. With k = p and λ = 0 the projection cancels
(P K⁻¹ Pᵀ = (Σ∇f∇fᵀ)⁻¹) and the score is the unprojected formula; tests/test_projection.py checks that against margin
gradients taken by autograd. Memory: P holds p·k and the features n·k float32 numbers, instead of G's n·p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gif_core.evaluate import predict_proba
from gif_core.gradient_store import TrainGradients, gradients_times


@dataclass(frozen=True)
class TrakConfig:
    """Projection dimension k, the projection's seed and the relative ridge λ / mean diag(ΦᵀΦ).

    The default k is measured: LDS of logistic regression on the bundled MNIST (benchmarks/lds.py's protocol, seed 0)
    was 0.23, 0.29, 0.35, 0.41, 0.39, 0.35, 0.26 at k = 32, 64, 128, 256, 512, 1024, 2048 — a smaller k regularises
    (fewer directions for the inverse to amplify), a larger one approaches the unregularised inverse."""

    dim: int = 256
    seed: int = 0
    ridge: float = 1e-6

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"The projection dimension must be at least 1, got {self.dim}.")
        if not self.ridge >= 0:
            raise ValueError(f"The relative ridge must be ≥ 0, got {self.ridge}.")


@dataclass(frozen=True)
class TrakKernel:
    """What TRAK keeps per model: P [p, k], the projected loss gradients Pᵀ∇ℓ_i [n, k] and the Cholesky factor of
    K = ΦᵀΦ + λI [k, k] (float64), with λ."""

    projection: torch.Tensor
    features: torch.Tensor
    cholesky: torch.Tensor
    ridge: float

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    def scores(self, test_gradient: torch.Tensor) -> torch.Tensor:
        """∇ℓ_zᵀ P K⁻¹ Pᵀ ∇ℓ_i for every training sample i [n] (positive = helpful) from the test loss gradient ∇ℓ_z [p]
        (a point's, or a set's mean): TRAK's τ(z, i) times 1 − p_z (module docstring)."""
        projected = (test_gradient.detach().to("cpu", torch.float32) @ self.projection).double()
        direction = torch.cholesky_solve(projected[:, None], self.cholesky)[:, 0]
        return (self.features.double() @ direction).float()


def true_class_complement(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 − p_y [N] (float64) as the sum of the other classes' softmax probabilities, which keeps its relative
    precision where 1 − p_y itself would round to 0 in float32."""
    probabilities = predict_proba(model, inputs).double()
    others = probabilities.scatter(1, labels.reshape(-1, 1).to(probabilities.device, torch.long), 0.0)
    return others.sum(1)


def trak_kernel(
    train_gradients: TrainGradients,
    train_complements: torch.Tensor,
    config: TrakConfig | None = None,
    shared: torch.Tensor | None = None,
) -> TrakKernel:
    """TRAK's per-model state from G = [∇ℓ_i] [n, p] and each training sample's Q_i = 1 − p_{y,i} [n]
    (:func:`true_class_complement`): one pass over G (see the module docstring for the formulas). ``shared`` [p] is
    subtracted from every row first: the λθ that gradients of the regularised loss carry (the identity
    ∇f = −∇ℓ/(1 − p_y) holds for the cross-entropy alone)."""
    config = config or TrakConfig()
    n, p = train_gradients.shape
    if train_complements.shape != (n,):
        raise ValueError(
            f"Expected {n} values of 1 − p_y, one per training sample, got {tuple(train_complements.shape)}."
        )
    q = train_complements.double()
    if not bool((q > 0).all()):
        raise ValueError(
            "A training sample has 1 − p_y = 0 (its true class takes all the probability): its margin is infinite "
            "and TRAK is undefined for this model."
        )
    generator = torch.Generator().manual_seed(config.seed)
    projection = torch.randn(p, config.dim, generator=generator) / config.dim**0.5
    features = gradients_times(train_gradients, projection)
    if shared is not None:
        features = features - shared.detach().to("cpu", torch.float32) @ projection
    margins = features.double() / q[:, None]  # Φ = Pᵀ∇f_i = −Pᵀ∇ℓ_i / (1 − p_i); the sign cancels in ΦᵀΦ
    gram = margins.T @ margins
    ridge = config.ridge * float(gram.diagonal().mean())
    cholesky, info = torch.linalg.cholesky_ex(gram + ridge * torch.eye(config.dim, dtype=gram.dtype))
    if int(info) != 0 or not bool(torch.isfinite(cholesky).all()):
        raise FloatingPointError(
            f"TRAK's kernel ΦᵀΦ + λI is not positive definite at k = {config.dim} (λ = {ridge:.3g}); lower the "
            "projection dimension below the number of training samples or raise the ridge."
        )
    return TrakKernel(projection, features, cholesky, ridge)
