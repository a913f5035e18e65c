"""Mixed precision (issue 27), the evidence table: for one model, at each (seed, speed-up S), four ways to reach
dense FP32 / S on ONNX Runtime CPU (batch 1, one thread), each judged against the SAME dense FP32 engine:

* ``a``: ITCP, FP32 only (``prune(speedup=S)``);
* ``b``: ITCP under an FP32 budget, then INT8 everywhere: pruned at S / q (q = dense FP32 / dense INT8 latency,
  measured interleaved at the start), then a fully INT8 engine of that model (the product's builder, calibrated);
  an engine slower than dense / S corrects S / q once by the miss factor, and a second miss is said in the row;
* ``c``: ``--precision int8`` over the whole run, with ``sla_ms`` = dense FP32 ms / S (the run's own dense is INT8);
* ``d``: ``--precision mixed`` at ``speedup=S`` (its dense is FP32): each group INT8 or FP32, chosen with the widths.

Each variant is one ``itcp_deploy.prune`` run; its one-shot engine (epochs 0: the model handed to finetuning,
after compensation and BatchNorm re-estimation) is built in the finetuning hook, so both rows share one structure.
Per engine: top-1 on a fixed test subset, measured on the engine; top-1 agreement with the FP32 PyTorch model it
came from (the issue asks >= 0.95 for ``d``); INT8 groups; the share of profiled node time in Quantize/
DequantizeLinear. Each point ends with every variant's final engine and the dense FP32 engine in ONE interleaved
session (the latency column). Rows go to ``OUT/results.jsonl`` as they finish (a rerun skips finished rows; a failed
variant is a row with its error); ``OUT/results.md`` is the table. Data: CIFAR-10 (JPEG copy). Usage::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python bench/mixed_table.py --model cifar_resnet20 \\
        --weights ../shared/weights/cifar10-resnet/resnet20-12fca82f.th --seeds 0 1 --out runs/mixed-r20
    # ResNet-56: --model cifar_resnet56 --weights .../resnet56-4bfd9763.th --seeds 0 --out runs/mixed-r56
    # the shipped one-shot engines only (what a mixed run's precision control acts on): --epochs 0
    # smoke: --speedups 2 --train-subset 512 --test-samples 256 --max-builds 12 --out /tmp/mixed-smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx
import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itcp_deploy  # noqa: E402
from bench.mixed_table_report import VARIANTS, markdown  # noqa: E402
from itcp_deploy.api import PruneOptions  # noqa: E402
from itcp_deploy.atomic_io import write_text  # noqa: E402
from itcp_deploy.data import make_loader, seeded_indices  # noqa: E402
from itcp_deploy.data.calibration import calibrate  # noqa: E402
from itcp_deploy.engines import EngineOptions, get_backend  # noqa: E402
from itcp_deploy.engines.build import EngineSpec, build_engine  # noqa: E402
from itcp_deploy.engines.evaluate import EngineOutputs, engine_outputs  # noqa: E402
from itcp_deploy.engines.mixed import group_layers  # noqa: E402
from itcp_deploy.engines.onnxruntime.runner import model_file  # noqa: E402
from itcp_deploy.pipeline.config import FinetuneRecipe, LoopSettings, ProfileSettings  # noqa: E402
from itcp_deploy.pipeline.from_specs import Inputs, ModelSource, load_inputs  # noqa: E402
from itcp_deploy.plan import PruningPlan  # noqa: E402
from itcp_deploy.profiling.engine_timing import measure_engines  # noqa: E402
from itcp_deploy.profiling.timing import TimingConfig  # noqa: E402
from itcp_deploy.pruning import build_space  # noqa: E402
from itcp_deploy.train import TrainConfig, train  # noqa: E402

BACKEND = "onnxruntime"
CHECK = TimingConfig(warmup=50, rounds=20, runs_per_round=50)  # q at the start; variant b's one-shot check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--weights", required=True, help="published weights, e.g. ../shared/weights/cifar10-resnet/...")
    p.add_argument("--data", default="cifar10:../shared/data/cifar10-jpeg")
    p.add_argument("--speedups", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=sorted(VARIANTS))
    p.add_argument("--epochs", type=int, default=1, help="finetuning epochs of a variant's second row (0: one row, "
                   "the shipped one-shot engine, as the precision control sees it)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--train-subset", type=int, default=50000, help="finetuning images per epoch (seeded subset)")
    p.add_argument("--test-samples", type=int, default=2000, help="fixed subset of the test split (top-1)")
    p.add_argument("--pipeline-samples", type=int, default=1000, help="the runs' own test images, after the table's")
    p.add_argument("--calib-images", type=int, default=256, help="INT8 calibration images (training split)")
    p.add_argument("--min-agreement", type=float, default=0.0, help="the runs' precision control (default off)")
    p.add_argument("--final-retries", type=int, default=1, help="latency re-solves (LoopSettings.final_retries)")
    p.add_argument("--precision-retries", type=int, default=3, help="the control's (LoopSettings.precision_retries)")
    p.add_argument("--max-builds", type=int, default=32, help="profiling budget per precision")
    p.add_argument("--measure-rounds", type=int, default=30, help="final interleaved session: rounds")
    p.add_argument("--measure-runs", type=int, default=100, help="final interleaved session: runs per round")
    p.add_argument("--profile-runs", type=int, default=300, help="ONNX Runtime node-profiling runs (Q/DQ share)")
    p.add_argument("--retry-errors", action="store_true", help="rerun variants whose rows hold an error")
    p.add_argument("--out", required=True)
    p.add_argument("--cache", help="profiling cache shared by every run (default OUT/cache)")
    p.add_argument("--quiet", action="store_true", help="no pipeline log lines")
    return p.parse_args(argv)


class Results:
    """``results.jsonl``: one JSON row per line, appended as rows finish; the last row of a key wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lines = path.read_text().splitlines() if path.is_file() else []
        self.rows = {key_of(r): r for r in (json.loads(line) for line in lines if line.strip())}

    def add(self, row: dict) -> dict:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows[key_of(row)] = row
        return row


