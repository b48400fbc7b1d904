"""Predictions of the edited model θ + α·Δ on fixed inputs, for the many α a step search tries.

For a sequential model whose first parametrised layer L (Linear or Conv) follows only parameter-free reshaping
(``Flatten``/``Identity``), L's output is computed twice per Δ instead of once per α: L is affine in its own
parameters (W, b) and its input x does not depend on θ, so

    L(x; W + αΔW, b + αΔb) = L(x; W, b) + α·L(x; ΔW, Δb)

and each candidate α only runs the layers after L (on θ + αΔ, through ``torch.func.functional_call``; no model
copy). On the bundled CNN the first convolution (one input channel, the widest activation) is 40% of a forward
pass over the validation images (benchmarks/results/profile_edit.md). Any other model is run whole per α.
The two kept tensors hold L's output for every input (on the bundled CNN and its 550 validation images, 20 MB each);
above ``MAX_REUSED_ROWS`` inputs the model is run whole, so that memory stays bounded by a batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from gif_core.evaluate import eval_mode, predict_proba
from gif_core.params import ParamSpace, shifted_parameters

AFFINE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
RESHAPING = (nn.Flatten, nn.Identity)
MAX_REUSED_ROWS = 4096


class StepScorer:
    """``probabilities(α)`` = softmax(f_{θ+αΔ}(inputs)) as float32 [N, K] on the CPU, as
    :func:`gif_core.evaluate.predict_proba` with ``parameters=shifted_parameters(model, space, delta, α)`` gives.
    ``model`` is never modified."""

    def __init__(self, model: nn.Module, space: ParamSpace, delta: torch.Tensor, inputs: torch.Tensor) -> None:
        self._model, self._space, self._delta, self._inputs = model, space, delta, inputs
        split = _first_affine_layer(model) if len(inputs) <= MAX_REUSED_ROWS else None
        self.reuses_first_layer = split is not None
        if split is None:
            return
        index, layer = split
        prefix = f"{index}."
        pieces = space.unflatten(delta)
        own = dict(layer.named_parameters())
        step = {name: pieces.get(prefix + name, torch.zeros_like(p)).to(p) for name, p in own.items()}
        device = next(iter(own.values())).device
        with eval_mode(model), torch.no_grad():
            x = inputs.to(device)
            for module in list(model)[:index]:
                x = module(x)
            self._base = layer(x)
            self._direction = functional_call(layer, step, (x,))
        self._rest = model[index + 1 :]
        self._rest_names = {name for name, _ in self._rest.named_parameters()}

    def probabilities(self, alpha: float) -> torch.Tensor:
        parameters = shifted_parameters(self._model, self._space, self._delta, alpha)
        if not self.reuses_first_layer:
            return predict_proba(self._model, self._inputs, parameters=parameters)
        rest = {name: t for name, t in parameters.items() if name in self._rest_names}
        with eval_mode(self._rest), torch.no_grad():
            logits = functional_call(self._rest, rest, (self._base + float(alpha) * self._direction,))
        return torch.softmax(logits.float(), dim=1).cpu()


def _first_affine_layer(model: nn.Module) -> tuple[int, nn.Module] | None:
    """(index, layer) of a Sequential's first Linear/Conv when only Flatten/Identity come before it and the
    layers after it take one tensor; None when the model has another shape."""
    if not isinstance(model, nn.Sequential) or len(model) < 2:
        return None
    for index, module in enumerate(model):
        if isinstance(module, AFFINE_LAYERS):
            has_hooks = module._forward_hooks or module._forward_pre_hooks
            return None if has_hooks or list(module.buffers()) else (index, module)
        if not isinstance(module, RESHAPING):
            return None
    return None
