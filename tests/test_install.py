"""A non-editable install works on its own: the bundled checkpoints ship as package data, and the version is the
package's.

The install goes into a fresh venv (``--system-site-packages``) under tmp_path, from a copy of the working tree, and
is run from a folder outside the repository, so nothing of this checkout's source can be what gets imported. Nothing
is downloaded: the wheel is built with this environment's setuptools (``--no-build-isolation``) and installed
``--no-deps --no-index``; torch and the other dependencies come from this environment through a ``.pth`` file that
lists its site-packages folders. A ``.pth`` line only appends its folder to ``sys.path`` (after the venv's own
site-packages), and the ``.pth`` files inside that folder are not run, so this environment's editable finder for
gif_core never loads there.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

import gif_core

REPO = Path(__file__).resolve().parent.parent
# What the wheel is built from (pyproject's packages, package-dir and readme); nothing else of the tree is needed.
SOURCES = ("pyproject.toml", "README.md", "gif_core", "app", "assets")
# The variables that would let this environment's modules or settings into the venv's interpreter.
ISOLATE = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONSAFEPATH", "VIRTUAL_ENV")


def _pyproject_version() -> str:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _run(args: list[str], cwd: Path, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ISOLATE and not k.startswith("PIP_")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """A venv with gif-explorer installed from a wheel of the working tree: its python, gif and site-packages."""
    root = tmp_path_factory.mktemp("install")
    source, dist, venv, elsewhere = root / "source", root / "dist", root / "venv", root / "elsewhere"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(source)], elsewhere)
    (wheel,) = dist.glob("gif_explorer-*.whl")

    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], elsewhere)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], elsewhere)

    purelib = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], elsewhere).strip()
    )
    ours = [p for p in site.getsitepackages() if Path(p).is_dir() and Path(p).resolve() != purelib.resolve()]
    (purelib / "_this_environment.pth").write_text("".join(f"{p}\n" for p in ours))
    return {
        "python": python,
        "gif": python.with_name("gif.exe" if os.name == "nt" else "gif"),
        "purelib": purelib,
        "cwd": elsewhere,
    }


@pytest.mark.slow
def test_a_non_editable_install_finds_its_bundled_models_and_gif_info_prints_the_card(installed):
    probe = (
        "import json, gif_core, gif_core.zoo as zoo; "
        "print(json.dumps({'file': gif_core.__file__, 'assets': str(zoo.ASSETS_DIR), "
        "'default': str(zoo.default_model_path()), 'version': gif_core.__version__}))"
    )
    seen = json.loads(_run([str(installed["python"]), "-c", probe], installed["cwd"]))
    purelib = installed["purelib"].resolve()
    assert Path(seen["file"]).resolve().is_relative_to(purelib / "gif_core"), seen  # the installed copy, not REPO
    assert Path(seen["assets"]) == purelib / "gif_core" / "assets"
    default = Path(seen["default"])
    assert default.parent == purelib / "gif_core" / "assets" and default.is_file()
    assert seen["version"] == _pyproject_version()
    shipped = {p.name for p in default.parent.iterdir()}
    assert {p.name for p in (REPO / "assets").glob("*.safetensors")} | {"mnist_cnn.json"} <= shipped
    assert "screenshots" not in shipped  # README's pictures are not package data

    printed = _run([str(installed["gif"]), "info", str(default)], installed["cwd"])
    first, _, card = printed.partition("\n")
    assert first.startswith(f"{default}  (id ")
    assert json.loads(card) == json.loads((REPO / "assets" / "mnist_cnn.json").read_text())


def test_the_version_is_the_packages():
    assert gif_core.__version__ == _pyproject_version()
