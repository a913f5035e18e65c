"""Checks on the paths a command is given, done before any work starts.

Every command that writes a file calls :func:`check_outputs` first: an output that is one of the command's
inputs (after following symlinks, or a hard link to it) would silently overwrite it, and an output that is a
directory, or lies under a file, would fail only after minutes of work. Names that become file names
(``calibrate --name``) go through :func:`safe_name` so they cannot escape their folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from itcp_deploy.errors import UsageError

PathLike = str | os.PathLike[str]


def _same_file(a: Path, b: Path) -> bool:
    """``a`` would overwrite the existing file ``b`` (same path after symlinks, or a hard link to it)."""
    if not b.is_file():
        return False
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is a file (then nothing can be written under it)."""
    for parent in path.parents:
        if parent.exists():
            return parent if not parent.is_dir() else None
    return None


def check_output_file(option: str, path: PathLike) -> None:
    """``path`` can receive a file: it is not a directory and no ancestor of it is a file."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{option} {p} is a directory, not a file", f"give a file path to {option}, e.g. {p}/out")
    blocker = _blocking_file(p)
    if blocker is not None:
        raise UsageError(f"cannot write {option} {p}: {blocker} is a file", f"give {option} a path in a directory")


def check_output_dir(option: str, path: PathLike) -> None:
    """``path`` can be (or already is) a directory: it is not a file and no ancestor of it is a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{option} {p} is a file, not a directory", f"give {option} a directory")
    blocker = _blocking_file(p)
    if blocker is not None:
        raise UsageError(f"cannot create {option} {p}: {blocker} is a file", f"give {option} a path in a directory")


def check_outputs(outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None]) -> None:
    """Refuse an output file that is one of the inputs, a directory, or under a file.

    Args:
        outputs: option name (``-o``, ``--out``) -> output file path; ``None`` entries are skipped.
        inputs: what the input is (``profile``, ``weights``) -> its path; ``None`` and non-paths are skipped.

    Raises:
        UsageError: the first problem found, naming the option and the input.
    """
    for option, out in outputs.items():
        if out is None:
            continue
        for what, source in inputs.items():
            if source is not None and _same_file(Path(out), Path(source)):
                raise UsageError(f"{option} {out} is the same file as the {what} {source}; writing it would "
                                 f"destroy the {what}", f"give {option} another path")
        check_output_file(option, out)


def safe_name(name: str, option: str) -> str:
    """A name that becomes one file name inside a fixed folder: no separators, no ``..``, not empty."""
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
           or os.path.isabs(name) or name != name.strip())
    if bad:
        raise UsageError(f"{option} {name!r} is not a plain name (it must stay inside its folder)",
                         f"give {option} a name such as digits-512 (letters, digits, '-', '_', '.')")
    return name
