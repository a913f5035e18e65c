"""The stages the zoo sweep runs on one model (in a child process of ``bench/zoo_sweep.py``).

Each stage announces itself through ``stage(name)`` before it starts, so a failure or the time cap names it.
The record holds what the sweep table shows; every exception becomes one line in ``error``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path

SIZES = (64, 75, 96, 128, 160, 224, 256, 299)
SPEEDUP = 1.3
PROFILE_BUILDS = 12
PROFILE_HOLDOUT = 3


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


def _loader(shape):
    from itcp_deploy.data import load_dataset, make_loader

    info = load_dataset(f"synthetic:size={shape[-1]},train=32,test=16", "train", augment=False)
    return make_loader(info, 16, shuffle=False, max_samples=32)


def _profile(model, space, work: Path):
    from itcp_deploy.perfmodel import fit
    from itcp_deploy.profiling.design import DesignConfig
    from itcp_deploy.profiling.profiler import ProfileConfig, run_profiling
    from itcp_deploy.profiling.timing import TimingConfig

    config = ProfileConfig(cache_dir=str(work / "engines"),
                           design=DesignConfig(max_builds=PROFILE_BUILDS, holdout=PROFILE_HOLDOUT, tries=8),
                           timing=TimingConfig(warmup=5, rounds=5, runs_per_round=20), layer_runs=100)
    profile, _ = run_profiling(model, space, config)
    return profile, fit


def _measure(dense, pruned, shape, work: Path) -> dict:
    """Dense and pruned ONNX Runtime engines, measured interleaved (one thread)."""
    import numpy as np

    from itcp_deploy.engines import EngineOptions, get_backend
    from itcp_deploy.engines.export import export_onnx
    from itcp_deploy.profiling.timing import TimingConfig, measure_interleaved, round_ratios

    backend, options = get_backend("onnxruntime"), EngineOptions(threads=1)
    artifacts = []
    for name, model in (("dense", dense), ("pruned", pruned)):
        onnx_path = export_onnx(model, shape, work / f"{name}.onnx", verify=False)
        artifacts.append(backend.builder(onnx_path, work / f"engine-{name}", options, shape)())
    with backend.runner(artifacts[0], options) as d, backend.runner(artifacts[1], options) as p:
        result = measure_interleaved([d, p], None, TimingConfig(warmup=10, rounds=6, runs_per_round=15))
    ratio = float(np.median(round_ratios(result.samples_ms[1], result.samples_ms[0])))
    return {"dense_ms": result.stats[0].median_ms, "pruned_ms": result.stats[1].median_ms,
            "pruned_over_dense": ratio}


def _stages(spec: str, work: Path, stage: Callable[[str], None], record: dict) -> None:
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
    stage("profile")
    profile, fit = _profile(model, space, work)
    stage("fit")
    perf = fit(profile, force=True)
    record.update(perf_err_pct=round(perf.report.mape_pct, 2), perf_max_err_pct=round(perf.report.max_pct, 2),
                  noise_pct=round(profile.noise_pct, 2), fit_rejected=bool(perf.report.rejected))
    stage("search")
    scores = group_scores(model, space, "taylor", loader=_loader(shape), settings=ScoreSettings(gradient_batches=2))
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
    record.update({k: round(v, 4) for k, v in _measure(model, pruned, shape, work).items()})


def run_stages(spec: str, work: Path, stage: Callable[[str], None]) -> dict:
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
        _stages(spec, work, announce, record)
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
