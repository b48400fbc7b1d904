"""Gradients and Hessian-vector products of the training objective, with ``torch.func``.

The objective (DESIGN.md section 2, defined once in :mod:`gif_core.objective`): per-sample loss ℓ_i(θ) = CE(f_θ(x_i), y_i) + (λ/2)·|θ|², so that the
training objective L(θ) = mean_i ℓ_i(θ) = mean_i CE_i + (λ/2)|θ|² includes the weight decay λ the model was trained
with (coupled L2, as torch's SGD/Adam ``weight_decay`` applies it). Putting the regulariser inside every ℓ_i makes
the removal identity exact: at a stationary θ, −∇L_{S∖U}(θ) = (m/(n−m))·mean_{i∈U} ∇ℓ_i(θ).

:class:`Curvature` evaluates, over a fixed Hessian sample,

    H v = (∇²L(θ) + δ·I) v          (δ = damping ≥ 0)

by forward-over-reverse differentiation (``jvp`` of ``grad``), batch by batch: memory is bounded by one batch, and no
autograd graph survives a call. With ``linearize=True`` (a fixed tensor sample only) the map v ↦ ∇²CE·v of each batch
is traced once with ``torch.func.linearize`` at θ: the primal forward and backward passes are computed once and kept
(their activations stay in memory for the object's lifetime), and every later product evaluates only the tangent
pass, about the cost of one gradient instead of 2.5 (benchmarks/results/hvp.md). The products are the same numbers;
the one-off trace costs roughly ten plain products, so it pays off for solves that share one :class:`Curvature`. With ``gauss_newton=True`` the generalised Gauss-Newton matrix Jᵀ(diag p − ppᵀ)J/N
(+ λI + δI) replaces ∇²CE; it is positive semi-definite.

Sharded over ranks (``distributed=True``, the default, and a torch.distributed process group of N ≥ 2 ranks, e.g.
under ``torchrun``): rank r keeps only its contiguous shard of the Hessian sample's rows
(:func:`gif_core.distributed.shard_rows`), ``n_samples`` stays the global count N_s = Σ_r |shard_r|, and every sum
over rows is a partial sum per rank, all-reduced:

    H v = Σ_r Σ_{i∈shard_r} w_i ∇²CE_i v + (λ + δ) v,   w_i = 1/N_s

and likewise the gradient mean_i ∇ℓ_i over the rows given to :meth:`Curvature.gradient` (each rank takes its shard
of them) and the diagonal Fisher. Every rank returns the single-process value up to the order of float additions,
and all ranks return the same bits, so a solver run on every rank stays in lock-step. Every rank must therefore
build and call the object identically, with the same data: the rows are checked by a digest across ranks. Per-sample
gradients are sharded only when asked (``shard=True``): each rank then yields its own rows.

The model is evaluated in eval mode on a private copy: BatchNorm uses its running statistics and dropout is off,
so the Hessian is that of the deterministic network the user evaluates. The caller's model is never touched.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property, partial
from typing import ClassVar, cast

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, linearize, vjp, vmap

from gif_core import distributed
from gif_core.constraints import MAX_REGULARISER, Alternatives, InstanceOf, Interval, validate
from gif_core.objective import data_loss
from gif_core.params import ParamSpace, parameters_of, state_hash

Batches = tuple[torch.Tensor, torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]]

FORWARD_MODE = threading.Lock()
"""Held around every forward-mode (``jvp``) computation here, the linearisation's trace included. torch keeps
forward-mode AD levels per process, not per thread: two threads inside ``jvp`` at once fail ("Nested forward mode AD
is not supported", or an internal assert), as two dashboard sessions — or a page and its background preparation —
would. A traced product (:attr:`Curvature.linearizes`) runs plain tensor operations and needs no lock."""


@dataclass(frozen=True)
class CurvatureConfig:
    """How H is evaluated: weight decay λ of the objective, extra damping δ, batch size, Gauss-Newton or not,
    and the precision of the products (``dtype``; None = the model's own). GIF's normal equations square the
    condition number of H_{:,T}, so float32 products stall Krylov solves around a 1e-2 relative residual on a
    trained CNN where float64 products reach 1e-4 (see benchmarks/results/engine.md).

    ``distributed``: shard the rows over torch.distributed's default process group when it has ≥ 2 ranks (see the
    module docstring; no effect without one). Set it False for a :class:`Curvature` that only some ranks build.
    """

    weight_decay: float = 0.0
    damping: float = 0.0
    batch_size: int = 512
    gauss_newton: bool = False
    dtype: torch.dtype | None = None
    linearize: bool = False
    distributed: bool = True

    CONSTRAINTS: ClassVar[dict[str, Alternatives]] = {
        "weight_decay": (Interval(0, MAX_REGULARISER),),
        "damping": (Interval(0, MAX_REGULARISER),),
        "batch_size": (Interval(1, None, integer=True),),
        "gauss_newton": (InstanceOf(bool),),
        "dtype": (InstanceOf(torch.dtype), None),
        "linearize": (InstanceOf(bool),),
        "distributed": (InstanceOf(bool),),
    }

    def __post_init__(self) -> None:
        validate(self)


def _need_weights(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A MultiheadAttention forward pre-hook: call it with ``need_weights=True`` (see
    :func:`_attention_in_composite_form`)."""
    if len(args) > 4:  # forward(query, key, value, key_padding_mask, need_weights, ...) called positionally
        args = (*args[:4], True, *args[5:])
    else:
        kwargs = {**kwargs, "need_weights": True}
    return args, kwargs


def _attention_in_composite_form(model: nn.Module) -> nn.Module:
    """``model`` (a private copy) with each MultiheadAttention computing softmax(QKᵀ/√d)V by composite operations.

    With ``need_weights=False`` (torchvision's ViT, most transformers) a MultiheadAttention calls the fused
    scaled-dot-product kernel, which has no forward-mode derivative and no second derivative on the CPU, so neither
    a Hessian-vector product nor a per-sample gradient could go through it. With ``need_weights=True`` the same
    function is computed by ``bmm`` and ``softmax`` (differentiable twice); the attention weights it also returns
    are what the model's code discards. The output differs only by rounding."""
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention) and _need_weights not in module._forward_pre_hooks.values():
            module.register_forward_pre_hook(_need_weights, with_kwargs=True)
    return model


