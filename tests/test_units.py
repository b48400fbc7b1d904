"""Issue 17: the units the selectors pick in the newer families — the heads of an attention layer and the channels
of a depthwise conv — checked against what the layers compute: a head's parameters move that head's output alone,
its scores are those of a hand-written attention, and a class removal with head units runs against retraining."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from app import charts
from gif_core.curvature import Curvature
from gif_core.params import ParamSpace, flat_parameters
from gif_core.selection import SelectionConfig, layer_architecture, layer_titles, select_on_data

WIDTH, HEADS, ROWS = 16, 2, 8


class RowAttention(nn.Module):
    """An 8×8 digit read as 8 tokens (its rows): embedded, given learned positions, mixed by one attention layer
    with a residual, normalised, averaged over tokens and classified."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(ROWS, WIDTH)
        self.position = nn.Embedding(ROWS, WIDTH)
        self.attention = nn.MultiheadAttention(WIDTH, HEADS, batch_first=batch_first)
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, 10)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x.reshape(len(x), ROWS, ROWS)) + self.position.weight  # [B, L, E]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(x)
        sequence = tokens if self.attention.batch_first else tokens.transpose(0, 1)
        mixed, _ = self.attention(sequence, sequence, sequence, need_weights=False)
        mixed = mixed if self.attention.batch_first else mixed.transpose(0, 1)
        return self.classify(tokens, mixed)

    def classify(self, tokens: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(tokens + mixed).mean(1))


