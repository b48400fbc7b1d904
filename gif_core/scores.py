"""Per-sample influence of training samples on test predictions ("which training samples made this prediction?").

Sign convention (the removal effect, as in Koh & Liang with ε = −1/n): removing training sample z from a model at
its optimum moves θ by Δθ ≈ H⁻¹∇ℓ_z/n (:mod:`gif_core.problem`, g for a one-sample removal), so the test loss
changes by

    I(z, test) = ∇ℓ_testᵀ H⁻¹ ∇ℓ_z / n.

Positive = removing z would RAISE the test loss = z is **helpful**; negative = z is **harmful**. (DESIGN.md section 2
writes this with a leading minus but glosses it with the same meaning; the minus belongs to the *upweighting*
influence −∇ℓ_testᵀH⁻¹∇ℓ_z. Leave-one-out retraining settles it: see tests/test_scores.py.)

``method="if"``: s_test = H⁻¹∇ℓ_test (one MINRES solve per test point), I = ∇ℓ_zᵀ s_test / n.
``method="if-lowrank"``: s_test = V Λ⁻¹ Vᵀ ∇ℓ_test over H's top positive eigenpairs (:class:`LowRankInverse`, built
once), so a new test point needs no solve.
``method="tracin"``: TracIn with the final checkpoint, I = ∇ℓ_testᵀ∇ℓ_z (no Hessian, no 1/n; the same as Captum's
TracInCP with one checkpoint of weight 1).
``method="gif"``: the GIF-restricted variant: removing z updates only T, Δ_T = (AᵀA)⁻¹Aᵀ∇ℓ_z/n with A = H_{:,T},
and the test-loss change is ∇ℓ_test,Tᵀ Δ_T, i.e. I = ∇ℓ_zᵀ s / n with s = A (AᵀA)⁻¹ (∇ℓ_test)_T (one LSMR solve
per test point: s is the minimum-norm solution of Aᵀs = (∇ℓ_test)_T).
``method="datainf"``, ``"hyperinf"``, ``"ekfac"``: IF with H⁻¹ replaced by the method's approximate inverse M⁻¹ of the
curvature over the Hessian sample (DataInf's and HyperINF's layer-wise inverses of the Fisher, :mod:`gif_core.layerwise`;
EK-FAC of the GGN + (λ + δ)I, :mod:`gif_core.ekfac`): s = M⁻¹∇ℓ_test, I = ∇ℓ_zᵀ s / n. M is symmetric positive
definite, so the sign means what IF's does; no Hessian-vector product, passes over the Hessian sample per test point.
``method="trak"``: TRAK-style random projection (:mod:`gif_core.projection`, one model): I = ∇ℓ_testᵀ P K⁻¹ Pᵀ ∇ℓ_z
with K = ΦᵀΦ + λI over the projected margin gradients of the training set (TRAK's τ times the test point's 1 − p_y:
same order and sign); built once from G (:class:`~gif_core.projection.TrakKernel`), no solve and no 1/n.
In all, the training gradients are computed once (``torch.func.vmap``) and each new test point costs one solve
plus one matrix-vector product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy.sparse import linalg as spla

from gif_core.curvature import Curvature
from gif_core.ekfac import ekfac_solve
from gif_core.gradient_store import GradientStore, TrainGradients, gradients_times
from gif_core.layerwise import datainf_solve, hyperinf_solve
from gif_core.operators import HessianOperator
from gif_core.projection import TrakKernel
from gif_core.selection import Selection
from gif_core.solvers import SolverConfig, SolveReport, solve_least_squares, solve_symmetric

APPROXIMATE_INVERSES: dict[str, Callable[[Curvature, torch.Tensor], tuple[torch.Tensor, SolveReport]]] = {
    "datainf": datainf_solve,
    "hyperinf": hyperinf_solve,
    "ekfac": ekfac_solve,
}
"""s = M⁻¹v for the methods that replace H⁻¹ by an approximate inverse (each with its default damping rule)."""
SCORE_METHODS = ("if", "if-lowrank", "gif", "tracin", *APPROXIMATE_INVERSES, "trak")


SCORE_FORMULA = "∇ℓ_testᵀ H⁻¹ ∇ℓ_z / n"
"""The influence of training sample z on a test loss as every score here computes it (the removal effect: no leading
minus). Text that shows the formula uses this constant; tests/test_scores.py checks the scores against it."""

SCORE_MEANING = "positive means removing z would raise the test loss (z is helpful), negative means z is harmful"
"""What the sign of a score means, in words."""


@dataclass(frozen=True)
class InfluenceScores:
    """Scores [n_test, n_train] (positive = helpful), with one solve report per test point (none for TracIn)."""

    method: str
    scores: torch.Tensor
    reports: tuple[SolveReport, ...]

    def top(self, test_row: int, k: int, helpful: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The k most helpful (or most harmful) training rows for one test point, and their scores."""
        values = self.scores[test_row]
        order = torch.argsort(values, descending=helpful, stable=True)[:k]
        return order, values[order]


