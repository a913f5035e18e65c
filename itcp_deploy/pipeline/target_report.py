"""The report of a run with several targets: :class:`~itcp_deploy.pipeline.report.RunReport` with one entry
per target (SLA, predicted, measured, met, binds, its engine file). The single-target fields repeat the first
target's; ``met_sla`` is true only when every target met its SLA, ``measured_over_sla`` is the worst target's."""

from __future__ import annotations

import os
from dataclasses import asdict

from itcp_deploy.pipeline.report import RunReport, levers_fields
from itcp_deploy.pipeline.stages import RunContext
from itcp_deploy.pipeline.targets import DeployTarget


def target_entry(t: DeployTarget, loop: dict, final: dict, dense_engine: str) -> dict:
    """One target's line of the report."""
    return {"name": t.name, "backend": t.engine.backend, "precision": t.engine.precision,
            "input_shape": "x".join(map(str, t.input_shape)), "threads": t.engine.options.threads,
            "percentile": t.latency.percentile, "sla": asdict(t.latency), "sla_ms": final["sla_ms"],
            "dense_ms": loop["dense_measured_ms"][t.name], "predicted_ms": loop["predicted_ms"][t.name],
            "measured_ms": final["measured_ms"], "measured_over_sla": final["measured_ms"] / final["sla_ms"],
            "final_over_dense": final["ratio"], "final_latency_ms": {k: final["final"][k] for k in
                                                                     ("median_ms", "p90_ms", "p99_ms")},
            "met": bool(final["met"]), "binds": bool(loop["binding"][t.name]), "engine": final["main_file"]
            or final["artifact"], "dense_engine": dense_engine}


def targets_report(ctx: RunContext) -> RunReport:
    """Build, save (``report.json``, ``report.md``) and return the report of a finished several-target run."""
    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.pipeline.targets import target_dir
    from itcp_deploy.plan import PruningPlan

    c, s = ctx.config, ctx.state
    dense, loop, fin, final = s.done("dense"), s.done("loop"), s.done("finetune"), s.done("final")
    plan = PruningPlan.load(ctx.folder.plan)
    entries = [target_entry(t, loop, final["targets"][t.name], dense["targets"][t.name]) for t in c.targets]
    for e in entries:  # engine paths relative to the run folder: `check-latency --run OUT` finds them anywhere
        e["engine"], e["dense_engine"] = (os.path.relpath(e[k], ctx.folder.root) for k in ("engine", "dense_engine"))
    first, perf = entries[0], PerfModel.load(target_dir(ctx.folder.root, c.targets[0]) / "perf_model.json")
    report = RunReport(
        model=c.model, backend=", ".join(dict.fromkeys(t.engine.backend for t in c.targets)),
        precision=", ".join(dict.fromkeys(t.engine.precision for t in c.targets)), device=perf.meta.get("device", ""),
        sla_ms=first["sla_ms"], percentile=first["percentile"], dense_latency_ms=first["dense_ms"],
        predicted_latency_ms=first["predicted_ms"], final_latency_ms=first["final_latency_ms"],
        final_over_dense=first["final_over_dense"], met_sla=all(e["met"] for e in entries),
        measured_over_sla=max(e["measured_over_sla"] for e in entries), accuracy_dense=dense["accuracy"],
        accuracy_pruned_bn=fin["accuracy_pruned_bn"], accuracy_final=fin["accuracy_final"],
        macs_dense=dense["macs"], macs_final=final["macs"], params_dense=dense["params"],
        params_final=final["params"], rounds=loop["rounds"], widths=dict(plan.widths),
        full_widths={g: ctx.space.group(g).full_width for g in plan.widths}, criterion=c.criterion,
        method=c.method, epochs=c.recipe.epochs, notes=[n for n in [s.done("scores").get("note")] if n]
        + list(loop.get("notes", [])), wall_s={k: v.get("wall_s", 0.0) for k, v in s.data["stages"].items()},
        targets=entries, **levers_fields(c, fin))
    report.save(ctx.folder.root)
    _plots(ctx, report)
    return report


def _plots(ctx: RunContext, report: RunReport) -> None:
    """The widths plot, and each target's held-out check in its own folder (a several-target plan has no 1-D
    front: every target's budget binds it)."""
    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.pipeline.report import plot_holdout, plot_widths
    from itcp_deploy.pipeline.targets import target_dir

    plot_widths(report.widths, report.full_widths, ctx.folder.root / "widths.png")
    for t in ctx.config.targets:
        folder = target_dir(ctx.folder.root, t)
        plot_holdout(folder / "profile.json", PerfModel.load(folder / "perf_model.json"),
                     folder / "latency_pred_vs_measured.png", f"{report.model} [{t.name}]")