def heads_by_hand(model: RowAttention, tokens: torch.Tensor) -> torch.Tensor:
    """[B, L, E]: each head's softmax(q kᵀ/√d) v, written from the attention's formula (not its forward)."""
    attention, d = model.attention, WIDTH // HEADS
    q, k, v = F.linear(tokens, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    split = [t.reshape(len(t), ROWS, HEADS, d).transpose(1, 2) for t in (q, k, v)]  # [B, H, L, d]
    weights = torch.softmax(split[0] @ split[1].transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weights @ split[2]).transpose(1, 2).reshape(len(tokens), ROWS, WIDTH)


def heads_of(model: RowAttention, x: torch.Tensor) -> torch.Tensor:
    return heads_by_hand(model, model.tokens(x))


@pytest.fixture(scope="module")
def digits():
    from gif_core.data import load_data

    return load_data("digits")


def test_a_head_owns_its_query_key_and_value_rows_and_moves_its_own_output_alone():
    torch.manual_seed(0)
    model = RowAttention().eval()
    space = ParamSpace.from_model(model)
    assert [(l.module, l.kind, l.n_neurons) for l in space.layers] == [
        ("embed", "linear", WIDTH), ("attention", "attention", HEADS), ("attention.out_proj", "linear", WIDTH),
        ("head", "linear", 10),
    ]  # fmt: skip
    heads, d = space.layer("attention"), WIDTH // HEADS
    assert heads.neuron_size == 3 * d * (WIDTH + 1) and heads.numel == 3 * WIDTH * (WIDTH + 1)
    marker = torch.zeros(space.numel)
    marker[heads.neuron_indices(torch.tensor([1]))] = 1
    pieces = space.unflatten(marker)
    rows = [s * WIDTH + d + k for s in range(3) for k in range(d)]  # head 1's q, k, v rows
    expected = torch.zeros(3 * WIDTH)
    expected[rows] = 1
    assert torch.equal(pieces["attention.in_proj_weight"], expected[:, None].expand(-1, WIDTH))
    assert torch.equal(pieces["attention.in_proj_bias"], expected) and marker.sum() == heads.neuron_size
    # what the layer computes: moving every parameter of head 1 changes head 1's output and leaves head 0's exactly
    x = torch.rand(4, 1, ROWS, ROWS)
    before = heads_of(model, x)
    theta = flat_parameters(model) + marker * torch.randn(space.numel)
    moved = RowAttention().eval()
    moved.load_state_dict({**model.state_dict(), **space.unflatten(theta)})
    after = heads_of(moved, x)
    assert torch.equal(after[..., :d], before[..., :d]) and (after[..., d:] - before[..., d:]).abs().max() > 1e-3
    assert layer_architecture(model.attention) == f"MultiheadAttention {HEADS} heads × {d}, E {WIDTH}"
    assert heads.units_fully_in(marker.bool()).tolist() == [False, True]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("method", ["output", "gradient"])
def test_head_and_token_layer_scores_are_those_of_a_hand_written_attention(batch_first, method):
    """score_h = mean over the head's d outputs of |mean over samples and tokens of o (or ∂E/∂o)|; a Linear layer on
    tokens is scored per feature (its last axis), averaged over tokens."""
    torch.manual_seed(1)
    model = RowAttention(batch_first).eval()
    x, y = torch.rand(6, 1, ROWS, ROWS), torch.randint(0, 10, (6,))
    tokens = model.tokens(x).detach().requires_grad_()
    heads = heads_by_hand(model, tokens)
    heads.retain_grad()
    mixed = model.attention.out_proj(heads)
    mixed.retain_grad()
    F.cross_entropy(model.classify(tokens, mixed), y, reduction="sum").backward()

    def per_output(values: torch.Tensor) -> torch.Tensor:
        return values.mean(1).mean(0).abs()  # mean over tokens, then over samples

    def of(values: torch.Tensor) -> torch.Tensor:
        return per_output(values.grad if method == "gradient" else values.detach())

    expected = {
        "embed": of(tokens),  # the position embedding adds a constant: the same gradient as the Linear's output
        "attention": of(heads).view(HEADS, -1).mean(1),
        "attention.out_proj": of(mixed),
    }
    if method == "output":
        expected["embed"] = per_output(model.embed(x.reshape(6, ROWS, ROWS)).detach())
    selection = select_on_data(model, x, y, SelectionConfig(method=method, ratio=0.3))
    scores = {l.module: l.scores for l in selection.layers}
    for name, value in expected.items():
        torch.testing.assert_close(scores[name], value.float(), rtol=1e-4, atol=1e-7, msg=name)
    chosen = next(l for l in selection.layers if l.module == "attention")
    assert int(chosen.selected_neurons.sum()) == 1 and chosen.n_selected == chosen.n_params // HEADS


def test_hessian_vector_products_go_through_attention_and_match_autograd():
    """The fused attention kernel has no forward-mode derivative on the CPU; the curvature's private copy computes
    the same attention in composite form, and its H·v equals double backward through the hand-written formula."""
    torch.manual_seed(2)
    model = RowAttention().eval()
    x, y = torch.rand(8, 1, ROWS, ROWS), torch.randint(0, 10, (8,))
    curvature = Curvature(model, (x, y))
    space = curvature.space
    vector = torch.randn(space.numel)
    theta = flat_parameters(model).requires_grad_()

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params = space.unflatten(flat)
        inner = RowAttention().eval()
        logits = torch.func.functional_call(inner, params, (x,), strict=True, tie_weights=False)
        return F.cross_entropy(logits, y)

    def loss_by_hand(flat: torch.Tensor) -> torch.Tensor:
        params = space.unflatten(flat)
        with torch.nn.utils.stateless._reparametrize_module(model, params):  # the formula, not the module's kernel
            tokens = model.tokens(x)
            mixed = model.attention.out_proj(heads_by_hand(model, tokens))
            return F.cross_entropy(model.classify(tokens, mixed), y)

    torch.testing.assert_close(loss(theta.detach()), loss_by_hand(theta.detach()))
    (gradient,) = torch.autograd.grad(loss_by_hand(theta), theta, create_graph=True)
    (expected,) = torch.autograd.grad(gradient @ vector, theta)
    regulariser = curvature.config.weight_decay * vector
    torch.testing.assert_close(curvature.hvp(vector) - regulariser, expected, rtol=1e-4, atol=1e-6)


def test_a_depthwise_conv_is_a_layer_of_channels_each_with_its_own_filter_and_batch_norm():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 10),
    ).eval()  # fmt: skip
    space = ParamSpace.from_model(model)
    depthwise = space.layer("1")
    assert (depthwise.kind, depthwise.n_neurons, depthwise.fan_in, depthwise.neuron_size) == ("depthwise", 4, 9, 12)
    marker = torch.zeros(space.numel)
    marker[depthwise.neuron_indices(torch.tensor([2]))] = 1
    pieces = space.unflatten(marker)
    assert pieces["1.weight"][2].sum() == 9 and pieces["1.weight"].sum() == 9
    assert pieces["1.bias"][2] == pieces["2.weight"][2] == pieces["2.bias"][2] == 1 and marker.sum() == 12
    assert layer_architecture(model[1]) == "Conv2d 4→4, 3×3, depthwise"
    assert layer_architecture(nn.Conv2d(4, 8, 3, groups=2)) == "Conv2d 4→8, 3×3, groups 2"
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    selection = select_on_data(model, x, y, SelectionConfig(method="gradient", ratio=0.25))
    figure = charts.channel_map(selection, "1", "A: gradient", layer_titles(model)["1"])
    assert "of 4 channels selected" in figure.layout.title.text and "depthwise" in figure.layout.title.text


