"""Linear operators over torch vectors: the Hessian as a matrix that is never formed, its restrictions to rows and
columns, transposes, and the bridge to scipy's Krylov solvers.

A :class:`LinearMap` of shape (r, c) maps torch vectors of length c to length r (``matvec``) and back
(``rmatvec``, the transpose). :class:`HessianOperator` is H (p×p, symmetric: one Hessian-vector product per
``matvec`` or ``rmatvec``); ``H.restrict(rows, cols)`` is the submatrix H[rows, cols] (None = all), e.g.
H[:, T] for GIF's least squares, H[T, T] for FIF; its transpose uses H's symmetry,
(H[R, C])ᵀ = H[C, R]. ``to_scipy()`` wraps any of them as a float64 ``scipy.sparse.linalg.LinearOperator``
(vectors moved to the operator's device and dtype and back at each product), and :class:`Counted` counts the
products a solver spends.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse import linalg as spla

from gif_core.curvature import Curvature
from gif_core.params import embed

TorchMap = Callable[[torch.Tensor], torch.Tensor]


class LinearMap:
    """A linear map between torch vectors; subclasses define ``shape``, ``device``, ``dtype``, ``matvec`` and
    ``rmatvec``."""

    shape: tuple[int, int]
    device: torch.device
    dtype: torch.dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x)

    @property
    def T(self) -> LinearMap:
        return Transposed(self)

    def to_torch(self, x: np.ndarray) -> torch.Tensor:
        """A float64 numpy vector as a torch vector of this operator's device and dtype."""
        return torch.as_tensor(np.ascontiguousarray(x).reshape(-1), device=self.device).to(self.dtype)

    def to_scipy(self) -> spla.LinearOperator:
        """This operator as a float64 scipy ``LinearOperator`` (``matvec`` and ``rmatvec``)."""
        return spla.LinearOperator(
            self.shape,
            matvec=lambda x: to_numpy(self.matvec(self.to_torch(x))),
            rmatvec=lambda y: to_numpy(self.rmatvec(self.to_torch(y))),
            dtype=np.float64,
        )


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A torch vector as a float64 numpy vector on the host."""
    return t.detach().to("cpu", torch.float64).numpy()


class SymmetricOperator(LinearMap):
    """A symmetric n×n operator given by its product (its own transpose), restrictable to rows and columns."""

    def __init__(self, product: TorchMap, n: int, device: torch.device, dtype: torch.dtype) -> None:
        self.product, self.shape, self.device, self.dtype = product, (n, n), device, dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        return self.product(y)

    @property
    def T(self) -> LinearMap:
        return self

    def restrict(self, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> Submatrix:
        """A[rows, cols] (None: every row / column)."""
        return Submatrix(self, rows, cols)


class HessianOperator(SymmetricOperator):
    """H of a :class:`~gif_core.curvature.Curvature` (damping and weight decay included), p×p: one Hessian-vector
    product per ``matvec`` or ``rmatvec``."""

    def __init__(self, curvature: Curvature) -> None:
        super().__init__(curvature.hvp, curvature.space.numel, curvature.device, curvature.dtype)
        self.curvature = curvature


class Submatrix(LinearMap):
    """H[rows, cols] of a symmetric operator H: x over ``cols`` ↦ (H · embed(x))[rows]; the transpose y over
    ``rows`` ↦ (H · embed(y))[cols] (H symmetric). Each product costs one product of H."""

    def __init__(self, symmetric: LinearMap, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
        p = symmetric.shape[0]
        self.symmetric, self.p = symmetric, p
        self.rows = None if rows is None else rows.to(symmetric.device)
        self.cols = None if cols is None else cols.to(symmetric.device)
        self.shape = (p if rows is None else len(rows), p if cols is None else len(cols))
        self.device, self.dtype = symmetric.device, symmetric.dtype

    def _apply(self, x: torch.Tensor, inside: torch.Tensor | None, outside: torch.Tensor | None) -> torch.Tensor:
        full = x if inside is None else embed(x, inside, self.p)
        out = self.symmetric.matvec(full)
        return out if outside is None else out[outside]

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, self.cols, self.rows)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        return self._apply(y, self.rows, self.cols)


class Transposed(LinearMap):
    """Aᵀ of an operator A (its ``rmatvec`` as the product)."""

    def __init__(self, operator: LinearMap) -> None:
        self.operator = operator
        self.shape = (operator.shape[1], operator.shape[0])
        self.device, self.dtype = operator.device, operator.dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator.rmatvec(x)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        return self.operator.matvec(y)

    @property
    def T(self) -> LinearMap:
        return self.operator


class DenseMatrix(LinearMap):
    """An explicit matrix as an operator (tests, small examples)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix
        self.shape = (int(matrix.shape[0]), int(matrix.shape[1]))
        self.device, self.dtype = matrix.device, matrix.dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.matrix @ x

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        return self.matrix.T @ y


class Composed(LinearMap):
    """A·M of an operator A: R^k → R^p and M: R^k → R^k (a right preconditioner): x ↦ A(Mx), y ↦ Mᵀ(Aᵀy). Counted,
    each of its products costs one product of A (one Hessian-vector product for A = H[:, T])."""

    def __init__(self, operator: LinearMap, right: LinearMap) -> None:
        if operator.shape[1] != right.shape[0]:
            raise ValueError(f"Cannot compose a {operator.shape} operator with a {right.shape} one.")
        self.operator, self.right = operator, right
        self.shape = (operator.shape[0], right.shape[1])
        self.device, self.dtype = operator.device, operator.dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator.matvec(self.right.matvec(x))

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        return self.right.rmatvec(self.operator.rmatvec(y))


class Normal(LinearMap):
    """AᵀA + δI of an operator A (k×k, symmetric positive semi-definite; two products of A each)."""

    def __init__(self, operator: LinearMap, damping: float = 0.0) -> None:
        self.operator, self.damping = operator, damping
        k = operator.shape[1]
        self.shape, self.device, self.dtype = (k, k), operator.device, operator.dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator.rmatvec(self.operator.matvec(x)) + self.damping * x

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        return self.matvec(y)


class Counted(LinearMap):
    """An operator that counts its products (``matvec`` and ``rmatvec`` alike): the Hessian-vector products a
    solver spends."""

    def __init__(self, operator: LinearMap) -> None:
        self.operator, self.calls = operator, 0
        self.shape, self.device, self.dtype = operator.shape, operator.device, operator.dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.operator.matvec(x)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.operator.rmatvec(y)
