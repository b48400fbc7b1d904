"""Which parameters an edit may move: the GIF paper's selectors, made exact, and the :class:`Selection` type.

Neuron selectors score every unit j — output neuron of a Linear layer, channel of a Conv (depthwise too), head of
an ``nn.MultiheadAttention`` — on the questioned data U and select whole units (a neuron's fan-in row of the weight
plus its bias entry; a head's query, key and value rows; see :class:`~gif_core.params.NeuronLayer`):

* ``output``    score_j = |mean over U (and positions: pixels of a conv map, tokens of a sequence) of the layer
  output a_j|; a head's score is the mean of that over its d outputs (the head's attention-weighted values, before
  the output projection);
* ``gradient``  score_j = |mean over U (and positions) of ∂E/∂a_j| (a head's: the mean over its d outputs), where
  E is the edit's own loss on U:
  mean_i ℓ(x_i, y_i) for removals, mean_i [ℓ(x_i, y_i) − ℓ(x_i, y'_i)] for label changes (the direction of g);
* ``lowest-output`` / ``lowest-gradient``  the same scores, lowest first (the paper's ablation);
* ``random``    neurons drawn uniformly with a seeded generator;
* ``curvature`` score_j = Σ_{params of j} g² / (F_retain + ε): parameters the questioned data pulls on hard but the
  retained data barely constrains (F_retain is the diagonal empirical Fisher over the Hessian sample minus U; the idea
  behind Selective Synaptic Dampening's importance ratio). All neurons of a layer have the same size, so ranking by
  this score is ranking by score per parameter.
* ``ekfac``     score_j = Σ_{params of j} Δ², Δ = (EK-FAC(G) + (λ + δ)I)⁻¹ g (:mod:`gif_core.ekfac`): the neurons the
  EK-FAC influence update of the request moves most (the reference code's EK-FAC-based selection; every trainable
  parameter must lie in a Linear/Conv2d module).
* ``param-gradient`` the individual parameters with the largest |g|, anywhere (not neuron-wise).

Budget: ``ratio`` of all trainable parameters, spent in whole neurons, and never zero neurons in a layer:

* ``per-layer`` (the paper's rule): layer l (N_l neurons of s_l parameters, P_l = N_l·s_l) gets
  n_l = min(N_l, max(1, round(ratio·P_l / s_l))) neurons — its share rounded to the nearest whole neuron, but at
  least one. Without that floor a layer whose share is under half a neuron gets nothing: at 5% the bundled CNN's
  classifier head (10 rows of 65 parameters, share 32.5) was left out of every edit, and the head is where a class
  lives. The floor can only add: the obtained ratio exceeds the asked one by at most one neuron per layer whose
  share rounds to zero (reported as ``ratio_obtained``; e.g. 2.2% for 1% of the bundled CNN).
* ``global``: first the best-scoring neuron of every layer (the same floor), then all remaining neurons ranked
  together by their score divided by their layer's mean score, added greedily while they fit in ratio·ΣP_l.

A BatchNorm that normalises a conv's output (and nothing else uses that output) belongs to the conv's channels: its
γ_j and β_j are picked with channel j (:class:`~gif_core.params.NeuronLayer`). Other parameters outside
Linear/Conv/attention layers (LayerNorm, embeddings, a ViT's class token) are never picked by the neuron selectors.
Hooks are registered on a private copy of the model and always removed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from gif_core.constraints import Alternatives, Interval, OneOf, validate
from gif_core.ekfac import ekfac_inverse
from gif_core.params import NeuronLayer, ParamSpace, is_depthwise
from gif_core.problem import EditProblem

NEURON_METHODS = ("output", "gradient", "lowest-output", "lowest-gradient", "random", "curvature", "ekfac")
REQUEST_METHODS = ("curvature", "ekfac", "param-gradient")
"""Selectors that need an edit request (a retained set, a Hessian sample, a g), not bare data."""
METHODS = (*NEURON_METHODS, "param-gradient")
BUDGETS = ("per-layer", "global")


@dataclass(frozen=True)
class SelectionConfig:
    method: str = "gradient"
    ratio: float = 0.05
    budget: str = "per-layer"
    seed: int = 0
    fisher_epsilon: float = 1e-8
    batch_size: int = 512

    CONSTRAINTS: ClassVar[dict[str, Alternatives]] = {
        "method": (OneOf(METHODS),),
        "ratio": (Interval(0, 1, closed="right"),),
        "budget": (OneOf(BUDGETS),),
        "seed": (Interval(0, None, integer=True),),
        "fisher_epsilon": (Interval(0, None, closed="neither"),),
        "batch_size": (Interval(1, None, integer=True),),
    }

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class LayerSummary:
    """Per-layer view for plotting: how many parameters/neurons were picked, and which neurons."""

    module: str
    kind: str
    n_params: int
    n_selected: int
    n_neurons: int
    selected_neurons: torch.Tensor  # bool [n_neurons]: every parameter of the neuron is selected
    scores: torch.Tensor | None  # float [n_neurons], None for random / param-gradient

    @property
    def fraction(self) -> float:
        return self.n_selected / self.n_params


@dataclass(frozen=True)
class Selection:
    """A boolean mask over the flat parameter space, with what was asked and what was obtained."""

    mask: torch.Tensor
    method: str
    ratio_asked: float
    layers: tuple[LayerSummary, ...]

    @property
    def n_selected(self) -> int:
        return int(self.mask.sum())

    @property
    def ratio_obtained(self) -> float:
        return self.n_selected / self.mask.numel()

    @property
    def indices(self) -> torch.Tensor:
        return torch.nonzero(self.mask).reshape(-1)

    def overlap(self, other: Selection) -> float:
        """Jaccard index |A ∩ B| / |A ∪ B| of the two masks."""
        union = int((self.mask | other.mask).sum())
        return int((self.mask & other.mask).sum()) / union if union else 1.0

    def describe(self) -> dict:
        """What was selected, per layer: parameters selected of all, and whole units (neurons / channels) of all."""
        return {
            "method": self.method,
            "ratio_asked": self.ratio_asked,
            "ratio_obtained": self.ratio_obtained,
            "n_selected": self.n_selected,
            "layers": {
                l.module: {
                    "kind": l.kind,
                    "selected": l.n_selected,
                    "params": l.n_params,
                    "units_selected": int(l.selected_neurons.sum()),
                    "units": l.n_neurons,
                }
                for l in self.layers
            },
        }


def select_all(space: ParamSpace) -> Selection:
    """Every trainable parameter (IF and SIF act on all of them)."""
    return _finish(space, torch.ones(space.numel, dtype=torch.bool), "all", 1.0, {})


def from_mask(space: ParamSpace, mask: torch.Tensor, method: str = "custom") -> Selection:
    """Wrap a user-given boolean mask."""
    mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
    space.check_vector(mask, "mask")
    if not mask.any():
        raise ValueError("The mask selects no parameter.")
    return _finish(space, mask, method, float(mask.float().mean()), {})


def select(problem: EditProblem, config: SelectionConfig | None = None) -> Selection:
    """Pick parameters for ``problem`` with ``config.method`` (see module docstring)."""
    config = config or SelectionConfig()
    space = problem.space
    if config.method == "param-gradient":
        k = max(1, round(config.ratio * space.numel))
        top = torch.topk(problem.g.abs().cpu(), k).indices
        return _finish(space, space.mask_from_indices(top), config.method, config.ratio, {})
    if not space.layers:
        raise ValueError("The model has no Linear/Conv layer: use the param-gradient selector.")
    return _mask_from_scores(space, _neuron_scores(problem, config), config)


def select_on_data(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, config: SelectionConfig | None = None
) -> Selection:
    """Neurons used by arbitrary labelled data (e.g. a test point being explained), with E = mean ℓ(x, y) on it.

    The same neuron selectors and budgets as :func:`select`, for data that is not part of an edit request (the
    GIF-restricted influence scores of :mod:`gif_core.scores` restrict the solve to the test point's neurons).
    The :data:`REQUEST_METHODS` need an edit request and are refused here.
    """
    config = config or SelectionConfig()
    if config.method in REQUEST_METHODS:
        raise ValueError(
            f"Selector {config.method!r} needs an edit request; on bare data choose one of "
            f"{', '.join(m for m in NEURON_METHODS if m not in REQUEST_METHODS)}."
        )
    space = ParamSpace.from_model(model)
    if not space.layers:
        raise ValueError("The model has no Linear/Conv layer to select neurons from.")
    scores = _scores_on_data(model, space.layers, inputs, labels, None, config)
    return _mask_from_scores(space, scores, config)


def _mask_from_scores(space: ParamSpace, scores: dict[str, torch.Tensor], config: SelectionConfig) -> Selection:
    chosen = _allocate(space.layers, scores, config, config.method.startswith("lowest"))
    mask = torch.zeros(space.numel, dtype=torch.bool)
    for layer in space.layers:
        mask[layer.neuron_indices(chosen[layer.module])] = True
    shown = {} if config.method == "random" else scores
    return _finish(space, mask, config.method, config.ratio, shown)


def _neuron_scores(problem: EditProblem, config: SelectionConfig) -> dict[str, torch.Tensor]:
    if config.method == "curvature":
        fisher = problem.retained_fisher().cpu()
        ratio = problem.g.cpu().square() / (fisher + config.fisher_epsilon)
        return {l.module: l.unit_sums(ratio) for l in problem.space.layers}
    if config.method == "ekfac":
        delta, _ = ekfac_inverse(problem.hessian, problem.g)
        return {l.module: l.unit_sums(delta.detach().cpu().square()) for l in problem.space.layers}
    return _scores_on_data(
        problem.model, problem.space.layers, problem.forget_inputs, problem.forget_labels, problem.new_labels, config
    )


def _keep(outputs: dict[str, torch.Tensor], name: str, output: torch.Tensor) -> None:
    if output.requires_grad:
        output.retain_grad()
    outputs[name] = output


@contextmanager
def _captured_outputs(model: nn.Module, layers: tuple[NeuronLayer, ...]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that keep each layer's output (with its gradient retained); always removed.

    A Linear/Conv layer's output is its module's output. An attention layer's output is the concatenation of its
    heads' outputs o = [o_1 … o_H] (before the output projection), as [batch, positions, E]: the hook runs the
    module once more with ``out_proj`` set to the identity (so o comes from the module's own forward, masks and all)
    and returns out_proj(o), the same value, so that gradients reach o; the MultiheadAttention's output is also
    its ``out_proj`` layer's output (the module applies ``out_proj`` without calling it)."""
    outputs: dict[str, torch.Tensor] = {}
    named = dict(model.named_modules())
    handles = []
    try:
        for layer in layers:
            module = named[layer.module]
            if layer.kind == "attention":
                handles.append(module.register_forward_hook(_heads_hook(layer.module, outputs), with_kwargs=True))
                continue

            def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor, name: str = layer.module) -> None:
                _keep(outputs, name, output)

            handles.append(module.register_forward_hook(hook))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _heads_hook(name: str, outputs: dict[str, torch.Tensor]) -> Callable[..., tuple | None]:
    """The attention layer's hook of :func:`_captured_outputs`."""
    inside = [False]  # the second run of the module, from inside this hook, is not hooked again

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple | None:
        if inside[0]:
            return None
        assert isinstance(module, nn.MultiheadAttention)
        projection = module.out_proj
        eye = torch.eye(module.embed_dim, dtype=projection.weight.dtype, device=projection.weight.device)
        identity = {"out_proj.weight": eye}
        if projection.bias is not None:
            identity["out_proj.bias"] = torch.zeros_like(projection.bias)
        inside[0] = True
        try:
            heads = torch.func.functional_call(module, identity, args, kwargs)[0]
        finally:
            inside[0] = False
        if heads.ndim != 3:
            raise ValueError(f"Attention layer {name!r} got unbatched input: its heads cannot be scored per sample.")
        if not module.batch_first:  # [L, B, E]: scored as [B, L, E], on the tensors the loss is computed from
            heads = heads.transpose(0, 1)
        result = F.linear(heads, projection.weight, projection.bias)
        _keep(outputs, name, heads)
        _keep(outputs, f"{name}.out_proj" if name else "out_proj", result)
        return (result if module.batch_first else result.transpose(0, 1), *output[1:])

    return hook


