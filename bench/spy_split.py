"""Where a running stage's time goes: the share of py-spy samples under each of some functions.

Record a process from outside (no change to what it runs), then split the samples::

    py-spy record -p PID -r 10 -d 900 -f raw -o /tmp/stage.raw
    python bench/spy_split.py /tmp/stage.raw _capture _dense_targets _refit channel_importance recalibrate_bn

A sample counts for every named function on its stack (nested ones count for both), so the shares need not
add up to 100%.
"""

from __future__ import annotations

import argparse
from collections import Counter


def split(lines: list[str], names: list[str]) -> tuple[int, Counter]:
    """Total samples, and the samples whose stack has a frame of each name (py-spy's raw lines:
    ``frame;frame;... count``, a frame ``function (file:line)``)."""
    total, found = 0, Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        n, functions = int(count), {frame.split(" (", 1)[0] for frame in stack.split(";")}
        total += n
        for name in names:
            found[name] += n if name in functions else 0
    return total, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", help="py-spy record -f raw output")
    parser.add_argument("names", nargs="+", help="function names (py-spy's frame names, without the file)")
    parser.add_argument("--rate", type=float, default=10.0, help="the -r the samples were taken at (per second)")
    args = parser.parse_args()
    with open(args.raw) as f:
        total, found = split(f.readlines(), args.names)
    print(f"{total} samples ({total / args.rate:.0f} s)")
    for name in args.names:
        print(f"{name:30s} {found[name] / args.rate:8.0f} s {100 * found[name] / max(total, 1):6.1f}%")


if __name__ == "__main__":
    main()
