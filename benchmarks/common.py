"""Shared plumbing for benchmark scripts: the machine/commit/command header and result files."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from gif_core.experiment import EditConfig

RESULTS = Path(__file__).resolve().parent / "results"


def provenance() -> dict:
    """What produced a result: the command line, the git commit, and the machine."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=RESULTS.parent
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                cwd=RESULTS.parent,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    return {
        "command": " ".join(shlex.quote(a) for a in ["python", *_invocation()]),
        "commit": commit + ("+uncommitted" if dirty else ""),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _invocation() -> list[str]:
    """sys.argv, with ``-m module`` restored when the script ran as a module."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return ["-m", spec.name, *sys.argv[1:]] if spec is not None else sys.argv


def write_results(name: str, markdown_body: str, data: dict, out_dir: Path = RESULTS, meta: dict | None = None) -> Path:
    """Write ``name.md`` (header + body) and ``name.json`` (provenance + data) into ``out_dir``. ``meta`` is the
    provenance taken when the run started (default: now) — a long run must not be stamped with a later commit."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = meta or provenance()
    header = "\n".join(f"- {key}: `{value}`" for key, value in meta.items())
    (out_dir / f"{name}.md").write_text(f"{markdown_body.rstrip()}\n\n## Produced by\n{header}\n")
    (out_dir / f"{name}.json").write_text(json.dumps({"provenance": meta, **data}, indent=2, default=float) + "\n")
    return out_dir / f"{name}.md"


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


SETTINGS = {
    "selector": ("selection", "method"),
    "ratio": ("selection", "ratio"),
    "budget": ("selection", "budget"),
    "hessian_samples": ("curvature", "samples"),
    "hessian_data": ("curvature", "data"),
    "damping": ("curvature", "damping"),
    "linearize": ("curvature", "linearize"),
    "least_squares_solver": ("solver", "least_squares_solver"),
    "symmetric_solver": ("solver", "symmetric_solver"),
    "gif_ridge": ("solver", "gif_ridge"),
    "gif_preconditioner": ("solver", "gif_preconditioner"),
    "rtol": ("solver", "rtol"),
    "maxiter": ("solver", "maxiter"),
}
"""The benchmarks' names of the settings they vary (the factors of their tables) → the section and field of
:class:`gif_core.experiment.EditConfig` that holds each."""


def edit_config(base: EditConfig | None = None, seed: int | None = None, **settings) -> EditConfig:
    """``base`` (default ``EditConfig()``) with the benchmark-named ``settings`` (:data:`SETTINGS`; ``methods``,
    ``step`` and ``iterations`` as they are) and, when given, ``seed`` for every random choice."""
    config = base or EditConfig()
    sections: dict[str, dict] = {}
    top = {}
    for name, value in settings.items():
        if name in SETTINGS:
            section, field = SETTINGS[name]
            sections.setdefault(section, {})[field] = value
        else:
            top[name] = value
    changed = {section: dataclasses.replace(getattr(config, section), **fields) for section, fields in sections.items()}
    config = dataclasses.replace(config, **changed, **top)
    return config.with_seed(seed) if seed is not None else config
