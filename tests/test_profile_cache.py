"""The SQLite profiling cache: keys, corrupt files left intact, concurrent-safe resume after kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from itcp_deploy.errors import CacheError
from itcp_deploy.profiling.cache import CacheKey, ProfileCache

ROOT = Path(__file__).resolve().parents[1]
KEY = CacheKey(
    kind="latency",
    device="cpu A",
    backend="onnxruntime",
    backend_version="1.32.0",
    precision="fp32",
    input_shape=(1, 3, 32, 32),
    model_hash="abc",
    widths=(("conv1", 8),),
    settings='{"threads": 1}',
)


def test_keys_separate_devices_precisions_versions_and_widths(tmp_path):
    variants = [
        KEY,
        replace(KEY, device="cpu B"),
        replace(KEY, precision="int8"),
        replace(KEY, backend_version="1.33"),
        replace(KEY, widths=(("conv1", 12),)),
        replace(KEY, kind="layers"),
        replace(KEY, input_shape=(1, 3, 64, 64)),
    ]
    assert len({k.digest() for k in variants}) == len(variants)
    with ProfileCache(tmp_path) as cache:
        cache.put(KEY, {"samples_ms": [[1.0]]})
        assert cache.get(KEY) == {"samples_ms": [[1.0]]}
        assert all(cache.get(k) is None for k in variants[1:])
        assert cache.count("latency") == 1
    with ProfileCache(tmp_path) as cache:  # persisted
        assert cache.get(KEY) == {"samples_ms": [[1.0]]}


def _assert_rejected_untouched(cache_dir: Path, match: str) -> None:
    path = cache_dir / "cache.sqlite"
    before = path.read_bytes()
    with pytest.raises(CacheError, match=match) as info:
        ProfileCache(cache_dir)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in cache_dir.iterdir()) == ["cache.sqlite"]


def test_garbage_file_is_rejected_and_left_intact(tmp_path):
    (tmp_path / "cache.sqlite").write_bytes(b"this is not a database\x00" * 100)
    _assert_rejected_untouched(tmp_path, "not an SQLite database")


def test_truncated_database_is_rejected_and_left_intact(tmp_path):
    with ProfileCache(tmp_path) as cache:
        for i in range(300):
            cache.put(replace(KEY, model_hash=str(i)), {"samples_ms": [[float(i)] * 50]})
    db = sqlite3.connect(tmp_path / "cache.sqlite")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    for extra in ("cache.sqlite-wal", "cache.sqlite-shm"):
        (tmp_path / extra).unlink(missing_ok=True)
    path = tmp_path / "cache.sqlite"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    _assert_rejected_untouched(tmp_path, "unusable")


def test_other_schema_is_rejected_and_left_intact(tmp_path):
    db = sqlite3.connect(tmp_path / "cache.sqlite")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta VALUES ('schema', '999')")
    db.commit()
    db.close()
    _assert_rejected_untouched(tmp_path, "schema 999")


def test_cli_corrupt_cache_exits_2_with_one_line(tmp_path):
    from tests.conftest import run_cli

    (tmp_path / "cache.sqlite").write_bytes(b"garbage" * 10)
    code, out, err = run_cli(
        "profile-engines",
        "cifar_resnet20",
        "--input-shape",
        "1x3x32x32",
        "--cache",
        str(tmp_path),
        "--max-builds",
        "3",
        "--holdout",
        "1",
    )
    assert code == 2
    assert err.strip().count("\n") == 0 and "unusable" in err
    assert (tmp_path / "cache.sqlite").read_bytes() == b"garbage" * 10


_CHILD = """
import sys, time, torch
torch.set_num_threads(1)
from tests.test_profiler import fast_config, tiny_setup
from itcp_deploy.profiling import profiler
from itcp_deploy.profiling.design import DesignConfig
slow_build = profiler._Run.build
def build(self, plan):  # slow builds down so the parent can kill mid-run
    entry = slow_build(self, plan)
    time.sleep(0.5)
    return entry
profiler._Run.build = build
model, space = tiny_setup()
config = fast_config(sys.argv[1], design=DesignConfig(max_builds=8, holdout=2, tries=4))
profiler.run_profiling(model, space, config)
"""


def test_killed_run_resumes_and_reuses_builds(tmp_path):
    from itcp_deploy.profiling.design import DesignConfig
    from itcp_deploy.profiling.profiler import run_profiling
    from tests.test_profiler import fast_config, tiny_setup

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    built = 0
    while time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.2)
        if (tmp_path / "cache.sqlite").exists():
            with sqlite3.connect(tmp_path / "cache.sqlite", timeout=30) as db:
                try:
                    built = db.execute("SELECT COUNT(*) FROM entries WHERE kind='build'").fetchone()[0]
                except sqlite3.OperationalError:
                    built = 0
            if built >= 3:
                break
    assert child.poll() is None, child.stderr.read().decode()[-2000:]
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert 3 <= built < 8
    model, space = tiny_setup()
    config = fast_config(tmp_path, design=DesignConfig(max_builds=8, holdout=2, tries=4))
    profile, summary = run_profiling(model, space, config)
    assert summary.builds_cached >= 3 and summary.builds_new == 8 - summary.builds_cached
    assert len(profile.engines) == 8


_SHARD = """
import sys, torch
torch.set_num_threads(1)
from tests.test_profiler import fast_config, tiny_setup
from itcp_deploy.profiling.design import DesignConfig
from itcp_deploy.profiling.profiler import run_profiling
model, space = tiny_setup()
config = fast_config(sys.argv[1], shard=sys.argv[2], design=DesignConfig(max_builds=8, holdout=2, tries=4))
print(run_profiling(model, space, config)[1].builds_new)
"""


def test_two_processes_share_one_cache_then_merge_measures_nothing(tmp_path):
    from itcp_deploy.profiling.design import DesignConfig
    from itcp_deploy.profiling.profiler import run_profiling
    from tests.test_profiler import fast_config, tiny_setup

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _SHARD, str(tmp_path), f"{i}/2"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [c.communicate(timeout=180) for c in children]
    assert all(c.returncode == 0 for c in children), [err[-1500:] for _, err in results]
    assert sum(int(out.split()[-1]) for out, _ in results) == 8
    model, space = tiny_setup()
    config = fast_config(tmp_path, design=DesignConfig(max_builds=8, holdout=2, tries=4))
    _, merged = run_profiling(model, space, config)
    assert (merged.builds_new, merged.measurements_new, merged.builds_cached) == (0, 0, 8)
