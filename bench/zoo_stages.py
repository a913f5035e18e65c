"""The stages the zoo sweep runs on one model (in a child process of ``bench/zoo_sweep.py``).

Each stage announces itself through ``stage(name)`` before it starts, so a failure or the time cap names it.
The record holds what the sweep table shows; every exception becomes one line in ``error``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from bench.zoo_effort import Effort, ProfileLevel, choose_effort

SIZES = (64, 75, 96, 128, 160, 224, 256, 299)
SPEEDUP = 1.3


def min_input_shape(model) -> tuple[int, int, int, int]:
    """1x3x64x64, or the smallest square size from ``SIZES`` the model's forward accepts."""
    import torch

    last = None
    for size in SIZES:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
            return (1, 3, size, size)
        except Exception as err:  # shape assertions and errors of every kind
            last = err
    raise RuntimeError(f"no input size in {SIZES} works ({type(last).__name__}: {str(last)[:120]})")


def conv_reach(space) -> tuple[float, int]:
    """Share of the conv layers whose input or output width some prunable group sets, and the conv count."""
    prunable = {g.name for g in space.prunable}
    convs = [layer for layer in space.layers if layer.op == "conv"]
    reached = [c for c in convs if c.out_group in prunable or set(c.in_group.split("+")) & prunable]
    return (len(reached) / len(convs) if convs else 0.0), len(convs)


def _loader(shape, effort: Effort):
    from itcp_deploy.data import load_dataset, make_loader

    images = effort.score_batch * effort.score_batches
    info = load_dataset(f"synthetic:size={shape[-1]},train={max(images, 2)},test=2", "train", augment=False)
    return make_loader(info, effort.score_batch, shuffle=False, max_samples=images)