def training_gradients(
    curvature: Curvature, inputs: torch.Tensor, labels: torch.Tensor, progress: Callable[[int, int], None] | None = None
) -> torch.Tensor:
    """∇ℓ_z for every training sample, as a float32 [n, p] matrix on the CPU (memory: 4·n·p bytes)."""
    blocks, done = [], 0
    for block in curvature.per_sample_gradients(inputs, labels):
        blocks.append(block.to("cpu", torch.float32))
        done += len(block)
        if progress is not None:
            progress(done, len(labels))
    return torch.cat(blocks)


def influence_scores(
    curvature: Curvature,
    train_gradients: TrainGradients,
    test_inputs: torch.Tensor,
    test_labels: torch.Tensor,
    method: str = "if",
    selection: Selection | None = None,
    solver: SolverConfig | None = None,
    lowrank: LowRankInverse | None = None,
    trak: TrakKernel | None = None,
) -> InfluenceScores:
    """Influence of every training sample on each test point's loss (see module docstring for the sign)."""
    if method not in SCORE_METHODS:
        raise ValueError(f"Unknown score method {method!r}; choose one of {', '.join(SCORE_METHODS)}")
    if method == "gif" and (selection is None or selection.n_selected == 0):
        raise ValueError("GIF-restricted scores need a non-empty parameter selection (gif_core.selection.select).")
    if method == "if-lowrank" and lowrank is None:
        raise ValueError("Low-rank IF scores need the eigenpairs of H: pass lowrank=lowrank_inverse(curvature, rank).")
    if method == "trak" and trak is None:
        raise ValueError("TRAK scores need the projected kernel: pass trak=gif_core.projection.trak_kernel(...).")
    rows, reports = [], []
    for i in range(len(test_labels)):
        test_gradient = curvature.gradient(test_inputs[i : i + 1], test_labels[i : i + 1], regulariser=False)
        row, report = influence_of_gradient(
            curvature, train_gradients, test_gradient, method, selection, solver, lowrank, trak
        )
        rows.append(row)
        if report is not None:
            reports.append(report)
    return InfluenceScores(method, torch.stack(rows), tuple(reports))


def influence_of_gradient(
    curvature: Curvature,
    train_gradients: TrainGradients,
    test_gradient: torch.Tensor,
    method: str,
    selection: Selection | None = None,
    solver: SolverConfig | None = None,
    lowrank: LowRankInverse | None = None,
    trak: TrakKernel | None = None,
) -> tuple[torch.Tensor, SolveReport | None]:
    """Every training sample's score G s / n for one test-loss gradient ∇ℓ_test [p] (a point's, or a set's mean:
    scores are linear in it), with the direction s = H⁻¹∇ℓ_test (``if``, MINRES), V Λ⁻¹ Vᵀ∇ℓ_test
    (``if-lowrank``), A(AᵀA)⁻¹(∇ℓ_test)_T (``gif``, LSMR), M⁻¹∇ℓ_test (:data:`APPROXIMATE_INVERSES`), or G ∇ℓ_test
    without the 1/n (``tracin``), or TRAK's projected features times K⁻¹Pᵀ∇ℓ_test (``trak``, no 1/n); and the solve's
    report (None without a solve). Positive = helpful. Arguments are checked by :func:`influence_scores`."""
    n = len(train_gradients)
    if method == "trak":
        if trak is None:
            raise ValueError("TRAK scores need the projected kernel: pass trak=gif_core.projection.trak_kernel(...).")
        return trak.scores(test_gradient), None
    if method in APPROXIMATE_INVERSES:
        s, report = APPROXIMATE_INVERSES[method](curvature, test_gradient)
        return gradients_times(train_gradients, s.float()) / n, report
    if method == "tracin":
        return gradients_times(train_gradients, test_gradient.float()), None
    if method == "if-lowrank":
        if lowrank is None:
            raise ValueError(
                "Low-rank IF scores need the eigenpairs of H: pass lowrank=lowrank_inverse(curvature, rank)."
            )
        return gradients_times(train_gradients, lowrank.apply(test_gradient)).float() / n, None
    if method == "if":
        s, report = solve_symmetric(HessianOperator(curvature), test_gradient, "minres", solver)
    else:
        if selection is None:
            raise ValueError("GIF-restricted scores need a parameter selection (gif_core.selection.select).")
        s, report = _restricted_direction(curvature, test_gradient, selection, solver)
    return gradients_times(train_gradients, s.float()) / n, report


def _restricted_direction(
    curvature: Curvature, test_gradient: torch.Tensor, selection: Selection, solver: SolverConfig | None
) -> tuple[torch.Tensor, SolveReport]:
    """s = A (AᵀA)⁻¹ c with A = H_{:,T}, c = (∇ℓ_test)_T: the minimum-norm solution of Aᵀs = c (s lies in the range
    of A), found by LSMR on Aᵀ (s ↦ (H s)_T, adjoint y ↦ H embed(y)) started from zero — no normal equations formed,
    which squares the condition number and stalls in float32."""
    index = selection.indices.to(test_gradient.device)
    rows = HessianOperator(curvature).restrict(rows=index)  # H_{T,:} = (H_{:,T})ᵀ: s ↦ (H s)_T
    return solve_least_squares(rows, test_gradient[index], "lsmr", config=solver)


