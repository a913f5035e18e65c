"""How long one exact DP solve takes on ResNet-56 (3 stage groups + 27 inner groups, up to 16 candidates per
group, 58 conv/linear terms) with 1,000 budget bins. Run: ``python bench/dp_speed.py [--bins 1000]``.

``--pair 48``: the exact two-target solve (``search.vector.solve_pair``) on a 48 x 48 budget grid, the second
target's tables a seeded random distortion of the first's (another engine's staircase)."""

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
    parser.add_argument("--pair", type=int, default=0, metavar="BINS", help="two targets, BINS x BINS grid")
    args = parser.parse_args()
    space = resnet_space(9)
    problem = problem_from_tables(space, staircase_tables(space), 0.05, random_scores(space))
    dense_ms = problem.cost(problem.widest())
    sizes = [len(c) for c in problem.candidates.values() if len(c) > 1]
    print(
        f"{space.model}: {len(sizes)} groups, max {max(sizes)} candidates, {len(problem.terms)} terms, "
        f"dense {dense_ms:.3f} ms, {args.bins} bins"
    )
    if args.pair:
        pair(space, problem, args.pair, args.repeats)
        return
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


def pair(space, problem, bins: int, repeats: int) -> None:
    import numpy as np

    from itcp_deploy.search.vector import solve_pair

    rng = np.random.default_rng(0)
    tables = {k: v * rng.uniform(0.5, 1.5) + rng.random(v.shape) * v.mean() * 0.2
              for k, v in staircase_tables(space).items()}
    other = problem_from_tables(space, tables, 0.1, dict(problem.scores))
    for speedups in ((2.0, 1.6), (1.5, 2.0), (3.0, 3.0)):
        budgets = [p.cost(p.widest()) / s for p, s in zip((problem, other), speedups, strict=True)]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sol = solve_pair([problem, other], budgets, bins=(bins, bins))
            times.append(time.perf_counter() - t0)
        print(f"speed-ups {speedups}: solve {min(times):.3f} s (best of {repeats}), {bins}x{bins} bins, predicted "
              f"{[round(c, 4) for c in sol.costs]} <= budgets {[round(b, 4) for b in budgets]}, binding "
              f"{sol.binding}, score {sol.score:.3f}, exact={sol.exact}")


if __name__ == "__main__":
    main()
