"""The whole ITCP pipeline (``itcp-deploy run``, and ``profile-engines`` given an SLA): the one place that
runs every stage.

dense model -> profile engines (cache reused) -> fit perf model -> group scores -> closed loop
(search -> prune -> build -> measure against the dense engine, interleaved; shrink or relax the budget by
measured/predicted and re-solve) -> BatchNorm re-estimation + finetuning -> final engine -> final measurement
-> report.

Latency depends on the architecture, not on the weights, so the closed loop runs on freshly pruned structures
and finetuning happens once, on the structure that met the SLA. Every stage writes its result into the output
folder and records itself in ``state.json``; a rerun resumes after the last finished stage.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

from itcp_deploy.errors import UsageError
from itcp_deploy.pipeline.closed_loop import latency_split, search_inputs
from itcp_deploy.pipeline.config import DeployTarget, LoopSettings, RunConfig
from itcp_deploy.pipeline.report import RunReport, levers_fields
from itcp_deploy.pipeline.run_dir import RunFolder, RunState
from itcp_deploy.pipeline.sources import ModelInputs
from itcp_deploy.pipeline.stages import STAGES, Log, Progress, RunContext, restore_pruned
from itcp_deploy.pipeline.strategies import strategy_for
from itcp_deploy.plan import PruningPlan


def run(config: RunConfig, log: Log | None = None, progress: Progress | None = None) -> RunReport:
    """Run the pipeline on the model and data that ``config``'s spec strings name; returns the
    :class:`~itcp_deploy.pipeline.report.RunReport` (also in ``OUT/report.json``).

    Raises:
        UsageError, InputFileError: bad options or files.
        InfeasibleError: the SLA is below the fastest reachable plan (names the minimum latency).
    """
    from itcp_deploy.pipeline.from_specs import config_inputs

    config.validate()
    return run_with(config, config_inputs(config), log, progress)


def run_with(config: RunConfig, inputs: ModelInputs, log: Log | None = None,
             progress: Progress | None = None) -> RunReport:
    """Run every stage on ``inputs`` (objects: :func:`itcp_deploy.prune`, or made from specs by :func:`run`)."""
    return report_of(run_stages(config, inputs, log, progress))


CALIBRATION_IMAGES = 256  # the int8 calibration set a run draws from its own data when given no --calib


def with_calibration(config: RunConfig, inputs: ModelInputs, folder: RunFolder) -> RunConfig:
    """``config`` with every int8 or mixed target that names no calibration set given one drawn from the run's own data:
    :data:`CALIBRATION_IMAGES` of the score batches (un-augmented training images), with the run's seed, into
    ``calibration.npz`` (kept on resume; its manifest says where it came from). The data is already given, so
    ``run --precision int8`` needs no ``itcp-deploy calibrate`` first."""
    from dataclasses import replace

    from itcp_deploy.data.calibration import calibration_from_batches
    from itcp_deploy.pipeline.stages import score_batches

    needs = [t for t in config.targets if t.engine.precision in ("int8", "mixed") and t.engine.calib is None]
    if not needs:
        return config
    if not folder.calibration.is_file():
        calibration_from_batches(inputs.batches(score_batches(config)), folder.calibration, num=CALIBRATION_IMAGES,
                                 seed=config.seed, source=f"{config.data} (the run's score batches)")
    path = str(folder.calibration)
    return replace(config, targets=tuple(replace(t, engine=replace(t.engine, calib=path)) if t in needs else t
                                         for t in config.targets))


def run_stages(config: RunConfig, inputs: ModelInputs, log: Log | None = None, progress: Progress | None = None,
               *, until: str | None = None) -> RunContext:
    """Run the stages in order (``until``: stop after that one), each once: a rerun on the same folder resumes
    after the last finished stage."""
    from itcp_deploy.pruning import build_space
    from itcp_deploy.pruning.output_kind import criteria_for

    config.validate()
    strategy = strategy_for(config.method, len(config.targets))
    folder = RunFolder(config.out_dir, [t.name for t in config.targets]).create()
    config = with_calibration(config, inputs, folder)
    state = RunState(folder, config)
    space = build_space(inputs.model, config.input_shape, model_spec=config.model,
                        ignore_layers=config.ignore_layers).with_removal(config.block_removal)
    # the built-in recipe (epochs > 0) trains with cross-entropy; the user's own finetune callable needs no loss
    if (config.recipe.epochs > 0 and inputs.finetune is not None and inputs.loss_fn is None
            and criteria_for(inputs.model, config.input_shape, "taylor", "taylor").note):
        raise UsageError(f"{config.model} has no classification output, so it cannot be finetuned with "
                         "cross-entropy", "pass --epochs 0, or give prune() your loss_fn or finetune callable")
    ctx = RunContext(config, folder, state, inputs, space, strategy, log or (lambda msg: None), progress)
    _note_other_size(inputs, config.input_shape, config.data)
    while True:
        for name, stage in STAGES:
            if state.done(name) is None:
                ctx.log(f"stage {name} ...")
                t0 = time.perf_counter()
                result = stage(ctx)
                state.finish(name, {**result, "wall_s": time.perf_counter() - t0})
            else:
                ctx.log(f"stage {name}: done in an earlier run, skipped")
            if name == until:
                return ctx
        if not _solve_again(ctx):
            return ctx


RESOLVED_STAGES = ("loop", "finetune", "final")  # what a re-solve runs again
MIN_AIM_FACTOR = 0.8  # a final engine > 25% above the loop's engine of its plan is another engine, not noise


def _solve_again(ctx: RunContext) -> bool:
    """Send the run back to the loop (method step 5) when a final engine missed what the loop can correct: its
    latency (:func:`_aim_factors`, at most ``loop.final_retries`` times) or, for a mixed-precision plan, its top-1
    agreement with the FP32 model it came from (:func:`_precision_control`, at most ``loop.precision_retries``
    times). Returns whether it did."""
    c, state = ctx.config, ctx.state
    latency_left, precision_left = retries_left(c.loop, state.retries)
    factors, latency_note = _aim_factors(ctx) if latency_left else ({}, "")
    fp32_groups, precision_note = _precision_control(ctx) if precision_left else ((), "")
    if not factors and not fp32_groups:
        return False
    note = "; ".join(n for n in (latency_note, precision_note) if n)
    ctx.log(f"{note} (re-solve {len(state.retries) + 1})")
    if ctx.folder.finetune.is_dir():  # its checkpoint is the old plan's: kept aside, not resumed from
        ctx.folder.finetune.rename(ctx.folder.root / f"finetune.before-re-solve-{len(state.retries) + 1}")
    state.retry(RESOLVED_STAGES, {"note": note, "aim_factor": factors, "fp32_groups": list(fp32_groups)})
    return True


def retries_left(loop: LoopSettings, retries: list[dict]) -> tuple[bool, bool]:
    """Whether the latency correction and the precision control may each re-solve once more, given the
    re-solves recorded so far (one may have been both)."""
    return (sum(bool(r.get("aim_factor")) for r in retries) < loop.final_retries,
            _precision_tries(retries) < loop.precision_retries)


def _precision_tries(retries: list[dict]) -> int:
    """The re-solves the precision control asked for (a retry that held groups at FP32)."""
    return sum(bool(r.get("fp32_groups")) for r in retries)


def _aim_factors(ctx: RunContext) -> tuple[dict[str, float], str]:
    """When a final engine missed an SLA that the loop's engine of the same plan met under its aim (the shipped
    engine is another build: a tiny MobileNet-V2's measured 1-3.5% above the loop's, same graph, other weights
    layout), each missed target's aim lowered by final/loop; ({}, "") when there is nothing to correct."""
    c, state = ctx.config, ctx.state
    final, loop = state.done("final")["targets"], state.done("loop")
    accepted = {t["name"]: t["measured_ms"] for t in loop["rounds"][loop["accepted_round"]]["targets"]}
    missed = [t for t in c.targets if not final[t.name]["met"]]
    if not missed or any(accepted[t.name] > loop["aim_ms"][t.name] for t in missed):
        return {}, ""  # nothing missed, or the loop's own plan missed its aim: aiming lower is no correction
    factors = {t.name: accepted[t.name] / final[t.name]["measured_ms"] for t in missed}
    if any(not MIN_AIM_FACTOR <= f < 1.0 or 1.0 - (1.0 - t.latency.margin) * f >= 0.5
           for t, f in zip(missed, factors.values(), strict=True)):
        return {}, ""  # the engines differ by more than noise, or no aim would be left: report the miss
    note = "; ".join(f"{t.name}: final engine {final[t.name]['measured_ms']:.4g} ms, over the SLA "
                     f"{final[t.name]['sla_ms']:.4g} ms, where the loop measured {accepted[t.name]:.4g} ms"
                     for t in missed)
    return factors, f"{note}: solving again aiming {1 - min(factors.values()):.1%} lower"


