"""From a trained model and a perf model to a width plan: model -> group scores -> search -> PruningPlan.

This is the torch-needing glue around the pure :mod:`itcp_deploy.search` (which never imports torch): it
loads the model and data, computes group scores (and per-channel importance for ``global-magnitude``),
then runs one search method. ``itcp-deploy search`` and ``itcp-deploy pareto`` call it; so can the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from itcp_deploy.errors import UsageError
from itcp_deploy.perfmodel.model import PerfModel
from itcp_deploy.plan import PruningPlan
from itcp_deploy.search.baselines import SEARCH_METHODS, SearchInputs, run_method
from itcp_deploy.search.front import Front, method_fronts
from itcp_deploy.target import LatencyTarget


@dataclass(frozen=True)
class SearchConfig:
    """What ``itcp-deploy search`` needs. ``target``: the latency budget (``search`` measures no engine, so
    a speed-up divides the perf model's *predicted* dense latency, and says so); ``pareto`` needs none.
    ``data``: a ``--data`` spec for data-driven criteria (taylor, sensitivity)."""

    model: str
    perf_model: str
    target: LatencyTarget | None = None
    criterion: str = "taylor"
    method: str = "itcp"
    data: str | None = None
    weights: str | None = None
    bins: int = 1000
    batch_size: int = 64
    max_samples: int | None = 1024
    trust_code: bool = False


def budget_ms(perf_model: PerfModel, target: LatencyTarget | None) -> tuple[float, str]:
    """The latency budget of ``target`` for this perf model (the SLA itself, no margin: the perf model is all
    ``search`` has), and a line saying which dense latency a speed-up divided."""
    if target is None:
        raise UsageError("give exactly one of --sla-ms and --speedup", "e.g. --sla-ms 0.5 or --speedup 2")
    dense = perf_model.dense_reference_ms()
    note = target.describe(dense, "profiled" if perf_model.dense_measured_ms else "predicted")
    if target.relative:
        note += " (search builds no engine; `run` divides the measured dense latency)"
    return target.resolve_ms(dense), note


def search_inputs(config: SearchConfig, *, with_channel_importance: bool = False) -> SearchInputs:
    """Load the perf model, the model and the data, and score every group of the perf model's space."""
    from itcp_deploy.models import create_model
    from itcp_deploy.models.registry import random_weights_note
    from itcp_deploy.pruning import channel_importance, group_scores
    from itcp_deploy.pruning.apply import check_space_fits

    if note := random_weights_note(config.model, config.weights):
        logging.getLogger("itcp_deploy").warning(note)
    perf_model = PerfModel.load(config.perf_model)
    space = perf_model.space
    model = create_model(config.model, weights=config.weights, trust_code=config.trust_code)
    check_space_fits(model, space)
    loader = None
    if config.data is not None:
        from itcp_deploy.data import load_dataset, make_loader

        info = load_dataset(config.data, "train", augment=False)
        loader = make_loader(info, config.batch_size, shuffle=True, max_samples=config.max_samples)
    scores = group_scores(model, space, config.criterion, loader=loader)
    importance = channel_importance(model, space, "l1") if with_channel_importance else None
    return SearchInputs(space, perf_model, scores, importance)


def plan_widths(config: SearchConfig, log: Callable[[str], None] | None = None) -> PruningPlan:
    """The width plan of ``config.method`` under the budget (see :class:`SearchConfig`); ``log`` hears which
    dense latency the budget came from."""
    SEARCH_METHODS.get(config.method)  # fail on a typo before loading anything
    perf_model = PerfModel.load(config.perf_model)
    budget, note = budget_ms(perf_model, config.target)
    if perf_model.precision_tables and config.method != "itcp":
        raise UsageError(f"a mixed-precision perf model is searched by itcp only, not {config.method}",
                         "drop --method, or fit a perf model on a single-precision profile")
    inputs = search_inputs(config, with_channel_importance=config.method == "global-magnitude")
    int8_groups: tuple[str, ...] = ()
    if perf_model.precision_tables:
        solution, int8_groups = _solve_mixed(config, inputs, budget)
    else:
        solution = run_method(config.method, inputs, budget, bins=config.bins)
    (log or (lambda msg: None))(f"budget: {note}")  # after solving: a failure stays one line
    widths = {g.name: solution.widths[g.name] for g in inputs.space.prunable}
    return PruningPlan(
        model=config.model,
        input_shape=inputs.space.input_shape,
        widths=widths,
        method=config.method,
        criterion=config.criterion,
        budget_ms=budget,
        predicted_ms=solution.cost,
        score=solution.score,
        weights=config.weights,
        pareto=[(float(c), float(s)) for c, s in solution.front],
        int8_groups=int8_groups,
    )


def _solve_mixed(config: SearchConfig, inputs: SearchInputs, budget: float):
    """Widths and precisions in one exact solve (:mod:`itcp_deploy.search.precision`): the width scores less
    each group's INT8 cost, measured on the data's test split with calibration images from its training split
    (:mod:`itcp_deploy.pruning.int8_cost`). Returns the solution over widths and the INT8 groups."""
    from dataclasses import replace

    import torch

    from itcp_deploy.data import load_dataset, make_loader
    from itcp_deploy.models import create_model
    from itcp_deploy.pruning.int8_cost import Int8Loss, int8_costs
    from itcp_deploy.search.dp import solve
    from itcp_deploy.search.precision import split_states

    if config.data is None:
        raise UsageError("a mixed-precision search measures each group's INT8 cost on data", "pass --data")
    batches = {split: list(make_loader(load_dataset(config.data, split, augment=False), config.batch_size,
                                       shuffle=True, max_samples=config.max_samples)) for split in ("train", "test")}
    calib = torch.cat([x for x, _ in batches["train"]])[:128].numpy()
    model = create_model(config.model, weights=config.weights, trust_code=config.trust_code).eval()
    with Int8Loss(model, inputs.space, calib, batches["test"]) as loss:
        costs = int8_costs(loss)
    solution = solve(replace(inputs, int8_cost=costs).problem(), budget, bins=config.bins)
    widths, int8 = split_states(solution.widths)
    return replace(solution, widths=widths), int8


def pareto_fronts(
    config: SearchConfig, methods: list[str], *, points: int = 12
) -> tuple[dict[str, Front], float]:
    """Predicted fronts of each method (ITCP's from one solve) and the dense predicted latency."""
    for name in methods:
        SEARCH_METHODS.get(name)
    inputs = search_inputs(config, with_channel_importance="global-magnitude" in methods)
    return method_fronts(inputs, methods, points=points, bins=config.bins), inputs.perf_model.dense_ms()
