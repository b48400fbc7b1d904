"""Tests of gif_core.backdoor: exact trigger pixels, purity, and the poisoning contract."""

import numpy as np
import pytest
import torch

from gif_core.backdoor import BackdoorSpec, PoisonedData, Trigger, poison

H = 0.5  # background grey, so that both the 0s and the 1s of a trigger are visible


def grey(n: int, c: int, h: int, w: int) -> torch.Tensor:
    return torch.full((n, c, h, w), H)


def test_checkerboard_bottom_right_exact_pixels():
    out = Trigger("checkerboard", size=2).stamp(grey(1, 1, 4, 4))
    expected = torch.tensor(
        [
            [H, H, H, H],
            [H, H, H, H],
            [H, H, 1, 0],
            [H, H, 0, 1],
        ]
    )
    assert torch.equal(out[0, 0], expected)


def test_checkerboard_top_left_odd_size_every_channel():
    out = Trigger("checkerboard", size=3, corner="top-left").stamp(grey(2, 2, 3, 4))
    expected = torch.tensor(
        [
            [1, 0, 1, H],
            [0, 1, 0, H],
            [1, 0, 1, H],
        ]
    )
    for n in range(2):
        for c in range(2):
            assert torch.equal(out[n, c], expected)


def test_checkerboard_bottom_left_and_patch_top_right():
    bottom_left = Trigger("checkerboard", size=2, corner="bottom-left").stamp(grey(1, 1, 3, 3))
    assert torch.equal(bottom_left[0, 0], torch.tensor([[H, H, H], [1, 0, H], [0, 1, H]]))
    patch = Trigger("patch", size=2, corner="top-right").stamp(grey(1, 1, 3, 3))
    assert torch.equal(patch[0, 0], torch.tensor([[H, 1, 1], [H, 1, 1], [H, H, H]]))


def test_stamp_returns_new_tensor_and_keeps_input():
    inputs = grey(2, 3, 5, 5)
    before = inputs.clone()
    out = Trigger("checkerboard", size=4).stamp(inputs)
    assert torch.equal(inputs, before)
    assert out.data_ptr() != inputs.data_ptr()
    assert out.dtype == inputs.dtype


def test_stamp_display_numpy_grey_and_tensor_rgb():
    trigger = Trigger("checkerboard", size=2)
    gray = np.full((1, 3, 3), 7, dtype=np.uint8)
    out = trigger.stamp_display(gray)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out[0], [[7, 7, 7], [7, 255, 0], [7, 0, 255]])
    assert (gray == 7).all()

    rgb = torch.full((1, 3, 3, 3), 7, dtype=torch.uint8)
    out_rgb = trigger.stamp_display(rgb)
    assert isinstance(out_rgb, torch.Tensor)
    for c in range(3):
        assert out_rgb[0, :, :, c].tolist() == [[7, 7, 7], [7, 255, 0], [7, 0, 255]]
    assert (rgb == 7).all()


def test_trigger_errors():
    with pytest.raises(ValueError, match="kind"):
        Trigger("star")
    with pytest.raises(ValueError, match="corner"):
        Trigger("patch", corner="middle")
    with pytest.raises(ValueError, match="size"):
        Trigger("patch", size=0)
    with pytest.raises(ValueError, match="does not fit"):
        Trigger("patch", size=5).stamp(grey(1, 1, 4, 8))
    with pytest.raises(ValueError, match="stamp_display"):
        Trigger("patch").stamp(torch.zeros(1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        Trigger("patch").stamp_display(np.zeros((1, 8, 8), dtype=np.float32))


LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])


def make_poisoned(seed: int = 0, fraction: float = 0.3, images=None) -> PoisonedData:
    spec = BackdoorSpec(target=0, fraction=fraction, trigger=Trigger("patch", size=2), seed=seed)
    return poison(grey(10, 1, 4, 4), LABELS, spec, images=images)