def _precision_control(ctx: RunContext) -> tuple[tuple[str, ...], str]:
    """A mixed-precision plan whose final engine agrees with the FP32 model it came from on too few evaluation images
    (``min_agreement`` with 95% confidence, :func:`~itcp_deploy.search.precision.agreement_aim`): the plan's INT8
    groups that move the most top-1s alone (measured on that pruned model, the same images) per share of latency
    their INT8 saves, to hold at FP32 in the re-solve (:func:`~itcp_deploy.search.precision.keep_fp32`); ((), "")
    when every engine agrees enough or nothing was measured."""
    from itcp_deploy.data.calibration import load_calibration
    from itcp_deploy.engines.evaluate import images_and_labels
    from itcp_deploy.pruning.int8_cost import Int8Loss, int8_disagreements
    from itcp_deploy.search.precision import keep_fp32

    c, plan = ctx.config, PruningPlan.load(ctx.folder.plan)
    worst, aim, images = _agreement(ctx)
    if not images or worst >= aim or not plan.int8_groups:
        return (), ""
    try:  # the images the agreement was measured on
        held = [images_and_labels(ctx.inputs.eval_loader or [], images)]
    except UsageError:  # a one-pass loader, read by the final stage
        ctx.log("precision control: the evaluation data could not be read again; the mixed plan stays as it is")
        return (), ""
    calib = load_calibration(c.targets[0].engine.calib, c.input_shape)
    pruned = restore_pruned(ctx.inputs.model, c, ctx.folder)
    with Int8Loss(pruned, ctx.space, calib, held, widths=plan.widths) as loss:
        alone = int8_disagreements(loss, plan.int8_groups)
    groups = keep_fp32(alone, 1.0 - worst, 1.0 - aim, _fp32_costs(ctx, plan))
    return groups, (f"the mixed engine agrees with its FP32 model on {worst:.1%} of {images} evaluation images, "
                    f"under {aim:.1%} (--min-agreement {c.min_agreement:g} with 95% confidence): solving again "
                    f"with {', '.join(groups)} at FP32 (alone at INT8 they moved "
                    f"{', '.join(f'{alone[g]:.1%}' for g in groups)} of the top-1s)")


