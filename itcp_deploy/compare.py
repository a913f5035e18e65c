"""ITCP against the baselines at equal latency: one model, one dataset, several speed-ups and seeds.

Every method goes through the same pieces: one profile and perf model, one set of group scores and channel
importance (the same criterion for all), ``run_method`` at the same predicted budget (dense predicted latency
/ speed-up; each baseline reaches it by its own bisection), the same channel choice, BatchNorm re-estimation,
the same finetuning recipe and seed. Each row records the predicted latency, MACs, params, one-shot accuracy
(after BN re-estimation, no finetuning) and finetuned accuracy; at the end every engine of the table and the
dense engine are measured interleaved in ONE run, so their latencies and ratios to dense are comparable.

Long runs die with the session: each (method, speed-up, seed) row is written to ``OUT/rows/`` as soon as it
is done and skipped on rerun. ``itcp-progressive`` (HALP-like) prunes in ``K`` steps toward the final budget,
re-scoring the current model and re-solving over widths <= the current ones at each step, with ``1/K`` of the
finetuning images after each step: the same total finetuning budget as a one-shot row.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from itcp_deploy.atomic_io import read_json, write_json
from itcp_deploy.engine_build import EngineSpec
from itcp_deploy.errors import InputFileError, ItcpError, UsageError
from itcp_deploy.profiling.timing import TimingConfig

Log = Callable[[str], None]
PROGRESSIVE = "itcp-progressive"
DENSE = "dense"
COMPENSATED = "+comp"  # method suffix: least-squares compensation after pruning (pruning/compensate.py)


def _levers(method: str) -> tuple[str, bool]:
    """``"itcp+comp"`` -> ``("itcp", True)``: the search method and whether compensation is on."""
    return method.removesuffix(COMPENSATED), method.endswith(COMPENSATED)


@dataclass(frozen=True)
class FinetuneRecipe:
    """The same for every row. ``train_subset``: images (a seeded subset per seed) per epoch, all if None;
    ``test_samples``: evaluate on a fixed seeded subset of the test split, all if None; ``bn_batches``:
    training batches that re-estimate BatchNorm statistics after pruning and after finetuning."""

    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 64
    train_subset: int | None = 10000
    test_samples: int | None = None
    bn_batches: int = 20


@dataclass(frozen=True)
class ProfileSettings:
    """Profile once per model: reuse ``profile_path`` / ``perf_model_path`` when given, else ``OUT/``'s, else
    profile (engines cached in ``cache_dir``) and fit."""

    cache_dir: str = "engines"
    profile_path: str | None = None
    perf_model_path: str | None = None
    budget_builds: int = 32
    holdout: int = 10
    timing: TimingConfig = field(default_factory=TimingConfig)
    force_fit: bool = False


@dataclass(frozen=True)
class CompareConfig:
    """What one comparison table needs (see the module docstring)."""

    model: str
    data: str
    out_dir: str
    weights: str | None = None
    speedups: tuple[float, ...] = (1.5, 2.0, 3.0)
    methods: tuple[str, ...] = ("itcp", "uniform", "flops", "global-magnitude", "knapsack-linear")
    seeds: tuple[int, ...] = (0,)
    criterion: str = "taylor"
    importance: str = "taylor"
    progressive_steps: int = 0
    recipe: FinetuneRecipe = field(default_factory=FinetuneRecipe)
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    measure_timing: TimingConfig = field(
        default_factory=lambda: TimingConfig(warmup=50, rounds=20, runs_per_round=50)
    )
    engine: EngineSpec = field(default_factory=EngineSpec)
    score_samples: int = 512
    bins: int = 1000
    threads: int = 1
    dense_finetune: bool = True  # False: the dense row keeps no finetuned accuracy (saves one epoch)

    def validate(self) -> None:
        from itcp_deploy.pruning.tp_peer import is_peer
        from itcp_deploy.search.baselines import SEARCH_METHODS

        for m in self.methods:
            base, compensated = _levers(m)
            if is_peer(base) and compensated:
                raise UsageError(f"{m}: compensation needs the kept channels, which Torch-Pruning does not report",
                                 f"use {base} or a search method with {COMPENSATED}")
            if not is_peer(base):
                SEARCH_METHODS.get(base)
        bad = [s for s in self.speedups if not math.isfinite(s) or s < 1]
        if bad or not self.speedups or not self.seeds:
            raise UsageError(
                f"need speed-ups >= 1 and at least one seed, got {self.speedups} / {self.seeds}",
                "pass e.g. --speedups 1.5 2 3 --seeds 0 1",
            )
        if self.recipe.epochs < 0 or self.progressive_steps < 0:
            raise UsageError("--epochs and --progressive must be >= 0",
                             "pass e.g. --epochs 1 --progressive 4")

    def fingerprint(self) -> dict:
        """The settings every row of one output directory must share (speed-ups, methods, seeds may grow)."""
        keep = ("model", "data", "weights", "criterion", "importance", "recipe", "score_samples", "bins",
                "engine")
        return json.loads(json.dumps({k: v for k, v in asdict(self).items() if k in keep}, default=str))


@dataclass
class _Bench:
    """What every row shares, loaded once."""

    config: CompareConfig
    out: Path
    log: Log
    model: Any = None
    space: Any = None
    perf: Any = None
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    importance: dict[str, np.ndarray] = field(default_factory=dict)
    train_info: Any = None
    plain_info: Any = None  # the train split without augmentation: BN statistics, scores
    test_info: Any = None
    input_shape: tuple[int, int, int, int] = (1, 3, 32, 32)
    notes: list[str] = field(default_factory=list)

    def score_loader(self, seed: int = 0):
        from itcp_deploy.data import make_loader

        c = self.config
        return make_loader(
            self.plain_info, c.recipe.batch_size, shuffle=True, seed=seed, max_samples=c.score_samples
        )

    def bn_loader(self):
        from itcp_deploy.data import make_loader

        return make_loader(self.plain_info, self.config.recipe.batch_size, shuffle=True, seed=0)

    def test_loader(self):
        from itcp_deploy.data import make_loader

        r = self.config.recipe
        return make_loader(self.test_info, r.batch_size, shuffle=False, max_samples=r.test_samples)


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
    bench = _Bench(config, out, log or (lambda msg: None))
    _prepare(bench)
    rows = [*_dense_rows(bench), *_one_shot_rows(bench), *_progressive_rows(bench)]
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


# ---------------------------------------------------------------- shared inputs


def _prepare(b: _Bench) -> None:
    import torch

    from itcp_deploy.data import load_dataset
    from itcp_deploy.models import create_model

    c = b.config
    torch.manual_seed(0)
    b.train_info = load_dataset(c.data, "train")
    b.plain_info = load_dataset(c.data, "train", augment=False)
    b.test_info = load_dataset(c.data, "test")
    b.input_shape = (1, *b.train_info.input_size)
    b.model = create_model(c.model, num_classes=b.train_info.num_classes, weights=c.weights).eval()
    _profile_and_fit(b)
    b.scores = _cached_arrays(b.out / "scores.json", lambda: _group_scores(b, b.model, b.space))
    b.importance = _cached_arrays(b.out / "importance.json", lambda: _channel_importance(b, b.model, b.space))


def _profile_and_fit(b: _Bench) -> None:
    from itcp_deploy.perfmodel import PerfModel, fit
    from itcp_deploy.profiling.profiler import profile_identity
    from itcp_deploy.profiling.records import check_identity
    from itcp_deploy.pruning import build_space
    from itcp_deploy.pruning.apply import check_space_fits

    p = b.config.profile
    perf_path = Path(p.perf_model_path) if p.perf_model_path else b.out / "perf_model.json"
    if perf_path.exists():
        b.log(f"perf model: reusing {perf_path}")
        b.perf = PerfModel.load(perf_path)
        check_identity(b.perf.meta, profile_identity(_profile_config(b)), f"perf model {perf_path}")
    else:
        space = build_space(b.model, b.input_shape, model_spec=b.config.model)
        b.perf = fit(_profile(b, space), force=p.force_fit)
        b.perf.save(perf_path)
    check_space_fits(b.model, b.perf.space)
    b.space = b.perf.space
    b.log(f"perf model: dense {b.perf.dense_ms():.4f} ms predicted, minimum {b.perf.min_latency_ms():.4f} ms")


def _profile_config(b: _Bench):
    from itcp_deploy.profiling.design import DesignConfig
    from itcp_deploy.profiling.profiler import ProfileConfig

    p, e = b.config.profile, b.config.engine
    return ProfileConfig(
        backend=e.backend,
        precision=e.precision,
        cache_dir=p.cache_dir,
        engine=e.options,
        design=DesignConfig(budget_builds=p.budget_builds, holdout=p.holdout),
        timing=p.timing,
        calib=e.calib,
    )


def _profile(b: _Bench, space):
    from itcp_deploy.profiling.profiler import profile_identity, run_profiling
    from itcp_deploy.profiling.records import Profile

    p, pc = b.config.profile, _profile_config(b)
    path = Path(p.profile_path) if p.profile_path else b.out / "profile.json"
    if path.exists():
        b.log(f"profile: reusing {path}")
        profile = Profile.load(path)
        profile.check_identity(profile_identity(pc), path)
        return profile
    b.log(f"profile: building {p.budget_builds} engines (cache {p.cache_dir}) ...")
    profile, summary = run_profiling(b.model, space, pc)
    profile.save(path)
    b.log(f"profile: {summary.builds_new} new builds, noise {summary.noise_pct:.1f}%")
    return profile


def _cached_arrays(path: Path, compute: Callable[[], dict]) -> dict[str, np.ndarray]:
    if not path.exists():
        write_json(path, {k: [float(x) for x in v] for k, v in compute().items()})
    return {k: np.asarray(v, dtype=float) for k, v in read_json(path, path.stem).items()}


def _group_scores(b: _Bench, model, space, seed: int = 0) -> dict[str, np.ndarray]:
    from itcp_deploy.data import make_loader
    from itcp_deploy.pruning import group_scores

    c = b.config
    calib = make_loader(b.test_info, c.recipe.batch_size, shuffle=False, max_samples=c.score_samples)
    cache = b.out / "sensitivity_cache.json" if model is b.model else None
    return group_scores(
        model, space, b.config.criterion, loader=b.score_loader(seed), calib_loader=calib, cache_path=cache
    )


def _channel_importance(b: _Bench, model, space, seed: int = 0) -> dict[str, np.ndarray]:
    from itcp_deploy.pruning import channel_importance

    return channel_importance(model, space, b.config.importance, loader=b.score_loader(seed))


# ---------------------------------------------------------------- rows


def _row_path(b: _Bench, method: str, speedup: float, seed: int) -> Path:
    steps = f"-k{b.config.progressive_steps}" if method == PROGRESSIVE else ""
    return b.out / "rows" / f"{method}{steps}_x{speedup:g}_seed{seed}.json"


def _evaluate(b: _Bench, model) -> float:
    from itcp_deploy.train import evaluate

    return float(evaluate(model, b.test_loader())["accuracy"])


def _train_images(b: _Bench, seed: int, parts: int = 1) -> list:
    """The seed's finetuning subset (``train_subset`` seeded images, all if None), split into ``parts``
    disjoint chunks (the progressive schedule finetunes on one chunk per step)."""
    from torch.utils.data import Subset

    from itcp_deploy.data import seeded_indices

    n = len(b.train_info.dataset)
    indices = seeded_indices(n, b.config.recipe.train_subset or n, seed)
    return [
        replace(b.train_info, dataset=Subset(b.train_info.dataset, chunk.tolist()))
        for chunk in np.array_split(np.asarray(indices), parts)
    ]


def _finetune(b: _Bench, model, seed: int, info, evaluate: bool = True) -> dict:
    """Finetune a copy of ``model`` with the recipe on ``info`` (a subset from :func:`_train_images`)."""
    from itcp_deploy.train import TrainConfig, train

    r = b.config.recipe
    tuned = copy.deepcopy(model)
    if r.epochs == 0:
        return {"model": tuned, "accuracy": None, "images_per_epoch": 0, "wall_s": 0.0}
    t0 = time.perf_counter()
    config = TrainConfig(epochs=r.epochs, lr=r.lr, batch_size=r.batch_size, seed=seed, device="cpu",
                         quiet=True, precise_bn_batches=r.bn_batches)
    train(tuned, info, None, config)
    tuned = tuned.cpu().eval()
    return {
        "model": tuned,
        "accuracy": _evaluate(b, tuned) if evaluate else None,
        "images_per_epoch": len(info.dataset),
        "wall_s": time.perf_counter() - t0,
    }


def _engine(b: _Bench, model, widths: dict[str, int]) -> str:
    """Build the engine of a plan once (latency depends on the structure, not the weights); returns its id."""
    from itcp_deploy.engine_build import build_engine

    engine_id = (
        DENSE
        if widths == b.space.full_widths()
        else "plan-" + hashlib.sha1(json.dumps(sorted(widths.items())).encode()).hexdigest()[:10]
    )
    if not (b.out / "engines" / "engines" / engine_id).exists():
        build_engine(model, b.input_shape, b.out / "engines", engine_id, b.config.engine)
    return engine_id


def _structure(b: _Bench, model, widths: dict[str, int]) -> dict:
    from itcp_deploy.pruning import count_macs_params

    macs, params = count_macs_params(model, b.input_shape)
    widths = {g.name: int(widths[g.name]) for g in b.space.prunable}
    return {
        "widths": widths,
        "macs": int(macs),
        "params": int(params),
        "predicted_ms": b.perf.predict_ms(widths) if _on_grid(b, widths) else None,
        "engine": _engine(b, model, {**b.space.full_widths(), **widths}),
    }


def _on_grid(b: _Bench, widths: dict[str, int]) -> bool:
    """Whether the perf model can predict these widths (a peer's may fall between candidates)."""
    return all(widths[g.name] in g.candidates for g in b.space.prunable)


def _dense_rows(b: _Bench) -> list[dict]:
    rows = []
    dense = None
    for seed in b.config.seeds:
        path = _row_path(b, DENSE, 1.0, seed)
        if not path.exists():
            if dense is None:
                dense = {
                    **_structure(b, b.model, b.space.full_widths()),
                    "accuracy_oneshot": _evaluate(b, b.model),
                }
            b.log(f"dense seed {seed}: finetuning the reference ...")
            tuned = (_finetune(b, b.model, seed, _train_images(b, seed)[0]) if b.config.dense_finetune
                     else {"accuracy": None, "images_per_epoch": 0, "wall_s": 0.0})
            row = {"method": DENSE, "speedup": 1.0, "seed": seed, "budget_ms": b.perf.dense_ms(), **dense}
            _write_row(b, path, {**row, **_tuned_fields(tuned)})
        rows.append(read_json(path, "row"))
    return rows


def _tuned_fields(tuned: dict) -> dict:
    return {
        "accuracy_finetuned": tuned["accuracy"],
        "finetune_images_per_epoch": tuned["images_per_epoch"],
        "finetune_wall_s": tuned["wall_s"],
    }


def _write_row(b: _Bench, path: Path, row: dict) -> None:
    write_json(path, row)
    b.log(
        f"{row['method']:>17} x{row['speedup']:<5g} seed {row['seed']}: "
        f"predicted {_ms(row['predicted_ms'])} (budget {row['budget_ms']:.4f}), "
        f"one-shot {_pct(row['accuracy_oneshot'])}, finetuned "
        f"{_pct(row['accuracy_finetuned'])}"
    )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f} ms"


