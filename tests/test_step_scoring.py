"""The step scorer gives exactly the probabilities of θ + α·Δ that a whole forward pass gives."""

import pytest
import torch
from torch import nn

from gif_core.evaluate import predict_proba
from gif_core.models import build_model
from gif_core.params import ParamSpace, shifted_parameters
from gif_core.step_scoring import StepScorer


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + x[:, :3]


CASES = {
    "cnn (conv first)": (lambda: build_model("cnn", (1, 28, 28), 10), (1, 28, 28), True),
    "mlp (flatten, then linear)": (lambda: build_model("mlp", (1, 8, 8), 10), (1, 8, 8), True),
    "lenet": (lambda: build_model("lenet", (1, 28, 28), 10), (1, 28, 28), True),
    "dropout first": (lambda: nn.Sequential(nn.Dropout(0.5), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)), (6,), False),
    "not sequential": (Residual, (6,), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_probabilities_equal_a_whole_forward_pass(case):
    build, shape, reuses = CASES[case]
    torch.manual_seed(0)
    model = build()
    inputs = torch.randn(37, *shape)
    space = ParamSpace.from_model(model)
    delta = 0.02 * torch.randn(space.numel, generator=torch.Generator().manual_seed(1))
    delta[: space.numel // 3] = 0  # a GIF-like Δ: parts of the first layer untouched
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scorer = StepScorer(model, space, delta, inputs)
    assert scorer.reuses_first_layer == reuses
    for alpha in (0.0, 0.3, 2.0, 150.0):
        expected = predict_proba(model, inputs, parameters=shifted_parameters(model, space, delta, alpha))
        assert torch.allclose(scorer.probabilities(alpha), expected, atol=1e-5, rtol=1e-4), alpha
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_frozen_first_layer_is_reused_with_a_zero_step():
    torch.manual_seed(0)
    model = build_model("cnn", (1, 28, 28), 10)
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    space = ParamSpace.from_model(model)
    delta = torch.randn(space.numel)
    inputs = torch.randn(9, 1, 28, 28)
    expected = predict_proba(model, inputs, parameters=shifted_parameters(model, space, delta, 3.0))
    assert torch.allclose(StepScorer(model, space, delta, inputs).probabilities(3.0), expected, atol=1e-6)