def _agreement(ctx: RunContext) -> tuple[float, float, int]:
    """The lowest top-1 agreement of a mixed final engine with the FP32 model it came from, the agreement
    ``min_agreement`` asks of it on that many images (:func:`~itcp_deploy.search.precision.agreement_aim`), and
    the images measured (0: no mixed engine's agreement was measured)."""
    from itcp_deploy.search.precision import agreement_aim

    c, final = ctx.config, ctx.state.done("final")["targets"]
    measured = [a for t in c.targets if t.engine.precision == "mixed"
                and "agreement_with_source" in (a := final[t.name].get("engine_accuracy") or {})]
    images = min((a["images"] for a in measured), default=0)
    worst = min((a["agreement_with_source"] for a in measured), default=1.0)
    return worst, agreement_aim(c.min_agreement, images), images


def _agreement_note(ctx: RunContext) -> str | None:
    """What the report says when ``--min-agreement`` could not be met or not even judged: silence would read as
    an engine that agrees enough."""
    c = ctx.config
    if c.min_agreement <= 0:
        return None
    worst, aim, images = _agreement(ctx)
    if not images:
        return (f"--min-agreement {c.min_agreement:g} was not applied: no mixed engine's agreement with its FP32 "
                f"model was measured (it needs evaluation images at the engine's input size: --data with a test split)")
    if worst >= aim:
        return None
    tries = _precision_tries(ctx.state.retries)
    return (f"the mixed engine agrees with its FP32 model on {worst:.1%} of {images} evaluation images, under "
            f"{aim:.1%} (--min-agreement {c.min_agreement:g} with 95% confidence), after {tries} precision re-solve(s)")


