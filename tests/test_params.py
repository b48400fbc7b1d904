import pytest
import torch
from conftest import tiny_convnet, tiny_mlp
from torch import nn

from gif_core.params import ParamSpace, apply_delta, flat_parameters, state_hash


def test_layout_follows_parameter_names():
    model = tiny_convnet()
    space = ParamSpace.from_model(model)
    assert space.names == ("0.weight", "0.bias", "3.weight", "3.bias")
    assert space.numel == 2 * 9 + 2 + 32 * 3 + 3 == 119
    assert [b.offset for b in space.blocks] == [0, 18, 20, 116]
    conv, linear = space.layers
    assert (conv.module, conv.kind, conv.n_neurons, conv.fan_in, conv.neuron_size) == ("0", "conv", 2, 9, 10)
    assert (linear.module, linear.kind, linear.n_neurons, linear.fan_in) == ("3", "linear", 3, 32)


def test_flatten_unflatten_round_trip():
    model = tiny_mlp()
    space = ParamSpace.from_model(model)
    theta = flat_parameters(model)
    pieces = space.unflatten(theta)
    for name, param in model.named_parameters():
        assert torch.equal(pieces[name], param.detach())
    assert torch.equal(space.flatten(pieces), theta)


def test_neuron_indices_cover_fan_in_row_and_bias():
    model = tiny_mlp()
    space = ParamSpace.from_model(model)
    layer = space.layer("2")  # Linear(8, 3)
    idx = layer.neuron_indices(torch.tensor([1]))
    marker = torch.zeros(space.numel)
    marker[idx] = 1
    pieces = space.unflatten(marker)
    assert torch.equal(pieces["2.weight"][1], torch.ones(8))
    assert pieces["2.weight"].sum() == 8 and pieces["2.bias"][1] == 1 and pieces["2.bias"].sum() == 1
    assert pieces["0.weight"].sum() == 0


def test_apply_delta_returns_copy_and_leaves_original_untouched():
    model = tiny_mlp()
    space = ParamSpace.from_model(model)
    before = state_hash(model)
    delta = torch.randn(space.numel, dtype=torch.float64)
    edited = apply_delta(model, space, delta, step=0.5)
    assert state_hash(model) == before
    assert edited is not model
    assert torch.allclose(flat_parameters(edited), flat_parameters(model) + 0.5 * delta)


def test_apply_delta_rejects_bad_deltas():
    model = tiny_mlp()
    space = ParamSpace.from_model(model)
    with pytest.raises(ValueError, match="flat vector of"):
        apply_delta(model, space, torch.zeros(3))
    bad = torch.zeros(space.numel, dtype=torch.float64)
    bad[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        apply_delta(model, space, bad)


def test_frozen_parameters_are_left_out():
    model = tiny_mlp()
    model[0].bias.requires_grad_(False)
    space = ParamSpace.from_model(model)
    assert "0.bias" not in space.names
    assert space.layer("0").bias is None and space.layer("0").neuron_size == 4


def test_state_hash_sees_changes():
    model = nn.Linear(2, 2)
    before = state_hash(model)
    with torch.no_grad():
        model.bias[0] += 1e-6
    assert state_hash(model) != before


def test_a_batch_norm_after_a_conv_belongs_to_its_channels_and_only_when_it_alone_reads_them():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm_first = nn.BatchNorm2d(3)  # registered before its conv: pairing follows data, not order
            self.conv = nn.Conv2d(1, 3, 3)
            self.shared = nn.Conv2d(3, 3, 1)
            self.norm_shared = nn.BatchNorm2d(3)
            self.head = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.norm_first(self.conv(x))
            s = self.shared(h)
            h = self.norm_shared(s) + s  # the conv's output is read twice: its channels are not BN's alone
            return self.head(h.mean((2, 3)))

    space = ParamSpace.from_model(Net())
    conv, shared = space.layer("conv"), space.layer("shared")
    assert [b.name for b in conv.channel_blocks] == ["norm_first.weight", "norm_first.bias"]
    assert shared.channel_blocks == () and conv.neuron_size == 9 + 1 + 2
    picked = {int(i) for i in conv.neuron_indices(torch.tensor([1]))}
    for name, entry in (("norm_first.weight", 1), ("norm_first.bias", 1), ("conv.bias", 1)):
        assert space.block(name).offset + entry in picked
    assert space.block("norm_first.weight").offset not in picked  # channel 0's γ stays with channel 0


def test_a_batch_norm_selection_moves_gamma_and_beta_with_the_channel_in_resnet18():
    from gif_core.models import build_model
    from gif_core.selection import _finish

    model = build_model("resnet18", (1, 16, 16), 10)
    space = ParamSpace.from_model(model)
    layers = {layer.module: layer for layer in space.layers}
    stem = layers["net.conv1"] if "net.conv1" in layers else next(iter(layers.values()))
    assert stem.channel_blocks, [layer.module for layer in space.layers][:4]
    mask = space.mask_from_indices(stem.neuron_indices(torch.tensor([0, 5])))
    summary = {s.module: s for s in _finish(space, mask, "custom", 0.0, {}).layers}[stem.module]
    assert summary.selected_neurons.nonzero().reshape(-1).tolist() == [0, 5]
    assert summary.n_selected == 2 * stem.neuron_size


def test_reading_the_batch_norm_pairing_leaves_forward_passes_of_other_threads_alone():
    """Symbolic tracing patches nn.Module for the whole process. A forward pass run in another thread while the
    trace is under way — of another model and of the traced model itself, as the dashboard's script thread does
    while a background job reads the layers — must compute what it computes alone, and the trace must still find
    the conv's BatchNorm."""
    import threading

    from torch import fx

    class Rendezvous(nn.Module):
        """Identity; while being traced, waits for a forward pass run in another thread."""

        def __init__(self) -> None:
            super().__init__()
            self.during_trace = None

        def forward(self, x):
            if isinstance(x, fx.Proxy) and self.during_trace is not None:
                wait, self.during_trace = self.during_trace, None  # once
                wait()
            return x

    torch.manual_seed(0)
    traced = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), Rendezvous(), nn.Flatten(), nn.Linear(64, 3)).eval()
    other = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(32, 3)).eval()
    x = torch.rand(2, 1, 6, 6)
    with torch.no_grad():
        expected = {"traced": traced(x), "other": other(x)}
    seen: dict[str, object] = {}

    def forward_elsewhere() -> None:
        def run() -> None:
            for name, model in (("traced", traced), ("other", other)):
                try:
                    with torch.no_grad():
                        seen[name] = model(x)
                except Exception as error:  # recorded for the assertion below
                    seen[name] = error

        worker = threading.Thread(target=run)
        worker.start()
        worker.join()

    traced[2].during_trace = forward_elsewhere
    space = ParamSpace.from_model(traced)
    assert set(seen) == {"traced", "other"}, "the rendezvous did not run during the trace"
    for name, output in seen.items():
        assert isinstance(output, torch.Tensor), f"{name}: {output!r}"
        torch.testing.assert_close(output, expected[name], rtol=0, atol=0)
    marker = torch.zeros(space.numel)
    marker[space.layer("0").neuron_indices(torch.tensor([1]))] = 1
    assert space.unflatten(marker)["1.weight"][1] == 1  # channel 1's γ still moves with channel 1