def key_of(row: dict) -> tuple:
    if row["kind"] == "variant":
        return ("variant", row["seed"], row["speedup"], row["variant"], row["epochs"])
    return (row["kind"], row.get("seed"), row.get("speedup"))


@dataclass
class Bench:
    """What every run shares: settings, data, the dense model's space, the dense FP32 engine and its outputs."""

    args: argparse.Namespace
    out: Path
    inputs: Inputs
    eval_batches: list
    pipeline_batches: list
    results: Results
    space: object = None  # the dense model's PruningSpace, as the pipeline builds it (block removal on)
    dense: dict = field(default_factory=dict)
    dense_outputs: EngineOutputs | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.inputs.input_shape

    def log(self, tag: str):
        return None if self.args.quiet else (lambda msg: print(f"  [{tag}] {msg}", flush=True))


def budget_speedup(speedup: float, q: float) -> float:
    """Variant b's FP32 pruning speed-up: INT8 alone brings q, pruning the rest (1: none needed)."""
    return max(1.0, speedup / q)


def corrected_speedup(s_b: float, ratio: float, speedup: float) -> float:
    """S / q corrected once by the miss factor: the INT8 engine measured ``ratio`` of dense, the target 1/S."""
    return s_b * ratio * speedup


def qdq_share(artifact: Path, runs: int) -> float:
    """Share of the engine's profiled node time (ONNX Runtime profiling, per node) in Q/DQ nodes."""
    with get_backend(BACKEND).runner(artifact, EngineOptions()) as runner:
        nodes = runner.layer_times_ms(runner.random_feeds(), runs, 20) or {}
    ops = {n.name: n.op_type for n in onnx.load(str(model_file(Path(artifact))), load_external_data=False).graph.node}
    qdq = sum(ms for name, ms in nodes.items() if ops.get(name) in ("QuantizeLinear", "DequantizeLinear"))
    return float(qdq / max(sum(nodes.values()), 1e-12))


def engine_facts(b: Bench, artifact: Path, model: torch.nn.Module) -> dict:
    """The engine's top-1 on the test subset, its agreement with the dense FP32 engine and with ``model`` (the
    FP32 PyTorch model it was built from), and its Q/DQ share."""
    out = engine_outputs(BACKEND, artifact, EngineOptions(), b.eval_batches, limit=b.args.test_samples)
    with torch.no_grad():
        logits = torch.cat([model.eval()(x) for x, _ in b.eval_batches]).numpy()[: len(out.labels)]
    return {"top1": out.top1, "agree_dense_engine": out.agreement(b.dense_outputs),
            "agree_fp32_model": out.agreement(EngineOutputs(logits, out.labels)),
            "qdq_share": qdq_share(artifact, b.args.profile_runs), "engine": str(artifact)}