def _scores_on_data(
    model: nn.Module,
    layers: tuple[NeuronLayer, ...],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    new_labels: torch.Tensor | None,
    config: SelectionConfig,
) -> dict[str, torch.Tensor]:
    """Seeded random scores, or |mean activation| / |mean ∂E/∂activation| per neuron over the data, in batches."""
    if config.method == "random":
        generator = torch.Generator().manual_seed(config.seed)
        return {l.module: torch.rand(l.n_neurons, generator=generator) for l in layers}
    use_gradient = config.method.endswith("gradient")
    model = copy.deepcopy(model).eval()
    param = next(model.parameters())
    sums: dict[str, torch.Tensor] = {}
    m = len(labels)
    with _captured_outputs(model, layers) as outputs:
        for start in range(0, m, config.batch_size):
            part = slice(start, start + config.batch_size)
            x = inputs[part].to(param.device, param.dtype)
            y = labels[part].to(param.device)
            with torch.set_grad_enabled(use_gradient):
                logits = model(x)
                if use_gradient:
                    edit_loss = F.cross_entropy(logits, y, reduction="sum")
                    if new_labels is not None:
                        edit_loss = edit_loss - F.cross_entropy(
                            logits, new_labels[part].to(param.device), reduction="sum"
                        )
                    edit_loss.backward()
            missed = [l.module or "(model)" for l in layers if l.module not in outputs]
            if missed:
                raise ValueError(
                    f"Layer(s) {', '.join(missed)} were not called in the model's forward pass (their weights are "
                    "used some other way), so their outputs cannot be scored: use the param-gradient selector."
                )
            for l in layers:
                out = outputs.pop(l.module)
                values = out.grad if use_gradient else out.detach()
                if values is None:
                    raise RuntimeError(f"Layer {l.module} received no gradient from the edit's loss.")
                total = _per_output_sum(values, l.kind).double().cpu()
                sums[l.module] = total if l.module not in sums else sums[l.module] + total
    return {l.module: _unit_scores((sums[l.module] / m).abs(), l).float() for l in layers}