@dataclass(frozen=True)
class LowRankInverse:
    """H⁻¹ restricted to H's ``rank`` largest eigenpairs (Lanczos, float64): H⁺_k g = V Λ⁻¹ Vᵀ g over the positive
    eigenvalues only. Built once per model (:func:`lowrank_inverse`), it turns every later test point's solve into
    two small products — the idea behind Arnoldi influence functions (Schioppa et al. 2022)."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor

    def apply(self, vector: torch.Tensor) -> torch.Tensor:
        keep = self.eigenvalues > 0
        v = self.eigenvectors[:, keep]
        return v @ ((v.T @ vector.detach().to("cpu", torch.float64)) / self.eigenvalues[keep])


def lowrank_inverse(curvature: Curvature, rank: int) -> LowRankInverse:
    return LowRankInverse(*top_eigenpairs(curvature, rank))


SELF_INFLUENCE_METHODS = ("if", "if-lowrank", "tracin")


@dataclass(frozen=True)
class SelfInfluence:
    """Self-influence of every training sample (larger = the model leans harder on that sample, the classic
    signal of a mislabelled or atypical example). ``eigenvalues`` holds the Lanczos eigenvalues for ``if-lowrank``."""

    method: str
    values: torch.Tensor
    eigenvalues: torch.Tensor | None = None

    def ranking(self) -> torch.Tensor:
        """Training rows, most self-influential first (the order to inspect for mislabels)."""
        return torch.argsort(self.values, descending=True, stable=True)


def self_influence(
    train_gradients: TrainGradients,
    method: str = "if-lowrank",
    curvature: Curvature | None = None,
    rank: int = 50,
    solver: SolverConfig | None = None,
    lowrank: LowRankInverse | None = None,
) -> SelfInfluence:
    """Self-influence of every training sample z:

    * ``if``:         ∇ℓ_zᵀ H⁻¹ ∇ℓ_z / n, one MINRES solve per sample (exact; for small training sets);
    * ``if-lowrank``: Σ_j (v_jᵀ∇ℓ_z)² / λ_j / n over the ``rank`` largest (algebraic) eigenpairs of H, found once
      with scipy's Lanczos ``eigsh`` on Hessian-vector products (the idea behind Arnoldi influence functions);
      negative-curvature directions are left out, so the values are ≥ 0 (``lowrank`` reuses eigenpairs found before);
    * ``tracin``:     ‖∇ℓ_z‖², TracIn's self-influence with the single final checkpoint (no Hessian).
    """
    if method not in SELF_INFLUENCE_METHODS:
        raise ValueError(f"Unknown self-influence method {method!r}; choose one of {', '.join(SELF_INFLUENCE_METHODS)}")
    n = len(train_gradients)
    if method == "tracin":
        if isinstance(train_gradients, GradientStore):
            return SelfInfluence(method, train_gradients.square_norms().float())
        return SelfInfluence(method, train_gradients.square().sum(1))
    if curvature is None:
        raise ValueError(f"Self-influence {method!r} needs the curvature (the Hessian operator) of the training data.")
    if method == "if":
        if isinstance(train_gradients, GradientStore):
            raise ValueError("Exact IF self-influence takes one solve per sample: use if-lowrank for a cached store.")
        values = []
        for row in train_gradients:
            g = row.to(curvature.device, curvature.dtype)
            x, _ = solve_symmetric(HessianOperator(curvature), g, "minres", solver)
            values.append(float(g @ x) / n)
        return SelfInfluence(method, torch.tensor(values))
    inverse = lowrank if lowrank is not None else lowrank_inverse(curvature, rank)
    keep = inverse.eigenvalues > 0
    projections = gradients_times(train_gradients, inverse.eigenvectors[:, keep])
    lowrank_values = (projections.square() / inverse.eigenvalues[keep]).sum(1) / n
    return SelfInfluence(method, lowrank_values.float(), inverse.eigenvalues)


def top_eigenpairs(curvature: Curvature, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``rank`` largest (algebraic) eigenvalues of H and their eigenvectors [p, rank], by Lanczos (float64, CPU)."""
    p = curvature.space.numel
    if not 0 < rank < p:
        raise ValueError(f"rank must lie between 1 and {p - 1} (the number of parameters minus one), got {rank}")

    eigenvalues, eigenvectors = spla.eigsh(HessianOperator(curvature).to_scipy(), k=rank, which="LA")
    return torch.from_numpy(eigenvalues), torch.from_numpy(eigenvectors)


def detection_rate(ranking: torch.Tensor, flagged_rows: torch.Tensor, inspected: float) -> float:
    """Percentage of ``flagged_rows`` (e.g. flipped labels) found in the first ``inspected`` fraction of ``ranking``."""
    if not 0 < inspected <= 1:
        raise ValueError(f"inspected must be a fraction in (0, 1], got {inspected}")
    top = ranking[: round(inspected * len(ranking))]
    return 100.0 * float(torch.isin(torch.as_tensor(flagged_rows), top).float().mean())