def _fp32_costs(ctx: RunContext, plan: PruningPlan) -> dict[str, float]:
    """What holding each INT8 group of ``plan`` at FP32 would add to its predicted latency, as a share of the plan's
    (summed over the targets): what the precision control weighs a group's moved top-1s against."""
    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.search.precision import fp32_costs, plan_states

    perf = [PerfModel.load(ctx.folder.target(t.name).perf_model) for t in ctx.config.targets]
    shares = dict.fromkeys(plan.int8_groups, 0.0)
    for inputs in search_inputs(ctx, perf, ctx.folder.read_arrays(ctx.folder.scores)):
        problem = inputs.problem()
        states = plan_states(inputs.space, plan.widths, plan.int8_groups)
        base = problem.cost(states)
        for g, ms in fp32_costs(problem, states, plan.int8_groups).items():
            shares[g] += ms / base
    return shares


def _note_other_size(inputs: ModelInputs, input_shape: tuple[int, ...], data: str | None = None) -> None:
    """Warn when the data's images are not at the engine's input size: BatchNorm re-estimation and finetuning
    then see other activations than the engine does (an EfficientNet-B1 built at 224 and re-estimated on 32x32
    synthetic images output 3e10 at 224)."""
    import torch

    batches = inputs.batches(1)
    x = batches[0][0] if batches and isinstance(batches[0], (tuple, list)) else None
    if isinstance(x, torch.Tensor) and x.dim() == 4 and tuple(x.shape[2:]) != tuple(input_shape[2:]):
        logging.getLogger("itcp_deploy").warning(
            f"the data's images are {x.shape[2]}x{x.shape[3]} but the engine's input is {input_shape[2]}x"
            f"{input_shape[3]}: BatchNorm is re-estimated (and the model finetuned) at the data's size; give data "
            f"at the deploy size (e.g. --data {_generated_kind(data)}:size={input_shape[2]})")


def _generated_kind(data: str | None) -> str:
    """The built-in data kind to suggest at another size: the user's own when it is one (boxes stay boxes)."""
    from itcp_deploy.data.specs import GENERATED

    kind = (data or "").split(":")[0]
    return kind if kind in GENERATED else "synthetic"