def _pct(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{accuracy:.2f}%"


def _one_shot_rows(b: _Bench) -> list[dict]:
    from itcp_deploy.pruning import apply_widths
    from itcp_deploy.pruning.compensate import compensate, kept_channels
    from itcp_deploy.pruning.tp_peer import group_widths, is_peer
    from itcp_deploy.search.baselines import SearchInputs, run_method
    from itcp_deploy.train import recalibrate_bn

    c = b.config
    inputs = SearchInputs(b.space, b.perf, b.scores, b.importance)
    rows = []
    for speedup in c.speedups:
        budget = b.perf.dense_ms() / speedup
        for method in c.methods:
            paths = {seed: _row_path(b, method, speedup, seed) for seed in c.seeds}
            if not all(p.exists() for p in paths.values()):
                t0 = time.perf_counter()
                base, compensated = _levers(method)
                if is_peer(base):
                    pruned, plan = _peer_prune(b, base, speedup)
                else:
                    solution = run_method(base, inputs, budget, bins=c.bins)
                    pruned = apply_widths(b.model, b.space, solution.widths, importance=b.importance)
                    plan = {"score": solution.score}
                    if compensated:
                        kept = kept_channels(b.model, b.space, solution.widths, b.importance)
                        plan["compensated"] = compensate(pruned, b.model, b.space, kept, b.score_loader(0))
                recalibrate_bn(pruned, b.bn_loader(), num_batches=c.recipe.bn_batches)
                shared = {
                    "method": method,
                    "speedup": speedup,
                    "budget_ms": budget,
                    **plan,
                    **_structure(b, pruned, group_widths(pruned, b.space)),
                    "accuracy_oneshot": _evaluate(b, pruned),
                    "search_and_prune_s": time.perf_counter() - t0,
                }
                for seed, path in paths.items():
                    if not path.exists():
                        tuned = _finetune(b, pruned, seed, _train_images(b, seed)[0])
                        _write_row(b, path, {**shared, "seed": seed, **_tuned_fields(tuned)})
            rows += [read_json(p, "row") for p in paths.values()]
    return rows


def _peer_prune(b: _Bench, method: str, speedup: float) -> tuple[Any, dict]:
    """Torch-Pruning's own pruner, bisected on its ratio to measured latency / dense <= 1 / speed-up."""
    from itcp_deploy.engines.device import channel_block
    from itcp_deploy.pruning.tp_peer import group_widths, peer_search

    dense = _engine(b, b.model, b.space.full_widths())

    def measure(model) -> float:
        engine = _engine(b, model, {**b.space.full_widths(), **group_widths(model, b.space)})
        return _pair_ratio(b, engine, dense)

    found = peer_search(b.model, b.space, method, b.score_loader(0), measure=measure, target=1 / speedup,
                        block=channel_block())
    b.log(f"{method} x{speedup:g}: pruning_ratio {found.pruning_ratio:.3f}, measured {found.measured_ratio:.3f} "
          f"x dense ({len(found.steps)} engines tried)")
    return found.model, {"score": None, "pruning_ratio": found.pruning_ratio, "met_target": found.met,
                         "bisection": found.steps}


def _pair_ratio(b: _Bench, engine: str, dense: str) -> float:
    """Median per-round latency ratio of ``engine`` to ``dense``, measured interleaved."""
    import contextlib

    from itcp_deploy.engines import get_backend
    from itcp_deploy.profiling.timing import measure_interleaved, round_ratios

    backend, engines = get_backend(b.config.engine.backend), b.out / "engines" / "engines"
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(backend.runner(engines / i, b.config.engine.options)) for i in (engine, dense)]
        result = measure_interleaved(runners, None, b.config.measure_timing)
    return float(np.median(round_ratios(result.samples_ms[0], result.samples_ms[1])))


