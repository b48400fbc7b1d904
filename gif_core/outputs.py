"""Files a command writes: every output path checked before any work, nothing written unless the whole run succeeds.

A run names its outputs first (:func:`check_new_outputs`: each is a non-empty path that does not exist, is not a
directory, lies in an existing, writable folder, and no two outputs are the same file), computes, serialises every
output to bytes, and only then calls :func:`write_new_files`: each file is written under a temporary name in its
own folder and then linked to its final name with ``os.link``, which fails if that name appeared meanwhile (so a file
made by someone else during the run is never replaced); on any failure every file this call created is removed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def check_new_output(path: str | Path, flag: str) -> Path:
    """``path`` as a Path if a new file may be written there, else a ValueError that names ``flag`` and says why."""
    if not str(path).strip():
        raise ValueError(f"{flag} needs a file name, got an empty one")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file name inside it")
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{flag} {path} already exists; choose a new file name (nothing is overwritten)")
    parent = path.parent
    if not parent.exists():
        raise ValueError(f"{flag} {path}: the folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {parent} is not writable; choose another folder")
    return path


def check_new_outputs(outputs: Sequence[tuple[str | Path, str]]) -> list[Path]:
    """:func:`check_new_output` for each (path, flag), and no two of them the same file."""
    checked = [check_new_output(path, flag) for path, flag in outputs]
    seen: dict[Path, str] = {}
    for path, (_, flag) in zip(checked, outputs, strict=True):
        resolved = path.resolve()
        if resolved in seen:
            raise ValueError(f"{flag} {path} is also the file of {seen[resolved]}; give each output its own name")
        seen[resolved] = flag
    return checked


def write_new_files(contents: Mapping[Path, bytes]) -> None:
    """Create every file of ``contents`` (path → bytes), all or none: see the module docstring."""
    temporary: list[Path] = []
    created: list[Path] = []
    try:
        for path, data in contents.items():
            partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
            temporary.append(partial)
            with open(partial, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        for path, partial in zip(contents, temporary, strict=True):
            try:
                os.link(partial, path)
            except FileExistsError:
                raise FileExistsError(
                    f"{path} was created by someone else during this run; nothing was written (choose a new name)"
                ) from None
            created.append(path)
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    finally:
        for partial in temporary:
            partial.unlink(missing_ok=True)
