"""How far two influence methods agree on the same question: rank correlation and overlap of their top-k samples.

Influence estimates are fragile in deep networks (Basu et al. 2021), so before trusting one method a person compares
it with others on the same test point. Two measures, both on the scores of every training sample (positive =
helpful, :mod:`gif_core.scores`):

* Spearman's ρ (:func:`spearman`, ``scipy.stats.spearmanr``): the Pearson correlation of the two rankings, +1 = the
  same order, −1 = reversed, ~0 = unrelated; ties get their average rank;
* top-k overlap (:func:`top_k_overlap`): |top-k(a) ∩ top-k(b)| / k, the share of the k most helpful (or most
  harmful) samples that both methods name — what a person looking at the first k images sees.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr

Scores = torch.Tensor | np.ndarray


def _vector(scores: Scores) -> np.ndarray:
    return np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)


def _pair(a: Scores, b: Scores) -> tuple[np.ndarray, np.ndarray]:
    """Both score vectors as 1-D float64 arrays of one length (ValueError otherwise)."""
    x, y = _vector(a), _vector(b)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"Compare two score vectors of one length, got shapes {x.shape} and {y.shape}")
    return x, y


def spearman(a: Scores, b: Scores) -> float:
    """Spearman's rank correlation ρ of two score vectors (ties ranked by their mean rank). NaN when either vector
    is constant (its ranking is undefined); ValueError for fewer than two scores or vectors of unequal length."""
    x, y = _pair(a, b)
    if len(x) < 2:
        raise ValueError(f"A rank correlation needs at least two scores, got {len(x)}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


def top_k(scores: Scores, k: int, helpful: bool = True) -> np.ndarray:
    """The rows of the k largest scores (``helpful``) or the k smallest (harmful). Equal scores keep their row
    order, so of tied rows straddling the k-th place the lower rows are taken. ValueError unless 1 ≤ k ≤ n."""
    x = _vector(scores)
    if not 1 <= k <= len(x):
        raise ValueError(f"k must lie between 1 and the number of scores ({len(x)}), got {k}")
    order = np.argsort(-x if helpful else x, kind="stable")
    return order[:k]


def top_k_overlap(a: Scores, b: Scores, k: int, helpful: bool = True) -> float:
    """|top-k(a) ∩ top-k(b)| / k in [0, 1] (see :func:`top_k`): 1 = both name the same k samples."""
    x, y = _pair(a, b)
    return len(np.intersect1d(top_k(x, k, helpful), top_k(y, k, helpful))) / k


@dataclass(frozen=True)
class Agreement:
    """Agreement of methods ``first`` and ``second`` on one question: Spearman's ρ over all training samples and the
    top-k overlap of their most helpful and most harmful samples."""

    first: str
    second: str
    spearman: float
    helpful_overlap: float
    harmful_overlap: float
    k: int


def pairwise_agreement(scores: Mapping[str, Scores], k: int) -> tuple[Agreement, ...]:
    """One :class:`Agreement` per unordered pair of methods, in the mapping's order; k is capped at n."""
    rows = []
    for (first, a), (second, b) in itertools.combinations(scores.items(), 2):
        x, y = _pair(a, b)
        kk = min(k, len(x))
        rows.append(
            Agreement(first, second, spearman(x, y), top_k_overlap(x, y, kk), top_k_overlap(x, y, kk, False), kk)
        )
    return tuple(rows)