def load_bench(args: argparse.Namespace) -> Bench:
    torch.set_num_threads(1)
    (out := Path(args.out)).mkdir(parents=True, exist_ok=True)
    inputs = load_inputs(ModelSource(args.model, args.data, args.weights), 0)
    batches = list(make_loader(inputs.test, 64, shuffle=False, max_samples=args.test_samples))
    held = list(range(args.test_samples, args.test_samples + args.pipeline_samples))
    pipeline = list(make_loader(replace(inputs.test, dataset=Subset(inputs.test.dataset, held)), 64, shuffle=False))
    b = Bench(args, out, inputs, batches, pipeline, Results(out / "results.jsonl"))
    b.space = build_space(inputs.model, b.shape, model_spec=args.model).with_removal(True)
    return b


def calibration(b: Bench, seed: int) -> Path:
    """The seed's INT8 calibration set (the product's ``calibrate``), shared by variants b, c and d."""
    path = b.out / "calib" / f"calib-s{seed}.npz"
    if not path.is_file():
        calibrate(b.args.data, num=b.args.calib_images, seed=seed, name=path.stem, out_dir=path.parent,
                  input_shape=b.shape)
    return path


def dense_point(b: Bench) -> None:
    """Dense FP32 and INT8 engines, measured interleaved (q = FP32 / INT8), and their top-1; kept in the
    results so a rerun judges against the same numbers."""
    folder = b.out / "dense"
    fp32 = build_engine(b.inputs.model, b.shape, folder, "fp32", EngineSpec()).artifact
    b.dense_outputs = engine_outputs(BACKEND, fp32, EngineOptions(), b.eval_batches, limit=b.args.test_samples)
    row = b.results.rows.get(("dense", None, None))
    if row is None:
        int8 = build_engine(b.inputs.model, b.shape, folder, "int8",
                            EngineSpec(precision="int8", calib=str(calibration(b, 0)))).artifact
        m = measure_engines(BACKEND, [int8], EngineOptions(), CHECK, reference=fp32)
        int8_out = engine_outputs(BACKEND, int8, EngineOptions(), b.eval_batches, limit=b.args.test_samples)
        row = b.results.add({"kind": "dense", "model": b.args.model, "fp32_ms": m.reference.median_ms,
                             "int8_ms": m.engines[0].stats.median_ms, "q": 1.0 / m.engines[0].ratio,
                             "fp32_top1": b.dense_outputs.top1, "int8_top1": int8_out.top1,
                             "images": len(int8_out.labels), "groups": len(b.space.prunable), "engine": str(fp32)})
    b.dense = row
    print(f"dense FP32 {row['fp32_ms']:.4f} ms (top-1 {row['fp32_top1']:.2f}%), INT8 {row['int8_ms']:.4f} ms "
          f"(top-1 {row['int8_top1']:.2f}%): q = {row['q']:.3f}", flush=True)


def check_ratio(b: Bench, artifact: Path) -> float:
    """``artifact``'s latency over the dense FP32 engine's, measured interleaved (variant b's check)."""
    m = measure_engines(BACKEND, [artifact], EngineOptions(), CHECK, reference=Path(b.dense["engine"]))
    return m.engines[0].ratio


class Miss(Exception):
    """Variant b's one-shot INT8 engine measured slower than dense / S (its first try); ``args[0]``: its ratio."""


def trainer(b: Bench, seed: int, folder: Path):
    """The CLI's finetuning recipe (``from_specs.spec_inputs``: distillation from the dense model, checkpoints
    and resume in the run folder) over the seed's ``--train-subset`` of the training split; none at --epochs 0."""
    info, n = b.inputs.train, len(b.inputs.train.dataset)
    if b.args.train_subset < n:
        info = replace(info, dataset=Subset(info.dataset, seeded_indices(n, b.args.train_subset, seed)))

    def finetune(model: torch.nn.Module) -> torch.nn.Module:
        if b.args.epochs:
            train(model, info, None, TrainConfig(epochs=b.args.epochs, lr=b.args.lr, batch_size=64, seed=seed,
                  teacher=b.inputs.model, checkpoint_dir=folder / "finetune", resume=True, quiet=True, device="cpu"))
        return model.cpu().eval()

    return finetune


