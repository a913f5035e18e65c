"""The closed SLA loop for several targets: one plan, every target's engine measured, every budget corrected
from its own measurement.

Each round solves ``max score s.t. predicted cost_k <= budget_k for every target k``
(:func:`~itcp_deploy.search.vector.solve_targets`: the exact 2-D DP for two targets, Lagrangian relaxation with a
reported bound for more), builds the plan's engine for every target and measures each interleaved with that
target's dense engine. The plan is accepted when every target is met and at least one lands in its acceptance
band ``[accept_low * target, target]`` (a plan far under every target wastes accuracy). Otherwise each target
that missed gets a new budget from its own rounds (:mod:`~itcp_deploy.pipeline.budget_search`, the single-target
loop's bracket and secant); when every target was met, every target's budget is relaxed that way. After
``max_rounds`` the best plan that met every target is kept, else the last one, with a note.

The perf models choose the vector plan, but measurement decides between it and each target's own plan: a model
that over-predicts one target makes the vector DP give up score the engines do not ask for. So every
single-target plan (the 1-D DP at that target's budget of the kept round) that scores higher is then built and
measured on every target like a round, best first, and the first that meets every target's aim is kept. Every
plan tried is in the rounds, with its kind and verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from itcp_deploy.errors import InfeasibleError, UsageError
from itcp_deploy.pipeline.budget_search import Round, accepted, next_budget
from itcp_deploy.pipeline.meter import TargetMeter
from itcp_deploy.pipeline.stages import RunContext
from itcp_deploy.pipeline.targets import DeployTarget, target_dir

if TYPE_CHECKING:
    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.search.vector import VectorSolution


@dataclass
class _Loop:
    """Per target: the perf model, the measured dense latency, the aim (SLA less the margin) and the rounds."""

    targets: list[DeployTarget]
    perf: list[PerfModel]
    meters: list[TargetMeter]
    records: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    history: list[list[Round]] = field(default_factory=list)
    solutions: list[VectorSolution] = field(default_factory=list)

    @property
    def dense_ms(self) -> list[float]:
        return [m.dense_ms() for m in self.meters]

    @property
    def aims(self) -> list[float]:
        return [m.aim_ms for m in self.meters]


def target_meter(target: DeployTarget, dense: Path, ctx: RunContext, dense_ms: float | None = None) -> TargetMeter:
    """The target measured against its dense engine."""
    loop = ctx.config.loop
    return TargetMeter(target.engine, target.latency, dense, loop.timing, loop.max_timing_rounds, dense_ms)


def check_reachable(loop: _Loop) -> None:
    """Refuse SLAs below what the fastest plan reaches, naming every target's minimum (measured ms, scaled by
    each target's measured/predicted dense latency) and which targets are out of reach."""
    from itcp_deploy.search.dp import min_latency_ms

    parts, bad = [], []
    for t, perf, dense, aim in zip(loop.targets, loop.perf, loop.dense_ms, loop.aims, strict=True):
        low = min_latency_ms(perf) * dense / perf.dense_ms()
        parts.append(f"{t.name}: SLA {t.latency.resolve_ms(dense):.4g} ms, minimum about {low:.4g} ms")
        if aim < low:
            bad.append(f"{t.name} to at least {low / (1 - t.latency.margin):.4g} ms")
    if bad:
        raise InfeasibleError("no plan meets every target (" + "; ".join(parts) + ")", "relax " + ", ".join(bad))


def _measure(ctx: RunContext, loop: _Loop, widths: dict[str, int], r: int) -> list[dict]:
    """Prune to ``widths``, build every target's engine, measure each against its dense engine."""
    from itcp_deploy.engines.build import build_engine
    from itcp_deploy.pruning import apply_widths

    pruned = apply_widths(ctx.inputs.model, ctx.space, widths, importance="l1")
    out = []
    for t, meter in zip(loop.targets, loop.meters, strict=True):
        built = build_engine(pruned, t.input_shape, target_dir(ctx.folder.root, t) / "rounds", f"round{r}", t.engine)
        m = meter.measure(built.artifact, precise=True)
        out.append({"measured_ms": m.measured_ms, "ratio_to_dense": m.ratio, "timing_rounds": m.timing_rounds})
    return out


