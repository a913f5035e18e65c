"""The profiling cache: every build and raw measurement, in one SQLite file shared by concurrent runs.

Keyed by :class:`CacheKey` (device with its ISA flags and logical CPU count, backend + version, precision and
INT8 settings, input shape, model hash, widths, what was measured and how), so a measurement from another
device, backend version or precision is never reused: it simply has another key. (Entries written before the
device named its ISA have keys no run produces any more: they are never served; delete the cache to reclaim
their space.) WAL journaling and a busy timeout let two processes (``--shard 0/2`` and
``--shard 1/2``) write into one cache; each entry is committed on its own, so a run killed at any point
keeps everything finished before it. A file that is not a cache of this schema is reported
(:class:`CacheError`) and never modified.

Example::

    key = CacheKey(kind="latency", device="AMD EPYC [x86_64; avx2 fma; 2 logical CPUs]", backend="onnxruntime",
                   backend_version="1.32.0", precision="fp32", input_shape=(1, 3, 32, 32),
                   model_hash="3f2a...", widths=(("conv1", 16), ("layer1.0.conv1", 8)),
                   settings='{"threads": 1, "rounds": 10, ...}')
    cache.put(key, {"samples_ms": [[...], ...]}); cache.get(key)  # -> the dict, or None
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from itcp_deploy.errors import CacheError

CACHE_SCHEMA = 1
_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True)
class CacheKey:
    """What identifies one cache entry. ``kind``: ``build``, ``latency``, ``layers`` or ``isolated``;
    ``device``: :func:`itcp_deploy.engines.device.device_name` (model, ISA flags, logical CPUs);
    ``settings``: canonical JSON of whatever else changes the result (threads, timing config);
    ``quantization``: the INT8 settings' label (``u8s8``, ``u8s8-reduce-range``, ...; empty unless int8)."""

    kind: str
    device: str
    backend: str
    backend_version: str
    precision: str
    input_shape: tuple[int, ...]
    model_hash: str
    widths: tuple[tuple[str, int], ...] = ()
    settings: str = "{}"
    quantization: str = ""

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def with_kind(self, kind: str, settings: str = "{}") -> CacheKey:
        return CacheKey(
            **{
                **asdict(self),
                "kind": kind,
                "settings": settings,
                "input_shape": self.input_shape,
                "widths": self.widths,
            }
        )


def _corrupt(path: Path, why: str) -> CacheError:
    return CacheError(
        f"profiling cache {path} is unusable ({why}); it was left untouched",
        "pass another --cache directory, or move the file away yourself",
    )


@contextmanager
def _opening_lock(folder: Path) -> Iterator[None]:
    """Processes opening one cache do so one at a time (an advisory lock on the cache's folder, which adds no
    file; writes after the open are SQLite's to serialise): two ``profile-engines`` creating one new cache refused
    it 16 and 21 times in 40 trials, one reading it between the other's tables and its schema row, or meeting its
    lock during the check (``bench/cache_open_race.py``). Without ``fcntl`` (not POSIX) there is no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


class ProfileCache:
    """An open cache. Use as a context manager, or call :meth:`close`.

    Raises:
        CacheError: the file is not an SQLite database, is damaged, or has another schema version.
    """

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(cache_dir)
        self.path = self.dir / "cache.sqlite"
        if self.dir.exists() and not self.dir.is_dir():
            raise CacheError(f"--cache {self.dir} is a file, not a directory", "pass a directory")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a parent is a file, or read-only
            raise CacheError(f"cannot create --cache {self.dir}: {err.strerror or err}",
                             "pass a directory in a writable place") from err
        with _opening_lock(self.dir):
            self._open()

    def _open(self) -> None:
        """Check an existing file, connect, and create the tables and the schema row where they are missing."""
        existing = self.path.exists() and self.path.stat().st_size > 0
        if existing:
            with open(self.path, "rb") as f:
                if f.read(len(_HEADER)) != _HEADER:
                    raise _corrupt(self.path, "not an SQLite database")
        self._db = sqlite3.connect(self.path, timeout=60.0)
        try:
            if existing:
                self._check_existing()
            self._db.execute("PRAGMA busy_timeout = 60000")
            self._db.execute("PRAGMA journal_mode = WAL")
            with self._db:
                self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS entries (digest TEXT PRIMARY KEY, kind TEXT, "
                    "key_json TEXT, value_json TEXT, created REAL)"
                )
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(CACHE_SCHEMA),))
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise _corrupt(self.path, str(err)) from err
        except CacheError:
            self._db.close()
            raise

    def _check_existing(self) -> None:
        try:
            ok = self._db.execute("PRAGMA quick_check").fetchone()
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            schema = (
                self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if "meta" in tables
                else None
            )
        except sqlite3.DatabaseError as err:
            raise _corrupt(self.path, str(err)) from err
        if not ok or ok[0] != "ok":
            raise _corrupt(self.path, f"integrity check failed: {ok[0] if ok else 'no answer'}")
        if tables and (schema is None or schema[0] != str(CACHE_SCHEMA) or "entries" not in tables):
            found = schema[0] if schema else "none"
            raise _corrupt(self.path, f"schema {found}, this version reads schema {CACHE_SCHEMA}")

    def __enter__(self) -> ProfileCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def get(self, key: CacheKey) -> dict[str, Any] | None:
        row = self._db.execute("SELECT value_json FROM entries WHERE digest = ?", (key.digest(),)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: CacheKey, value: dict[str, Any]) -> None:
        """Store (or replace) one entry and commit at once."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
                (key.digest(), key.kind, json.dumps(asdict(key)), json.dumps(value), time.time()),
            )

    def count(self, kind: str | None = None) -> int:
        query = "SELECT COUNT(*) FROM entries" + (" WHERE kind = ?" if kind else "")
        return int(self._db.execute(query, (kind,) if kind else ()).fetchone()[0])

    def artifact_dir(self, key: CacheKey) -> Path:
        """Where the engine built for ``key`` lives (``<cache>/artifacts/<backend>/<digest>``)."""
        return self.dir / "artifacts" / key.backend / key.digest()[:24]
