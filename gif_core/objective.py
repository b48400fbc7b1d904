"""The training objective the whole library means, defined once:

    L(θ) = mean_i CE(f(x_i; θ), y_i) + (λ/2)·‖θ‖²,

λ the weight decay of the model's training recipe, θ every trainable parameter. Its gradient is
mean_i ∇CE_i + λθ and its Hessian mean_i ∇²CE_i + λI: :class:`gif_core.curvature.Curvature` differentiates
:func:`data_loss` and adds those two terms in closed form; training minimises :func:`data_loss` with the optimiser's
(coupled, L2) weight decay λ, and reports :func:`training_loss`; the teaching page's dense Hessians and the
leave-one-out benchmark differentiate :func:`training_loss` itself. Smaller is better.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.nn import functional as F


def data_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean_i CE(logits_i, y_i): the data term of L."""
    return F.cross_entropy(logits, labels)


def l2_penalty(parameters: Iterable[torch.Tensor], weight_decay: float) -> torch.Tensor:
    """(λ/2)·Σ‖p‖² over ``parameters``: the regulariser of L."""
    squares = [p.square().sum() for p in parameters]
    return 0.5 * weight_decay * (torch.stack(squares).sum() if squares else torch.zeros(()))


def training_loss(
    logits: torch.Tensor, labels: torch.Tensor, parameters: Iterable[torch.Tensor], weight_decay: float
) -> torch.Tensor:
    """L = :func:`data_loss` + :func:`l2_penalty`."""
    return data_loss(logits, labels) + l2_penalty(parameters, weight_decay)
