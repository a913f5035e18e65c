"""Two processes opening one new profiling cache at the same moment (``profile-engines --shard`` on one ``--cache``):
how many of N trials refuse the cache. Found by CI's ``test_two_profile_engines_at_once_on_one_cache`` on 663501d.
Usage::

    PYTHONPATH=. python bench/cache_open_race.py --trials 40
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
from pathlib import Path


def _open(folder: Path, out: mp.Queue) -> None:
    from itcp_deploy.profiling.cache import ProfileCache

    try:
        ProfileCache(folder)
        out.put("ok")
    except Exception as err:  # noqa: BLE001 (what refuses the cache is the measurement)
        out.put(str(err).splitlines()[0].replace(str(folder), "CACHE"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=40)
    trials, refused = p.parse_args(argv).trials, []
    for _ in range(trials):
        folder, out = Path(tempfile.mkdtemp()) / "cache", mp.Queue()
        procs = [mp.Process(target=_open, args=(folder, out)) for _ in range(2)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        refused += [r for r in (out.get() for _ in procs) if r != "ok"]
    print(f"{len(refused)} refusals in {trials} trials of two processes")
    for reason in sorted(set(refused)):
        print(f"  {refused.count(reason)} x {reason}")


if __name__ == "__main__":
    main()