def _per_output_sum(values: torch.Tensor, kind: str) -> torch.Tensor:
    """Σ over the batch of each output's mean over its positions: conv outputs are [B, C, ...] (channels second),
    Linear and attention outputs [B, ..., F] (features last: a token sequence's Linear layers too)."""
    if kind in ("linear", "attention"):
        values = values.reshape(len(values), -1, values.shape[-1]).mean(1)
    elif values.ndim > 2:
        values = values.flatten(2).mean(2)
    return values.sum(0)


def _unit_scores(output_scores: torch.Tensor, layer: NeuronLayer) -> torch.Tensor:
    """One score per unit: the output's own for a neuron or channel; for head h, the mean over its d outputs."""
    if layer.kind != "attention":
        return output_scores
    return output_scores.view(layer.n_neurons, -1).mean(1)


def _allocate(
    layers: tuple[NeuronLayer, ...], scores: dict[str, torch.Tensor], config: SelectionConfig, lowest: bool
) -> dict[str, torch.Tensor]:
    """Which neurons of each layer to select under the budget rule (module docstring); at least one per layer."""
    order = {l.module: torch.argsort(scores[l.module], descending=not lowest, stable=True) for l in layers}
    if config.budget == "per-layer":
        return {l.module: order[l.module][: per_layer_count(l, config.ratio)] for l in layers}
    budget = config.ratio * sum(l.numel for l in layers)
    picked = {l.module: [int(order[l.module][0])] for l in layers}  # the floor: each layer's best neuron
    spent = sum(l.neuron_size for l in layers)
    candidates = []
    for l in layers:
        s = scores[l.module].double()
        relative = s / s.mean().clamp_min(1e-30)
        candidates += [(float(relative[j]), l, int(j)) for j in order[l.module][1:]]
    candidates.sort(key=lambda c: c[0], reverse=not lowest)
    for _, l, j in candidates:
        if spent + l.neuron_size <= budget:
            picked[l.module].append(j)
            spent += l.neuron_size
    return {name: torch.tensor(sorted(js), dtype=torch.long) for name, js in picked.items()}