def _next_budgets(loop: _Loop, budgets: list[float], accept_low: float) -> list[float] | None:
    """Each missed target's budget from its own rounds; all of them when every target was met (never below
    1.01 x a target's fastest predicted plan: the DP needs a little room). None when a needed correction has
    no budget left to try (its bracket collapsed)."""
    from itcp_deploy.search.dp import min_latency_ms

    last = [h[-1] for h in loop.history]
    all_met = all(r.measured <= aim for r, aim in zip(last, loop.aims, strict=True))
    new = list(budgets)
    for k, (hist, aim) in enumerate(zip(loop.history, loop.aims, strict=True)):
        if all_met or hist[-1].measured > aim:
            step = next_budget(hist, aim, accept_low)
            if step is None:
                return None
            new[k] = max(step, min_latency_ms(loop.perf[k]) * 1.01)
    return new


def _run_rounds(ctx: RunContext, loop: _Loop, problems, dense: dict[str, Path]) -> VectorSolution:
    from itcp_deploy.search.vector import solve_targets

    c, names = ctx.config, [t.name for t in loop.targets]
    budgets = [t.latency.predicted_budget_ms(d, p.dense_ms())
               for t, d, p in zip(loop.targets, loop.dense_ms, loop.perf, strict=True)]
    loop.history = [[] for _ in loop.targets]
    for r in range(c.loop.max_rounds):
        sol = solve_targets(problems, budgets, names, bins=c.loop.bins)
        measured = _measure(ctx, loop, sol.widths, r)
        _record(loop, sol, measured, "vector plan")
        for k, m in enumerate(measured):  # a miss is placed at its predicted cost, a hit at its budget
            place = budgets[k] if m["measured_ms"] <= loop.aims[k] else sol.costs[k]
            loop.history[k].append(Round(place, m["measured_ms"], sol.score))
        ctx.log(f"round {r}: " + "; ".join(
            f"{n} budget {b:.4f} predicted {p:.4f} measured {m['measured_ms']:.4f} ms (aim {a:.4f})"
            for n, b, p, m, a in zip(names, budgets, sol.costs, measured, loop.aims, strict=True)))
        last = [h[-1] for h in loop.history]
        if all(x.measured <= a for x, a in zip(last, loop.aims, strict=True)) and any(
                accepted(x, a, c.loop.accept_low) for x, a in zip(last, loop.aims, strict=True)):
            return sol
        new = _next_budgets(loop, budgets, c.loop.accept_low)
        if new is None:
            loop.notes.append(f"round {r}: a target's bracket of budgets collapsed; stopped")
            break
        budgets = new
    return _fallback(loop)


def _record(loop: _Loop, sol: VectorSolution, measured: list[dict], kind: str) -> dict:
    """Append one measured plan to the rounds (the report's record of everything tried)."""
    names = [t.name for t in loop.targets]
    rec = {"round": len(loop.records), "kind": kind, "score": sol.score, "method": sol.method,
           "bound": sol.bound if np.isfinite(sol.bound) else None,
           "widths": {g: int(w) for g, w in sol.widths.items()}, "targets": [
               {"name": n, "budget_ms": b, "predicted_ms": p, "aim_ms": a, **m}
               for n, b, p, a, m in zip(names, sol.budgets, sol.costs, loop.aims, measured, strict=True)]}
    loop.solutions.append(sol)
    loop.records.append(rec)
    return rec


def _misses(rec: dict) -> list[str]:
    """The targets a measured plan missed (measured over its aim: the SLA less the margin), as text."""
    return [f"{t['name']} measured {t['measured_ms']:.4f} ms > aim {t['aim_ms']:.4f}"
            for t in rec["targets"] if t["measured_ms"] > t["aim_ms"]]


def _single_target_plans(loop: _Loop, problems, budgets: list[float], above: float) -> list[VectorSolution]:
    """Each target's own 1-D DP plan at its budget that scores above ``above``, best first (one per target;
    a plan two targets share is tried once)."""
    from itcp_deploy.search.dp import solve
    from itcp_deploy.search.vector import vector_solution

    out: list[VectorSolution] = []
    for t, problem, budget in zip(loop.targets, problems, budgets, strict=True):
        try:
            widths = solve(problem, budget).widths
        except InfeasibleError:
            continue
        sol = vector_solution(problems, budgets, widths, exact=True, method=f"1-D DP for {t.name}")
        if sol.score > above + 1e-9 and all(o.widths != sol.widths for o in out):
            out.append(sol)
    return sorted(out, key=lambda s: -s.score)