def report_of(ctx: RunContext) -> RunReport:
    """The report of a finished run, one row per target (saved as OUT/report.json and report.md, with its
    plots). The one-line fields are the first target's; ``met_sla`` is "every target met", ``measured_over_sla``
    the worst target's."""
    import os

    from itcp_deploy.perfmodel import PerfModel

    c, s, root = ctx.config, ctx.state, ctx.folder.root
    dense, loop, fin, final = s.done("dense"), s.done("loop"), s.done("finetune"), s.done("final")
    plan = PruningPlan.load(ctx.folder.plan)
    perfs = {t.name: PerfModel.load(ctx.folder.target(t.name).perf_model) for t in c.targets}
    entries = [{**target_entry(t, loop, final["targets"][t.name], dense["targets"][t.name]),
                **perf_honesty(perfs[t.name], loop, t.name),
                **latency_split(perfs[t.name], loop["dense_measured_ms"][t.name])} for t in c.targets]
    for e in entries:  # engine paths relative to the run folder: `check-latency --run OUT` finds them anywhere
        e["engine"], e["dense_engine"] = (os.path.relpath(e[k], root) for k in ("engine", "dense_engine"))
    first, perf = final["targets"][c.targets[0].name], perfs[c.targets[0].name]
    report = RunReport(
        model=c.model, backend=", ".join(dict.fromkeys(t.engine.backend for t in c.targets)),
        precision=", ".join(dict.fromkeys(t.engine.precision for t in c.targets)), device=perf.meta.get("device", ""),
        sla_ms=entries[0]["sla_ms"], percentile=entries[0]["percentile"], dense_latency_ms=first["dense"]["median_ms"],
        predicted_latency_ms=float(plan.predicted_ms or 0.0), final_latency_ms=entries[0]["final_latency_ms"],
        final_over_dense=first["ratio"], met_sla=all(e["met"] for e in entries),
        measured_over_sla=max(e["measured_over_sla"] for e in entries), accuracy_dense=dense["accuracy"],
        accuracy_pruned_bn=fin["accuracy_pruned_bn"], accuracy_final=fin["accuracy_final"],
        macs_dense=dense["macs"], macs_final=final["macs"], params_dense=dense["params"],
        params_final=final["params"], rounds=loop["rounds"], widths=dict(plan.widths),
        full_widths={g: ctx.space.group(g).full_width for g in plan.widths}, int8_groups=list(plan.int8_groups),
        criterion=s.done("scores").get("criterion", c.criterion),  # what scored: the data-free one where it fell back
        method=c.method, epochs=c.recipe.epochs,
        perf_model_error={k: v for k, v in asdict(perf.report).items() if isinstance(v, float)} if perf.report else {},
        notes=[n for n in [s.done("scores").get("note"), _calibration_note(ctx)] if n] + list(loop.get("notes", []))
        + [f"re-solved after the final stage: {r['note']}" for r in s.retries]
        + [n for n in [_agreement_note(ctx)] if n],
        wall_s={k: v.get("wall_s", 0.0) for k, v in s.data["stages"].items()}, targets=entries,
        **levers_fields(c, fin))
    report.save(ctx.folder)
    _plots(ctx, report, plan)
    return report


def target_entry(t: DeployTarget, loop: dict, final: dict, dense_engine: str) -> dict:
    """One target's row of the report."""
    return {"name": t.name, "backend": t.engine.backend, "precision": t.engine.precision,
            "input_shape": "x".join(map(str, t.input_shape)), "threads": t.engine.options.threads,
            "percentile": t.latency.percentile, "sla": asdict(t.latency), "sla_ms": final["sla_ms"],
            "dense_ms": loop["dense_measured_ms"][t.name], "predicted_ms": loop["predicted_ms"][t.name],
            "measured_ms": final["measured_ms"], "measured_over_sla": final["measured_ms"] / final["sla_ms"],
            "final_over_dense": final["ratio"], "final_latency_ms": {k: final["final"][k] for k in
                                                                     ("median_ms", "p90_ms", "p99_ms")},
            "engine_accuracy": final.get("engine_accuracy"),
            "met": bool(final["met"]), "binds": bool(loop["binding"][t.name]), "engine": final["main_file"]
            or final["artifact"], "dense_engine": dense_engine}


def _calibration_note(ctx: RunContext) -> str | None:
    """Where the int8 calibration set came from, when the run drew it from its own data."""
    from itcp_deploy.data.calibration import read_manifest

    if not any(t.engine.calib == str(ctx.folder.calibration) for t in ctx.config.targets):
        return None
    m = read_manifest(ctx.folder.calibration)
    return (f"int8 calibration: {m['num']} images drawn from {m['source']} with seed {m['seed']} "
            f"({ctx.folder.calibration.name}; pass --calib NAME for your own set)")