def per_layer_count(layer: NeuronLayer, ratio: float) -> int:
    """Neurons the per-layer budget gives ``layer``: its share ratio·P_l rounded to whole neurons, at least one."""
    return min(layer.n_neurons, max(1, round(ratio * layer.numel / layer.neuron_size)))


def _finish(
    space: ParamSpace, mask: torch.Tensor, method: str, ratio: float, scores: dict[str, torch.Tensor]
) -> Selection:
    summaries = []
    for l in space.layers:
        all_neurons = torch.arange(l.n_neurons)
        n_selected = int(mask[l.neuron_indices(all_neurons)].sum())
        full = l.units_fully_in(mask)
        summaries.append(LayerSummary(l.module, l.kind, l.numel, n_selected, l.n_neurons, full, scores.get(l.module)))
    return Selection(mask, method, ratio, tuple(summaries))


def layer_architecture(module: nn.Module) -> str:
    """What a Linear/Conv module is, read from the module object: ``Linear 128→10``, ``Conv2d 1→16, 5×5`` (with
    ``stride s`` / ``groups g`` when they are not 1, ``depthwise`` when every channel reads one input channel),
    ``MultiheadAttention 4 heads × 8, E 32``, so a layer's name can be tied to the architecture."""
    kind = type(module).__name__
    if isinstance(module, nn.MultiheadAttention):
        return f"{kind} {module.num_heads} heads × {module.head_dim}, E {module.embed_dim}"
    if isinstance(module, nn.Linear):
        return f"{kind} {module.in_features}→{module.out_features}"
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        parts = [f"{kind} {module.in_channels}→{module.out_channels}", "×".join(str(k) for k in module.kernel_size)]
        if any(s != 1 for s in module.stride):
            parts.append("stride " + "×".join(str(s) for s in module.stride))
        if module.groups != 1:
            parts.append("depthwise" if is_depthwise(module) else f"groups {module.groups}")
        return ", ".join(parts)
    raise ValueError(f"{kind} is not a Linear, Conv or attention layer; only those have units the selectors pick")


