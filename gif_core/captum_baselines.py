"""Captum's influence estimators as baselines beside ours, run on the same model and data.

The one place that imports ``captum.influence`` (the Arnoldi class lives in the private module
``captum.influence._core.arnoldi_influence_function``, and the naive one in ``..._core.influence_function``).
Captum loads model weights through a "checkpoint" callback; its default callback unpickles a file, so here the
callback copies an in-memory state dict instead — nothing is read from disk and nothing is unpickled. Captum works
on a private copy of the model; the caller's model is never touched.

Orientation: all three return scores [n_test, n_train] where positive means the training sample is a proponent
(helpful: it lowers the test loss), the same orientation as :mod:`gif_core.scores` (checked in tests/test_scores.py).
``tracincp`` is TracInCP with the single final checkpoint (learning-rate weight 1): ∇ℓ_testᵀ∇ℓ_z, no Hessian.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import torch
from torch import nn
from torch.utils.data import TensorDataset

from gif_core.data import seeded_subset

if TYPE_CHECKING:
    from captum.influence import TracInCP
    from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction
    from captum.influence._core.influence_function import NaiveInfluenceFunction

CaptumEstimator: TypeAlias = "TracInCP | NaiveInfluenceFunction | ArnoldiInfluenceFunction"

CAPTUM_METHODS = ("tracincp", "naive", "arnoldi")


@dataclass(frozen=True)
class CaptumConfig:
    """``weight_decay`` is the model's training λ. Captum's Hessian is that of the SUMMED per-sample loss, so the
    same objective as ours (mean CE + λ/2·|θ|²) needs ``hessian_reg = λ·m`` (m = samples in the Hessian); that is
    the default (None). With it, Captum's naive influence ranks training samples exactly as :mod:`gif_core.scores`
    does (tests/test_scores.py). Ranks, not values: Captum's per-sample gradient is the bare ∇CE_z, while ours
    carries the regulariser's share λθ (removing z from the mean objective moves θ by H⁻¹(∇CE_z + λθ)/n), so with
    λ > 0 the two differ by a constant offset per test point, and only with λ = 0 do the values agree.

    ``layers``: restrict Captum to these modules' parameters (None = all). Naive influence materialises the Hessian
    of the chosen parameters, so on anything larger than a small MLP restrict it, e.g. to the last Linear layer.
    ``hessian_samples``: naive/Arnoldi build H over a seeded random subset of this many training samples (None =
    all). ``arnoldi_tol``: Captum's Arnoldi stops when a new Krylov vector's norm falls below it; its default 0.1
    leaves an empty basis on a model whose Hessian is smaller than that (e.g. no weight decay), so lower it there.
    """

    weight_decay: float = 0.0
    batch_size: int = 64
    hessian_reg: float | None = None
    projection_dim: int = 50
    arnoldi_dim: int = 200
    seed: int = 0
    layers: tuple[str, ...] | None = None
    hessian_samples: int | None = None
    arnoldi_tol: float = 0.1


def captum_scores(
    method: str,
    model: nn.Module,
    train_inputs: torch.Tensor,
    train_labels: torch.Tensor,
    test_inputs: torch.Tensor,
    test_labels: torch.Tensor,
    config: CaptumConfig | None = None,
) -> torch.Tensor:
    """Influence scores [n_test, n_train] from Captum's ``method`` (positive = helpful, see module docstring)."""
    estimator = captum_estimator(method, model, train_inputs, train_labels, config)
    return _finite(estimator.influence((test_inputs, test_labels)), method)


def captum_self_influence(
    method: str,
    model: nn.Module,
    train_inputs: torch.Tensor,
    train_labels: torch.Tensor,
    config: CaptumConfig | None = None,
) -> torch.Tensor:
    """Captum's self-influence [n_train] of every training sample (TracInCP: ‖∇ℓ_z‖²; naive/Arnoldi:
    ∇ℓ_zᵀ(H + reg·I)⁻¹∇ℓ_z, exact or on Captum's Arnoldi subspace). Larger = more self-influential."""
    estimator = captum_estimator(method, model, train_inputs, train_labels, config)
    if method == "tracincp":
        values = estimator.self_influence(None)
    else:
        values = estimator.self_influence((train_inputs, train_labels))
    return _finite(values, method)


def _finite(values: torch.Tensor, method: str) -> torch.Tensor:
    if not torch.isfinite(values).all():
        raise FloatingPointError(f"Captum's {method} returned NaN or inf scores; raise hessian_reg and retry.")
    return values.detach().cpu()


def captum_estimator(
    method: str,
    model: nn.Module,
    train_inputs: torch.Tensor,
    train_labels: torch.Tensor,
    config: CaptumConfig | None = None,
) -> CaptumEstimator:
    """Captum's estimator for ``method`` on a private copy of ``model``. Building it is the set-up cost (the naive
    Hessian, the Arnoldi subspace); reuse it for several queries with ``.influence((test_x, test_y))``."""
    if method not in CAPTUM_METHODS:
        raise ValueError(f"Unknown Captum method {method!r}; choose one of {', '.join(CAPTUM_METHODS)}")
    from captum.influence import TracInCP  # here: captum takes ~1 s to import, and only this function needs it
    from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction
    from captum.influence._core.influence_function import NaiveInfluenceFunction

    config = config or CaptumConfig()
    n = len(train_labels)
    hessian_rows = torch.arange(n)
    if config.hessian_samples is not None and config.hessian_samples < n:
        hessian_rows = seeded_subset(hessian_rows, config.hessian_samples, config.seed)
    hessian_reg = config.hessian_reg if config.hessian_reg is not None else config.weight_decay * len(hessian_rows)
    if hessian_reg <= 0 and method != "tracincp":
        raise ValueError(
            "Captum's inverse Hessian needs hessian_reg > 0: give the model's weight_decay or hessian_reg."
        )
    state = copy.deepcopy(model.state_dict())
    private = copy.deepcopy(model).eval()

    def load_from_memory(target: nn.Module, _name: str) -> float:
        target.load_state_dict(state)
        return 1.0  # the checkpoint's learning-rate weight in TracInCP

    common = {
        "model": private,
        "train_dataset": TensorDataset(train_inputs, train_labels),
        "checkpoints_load_func": load_from_memory,
        "loss_fn": nn.CrossEntropyLoss(reduction="none"),
        "batch_size": config.batch_size,
        "layers": list(config.layers) if config.layers is not None else None,
    }
    if method == "tracincp":
        return TracInCP(checkpoints=["in-memory"], **common)
    hessian = {"hessian_dataset": TensorDataset(train_inputs[hessian_rows], train_labels[hessian_rows])}
    if method == "naive":
        return NaiveInfluenceFunction(
            checkpoint="in-memory",
            hessian_reg=hessian_reg,
            projection_dim=config.projection_dim,
            seed=config.seed,
            **hessian,
            **common,
        )
    return ArnoldiInfluenceFunction(
        checkpoint="in-memory",
        hessian_reg=hessian_reg,
        projection_dim=config.projection_dim,
        arnoldi_dim=config.arnoldi_dim,
        arnoldi_tol=config.arnoldi_tol,
        seed=config.seed,
        **hessian,
        **common,
    )