class Curvature:
    """Gradients and Hessian-vector products of L over one Hessian sample (see module docstring).

    ``sample`` is either a pair of tensors ``(inputs, labels)`` or a re-iterable of ``(inputs, labels)`` batches
    such as a ``DataLoader`` (a re-iterable is never sharded: it raises under a process group unless
    ``config.distributed`` is False). Vectors are flat, in ``space``'s layout, on any device; results come back on the
    model's device in the model's dtype.
    """

    def __init__(self, model: nn.Module, sample: Batches, config: CurvatureConfig | None = None) -> None:
        self.config = config or CurvatureConfig()
        self._model = _attention_in_composite_form(copy.deepcopy(model).eval())
        if self.config.dtype is not None:
            self._model.to(self.config.dtype)
        self.space = ParamSpace.from_model(self._model)
        self._params = parameters_of(self._model, self.space)
        self._frozen = {
            name: t.detach()
            for name, t in [*self._model.named_parameters(), *self._model.named_buffers()]
            if name not in self._params
        }
        first = next(iter(self._params.values()))
        self.device, self.dtype = first.device, first.dtype
        self._world = distributed.world() if self.config.distributed else None
        self._tensor_sample = isinstance(sample, tuple) and len(sample) == 2 and torch.is_tensor(sample[0])
        if self._world is not None and not self._tensor_sample:
            raise ValueError(
                "A sharded Curvature needs its sample as an (inputs, labels) pair of tensors; pass "
                "CurvatureConfig(distributed=False) to evaluate a data loader whole on every rank."
            )
        self._sample: Batches = sample
        if self._tensor_sample:
            inputs, labels = cast(tuple[torch.Tensor, torch.Tensor], sample)  # a tensor pair: checked just above
            self._sample = self._local_rows(inputs, labels, "the Hessian sample")
        self.n_samples = int(self.sum_over_ranks(torch.tensor(sum(len(y) for _, y in self._batches()))))
        if self.n_samples == 0:
            raise ValueError("The Hessian sample is empty: give at least one training sample.")

    # -- plumbing -------------------------------------------------------------------------------------------
    def shard_of(self, n: int) -> slice:
        """The rows of n given rows that this rank holds (all of them when not sharded)."""
        if self._world is None:
            return slice(0, n)
        return distributed.shard_rows(n, self._world.rank, self._world.size)

    def _local_rows(self, inputs: torch.Tensor, labels: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's shard of the given rows, after checking that every rank was given the same rows."""
        if len(inputs) != len(labels):
            raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) differ in length")
        if self._world is None:
            return inputs, labels
        distributed.check_replicated(what, inputs, labels)
        rows = self.shard_of(len(labels))
        return inputs[rows], labels[rows]

    def sum_over_ranks(self, local: torch.Tensor) -> torch.Tensor:
        """The sum of ``local`` over the ranks, in place (``local`` itself when not sharded)."""
        return distributed.all_reduce_sum(local) if self._world is not None else local

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._tensor_sample:
            inputs, labels = cast(tuple[torch.Tensor, torch.Tensor], self._sample)  # see __init__
            yield from _chunks(inputs, labels, self.config.batch_size, self.device, self.dtype)
        else:
            for inputs, labels in self._sample:
                yield inputs.to(self.device, self.dtype), labels.to(self.device)

    def _logits(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(self._model, {**self._frozen, **params}, (inputs,))

    def _mean_ce(self, params: dict[str, torch.Tensor], inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return data_loss(self._logits(params, inputs), labels)

    def _as_params(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        self.space.check_vector(vector)
        return self.space.unflatten(vector.to(self.device, self.dtype))

    @cached_property
    def model_hash(self) -> str:
        """SHA-256 of the (private copy of the) model's state dict, in the products' precision."""
        return state_hash(self._model)

    @property
    def module(self) -> nn.Module:
        """The private copy of the model whose ``forward`` every gradient and product here runs (a forward hook on
        it sees each batch pass: :mod:`gif_core.interrupt`). Read-only: changing it changes every result."""
        return self._model

    @property
    def theta(self) -> torch.Tensor:
        return self.space.flatten(self._params)

    @property
    def linearizes(self) -> bool:
        """Whether products go through the cached linearisation (``config.linearize`` and a tensor sample)."""
        return self.config.linearize and not self.config.gauss_newton and self._tensor_sample

    @cached_property
    def _linearized(self) -> list[tuple[Callable[[dict], dict], float]]:
        """Per batch: v ↦ ∇²CE_batch·v traced once at θ (``torch.func.linearize``), and the batch's weight."""
        out = []
        with FORWARD_MODE, warnings.catch_warnings():  # torch's tracer warns about its internals (jit, const_fold)
            warnings.filterwarnings("ignore", module=r"torch\.(jit|fx)\.")
            for inputs, labels in self._batches():
                _, tangent_map = linearize(partial(self._loss_grad, inputs=inputs, labels=labels), self._params)
                out.append((tangent_map, len(labels) / self.n_samples))
        return out

    def warm(self) -> Curvature:
        """Do the one-off work of later products now (the linearisation, when :attr:`linearizes`); returns self."""
        if self.linearizes:
            _ = self._linearized
        return self

    # -- products -------------------------------------------------------------------------------------------
    def hvp(self, vector: torch.Tensor) -> torch.Tensor:
        """(∇²L(θ) + δI)·v over the Hessian sample (∇²L includes the weight decay λ; see module docstring)."""
        tangent = self._as_params(vector)
        total = torch.zeros(self.space.numel, device=self.device, dtype=self.dtype)
        if self.linearizes:
            for tangent_map, weight in self._linearized:
                total += self.space.flatten(tangent_map(tangent)).detach() * weight
        else:
            product = self._gauss_newton_batch if self.config.gauss_newton else self._hessian_batch
            for inputs, labels in self._batches():
                total += product(tangent, inputs, labels) * (len(labels) / self.n_samples)
        self.sum_over_ranks(total)
        v = self.space.flatten(tangent)
        result = total + (self.config.weight_decay + self.config.damping) * v
        _check_finite(result, "Hessian-vector product")
        return result

    def _loss_grad(self, params: dict[str, torch.Tensor], inputs: torch.Tensor, labels: torch.Tensor) -> dict:
        return grad(self._mean_ce)(params, inputs, labels)

    def _hessian_batch(self, tangent: dict, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with FORWARD_MODE:
            # torch annotates jvp/vjp with the has_aux=True 3-tuple too (no overloads); without aux they return 2
            _, hv = jvp(partial(self._loss_grad, inputs=inputs, labels=labels), (self._params,), (tangent,))  # type: ignore[misc]
        return self.space.flatten(hv).detach()

    def _gauss_newton_batch(self, tangent: dict, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        def logits_of(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return self._logits(params, inputs)

        with FORWARD_MODE:
            logits, jv = jvp(logits_of, (self._params,), (tangent,))  # type: ignore[misc]  # 2-tuple without has_aux
        probs = torch.softmax(logits, dim=-1)
        h_out_jv = probs * jv - probs * (probs * jv).sum(-1, keepdim=True)
        _, pullback = vjp(logits_of, self._params)  # type: ignore[misc]  # 2-tuple without has_aux
        (gv,) = pullback(h_out_jv / len(labels))
        return self.space.flatten(gv).detach()

    # -- gradients ------------------------------------------------------------------------------------------
    def gradient(self, inputs: torch.Tensor, labels: torch.Tensor, *, regulariser: bool = True) -> torch.Tensor:
        """mean_i ∇ℓ_i(θ) over the given samples (with the λθ term of the weight decay unless ``regulariser``
        is False). Computed batch by batch; no graph is kept. Sharded, each rank sums its shard of the rows with
        weights 1/n (n = all given rows) and the partial sums are all-reduced."""
        if len(labels) == 0:
            raise ValueError("Cannot take the gradient of an empty set of samples.")
        n = len(labels)
        local_inputs, local_labels = self._local_rows(inputs, labels, "the samples of a gradient")
        total = torch.zeros(self.space.numel, device=self.device, dtype=self.dtype)
        for x, y in _chunks(local_inputs, local_labels, self.config.batch_size, self.device, self.dtype):
            g = grad(self._mean_ce)(self._params, x, y)
            total += self.space.flatten(g).detach() * (len(y) / n)
        self.sum_over_ranks(total)
        if regulariser:
            total += self.config.weight_decay * self.theta
        _check_finite(total, "gradient")
        return total

    def per_sample_gradients(
        self, inputs: torch.Tensor, labels: torch.Tensor, *, regulariser: bool = True, shard: bool = False
    ) -> Iterator[torch.Tensor]:
        """Yield ∇ℓ_i(θ) for every given sample, as [batch, p] blocks (``torch.func.vmap`` over a batch).

        With ``shard=True`` on a sharded object, each rank yields only its rows, ``shard_of(len(labels))``, in order.
        A consumer reduces them where it can (a sum: :func:`gif_core.distributed.all_reduce_sum`) or assembles
        per-row results, e.g. scores, with ``distributed.assemble_rows(local, curvature.shard_of(n), n)``.
        """
        if shard:
            inputs, labels = self._local_rows(inputs, labels, "the samples of per-sample gradients")
        batches = _chunks(inputs, labels, self.config.batch_size, self.device, self.dtype)
        return self._per_sample_blocks(batches, regulariser)

    def sample_gradients(self, *, regulariser: bool = True) -> Iterator[torch.Tensor]:
        """Yield ∇ℓ_i(θ) for every sample of the Hessian sample that this rank holds, as [batch, p] blocks (sharded,
        a consumer all-reduces what it sums over them: :meth:`sum_over_ranks`; the global count is ``n_samples``)."""
        return self._per_sample_blocks(self._batches(), regulariser)

    def fisher_diagonal(self) -> torch.Tensor:
        """Diagonal empirical Fisher over the Hessian sample: mean_i (∇CE_i)² (no regulariser; sharded, the
        ranks' sums over their rows are all-reduced before dividing by the global count)."""
        total = torch.zeros(self.space.numel, device=self.device, dtype=self.dtype)
        for block in self.sample_gradients(regulariser=False):
            total += block.square().sum(0)
        return self.sum_over_ranks(total) / self.n_samples

    def _per_sample_blocks(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], regulariser: bool
    ) -> Iterator[torch.Tensor]:
        def one_loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self._mean_ce(params, x.unsqueeze(0), y.unsqueeze(0))

        per_sample = vmap(grad(one_loss), in_dims=(None, 0, 0))
        for x, y in batches:
            grads = per_sample(self._params, x, y)
            block = torch.cat([grads[b.name].reshape(len(y), -1) for b in self.space.blocks], dim=1).detach()
            if regulariser and self.config.weight_decay:
                block += self.config.weight_decay * self.theta
            _check_finite(block, "per-sample gradient")
            yield block

    @property
    def sharded(self) -> bool:
        """Whether this object holds only its rank's shard of the Hessian sample."""
        return self._world is not None

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The Hessian sample (this rank's rows) as ``(inputs, labels)`` batches on the model's device and dtype."""
        return self._batches()

    def with_sample(self, sample: Batches, config: CurvatureConfig | None = None) -> Curvature:
        """The same model and objective over another sample (e.g. the questioned data U)."""
        return Curvature(self._model, sample, config or self.config)


def _chunks(
    inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device, dtype: torch.dtype
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if len(inputs) != len(labels):
        raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) differ in length")
    for start in range(0, len(labels), batch_size):
        yield (
            inputs[start : start + batch_size].to(device, dtype),
            labels[start : start + batch_size].to(device, torch.long),
        )


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    if not torch.isfinite(tensor).all():
        raise FloatingPointError(
            f"The {what} contains NaN or inf: the model or data produce non-finite losses "
            "(check the inputs' scale and the checkpoint)."
        )
