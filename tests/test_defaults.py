"""The library's edit defaults are the ones the committed defaults benchmark chose (benchmarks/defaults.py)."""

import dataclasses
import json
from pathlib import Path

from benchmarks.common import SETTINGS
from gif_core.experiment import EditConfig

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def test_edit_defaults_are_the_measured_ones():
    chosen = json.loads((RESULTS / "defaults_joint.json").read_text())["chosen"]
    assert {key: _default(key) for key in chosen} == chosen
    assert EditConfig().step == "auto"  # every setting was measured with the validation step search


def test_the_stage_1_choices_outside_the_joint_stage_are_kept():
    """Ratio and selector were chosen one factor at a time (stage 1) and not revisited: the defaults hold them."""
    stage1 = json.loads((RESULTS / "defaults_sweep.json").read_text())["chosen"]
    for key in ("ratio", "selector"):
        assert _default(key) == stage1[key]


def _default(setting: str):
    """The library's default of a setting the defaults benchmark names (its section and field in EditConfig)."""
    section, field = SETTINGS[setting]
    return dataclasses.asdict(EditConfig())[section][field]
