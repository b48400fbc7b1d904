"""A flat view of a model's trainable parameters.

Every estimator in :mod:`gif_core.influence` works on one flat vector θ ∈ R^p: the model's trainable parameters
in ``named_parameters()`` order, each flattened row-major. :class:`ParamSpace` records the names, shapes and
offsets of that layout, and the unit structure of every ``Linear``/``Conv`` layer (a neuron — an output
unit or a conv channel, of a depthwise conv too — owns its whole fan-in row of the weight plus its bias entry, and,
when the conv's output goes straight into a BatchNorm and nowhere else, that BatchNorm's scale γ_j and shift β_j of
the same channel: they act on that channel alone) and of every ``nn.MultiheadAttention`` with a packed input
projection (a head h of H, head width d = E/H, owns the 3d rows of ``in_proj_weight`` [3E, E] that compute its
queries, keys and values — rows s·E + h·d + k for s = q, k, v and k < d — and their ``in_proj_bias`` entries; the
output projection ``out_proj`` is a Linear layer of its own, so units never overlap). Indices into the flat vector
are always derived from parameter *names*, never from module iteration order; which BatchNorm normalises which
conv is read from the model's data flow (its ``torch.fx`` graph, traced symbolically; a model that cannot be traced
keeps its BatchNorms as separate tensors).

Edits never touch the caller's model: :func:`apply_delta` returns a deep copy holding θ + step·Δ.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn

_NEURON_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
UNIT_NAMES = {"linear": "neuron", "conv": "channel", "depthwise": "channel", "attention": "head"}
"""What one unit of each layer kind is called."""


@dataclass(frozen=True)
class ParamBlock:
    """One named parameter tensor inside the flat vector: entries ``[offset, offset + numel)``."""

    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


@dataclass(frozen=True)
class NeuronLayer:
    """A module whose units (neurons, channels or attention heads) the neuron selectors pick.

    The weight is a matrix of ``n_rows`` rows of ``fan_in`` entries. Unit j owns the rows :meth:`unit_rows` gives
    (row j of a Linear/Conv; the 3d query/key/value rows of head j of an attention layer, module docstring), the
    entries of the bias at those rows and entry j of each ``channel_blocks`` tensor (the affine γ and β of the
    BatchNorm that normalises a conv's output), so a unit has
    ``neuron_size = rows_per_unit · (fan_in + (1 if bias else 0)) + len(channel_blocks)`` parameters.
    """

    module: str
    kind: str  # "linear", "conv", "depthwise" or "attention" (see UNIT_NAMES)
    n_neurons: int
    fan_in: int
    weight: ParamBlock
    bias: ParamBlock | None
    channel_blocks: tuple[ParamBlock, ...] = ()

    def __post_init__(self) -> None:
        if self.channel_blocks and self.rows_per_unit != 1:
            raise ValueError("Channel blocks (a BatchNorm's γ, β) belong to one-row units only")
        if self.n_rows % self.rows_per_unit or (self.kind == "attention" and self.n_rows % 3):
            raise ValueError(f"{self.module}: {self.n_rows} weight rows do not split into {self.n_neurons} units")

    @property
    def n_rows(self) -> int:
        return self.weight.shape[0]

    @property
    def rows_per_unit(self) -> int:
        return self.n_rows // self.n_neurons

    def unit_rows(self, units: torch.Tensor | None = None) -> torch.Tensor:
        """The weight rows of each unit, [len(units), rows_per_unit] (all units when None): row j for unit j of a
        Linear/Conv; rows s·E + h·d + k (s = q, k, v; k < d) for head h of an attention layer."""
        units = torch.arange(self.n_neurons) if units is None else torch.as_tensor(units, dtype=torch.long)
        units = units.reshape(-1)
        if self.kind != "attention":
            return units[:, None]
        embed = self.n_rows // 3
        width = embed // self.n_neurons
        within = (torch.arange(3)[:, None] * embed + torch.arange(width)[None, :]).reshape(-1)
        return units[:, None] * width + within[None, :]

    @property
    def neuron_size(self) -> int:
        bias = 1 if self.bias is not None else 0
        return self.rows_per_unit * (self.fan_in + bias) + len(self.channel_blocks)

    @property
    def numel(self) -> int:
        return self.n_neurons * self.neuron_size

    def neuron_indices(self, neurons: torch.Tensor) -> torch.Tensor:
        """Flat indices of all parameters owned by the given units: their weight rows (unit by unit), then their
        bias entries, then their channel-block entries (int64)."""
        neurons = torch.as_tensor(neurons, dtype=torch.long).reshape(-1)
        rows = self.unit_rows(neurons).reshape(-1)
        entry = torch.arange(self.fan_in, dtype=torch.long)
        weight_idx = (self.weight.offset + rows[:, None] * self.fan_in + entry[None, :]).reshape(-1)
        bias_idx = [self.bias.offset + rows] if self.bias is not None else []
        return torch.cat([weight_idx, *bias_idx, *(block.offset + neurons for block in self.channel_blocks)])

    def unit_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Σ of a flat per-parameter vector over each unit's parameters, [n_neurons]."""
        return self._per_unit(values, torch.Tensor.sum)

    def units_fully_in(self, mask: torch.Tensor) -> torch.Tensor:
        """Which units have every parameter in the flat boolean ``mask``, bool [n_neurons]."""
        return self._per_unit(mask, torch.Tensor.all)

    def _per_unit(self, values: torch.Tensor, reduce: Callable[..., torch.Tensor]) -> torch.Tensor:
        weight = values[self.weight.offset : self.weight.offset + self.weight.numel].view(self.n_rows, self.fan_in)
        rows = [weight]
        if self.bias is not None:
            rows.append(values[self.bias.offset : self.bias.offset + self.n_rows, None])
        per_row = reduce(torch.cat(rows, 1), 1)
        per_unit = [reduce(per_row[self.unit_rows()], 1)]
        per_unit += [values[block.offset : block.offset + self.n_neurons, None] for block in self.channel_blocks]
        return reduce(torch.stack([part.reshape(self.n_neurons) for part in per_unit], 1), 1)


@dataclass(frozen=True)
class ParamSpace:
    """Layout of a model's trainable parameters as one flat vector (see module docstring)."""

    blocks: tuple[ParamBlock, ...]
    layers: tuple[NeuronLayer, ...]

    @classmethod
    def from_model(cls, model: nn.Module) -> ParamSpace:
        blocks: list[ParamBlock] = []
        offset = 0
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            blocks.append(ParamBlock(name, tuple(param.shape), offset, param.numel()))
            offset += param.numel()
        if not blocks:
            raise ValueError("The model has no trainable parameters: nothing to edit.")
        by_name = {b.name: b for b in blocks}
        normalised_by = _batch_norm_of_each_conv(model)
        layers: list[NeuronLayer] = []
        for module_name, module in model.named_modules():
            if isinstance(module, nn.MultiheadAttention):
                heads = _attention_layer(module_name, module, by_name)
                layers += [heads] if heads is not None else []
                continue
            if not isinstance(module, _NEURON_MODULES):
                continue
            weight = by_name.get(f"{module_name}.weight" if module_name else "weight")
            if weight is None:
                continue
            bias = by_name.get(f"{module_name}.bias" if module_name else "bias")
            n_out = weight.shape[0]
            kind = "linear" if isinstance(module, nn.Linear) else "depthwise" if is_depthwise(module) else "conv"
            norm = normalised_by.get(module_name)
            affine = [by_name.get(f"{norm}.{name}") for name in ("weight", "bias")] if norm is not None else []
            channel = tuple(block for block in affine if block is not None and block.numel == n_out)
            layers.append(NeuronLayer(module_name, kind, n_out, weight.numel // n_out, weight, bias, channel))
        return cls(tuple(blocks), tuple(layers))

    @property
    def numel(self) -> int:
        last = self.blocks[-1]
        return last.offset + last.numel

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.blocks)

    def block(self, name: str) -> ParamBlock:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"No trainable parameter named {name!r}; known: {', '.join(self.names)}")

    def layer(self, module: str) -> NeuronLayer:
        for layer in self.layers:
            if layer.module == module:
                return layer
        raise KeyError(f"No Linear/Conv layer named {module!r}; known: {', '.join(l.module for l in self.layers)}")

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate named tensors (parameters, gradients, …) into one flat vector in this layout."""
        missing = [b.name for b in self.blocks if b.name not in tensors]
        if missing:
            raise ValueError(f"Missing tensors for parameters: {', '.join(missing)}")
        return torch.cat([tensors[b.name].reshape(-1) for b in self.blocks])

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector into named views shaped like the parameters."""
        self.check_vector(vector)
        return {b.name: vector[b.offset : b.offset + b.numel].view(b.shape) for b in self.blocks}

    def check_vector(self, vector: torch.Tensor, what: str = "vector") -> None:
        if vector.ndim != 1 or vector.numel() != self.numel:
            raise ValueError(f"{what} must be a flat vector of {self.numel} entries, got shape {tuple(vector.shape)}")

    def mask_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(self.numel, dtype=torch.bool)
        mask[torch.as_tensor(indices, dtype=torch.long)] = True
        return mask


def is_depthwise(module: nn.Module) -> bool:
    """A conv whose every output channel reads one input channel (groups = in_channels > 1)."""
    return isinstance(module, _CONVS) and module.groups > 1 and module.groups == module.in_channels


def _attention_layer(name: str, module: nn.MultiheadAttention, by_name: dict[str, ParamBlock]) -> NeuronLayer | None:
    """The heads of a MultiheadAttention with a packed, trainable ``in_proj_weight`` (module docstring); None for
    separate q/k/v projections (key or value width ≠ embedding width), whose weights no neuron selector picks."""
    prefix = f"{name}." if name else ""
    weight = by_name.get(f"{prefix}in_proj_weight")
    if weight is None:
        return None
    bias = by_name.get(f"{prefix}in_proj_bias")
    return NeuronLayer(name, "attention", module.num_heads, module.embed_dim, weight, bias)


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _OneThreadTracer(fx.Tracer):
    """``torch.fx``'s symbolic tracer, confined to the thread that traces.

    Symbolic tracing patches ``nn.Module.__call__`` and ``nn.Module.__getattr__`` for the whole process while it
    runs, so a forward pass in another thread meanwhile (the dashboard predicts in its script thread while a
    background job reads the model's layers) was routed into this trace: it failed with "module is not installed as
    a submodule", or, on the traced model itself, would have received proxies for its parameters. Calls from other
    threads run as if nothing were patched."""

    def trace(self, root, concrete_args=None):  # type: ignore[no-untyped-def]
        self._tracing_thread = threading.get_ident()
        return super().trace(root, concrete_args)

    def _foreign(self) -> bool:
        return threading.get_ident() != self._tracing_thread

    def call_module(self, m, forward, args, kwargs):  # type: ignore[no-untyped-def]
        return forward(*args, **kwargs) if self._foreign() else super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):  # type: ignore[no-untyped-def]
        return attr_val if self._foreign() else super().getattr(attr, attr_val, parameter_proxy_cache)


