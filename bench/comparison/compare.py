"""ITCP against the baselines at equal latency: one model, one dataset, several speed-ups and seeds.

Every method goes through the same pieces, the pipeline's own stages (:mod:`itcp_deploy.pipeline.stages`):
one profile and perf model, one set of group scores and channel importance (the same criterion for all),
``run_method`` in the closed loop's rounds until the plan's engine measures at or under 1 / speed-up x dense
(:mod:`~itcp_deploy.pipeline.compare_loop`; the first round solves for the perf model's predicted dense latency /
speed-up, each baseline reaching it by its own bisection), the same channel choice, BatchNorm re-estimation, the same
finetuning recipe and seed. Each row records the predicted latency, MACs, params, one-shot accuracy (after BN
re-estimation, no finetuning) and finetuned accuracy; at the end every engine of the table and the dense
engine are measured interleaved in ONE run, so their latencies and ratios to dense are comparable.

Long runs die with the session: each (method, speed-up, seed) row is written to ``OUT/rows/`` as soon as it
is done and skipped on rerun. ``itcp-progressive``: see bench.comparison.progressive.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from bench.comparison.config import CompareConfig, levers
from bench.comparison.loop import measured_solution, search_inputs
from bench.comparison.progressive import progressive_rows
from bench.comparison.rows import (
    DENSE,
    Bench,
    cached_arrays,
    channel_importance_of,
    dense_meter,
    evaluate,
    finetune,
    group_scores_of,
    row_path,
    structure,
    train_images,
    tuned_fields,
    write_row,
)
from itcp_deploy.atomic_io import read_json, write_json
from itcp_deploy.errors import InputFileError, UsageError
from itcp_deploy.pipeline.from_specs import ModelSource, load_inputs
from itcp_deploy.pipeline.stages import Log, fit_perf_model, obtain_profile, reuse_perf_model
from itcp_deploy.target import LatencyTarget


def compare(config: CompareConfig, log: Log | None = None) -> dict:
    """Run (or resume) the table; writes ``OUT/results.json`` and returns its content.

    Raises:
        UsageError, UnknownNameError: bad options, or ``OUT`` holds a table made with other settings.
        InputFileError: unreadable profile, perf model, weights or data.
    """
    import torch

    config.validate()
    torch.set_num_threads(config.threads)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_fingerprint(out, config)
    bench = _prepare(config, out, log or (lambda msg: None))
    if config.measure_only:  # rows finished by separate runs into OUT: one interleaved measurement of them all
        rows = [read_json(p, "row") for p in sorted((out / "rows").glob("*.json"))]
    else:
        rows = [*_dense_rows(bench), *_one_shot_rows(bench), *progressive_rows(bench)]
    measured = _measure(bench, rows)
    results = _assemble(bench, rows, measured)
    write_json(out / "results.json", results)
    return results


def _check_fingerprint(out: Path, config: CompareConfig) -> None:
    path = out / "config.json"
    if path.exists() and read_json(path, "comparison config").get("fingerprint") != config.fingerprint():
        raise UsageError(
            f"{out} holds a comparison made with other settings (model, data, recipe, criterion)",
            "use another --out directory, or delete it to start over",
        )
    write_json(
        path,
        {"fingerprint": config.fingerprint(), "config": json.loads(json.dumps(asdict(config), default=str))},
    )


def _prepare(c: CompareConfig, out: Path, log: Log) -> Bench:
    """Load the model and data, profile + fit (or reuse), score the groups: the pipeline's stages."""
    from itcp_deploy.perfmodel.model import on_space
    from itcp_deploy.pruning import build_space
    from itcp_deploy.pruning.apply import check_space_fits
    from itcp_deploy.search.dp import min_latency_ms

    inputs = load_inputs(ModelSource(c.model, c.data, c.weights), seed=0)
    p = c.profile
    perf_path = Path(p.perf_model_path) if p.perf_model_path else out / "perf_model.json"
    if perf_path.exists():
        log(f"perf model: reusing {perf_path}")
        perf = reuse_perf_model(perf_path, c.engine, p)
    else:
        space = build_space(inputs.model, inputs.input_shape, model_spec=c.model)
        perf = fit_perf_model(obtain_profile(inputs.model, space, c.engine, p, out / "profile.json", log), p,
                              perf_path)
    check_space_fits(inputs.model, perf.space)
    perf = on_space(perf, perf.space.with_removal())  # width 0 for removable groups; rows without +rm drop it
    log(f"perf model: dense {perf.dense_ms():.4f} ms predicted, minimum {min_latency_ms(perf):.4f} ms")
    b = Bench(c, out, log, inputs, perf.space, perf)
    seed = c.calib_seed
    b.scores = cached_arrays(out / "scores.json", lambda: group_scores_of(b, b.model, b.space, seed))
    b.importance = cached_arrays(out / "importance.json", lambda: channel_importance_of(b, b.model, b.space, seed))
    return b


