"""What holding each INT8 group of a finished mixed-precision run's plan at FP32 would add to its predicted latency
(issue 27's precision control weighs this against the top-1s a group moves), from the run folder's perf model,
scores and INT8 costs, with the product's own problem (``search.precision.fp32_costs``). Usage::

    python bench/fp32_hold_cost.py RUN_DIR [RUN_DIR ...]     # e.g. a bench/mixed_table.py variant d folder
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itcp_deploy.perfmodel import PerfModel  # noqa: E402
from itcp_deploy.pipeline.run_dir import RunFolder  # noqa: E402
from itcp_deploy.plan import PruningPlan  # noqa: E402
from itcp_deploy.search.baselines import SearchInputs  # noqa: E402
from itcp_deploy.search.precision import fp32_costs, plan_states  # noqa: E402


def hold_costs(run: Path) -> dict:
    """The plan's predicted ms and, per INT8 group, what holding it at FP32 adds (ms and share of the plan)."""
    folder = RunFolder(run)  # a one-target run: its perf model in the folder's root
    plan, perf = PruningPlan.load(folder.plan), PerfModel.load(folder.target("").perf_model)
    inputs = SearchInputs(perf.space, perf, folder.read_arrays(folder.scores),
                          int8_cost=json.loads(folder.int8_cost.read_text()))
    states = plan_states(perf.space, plan.widths, plan.int8_groups)
    problem = inputs.problem()
    base = problem.cost(states)
    costs = fp32_costs(problem, states, plan.int8_groups)
    return {"run": str(run), "predicted_ms": base,
            "hold_at_fp32": {g: {"ms": ms, "share": ms / base} for g, ms in costs.items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    for run in p.parse_args(argv).runs:
        print(json.dumps(hold_costs(run)))


if __name__ == "__main__":
    main()