def _batch_norm_of_each_conv(model: nn.Module) -> dict[str, str]:
    """{conv module name: the BatchNorm module normalising its output}, for each Conv whose output is used by one
    affine BatchNorm of as many channels and by nothing else, read from the model's ``torch.fx`` graph (the model's
    own, or traced symbolically). Empty for a model without BatchNorm or one that cannot be traced."""
    modules = dict(model.named_modules())
    if not any(isinstance(m, _BATCH_NORMS) and m.affine for m in modules.values()):
        return {}
    try:
        graph = model.graph if isinstance(model, fx.GraphModule) else _OneThreadTracer().trace(model)
    except Exception:  # dynamic control flow, untraceable ops: BatchNorms stay separate tensors (stated above)
        return {}
    partners: dict[str, str] = {}
    for node in graph.nodes:
        norm = modules.get(str(node.target)) if node.op == "call_module" else None
        if not (isinstance(norm, _BATCH_NORMS) and norm.affine and node.args):
            continue
        source = node.args[0]
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        conv = modules.get(str(source.target))
        if isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d) and conv.out_channels == norm.num_features:
            partners[str(source.target)] = str(node.target)
    return partners


def embed(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """A flat vector of ``size`` zeros with ``values`` scattered at ``index`` (a vector over T, put in the full space)."""
    full = torch.zeros(size, device=values.device, dtype=values.dtype)
    full[index] = values
    return full


def parameters_of(model: nn.Module, space: ParamSpace) -> dict[str, torch.Tensor]:
    """The model's trainable parameters as a detached ``{name: tensor}`` dict in ``space``'s layout."""
    named = dict(model.named_parameters())
    return {b.name: named[b.name].detach() for b in space.blocks}


def flat_parameters(model: nn.Module, space: ParamSpace | None = None) -> torch.Tensor:
    """θ as one detached flat vector."""
    space = space or ParamSpace.from_model(model)
    return space.flatten(parameters_of(model, space))


def shifted_parameters(
    model: nn.Module, space: ParamSpace, delta: torch.Tensor, step: float = 1.0
) -> dict[str, torch.Tensor]:
    """The trainable parameters θ + step·Δ as new detached tensors by name (``model`` is left untouched).

    Raises ``ValueError`` when Δ has the wrong size or holds a NaN/inf (an edit is never applied silently).
    """
    space.check_vector(delta, "delta")
    if not torch.isfinite(delta).all():
        raise ValueError("The update Δ contains NaN or inf values; refusing to apply it (check the solver report).")
    if not torch.isfinite(torch.as_tensor(step)):
        raise ValueError(f"step must be a finite number, got {step}")
    named = dict(model.named_parameters())
    return {
        name: named[name].detach() + float(step) * piece.to(device=named[name].device, dtype=named[name].dtype)
        for name, piece in space.unflatten(delta).items()
    }


def apply_delta(model: nn.Module, space: ParamSpace, delta: torch.Tensor, step: float = 1.0) -> nn.Module:
    """Return a NEW model (deep copy) whose trainable parameters are θ + step·Δ (:func:`shifted_parameters`);
    ``model`` is left untouched. A non-finite θ + step·Δ raises FloatingPointError."""
    shifted = shifted_parameters(model, space, delta, step)
    if not all(bool(torch.isfinite(value).all()) for value in shifted.values()):
        raise FloatingPointError(f"θ + α·Δ is not finite at α = {step:g}: the edit overflows there")
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in edited.named_parameters():
            if name in shifted:
                param.copy_(shifted[name])
    return edited


def state_hash(model: nn.Module) -> str:
    """SHA-256 of the model's full state dict (names, dtypes, shapes and values), for 'was it modified?' checks."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