# ---------------------------------------------------------------- progressive (HALP-like)


def _progressive_rows(b: _Bench) -> list[dict]:
    rows = []
    if b.config.progressive_steps < 1:
        return rows
    for speedup in b.config.speedups:
        for seed in b.config.seeds:
            path = _row_path(b, PROGRESSIVE, speedup, seed)
            if not path.exists():
                try:
                    _write_row(b, path, _progressive(b, speedup, seed))
                except ItcpError as err:
                    b.notes.append(f"{PROGRESSIVE} x{speedup:g} seed {seed}: {err}")
                    b.log(f"{PROGRESSIVE} x{speedup:g} seed {seed} failed: {err}")
                    continue
            rows.append(read_json(path, "row"))
    return rows


def _progressive(b: _Bench, speedup: float, seed: int) -> dict:
    """K steps at budget ``dense * speedup ** (-k/K)``: rescore, re-solve narrower, prune, BN, finetune."""
    from itcp_deploy.planning import restricted
    from itcp_deploy.pruning import apply_widths
    from itcp_deploy.search.baselines import SearchInputs, run_method
    from itcp_deploy.train import recalibrate_bn

    c, k_steps = b.config, b.config.progressive_steps
    dense_ms = b.perf.dense_ms()
    chunks = _train_images(b, seed, k_steps)
    model, current, steps = b.model, b.space.full_widths(), []
    t0 = time.perf_counter()
    for k in range(1, k_steps + 1):
        budget = dense_ms * speedup ** (-k / k_steps)
        first = model is b.model
        space, perf = (b.space, b.perf) if first else restricted(b.space, b.perf, model, current,
                                                                  b.input_shape)
        scores = b.scores if first else _group_scores(b, model, space, seed)
        importance = b.importance if first else _channel_importance(b, model, space, seed)
        solution = run_method("itcp", SearchInputs(space, perf, scores, importance), budget, bins=c.bins)
        model = apply_widths(model, space, solution.widths, importance=importance)
        current = {**current, **solution.widths}
        recalibrate_bn(model, b.bn_loader(), num_batches=c.recipe.bn_batches)
        oneshot = _evaluate(b, model) if k == k_steps else None
        tuned = _finetune(b, model, seed, chunks[k - 1], evaluate=k == k_steps)
        model = tuned["model"]
        steps.append({"step": k, "budget_ms": budget, "predicted_ms": solution.cost,
                      "images": tuned["images_per_epoch"]})
        b.log(
            f"{PROGRESSIVE} x{speedup:g} seed {seed}: step {k}/{k_steps}, budget {budget:.4f} ms, predicted "
            f"{solution.cost:.4f} ms"
        )
    return {
        "method": PROGRESSIVE,
        "speedup": speedup,
        "seed": seed,
        "budget_ms": dense_ms / speedup,
        "score": None,
        **_structure(b, model, current),
        "accuracy_oneshot": oneshot,
        "accuracy_finetuned": tuned["accuracy"],
        "finetune_images_per_epoch": sum(len(chunk.dataset) for chunk in chunks),
        "finetune_wall_s": time.perf_counter() - t0,
        "progressive_steps": k_steps,
        "steps": steps,
        "note": f"{k_steps} steps, each finetuned on its own 1/{k_steps} of the seed's images for "
        f"{c.recipe.epochs} epoch(s); one-shot = after the last prune + BN re-estimation, before "
        "the last short finetune",
    }