def _measure_candidates(ctx: RunContext, loop: _Loop, problems, dense: dict[str, Path],
                        chosen: VectorSolution) -> VectorSolution:
    """Step 5 of the method across plans: the perf models chose the vector plan, measurement decides. Each
    single-target plan (the 1-D DP at that target's corrected budget, the chosen round's) that scores higher
    than the chosen plan is built and measured on every target like a round, best first; the first that meets
    every target's aim as measured replaces the chosen plan (a perf model that over-predicts one target makes
    the vector DP give up score that the engines do not ask for). Every candidate is recorded with its verdict."""
    i = loop.solutions.index(chosen)
    rec = loop.records[i]
    chosen_met = not _misses(rec)
    budgets = [t["budget_ms"] for t in rec["targets"]]
    for sol in _single_target_plans(loop, problems, budgets, chosen.score if chosen_met else -np.inf):
        cand = _record(loop, sol, _measure(ctx, loop, sol.widths, len(loop.records)),
                       f"candidate: {sol.method}")
        missed = _misses(cand)
        cand["verdict"] = ("rejected: " + "; ".join(missed)) if missed else (
            f"accepted: meets every target as measured, score {sol.score:.4g} > {chosen.score:.4g} "
            f"(round {i}'s plan)")
        ctx.log(f"round {cand['round']} ({cand['kind']}, score {sol.score:.4g}): {cand['verdict']}")
        if not missed:
            rec["verdict"] = f"replaced by round {cand['round']} ({cand['kind']}), which scores higher"
            return sol
    rec.setdefault("verdict", "accepted" if chosen_met else "kept: no plan met every target")
    return chosen


def _fallback(loop: _Loop) -> VectorSolution:
    met = [i for i, rec in enumerate(loop.records)
           if all(t["measured_ms"] <= t["aim_ms"] for t in rec["targets"])]
    if met:
        best = max(met, key=lambda i: loop.records[i]["score"])
        loop.notes.append(f"no round landed in a target's acceptance band while meeting every target after "
                          f"{len(loop.records)} round(s); kept the best-scoring plan that met every target")
        return loop.solutions[best]
    loop.notes.append(f"gave up after {len(loop.records)} round(s): no plan met every target; the perf models "
                      "underestimate a backend here, re-profile with more runs or relax an SLA")
    return loop.solutions[-1]


def vector_loop(ctx: RunContext, dense: dict[str, Path], scores: dict[str, np.ndarray]) -> dict:
    """Run the loop; writes the chosen plan to ``folder.plan`` and returns every target's rounds.

    Raises:
        InfeasibleError: an SLA is below its target's fastest plan (names every target's minimum).
    """
    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.search.problem import problem_from

    c = ctx.config
    if c.method != "itcp":
        raise UsageError(f"--method {c.method} plans for one target", "several targets need --method itcp")
    targets = list(c.targets)
    perf = [PerfModel.load(target_dir(ctx.folder.root, t) / "perf_model.json") for t in targets]
    loop = _Loop(targets, perf, [target_meter(t, dense[t.name], ctx) for t in targets])
    check_reachable(loop)
    problems = [problem_from(p.space, p, scores) for p in perf]
    chosen = _measure_candidates(ctx, loop, problems, dense, _run_rounds(ctx, loop, problems, dense))
    i = loop.solutions.index(chosen)
    plan = PruningPlan(model=c.model, input_shape=tuple(c.input_shape),
                       widths={g.name: chosen.widths[g.name] for g in ctx.space.prunable}, method=c.method,
                       criterion=c.criterion, importance=c.importance,
                       budget_ms=loop.records[i]["targets"][0]["budget_ms"], predicted_ms=chosen.costs[0],
                       score=chosen.score, weights=c.weights)
    plan.save(ctx.folder.plan)
    return {"dense_measured_ms": {t.name: d for t, d in zip(targets, loop.dense_ms, strict=True)},
            "sla_ms": {t.name: t.latency.resolve_ms(d) for t, d in zip(targets, loop.dense_ms, strict=True)},
            "accepted_round": i, "binding": dict(zip([t.name for t in targets], chosen.binding, strict=True)),
            "predicted_ms": dict(zip([t.name for t in targets], chosen.costs, strict=True)),
            "rounds": loop.records, "notes": loop.notes}