def _dense_rows(b: Bench) -> list[dict]:
    rows = []
    dense = None
    for seed in b.config.seeds:
        path = row_path(b, DENSE, 1.0, seed)
        if not path.exists():
            if dense is None:
                dense = {**structure(b, b.model, b.space.full_widths()), "accuracy_oneshot": evaluate(b, b.model)}
            b.log(f"dense seed {seed}: finetuning the reference ...")
            tuned = (finetune(b, b.model, seed, train_images(b, seed)[0]) if b.config.dense_finetune
                     else {"accuracy": None, "images_per_epoch": 0, "wall_s": 0.0})
            row = {"method": DENSE, "speedup": 1.0, "seed": seed, "budget_ms": b.perf.dense_ms(), **dense}
            write_row(b, path, {**row, **tuned_fields(tuned)})
        rows.append(read_json(path, "row"))
    return rows


def _one_shot_row(b: Bench, method: str, speedup: float, budget: float) -> dict:
    """Solve, prune, re-estimate BN: the fields every seed of (method, speed-up) shares."""
    from bench.comparison.peer import peer_prune
    from itcp_deploy.pipeline.strategies import PEER, STRATEGIES
    from itcp_deploy.pruning.compensate import OneShot, prune_one_shot
    from itcp_deploy.pruning.tp_peer import group_widths
    from itcp_deploy.train import recalibrate_bn

    t0 = time.perf_counter()
    c, lever = b.config, levers(method)
    if STRATEGIES.get(lever.base) is PEER:  # Torch-Pruning's own pruner finds its widths by measuring
        pruned, plan = peer_prune(b, lever.base, speedup)
        recalibrate_bn(pruned, b.bn_loader(), num_batches=c.recipe.bn_batches)
    else:
        solution, plan = measured_solution(b, lever.base, search_inputs(b, lever.remove), speedup, budget,
                                           label=method)
        calib = b.inputs.loader(c.recipe.batch_size, train=True, seed=c.calib_seed, max_samples=c.score_samples)
        pruned, refit = prune_one_shot(b.model, b.space, solution.widths, b.importance,
                                       OneShot(calib, b.bn_loader(), c.recipe.bn_batches, lever.compensate))
        plan["score"] = solution.score
        if lever.compensate:
            plan["compensated"] = refit
    return {"method": method, "speedup": speedup, "budget_ms": budget, **plan,
            **structure(b, pruned, group_widths(pruned, b.space)), "accuracy_oneshot": evaluate(b, pruned),
            "search_and_prune_s": time.perf_counter() - t0, "model": pruned}


def _one_shot_rows(b: Bench) -> list[dict]:
    c = b.config
    rows = []
    for speedup in c.speedups:
        budget = LatencyTarget(speedup=speedup).resolve_ms(b.perf.dense_ms())  # predicted dense / speed-up
        for method in c.methods:
            paths = {seed: row_path(b, method, speedup, seed) for seed in c.seeds}
            if not all(p.exists() for p in paths.values()):
                shared = _one_shot_row(b, method, speedup, budget)
                pruned = shared.pop("model")
                for seed, path in paths.items():
                    if not path.exists():
                        tuned = finetune(b, pruned, seed, train_images(b, seed)[0])
                        write_row(b, path, {**shared, "seed": seed, **tuned_fields(tuned)})
            rows += [read_json(p, "row") for p in paths.values()]
    return rows


def _measure(b: Bench, rows: list[dict]) -> dict:
    """Every engine of the table against the dense engine, interleaved in one run (reused if unchanged)."""
    ids = sorted({r["engine"] for r in rows} | {DENSE})
    path = b.out / "measured.json"
    timing = asdict(b.config.measure_timing)
    if path.exists():
        saved = read_json(path, "measurements")
        if saved.get("engines") == ids and saved.get("timing") == timing:
            b.log(f"measurement: reusing {path}")
            return saved
    b.log(f"measurement: {len(ids)} engines interleaved in one run ...")
    engines = b.out / "engines" / "engines"
    others = [i for i in ids if i != DENSE]
    measured = dense_meter(b).measure_all([engines / i for i in others])
    stats = {DENSE: {**asdict(measured[0].dense), "ratio_to_dense": 1.0}}
    for engine_id, m in zip(others, measured, strict=True):
        stats[engine_id] = {**asdict(m.latency.stats), "ratio_to_dense": m.latency.ratio}
    saved = {"engines": ids, "timing": timing, "stats": stats}
    write_json(path, saved)
    return saved


def _assemble(b: Bench, rows: list[dict], measured: dict) -> dict:
    c = b.config
    for row in rows:
        s = measured["stats"].get(row["engine"])
        if s is None:
            raise InputFileError(f"no measurement of engine {row['engine']}",
                                 f"delete {b.out / 'measured.json'} and rerun")
        row["measured"] = {k: s[k] for k in ("median_ms", "p90_ms", "p99_ms", "ratio_to_dense")}
    error = {k: v for k, v in asdict(b.perf.report).items() if isinstance(v, float)} if b.perf.report else {}
    return {
        "model": c.model, "weights": c.weights, "data": c.data, "dataset": b.inputs.test.name,
        "jpeg_copy": "cifar10-jpeg" in c.data, "backend": c.engine.backend, "precision": c.engine.precision,
        "device": b.perf.meta.get("device", ""), "criterion": c.criterion, "importance": c.importance,
        "recipe": asdict(c.recipe), "progressive_steps": c.progressive_steps,
        "dense_predicted_ms": b.perf.dense_ms(), "speedup_divides": "the perf model's predicted dense latency",
        "measure_timing": asdict(c.measure_timing), "perf_model_error": error, "notes": b.notes, "rows": rows,
    }


__all__ = ["CompareConfig", "compare"]