# ---------------------------------------------------------------- measurement and results


def _measure(b: _Bench, rows: list[dict]) -> dict:
    """Every engine of the table and the dense engine, interleaved in one run (reused if nothing changed)."""
    import contextlib

    from itcp_deploy.engines import get_backend
    from itcp_deploy.profiling.timing import measure_interleaved, round_ratios

    ids = sorted({r["engine"] for r in rows} | {DENSE})
    path = b.out / "measured.json"
    timing = asdict(b.config.measure_timing)
    if path.exists():
        saved = read_json(path, "measurements")
        if saved.get("engines") == ids and saved.get("timing") == timing:
            b.log(f"measurement: reusing {path}")
            return saved
    b.log(f"measurement: {len(ids)} engines interleaved in one run ...")
    backend = get_backend(b.config.engine.backend)
    with contextlib.ExitStack() as stack:
        engines = b.out / "engines" / "engines"
        runners = [stack.enter_context(backend.runner(engines / i, b.config.engine.options)) for i in ids]
        result = measure_interleaved(runners, None, b.config.measure_timing)
    dense = ids.index(DENSE)
    stats = {}
    for i, engine_id in enumerate(ids):
        ratios = round_ratios(result.samples_ms[i], result.samples_ms[dense])
        stats[engine_id] = {**asdict(result.stats[i]), "ratio_to_dense": float(np.median(ratios))}
    saved = {"engines": ids, "timing": timing, "stats": stats}
    write_json(path, saved)
    return saved


def _assemble(b: _Bench, rows: list[dict], measured: dict) -> dict:
    c = b.config
    for row in rows:
        s = measured["stats"].get(row["engine"])
        if s is None:
            raise InputFileError(f"no measurement of engine {row['engine']}",
                                 f"delete {b.out / 'measured.json'} and rerun")
        row["measured"] = {k: s[k] for k in ("median_ms", "p90_ms", "p99_ms", "ratio_to_dense")}
    error = {k: v for k, v in asdict(b.perf.report).items() if isinstance(v, float)} if b.perf.report else {}
    return {
        "model": c.model, "weights": c.weights, "data": c.data, "dataset": b.test_info.name,
        "jpeg_copy": "cifar10-jpeg" in c.data, "backend": c.engine.backend, "precision": c.engine.precision,
        "device": b.perf.meta.get("device", ""), "criterion": c.criterion, "importance": c.importance,
        "recipe": asdict(c.recipe), "progressive_steps": c.progressive_steps,
        "dense_predicted_ms": b.perf.dense_ms(), "measure_timing": asdict(c.measure_timing),
        "perf_model_error": error, "notes": b.notes, "rows": rows,
    }


__all__ = ["CompareConfig", "FinetuneRecipe", "ProfileSettings", "compare"]