def one_shot_hook(b: Bench, seed: int, folder: Path, spec: EngineSpec, check: float | None):
    """The run's finetuning, preceded by the one-shot engine (the model the pipeline hands to finetuning: after
    compensation and BatchNorm re-estimation) built with ``spec`` (a mixed spec gets the plan's INT8 layers) and
    its facts saved in ``oneshot.json``; ``check``: raise :class:`Miss` when it measures slower than this ratio."""
    finetune = trainer(b, seed, folder)

    def hook(model: torch.nn.Module) -> torch.nn.Module:
        plan = PruningPlan.load(folder / "widths.json")
        layers = group_layers(b.space, plan.int8_groups, plan.widths) if spec.precision == "mixed" else None
        built = build_engine(model, b.shape, folder / "oneshot", "model", replace(spec, int8_layers=layers))
        facts = {**engine_facts(b, built.artifact, model), "int8_names": list(plan.int8_groups)}
        if check is not None:
            facts["check_ratio"] = ratio = check_ratio(b, built.artifact)
            if check and ratio > check:
                raise Miss(ratio)
        (folder / "oneshot.json").write_text(json.dumps(facts))
        return finetune(model)

    return hook


def prune_run(b: Bench, seed: int, folder: Path, target: dict, spec: EngineSpec, check: float | None = None,
              precision: str | None = None):
    """One product run (``itcp_deploy.prune``) of ``target`` (``speedup=`` or ``sla_ms=``) at ``precision``
    (default ``spec``'s; ``spec``: the one-shot engine's); returns its result and the one-shot facts."""
    a, precision = b.args, precision or spec.precision
    options = PruneOptions(name=a.model, data=a.data, weights=a.weights, calib=spec.calib, seed=seed,
                           min_agreement=a.min_agreement if precision == "mixed" else 0.0,  # the control is mixed's
                           eval_loader=b.pipeline_batches, log=b.log(folder.name),
                           loop=LoopSettings(final_retries=a.final_retries, precision_retries=a.precision_retries),
                           recipe=FinetuneRecipe(epochs=a.epochs, lr=a.lr, train_subset=a.train_subset,
                                                 test_samples=a.test_samples),
                           profile=ProfileSettings(cache_dir=a.cache or str(b.out / "cache"), max_builds=a.max_builds))
    score = make_loader(b.inputs.plain, 64, shuffle=True, seed=seed)
    result = itcp_deploy.prune(b.inputs.model, torch.zeros(b.shape), **target, precision=precision,
                               score_loader=score, finetune=one_shot_hook(b, seed, folder, spec, check),
                               out_dir=folder, options=options)
    return result, json.loads((folder / "oneshot.json").read_text())


def variant_run(b: Bench, seed: int, speedup: float, v: str, folder: Path) -> tuple[dict, dict, dict]:
    """Variants a, c, d: the run's final engine is the variant's; returns (one-shot, final, common) facts."""
    calib = str(calibration(b, seed))
    spec, target = {"a": (EngineSpec(), {"speedup": speedup}),
                    "c": (EngineSpec(precision="int8", calib=calib), {"sla_ms": b.dense["fp32_ms"] / speedup}),
                    "d": (EngineSpec(precision="mixed", calib=calib), {"speedup": speedup})}[v]
    result, one = prune_run(b, seed, folder, target, spec)
    final = {**engine_facts(b, result.engine_path, result.model), "int8_names": list(result.report.int8_groups)}
    int8 = {"a": 0, "c": "all", "d": len(result.report.int8_groups)}[v]
    common = {"int8_groups": int8, "target": target, "run_ratio": result.report.final_over_dense,
              "run_met_sla": result.met_sla, "widths": result.widths}
    return one, final, common


def variant_b(b: Bench, seed: int, speedup: float, folder: Path) -> tuple[dict, dict, dict]:
    """Prune FP32 at S / q, then a fully INT8 engine of the pruned model; one correction of S / q on a miss."""
    spec = EngineSpec(precision="int8", calib=str(calibration(b, seed)))
    s_b = budget_speedup(speedup, b.dense["q"])
    note = f"pruned FP32 at S/q = {s_b:.3f}"
    try:
        if s_b <= 1.0:  # INT8 alone may be fast enough: then nothing to prune, nothing to finetune
            built = build_engine(b.inputs.model, b.shape, folder, "int8", spec).artifact
            if (ratio := check_ratio(b, built)) > 1.0 / speedup:
                raise Miss(ratio)
            facts = {**engine_facts(b, built, b.inputs.model), "check_ratio": ratio}
            return facts, facts, {"int8_groups": "all", "s_b": 1.0, "note": "S/q <= 1: INT8 alone, nothing pruned"}
        result, one = prune_run(b, seed, folder, {"speedup": s_b}, spec, 1.0 / speedup, "fp32")
    except Miss as miss:
        ratio = miss.args[0]
        s_b2 = corrected_speedup(s_b, ratio, speedup)
        note += f", its INT8 engine at {ratio:.3f} of dense (> 1/S): corrected once, to {s_b2:.3f}"
        s_b, folder = s_b2, folder.with_name(folder.name + "-corrected")
        result, one = prune_run(b, seed, folder, {"speedup": s_b}, spec, 0.0, "fp32")  # measured, not raised
    built = build_engine(result.model, b.shape, folder / "int8", "model", spec).artifact
    final = engine_facts(b, built, result.model)
    if one.get("check_ratio", 0.0) > 1.0 / speedup:
        note += f"; its INT8 engine at {one['check_ratio']:.3f} of dense: still slower than dense / S"
    return one, final, {"int8_groups": "all", "s_b": s_b, "note": note, "widths": result.widths}