def _probe(model, space, work: Path, cap_s: float) -> tuple[Path, Effort, dict]:
    """Prune a copy to middle widths, export and build the dense engine, time a few runs: the effort follows
    from what that cost (each profiled engine is one such pruning, export and build)."""
    from itcp_deploy.engines import EngineOptions, get_backend
    from itcp_deploy.engines.export import export_onnx
    from itcp_deploy.profiling.timing import TimingConfig, measure
    from itcp_deploy.pruning import apply_widths

    backend, options = get_backend("onnxruntime"), EngineOptions(threads=1)
    shape = space.input_shape
    cpu0 = time.process_time()
    apply_widths(model, space, {g.name: g.candidates[(len(g.candidates) - 1) // 2] for g in space.prunable})
    onnx_path = export_onnx(model, shape, work / "dense.onnx", verify=False)
    artifact = backend.builder(onnx_path, work / "engine-dense", options, shape)()
    with backend.runner(artifact, options) as runner:
        build_s = time.process_time() - cpu0
        dense_ms = measure(runner, None, TimingConfig(warmup=1, rounds=1, runs_per_round=3)).median_ms
    effort = choose_effort(dense_ms, build_s, cap_s)
    return artifact, effort, {"probe_ms": round(dense_ms, 3), "probe_build_s": round(build_s, 2),
                              "effort": {"level": effort.level, **asdict(effort.profile),
                                         "estimate_s": effort.profile_estimate_s,
                                         "final": f"{effort.final_rounds}x{effort.final_runs}",
                                         "score_images": effort.score_batch * effort.score_batches}}


def _profile(model, space, work: Path, level: ProfileLevel):
    from itcp_deploy.perfmodel import fit
    from itcp_deploy.profiling.design import DesignConfig
    from itcp_deploy.profiling.profiler import ProfileConfig, run_profiling
    from itcp_deploy.profiling.timing import TimingConfig

    timing = TimingConfig(warmup=level.warmup, rounds=level.rounds, runs_per_round=level.runs_per_round)
    config = ProfileConfig(cache_dir=str(work / "engines"), timing=timing, layer_runs=level.layer_runs,
                           design=DesignConfig(max_builds=level.builds, holdout=level.holdout, tries=8))
    profile, _ = run_profiling(model, space, config)
    return profile, fit


def _measure(dense_artifact: Path, pruned, shape, work: Path, effort: Effort) -> dict:
    """Dense (the probe's engine) and pruned ONNX Runtime engines, measured interleaved (one thread)."""
    import numpy as np

    from itcp_deploy.engines import EngineOptions, get_backend
    from itcp_deploy.engines.export import export_onnx
    from itcp_deploy.profiling.timing import TimingConfig, measure_interleaved, round_ratios

    backend, options = get_backend("onnxruntime"), EngineOptions(threads=1)
    onnx_path = export_onnx(pruned, shape, work / "pruned.onnx", verify=False)
    pruned_artifact = backend.builder(onnx_path, work / "engine-pruned", options, shape)()
    timing = TimingConfig(warmup=2, rounds=effort.final_rounds, runs_per_round=effort.final_runs)
    with backend.runner(dense_artifact, options) as d, backend.runner(pruned_artifact, options) as p:
        result = measure_interleaved([d, p], None, timing)
    ratio = float(np.median(round_ratios(result.samples_ms[1], result.samples_ms[0])))
    return {"dense_ms": result.stats[0].median_ms, "pruned_ms": result.stats[1].median_ms,
            "pruned_over_dense": ratio}


def _stages(spec: str, work: Path, stage: Callable[[str], None], record: dict, cap_s: float) -> None:
    import onnx

    from itcp_deploy.engines.export import export_onnx, verify_onnx
    from itcp_deploy.models import create_model
    from itcp_deploy.pruning import apply_widths, build_space, group_scores
    from itcp_deploy.pruning.scores import ScoreSettings
    from itcp_deploy.search.baselines import SearchInputs, run_method

    stage("create")
    model = create_model(spec, num_classes=10).eval()
    shape = min_input_shape(model)
    record.update(input_shape="x".join(map(str, shape)), params_m=round(sum(p.numel() for p in model.parameters())
                                                                        / 1e6, 2))
    stage("groups")
    space = build_space(model, shape, model_spec=spec)
    reach, convs = conv_reach(space)
    record.update(groups=len(space.prunable), convs=convs, conv_reach=round(reach, 3))
    stage("probe")
    dense_artifact, effort, probe = _probe(model, space, work, cap_s)
    record.update(probe)
    stage("profile")
    profile, fit = _profile(model, space, work, effort.profile)
    stage("fit")
    perf = fit(profile, force=True)
    record.update(perf_err_pct=round(perf.report.mape_pct, 2), perf_max_err_pct=round(perf.report.max_pct, 2),
                  noise_pct=round(profile.noise_pct, 2), fit_rejected=bool(perf.report.rejected))
    stage("search")
    scores = group_scores(model, space, "taylor", loader=_loader(shape, effort),
                          settings=ScoreSettings(gradient_batches=effort.score_batches))
    budget = perf.dense_ms() / SPEEDUP
    solution = run_method("itcp", SearchInputs(space, perf, scores), budget, bins=300)
    record.update(predicted_dense_ms=round(perf.dense_ms(), 4), predicted_pruned_ms=round(solution.cost, 4))
    stage("apply_widths")
    pruned = apply_widths(model, space, solution.widths, importance="l1").eval()
    stage("export")
    path = export_onnx(pruned, shape, work / "pruned-checked.onnx", verify=False)
    onnx.checker.check_model(str(path))
    stage("parity")
    record["parity_rel_err"] = verify_onnx(pruned, path, shape)
    stage("latency")
    record.update({k: round(v, 4) for k, v in _measure(dense_artifact, pruned, shape, work, effort).items()})


def run_stages(spec: str, work: Path, stage: Callable[[str], None], cap_s: float) -> dict:
    """Run every stage on ``spec``; the record says pass, or the failing stage and one line of error."""
    record: dict = {"model": spec, "status": "fail", "stage": None, "error": None}
    current = ["start"]
    stage_s: dict[str, float] = {}
    clock = [time.perf_counter()]

    def announce(name: str) -> None:
        now = time.perf_counter()
        stage_s[current[0]] = round(now - clock[0], 1)
        current[0], clock[0] = name, now
        stage(name)

    started = time.perf_counter()
    try:
        _stages(spec, work, announce, record, cap_s)
        record["status"] = "pass"
    except Exception as err:  # the sweep records every failure as one line
        record["stage"] = current[0]
        first = str(err).strip().splitlines()[0][:240] if str(err).strip() else ""
        where = traceback.extract_tb(err.__traceback__)[-1]
        record["error"] = f"{type(err).__name__}: {first} ({Path(where.filename).name}:{where.lineno})"
    announce("end")
    record["time_s"] = round(time.perf_counter() - started, 1)
    record["cpu_s"] = round(time.process_time(), 1)
    record["stage_s"] = {k: v for k, v in stage_s.items() if k != "start"}
    return record