def layer_title(model: nn.Module, module_name: str) -> str:
    """A layer's name with its architecture, e.g. ``conv1 (Conv2d 1→16, 5×5)`` or ``9 (Linear 64→10)``; the model
    itself (a bare Linear) is named ``model``."""
    modules = dict(model.named_modules())
    if module_name not in modules:
        layers = ", ".join(repr(layer.module) for layer in ParamSpace.from_model(model).layers)
        raise ValueError(f"the model has no module named {module_name!r}; its Linear/Conv layers are {layers}")
    return f"{module_name or 'model'} ({layer_architecture(modules[module_name])})"


def layer_titles(model: nn.Module) -> dict[str, str]:
    """:func:`layer_title` of every Linear/Conv layer the selectors pick units from, by module name, in order."""
    return {layer.module: layer_title(model, layer.module) for layer in ParamSpace.from_model(model).layers}


def layers_without_units(selection: Selection) -> tuple[LayerSummary, ...]:
    """The layers in which ``selection`` holds no whole unit (neuron / channel with all its parameters).

    The neuron selectors never give a layer zero units (the budget's floor, module docstring); ``param-gradient``
    picks single parameters anywhere, so a layer may get a few scattered parameters, or none, but no whole unit.
    """
    return tuple(l for l in selection.layers if not bool(l.selected_neurons.any()))
