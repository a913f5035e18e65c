"""Atomic writes: a temp file in the target's directory, fsync, then rename.

A crash, Ctrl-C, SIGTERM or full disk mid-write never leaves a partial file in place of a good one. The new
file gets the mode of the file it replaces, or the umask's default for a new file (``mkstemp`` alone would leave
every output 0600). SIGTERM is handled exactly like Ctrl-C (SIGINT): both raise ``KeyboardInterrupt``
(:func:`install_interrupt_handlers`), so every cleanup and resume path written for Ctrl-C serves both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from itcp_deploy.errors import InputFileError

#: signals that mean "stop now, resumably": Ctrl-C and the polite kill (CI timeouts, ``docker stop``, ``kill``).
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


_last_signal = [int(signal.SIGINT)]  # the signal behind the latest KeyboardInterrupt raised here


def _interrupt(signum: int) -> KeyboardInterrupt:
    _last_signal[0] = int(signum)
    return KeyboardInterrupt(signal.Signals(signum).name)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise _interrupt(signum)


def interrupt_exit_code() -> int:
    """128 + the number of the signal that interrupted (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + _last_signal[0]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises ``KeyboardInterrupt("SIGTERM")`` like SIGINT does (main thread only;
    the CLI wraps every command in it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _last_signal[0] = int(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def _new_file_mode(target: Path) -> int:
    """The mode the file would have had if written in place: the replaced file's, else 0666 minus the umask."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


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
        os.chmod(tmp_path, _new_file_mode(target))
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
    """Hold Ctrl-C and SIGTERM back until the block ends, then raise ``KeyboardInterrupt``.

    Writers such as ``torch.save`` turn a KeyboardInterrupt raised mid-write into an unrelated RuntimeError
    while cleaning up; a write is short, so the interrupt simply waits for it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[object] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in INTERRUPT_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise _interrupt(int(received[0]))  # type: ignore[call-overload]


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
