"""Atomic writes: a temp file in the target's directory, fsync, then rename.

A crash, Ctrl-C or full disk mid-write never leaves a partial file in place of a good one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from itcp_deploy.errors import InputFileError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on failure it is removed."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:  # the parent is a file, read-only, or the disk is full
        raise InputFileError(f"cannot write into {target.parent}: {err.strerror or err}",
                             "choose an output path inside a writable directory") from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise InputFileError(f"could not write {target}: {err.strerror or err}", "free disk space or choose "
                             "another output path") from err
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C back until the block ends, then raise it.

    Writers such as ``torch.save`` turn a KeyboardInterrupt raised mid-write into an unrelated RuntimeError
    while cleaning up; a write is short, so the interrupt simply waits for it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[object] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Write through ``write(f)`` into a binary temp file, then rename it onto ``path`` (Ctrl-C waits)."""
    with deferred_interrupt(), atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Read JSON, turning every way it can fail into one-line :class:`InputFileError`."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{what} {p} does not exist", "check the path")
    if p.is_dir():
        raise InputFileError(f"{what} {p} is a directory, not a file", "give the file inside it")
    try:
        return json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputFileError(f"{what} {p} is unreadable or corrupt ({err.__class__.__name__})",
                             "regenerate it with the command that wrote it") from err
