"""How long one exact DP solve takes on ResNet-56 (3 stage groups + 27 inner groups, up to 16 candidates per
group, 58 conv/linear terms) with 1,000 budget bins. Run: ``python bench/dp_speed.py [--bins 1000]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itcp_deploy.search.dp import solve  # noqa: E402
from itcp_deploy.search.problem import problem_from_tables  # noqa: E402
from tests.synthetic_spaces import random_scores, resnet_space, staircase_tables  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bins", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    space = resnet_space(9)
    problem = problem_from_tables(space, staircase_tables(space), 0.05, random_scores(space))
    dense_ms = problem.cost(problem.widest())
    sizes = [len(c) for c in problem.candidates.values() if len(c) > 1]
    print(
        f"{space.model}: {len(sizes)} groups, max {max(sizes)} candidates, {len(problem.terms)} terms, "
        f"dense {dense_ms:.3f} ms, {args.bins} bins"
    )
    for speedup in (1.5, 2.0, 3.0):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sol = solve(problem, dense_ms / speedup, bins=args.bins)
            times.append(time.perf_counter() - t0)
        print(
            f"speedup {speedup}: solve {min(times):.3f} s (best of {args.repeats}), predicted "
            f"{sol.cost:.4f} ms <= budget {dense_ms / speedup:.4f} ms, score {sol.score:.3f}, "
            f"exact={sol.exact}, "
            f"front {len(sol.front)} points"
        )


if __name__ == "__main__":
    main()