def perf_honesty(perf, loop: dict, name: str) -> dict:
    """How far to trust the perf model where the search used it: its held-out error (random plans) beside the
    error on the first plan the search chose, measured/predicted as ratios to the dense engine (drift between
    the profile and the loop cancels). The search picks plans *because* they look cheap, so the held-out error
    flatters the model there (issue 24); the first probe's measured/predicted is that error before the model saw
    any of the search's plans (``pipeline/probe.py``). ``None`` where the method predicts nothing (a peer's
    bisection)."""
    report = perf.report
    probes = [p for p in loop.get("probes", []) if p["target"] == name]
    first = next((t for t in loop["rounds"][0]["targets"] if t["name"] == name), None) if loop["rounds"] else None
    plan = None
    if first and first.get("predicted_ms") and first.get("ratio_to_dense"):
        plan = float(first["ratio_to_dense"]) / (float(first["predicted_ms"]) / perf.dense_reference_ms())
    return {"perf_err_pct": report.mape_pct if report else None, "noise_pct": report.noise_pct if report else None,
            "fit_rejected": bool(report.rejected) if report else None,
            "first_plan_measured_over_predicted": plan,
            "first_plan_over_sla": first["measured_ms"] / loop["sla_ms"][name] if first else None,
            "plan_rounds": sum(1 for r in loop["rounds"] if r["kind"] == "plan"),
            "probe_measured_over_predicted": probes[0]["measured_over_predicted"] if probes else None,
            "probes": len(probes), "search_bias": loop.get("search_bias", {}).get(name)}


def _plots(ctx: RunContext, report: RunReport, plan) -> None:
    """Each target's held-out check next to its profile; one target: its plan's Pareto front; the widths."""
    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.pipeline.report import plot_front, plot_holdout, plot_widths

    targets = ctx.config.targets
    for t in targets:
        files = ctx.folder.target(t.name)
        plot_holdout(files.profile, PerfModel.load(files.perf_model), files.holdout_plot,
                     report.model if len(targets) == 1 else f"{report.model} [{t.name}]")
    if len(targets) == 1:  # several targets: every target's budget binds the plan; no single front
        plot_front(plan.pareto, (float(plan.predicted_ms or 0.0), float(plan.score or 0.0)),
                   float(plan.budget_ms or report.sla_ms), ctx.folder.pareto_plot,
                   title=f"{report.model} on {report.device}")
    plot_widths(report.widths, report.full_widths, ctx.folder.widths_plot)


def summary_rows(report: RunReport) -> list[tuple[str, str, str]]:
    """(metric, dense, pruned) rows for the CLI's summary table."""
    acc = (lambda a: "n/a" if a is None else f"{a:.2f}%")  # noqa: E731
    f = report.final_latency_ms
    return [
        ("latency median (ms)", f"{report.dense_latency_ms:.4f}", f"{f['median_ms']:.4f}"),
        ("latency p90 / p99 (ms)", "", f"{f['p90_ms']:.4f} / {f['p99_ms']:.4f}"),
        ("SLA (ms)", "", f"{report.sla_ms:.4f} ({'met' if report.met_sla else 'MISSED'})"),
        ("pruned / dense latency", "", f"{report.final_over_dense:.3f}"),
        ("accuracy", acc(report.accuracy_dense), acc(report.accuracy_final)),
        *[(f"engine top-1 {t['name']}" if len(report.targets) > 1 else "engine top-1 (measured on the engine)",
           acc(a["dense_engine_top1"]), f"{acc(a['engine_top1'])}, agrees {100 * a['agreement_with_dense']:.1f}%")
          for t in report.targets if (a := t.get("engine_accuracy"))],
        ("MACs", f"{report.macs_dense:,}", f"{report.macs_final:,}"),
        ("params", f"{report.params_dense:,}", f"{report.params_final:,}"),
        ("closed-loop rounds", "", str(len(report.rounds))),
    ]
