"""Content hashes of input files and built engines: what a resume fingerprint and the engine cache compare.

A path says nothing about what is in the file now; a SHA-256 of the bytes does.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def path_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, or of every file under a directory (relative names and bytes, in sorted order)."""
    p = Path(path)
    if not p.is_dir():
        return file_sha256(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def tree_checksums(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Relative file name -> SHA-256 of every file under ``directory``."""
    root = Path(directory)
    return {f.relative_to(root).as_posix(): file_sha256(f) for f in sorted(root.rglob("*")) if f.is_file()}


def damaged_files(directory: str | os.PathLike[str], checksums: dict[str, str]) -> list[str]:
    """Files of ``checksums`` that are missing under ``directory`` or whose bytes changed."""
    root = Path(directory)
    return [name for name, digest in checksums.items()
            if not (root / name).is_file() or file_sha256(root / name) != digest]


def input_digests(named_paths: dict[str, str | None]) -> dict[str, str]:
    """What -> SHA-256 of each named input that is an existing file (names, specs and directories are left out:
    the config already holds them)."""
    return {what: file_sha256(Path(path).expanduser()) for what, path in named_paths.items()
            if path and Path(path).expanduser().is_file()}


def changed_inputs(saved: object, digests: dict[str, str]) -> str:
    """``": the weights file changed"``-style detail for a resume refused because input contents differ."""
    old = saved.get("config", {}).get("contents") if isinstance(saved, dict) else None
    if not isinstance(old, dict):
        return ""
    changed = sorted(w for w in set(old) | set(digests) if old.get(w) != digests.get(w))
    return f" (the contents of the {', '.join(changed)} changed since it started)" if changed else ""
