"""Shared plumbing for benchmark scripts: the machine/commit/command header and result files."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

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