def test_poison_contract():
    inputs, labels = grey(10, 1, 4, 4), LABELS.clone()
    spec = BackdoorSpec(target=0, fraction=0.3, trigger=Trigger("patch", size=2))
    data = poison(inputs, labels, spec)
    rows = data.poisoned_rows
    assert rows.dtype == torch.int64 and len(rows) == 3  # round(0.3 * 10)
    assert torch.equal(rows, rows.sort().values)
    assert (LABELS[rows] != 0).all()  # chosen among non-target samples only
    assert torch.equal(data.true_labels, LABELS[rows])
    clean = torch.ones(10, dtype=torch.bool)
    clean[rows] = False
    assert (data.labels[rows] == 0).all()
    assert torch.equal(data.labels[clean], LABELS[clean])
    assert (data.inputs[rows][:, :, 2:, 2:] == 1).all()
    assert torch.equal(data.inputs[clean], inputs[clean])
    # nothing passed in was modified
    assert torch.equal(inputs, grey(10, 1, 4, 4)) and torch.equal(labels, LABELS)


def test_poison_count_rounds_fraction_of_all_samples():
    assert len(make_poisoned(fraction=0.26).poisoned_rows) == 3  # 2.6 -> 3
    assert len(make_poisoned(fraction=0.14).poisoned_rows) == 1  # 1.4 -> 1


def test_poison_seed_determinism():
    assert torch.equal(make_poisoned(seed=3).poisoned_rows, make_poisoned(seed=3).poisoned_rows)
    draws = {tuple(make_poisoned(seed=s).poisoned_rows.tolist()) for s in range(6)}
    assert len(draws) > 1


def test_poison_display_images_only_on_poisoned_rows():
    images = np.zeros((10, 4, 4), dtype=np.uint8)
    data = make_poisoned(images=images)
    assert (images == 0).all()
    rows = data.poisoned_rows.numpy()
    assert (data.images[rows][:, 2:, 2:] == 255).all()
    assert data.images.sum() == 255 * 4 * len(rows)


def test_poison_errors():
    inputs = grey(10, 1, 4, 4)
    with pytest.raises(ValueError, match="fraction"):
        BackdoorSpec(target=0, fraction=0.0)
    with pytest.raises(ValueError, match="fraction"):
        BackdoorSpec(target=0, fraction=1.0)
    with pytest.raises(ValueError, match="target"):
        BackdoorSpec(target=-1)
    with pytest.raises(ValueError, match="label range"):
        poison(inputs, LABELS, BackdoorSpec(target=3))
    with pytest.raises(ValueError, match="label range"):
        poison(inputs, LABELS, BackdoorSpec(target=3), num_classes=3)
    with pytest.raises(ValueError, match="does not fit"):
        poison(inputs, LABELS, BackdoorSpec(target=0, trigger=Trigger("patch", size=5)))
    with pytest.raises(ValueError, match="rounds to 0"):
        poison(inputs, LABELS, BackdoorSpec(target=0, fraction=0.01))
    with pytest.raises(ValueError, match="only 1 have"):
        poison(inputs, torch.tensor([0] * 9 + [1]), BackdoorSpec(target=0, fraction=0.5))
    with pytest.raises(ValueError, match="one label per input"):
        poison(inputs, LABELS[:5], BackdoorSpec(target=0))


def test_spec_dict_round_trip():
    spec = BackdoorSpec(target=7, fraction=0.05, trigger=Trigger("patch", size=3, corner="top-left"), seed=2)
    as_dict = spec.to_dict()
    assert as_dict == {
        "target": 7,
        "fraction": 0.05,
        "trigger": {"kind": "patch", "size": 3, "corner": "top-left"},
        "seed": 2,
    }
    assert BackdoorSpec.from_dict(as_dict) == spec
    assert BackdoorSpec(target=1).trigger == Trigger("checkerboard", size=4, corner="bottom-right")
    with pytest.raises(ValueError, match="keys"):
        BackdoorSpec.from_dict({"target": 1})