def run_variant(b: Bench, seed: int, speedup: float, v: str) -> None:
    """Both rows of one variant (epochs 0 and ``--epochs``; one at ``--epochs 0``), or rows holding its error."""
    epochs = sorted({0, b.args.epochs})  # --epochs 0: the one-shot engine is the run's final one
    keys = [("variant", seed, speedup, v, e) for e in epochs]
    rows = [b.results.rows.get(k) for k in keys]
    if all(rows) and not (b.args.retry_errors and any(r.get("error") for r in rows)):
        return
    folder = b.out / "runs" / f"s{seed}-x{speedup:g}-{v}{'-e0' if b.args.epochs == 0 else ''}"
    base = {"kind": "variant", "model": b.args.model, "seed": seed, "speedup": speedup, "variant": v}
    print(f"seed {seed}, x{speedup:g}, {v} ({VARIANTS[v]}) ...", flush=True)
    t0 = time.perf_counter()
    try:
        one, final, common = variant_b(b, seed, speedup, folder) if v == "b" else \
            variant_run(b, seed, speedup, v, folder)
    except Exception as err:  # noqa: BLE001 (a failed variant is a row of the table, not the end of it)
        msg = f"{type(err).__name__}: {err}".splitlines()[0]
        print(f"  failed: {msg}", flush=True)
        for e in epochs:
            b.results.add({**base, "epochs": e, "error": msg, "wall_s": time.perf_counter() - t0})
        return
    wall = time.perf_counter() - t0
    for e, facts in ((0, one), (b.args.epochs, final)) if b.args.epochs else ((0, final),):
        b.results.add({**base, **common, **facts, "epochs": e, "wall_s": wall})
        print(f"  epochs {e}: top-1 {facts['top1']:.2f}%, agrees with its FP32 model "
              f"{facts['agree_fp32_model']:.3f}, Q/DQ {100 * facts['qdq_share']:.1f}%", flush=True)


def measure_point(b: Bench, seed: int, speedup: float) -> None:
    """Every variant's final engine and the dense FP32 engine, in ONE interleaved session (again when a variant
    finished since, e.g. with ``--retry-errors``)."""
    finals = {v: r["engine"] for v in sorted(VARIANTS)
              if (r := b.results.rows.get(("variant", seed, speedup, v, b.args.epochs))) and not r.get("error")}
    done = b.results.rows.get(("latency", seed, speedup))
    if not finals or (done and set(finals) <= set(done["ratios"])):
        return
    timing = TimingConfig(warmup=100, rounds=b.args.measure_rounds, runs_per_round=b.args.measure_runs)
    m = measure_engines(BACKEND, [Path(p) for p in finals.values()], EngineOptions(), timing,
                        reference=Path(b.dense["engine"]))
    b.results.add({"kind": "latency", "seed": seed, "speedup": speedup, "dense_ms": m.reference.median_ms,
                   "ratios": {v: e.ratio for v, e in zip(finals, m.engines, strict=True)},
                   "spread": {v: e.ratio_spread for v, e in zip(finals, m.engines, strict=True)}})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.epochs < 0:
        raise SystemExit("--epochs must be >= 0 (0: one row a variant, its shipped one-shot engine)")
    b = load_bench(args)
    dense_point(b)
    for seed in args.seeds:
        for speedup in args.speedups:
            for v in args.variants:
                run_variant(b, seed, speedup, v)
            measure_point(b, seed, speedup)
            write_text(b.out / "results.md", markdown(list(b.results.rows.values())))
    print(markdown(list(b.results.rows.values())))


if __name__ == "__main__":
    main()