def test_torchvision_vits_heads_are_units_and_the_selection_page_draws_them():
    from torchvision.models import VisionTransformer, get_model

    with torch.device("meta"):  # shapes only: the layout of the real vit_b_16
        space = ParamSpace.from_model(get_model("vit_b_16", weights=None, num_classes=10))
    attention = [l for l in space.layers if l.kind == "attention"]
    assert len(attention) == 12 and all(l.n_neurons == 12 and l.neuron_size == 3 * 64 * 769 for l in attention)
    torch.manual_seed(3)
    vit = VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16)
    vit = vit.eval()
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 1000, (4,))
    selection = select_on_data(vit, x, y, SelectionConfig(method="gradient", ratio=0.05))
    blocks = [l for l in selection.layers if l.kind == "attention"]
    assert [l.module for l in blocks] == [f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(2)]
    assert all(int(l.selected_neurons.sum()) == 1 for l in blocks)  # at least one head each, and whole heads
    title = layer_titles(vit)[blocks[0].module]
    figure = charts.channel_map(selection, blocks[0].module, "A: gradient", title)
    assert "1 of 2 heads selected" in figure.layout.title.text and "MultiheadAttention 2 heads × 4" in title


def test_a_class_removal_with_head_units_runs_against_retraining(digits):
    """An attention model the library does not know, through the any-module API, against the model really
    retrained without class 3: GIF picks a head among its units and forgets the class, IF keeps the retained
    classes within a few points of retraining. GIF keeps them less well here (measured: retain 65% vs 91%
    retrained, IF 85%): one head is 29% of this model, so the one-unit floor spends far more than 5% on it; the
    bound below only catches a wrong-signed or broken update (which leaves ~10%)."""
    from gif_core.any_module import Objective, edit_module, retrain_module, tensor_bundle
    from gif_core.experiment import EditConfig
    from gif_core.exported import reinitialised
    from gif_core.requests import ClassRemoval
    from gif_core.train import Recipe, train_model

    recipe = Recipe(lr=1e-2, weight_decay=1e-4, epochs=20)
    torch.manual_seed(recipe.seed)
    reference = RowAttention()
    fresh = reinitialised(reference, recipe.seed)  # PyTorch's own initialisation, attention and embedding included
    for name, value in reference.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    data = tensor_bundle(*((s.inputs, s.labels) for s in (digits.train, digits.val, digits.test)))
    torch.manual_seed(0)
    model = RowAttention()
    train_model(model, data.train, recipe, show_bar=False)
    truth = retrain_module(model, data, ClassRemoval(3), recipe)
    report = edit_module(model, data, ClassRemoval(3), EditConfig(methods=("gif", "if")),
                         objective=Objective(weight_decay=recipe.weight_decay), retrained_model=truth)  # fmt: skip
    heads = {layer.module: layer for layer in report.selection.layers}["attention"]
    assert heads.kind == "attention" and int(heads.selected_neurons.sum()) >= 1
    assert report.original["forget_acc"] > 80 and report.retrained["forget_acc"] == 0.0
    gif, influence = report.outcomes
    for outcome in report.outcomes:
        assert outcome.metrics["forget_acc"] < 0.5 * report.original["forget_acc"], outcome.method
    assert abs(influence.metrics["retain_acc"] - report.retrained["retain_acc"]) < 10
    assert gif.metrics["retain_acc"] > 50 and gif.method == "gif"
