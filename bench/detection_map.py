"""Detection accuracy at equal measured latency (issue 26): train SSDLite on the project's synthetic shapes,
measure mAP on its ONNX Runtime engine, prune it with ``itcp_deploy.prune()`` by each method to each speedup, and
measure each engine's mAP one-shot and after a short finetune, beside its latency measured against dense.

    OMP_NUM_THREADS=1 python bench/detection_map.py --out OUT --train-minutes 12 --finetune-steps 150

Resumable: the trained detector, the dense evaluation and each (method, speedup) row are kept in ``--out``; a
rerun skips what is there. Rows go to ``OUT/results.jsonl``; the markdown table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from bench.detection_eval import (
    DETECTOR,
    TEST_SEED,
    TRAIN_SEED,
    TrainSpec,
    batch_of,
    build_detector,
    coco_map,
    engine_detections,
    torch_detections,
    train,
)

FINETUNE_FIRST = 10_000_000  # finetuning reads training images past any the dense training run reached


@dataclass(frozen=True)
class Settings:
    """The run's settings (``--help`` says each); kept in ``OUT/settings.json``."""

    size: int
    train_minutes: float
    batch: int
    lr: float
    test_images: int
    score_images: int
    finetune_steps: int
    finetune_lr: float
    max_builds: int
    speedups: tuple[float, ...]
    methods: tuple[str, ...]


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write(path: Path, data: dict) -> dict:
    path.write_text(json.dumps(data, indent=1))
    return data


def trained_detector(s: Settings, out: Path) -> tuple[nn.Module, dict]:
    """The dense detector trained for ``train_minutes`` (once; a rerun loads ``dense.pt``)."""
    model = build_detector(s.size)
    done = _read(out / "train.json")
    if done is None:
        spec = TrainSpec(seconds=60 * s.train_minutes, steps=10**9, batch=s.batch, size=s.size, lr=s.lr)
        load = os.getloadavg()[0]
        done = {**train(model, spec, lambda m: print(f"train: {m}", flush=True)), "spec": asdict(spec),
                "load_start_end": [load, os.getloadavg()[0]]}
        torch.save(model.state_dict(), out / "dense.pt")
        _write(out / "train.json", done)
    model.load_state_dict(torch.load(out / "dense.pt", weights_only=True))
    return model.eval(), done


def test_set(s: Settings) -> tuple[torch.Tensor, list[dict]]:
    """The held-out images (another seed than training's) and their boxes."""
    return batch_of(0, s.test_images, s.size, TEST_SEED)


def engine_row(model: nn.Module, s: Settings, folder: Path, reference: Path | None) -> dict:
    """Build ``model``'s engine as the product ships it (the whole forward, NMS included), measure it against
    ``reference`` (interleaved) and its mAP on the engine and on PyTorch."""
    import itcp_deploy

    images, targets = test_set(s)
    built = itcp_deploy.build_engine(model.eval(), images[:1], out_dir=folder, name="model", reference=reference)
    engine = coco_map(engine_detections(built.engine_path, images), targets)
    pytorch = coco_map(torch_detections(model, images), targets)
    return {"engine": str(built.engine_path), "median_ms": round(built.median_ms, 3),
            "ratio_to_dense": None if built.ratio_to_reference is None else round(built.ratio_to_reference, 4),
            "map50": round(engine["map50"], 4), "map": round(engine["map"], 4),
            "torch_map50": round(pytorch["map50"], 4), "torch_map": round(pytorch["map"], 4)}


def dense_row(model: nn.Module, s: Settings, out: Path) -> dict:
    """The dense engine's mAP and latency (once)."""
    return _read(out / "dense.json") or _write(out / "dense.json", engine_row(model, s, out / "dense", None))


def finetune_fn(s: Settings, before: Callable[[nn.Module], None]) -> Callable[[nn.Module], nn.Module]:
    """The ``finetune`` callable ``prune()`` calls on its one-shot model: ``before`` records that model (the
    one-shot row), then ``finetune_steps`` of the detector's own loss on fresh training images."""

    def finetune(model: nn.Module) -> nn.Module:
        before(model)
        spec = TrainSpec(seconds=float("inf"), steps=s.finetune_steps, batch=s.batch, size=s.size,
                         lr=s.finetune_lr, first=FINETUNE_FIRST)
        train(model, spec, lambda m: print(f"finetune: {m}", flush=True))
        return model.eval()

    return finetune


def _refused(method: str, speedup: float, err: Exception) -> list[dict]:
    """The product's one-line refusal as the row of both stages."""
    return [{"method": method, "speedup": speedup, "stage": stage, "refused": str(err)}
            for stage in ("one-shot", "finetuned")]


def prune_rows(model: nn.Module, s: Settings, out: Path, method: str, speedup: float, dense: dict) -> list[dict]:
    """Prune ``model`` by ``method`` to ``speedup`` with ``itcp_deploy.prune()``; the one-shot row (the model
    ``prune()`` hands to ``finetune``, measured on its own engine) and the finetuned row (the product's final
    engine, its latency as the product measured it against dense)."""
    import itcp_deploy
    from itcp_deploy.errors import InfeasibleError
    from itcp_deploy.pipeline.config import ProfileSettings

    run = out / f"{method}-{speedup:g}"
    run.mkdir(exist_ok=True)

    def one_shot(pruned: nn.Module) -> None:
        if not (run / "oneshot.json").is_file():
            _write(run / "oneshot.json", engine_row(pruned, s, run / "oneshot", Path(dense["engine"])))

    score = [batch_of(i * s.batch, s.batch, s.size, TRAIN_SEED) for i in range(-(-s.score_images // s.batch))]
    options = itcp_deploy.PruneOptions(method=method, score_samples=s.score_images, quiet=False,
                                       log=lambda m: print(f"prune {method} {speedup:g}x: {m}", flush=True),
                                       profile=ProfileSettings(cache_dir=str(out / "cache"), max_builds=s.max_builds))
    images, targets = test_set(s)
    try:
        result = itcp_deploy.prune(model, images[:1], speedup=speedup, score_loader=score, out_dir=run / "prune",
                                   finetune=finetune_fn(s, one_shot), options=options)
    except InfeasibleError as err:
        return _refused(method, speedup, err)
    common = {"method": method, "speedup": speedup, "sla_ms": round(result.sla_ms, 3), "met_sla": result.met_sla,
              "params": result.report.params_final, "macs": result.report.macs_final}
    final = coco_map(engine_detections(result.engine_path, images), targets)
    pytorch = coco_map(torch_detections(result.model, images), targets)
    finetuned = {"engine": str(result.engine_path), "median_ms": round(result.measured_ms, 3),
                 "ratio_to_dense": round(result.report.final_over_dense, 4), "map50": round(final["map50"], 4),
                 "map": round(final["map"], 4), "torch_map50": round(pytorch["map50"], 4),
                 "torch_map": round(pytorch["map"], 4)}
    shot = _read(run / "oneshot.json")  # its own engine, so its own verdict: ratio <= 1 / speedup, as the SLA's
    return [{**common, "stage": "one-shot", **shot, "met_sla": shot["ratio_to_dense"] <= 1 / speedup},
            {**common, "stage": "finetuned", "finetune_steps": s.finetune_steps, **finetuned}]


def table(dense: dict, rows: list[dict]) -> str:
    """The markdown table: engine mAP beside the measured speedup (dense / engine, interleaved)."""
    lines = ["| method | target speedup | stage | measured speedup | SLA met | mAP@0.5 (engine) | mAP@0.5:0.95 "
             "(engine) | mAP@0.5 (PyTorch) |", "|---|---|---|---|---|---|---|---|",
             f"| dense | 1x | trained | 1.00 | - | {dense['map50']:.3f} | {dense['map']:.3f} | "
             f"{dense['torch_map50']:.3f} |"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['method']} | {r['speedup']:g}x | {r['stage']} | refused: {r['refused']} | | | | |")
            continue
        lines.append(f"| {r['method']} | {r['speedup']:g}x | {r['stage']} | {1 / r['ratio_to_dense']:.2f} | "
                     f"{'yes' if r['met_sla'] else 'no'} | {r['map50']:.3f} | {r['map']:.3f} | "
                     f"{r['torch_map50']:.3f} |")
    return "\n".join(lines)


def _done_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def run(s: Settings, out: Path) -> str:
    """Every stage in order, each skipped when ``out`` holds its result; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    saved, now = _read(out / "settings.json"), json.loads(json.dumps(asdict(s)))
    keyed = ("speedups", "methods")  # rows are kept per (method, speedup): a rerun may add some
    if saved is not None and {k: v for k, v in saved.items() if k not in keyed} != {
            k: v for k, v in now.items() if k not in keyed}:
        raise SystemExit(f"{out} holds a run with other settings ({out / 'settings.json'}): use another --out")
    _write(out / "settings.json", asdict(s))
    model, trained = trained_detector(s, out)
    dense = dense_row(model, s, out)
    print(f"dense: {json.dumps(dense)} after {json.dumps(trained)}", flush=True)
    results = out / "results.jsonl"
    for method in s.methods:
        for speedup in s.speedups:
            if any(r["method"] == method and r["speedup"] == speedup for r in _done_rows(results)):
                continue
            t0, load = time.perf_counter(), os.getloadavg()[0]
            rows = prune_rows(model, s, out, method, speedup, dense)
            extra = {"wall_s": round(time.perf_counter() - t0, 1), "load_start_end": [load, os.getloadavg()[0]]}
            with results.open("a") as f:
                for r in rows:
                    f.write(json.dumps({**r, **extra}) + "\n")
    rows = [r for r in _done_rows(results) if r["method"] in s.methods and r["speedup"] in s.speedups]
    return table(dense, rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="results folder (a rerun resumes from it)")
    p.add_argument("--size", type=int, default=160, help=f"square input size of {DETECTOR}'s transform")
    p.add_argument("--train-minutes", type=float, default=12.0, help="dense training time (1 thread)")
    p.add_argument("--batch", type=int, default=16, help="images per training, finetuning and score batch")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate of dense training (cosine)")
    p.add_argument("--test-images", type=int, default=300, help="held-out images mAP is measured on")
    p.add_argument("--score-images", type=int, default=256, help="images prune() scores channels with")
    p.add_argument("--finetune-steps", type=int, default=150, help="finetuning steps after pruning")
    p.add_argument("--finetune-lr", type=float, default=5e-4, help="AdamW peak learning rate of finetuning")
    p.add_argument("--max-builds", type=int, default=12, help="engines profiled for the perf model (shared cache)")
    p.add_argument("--speedups", type=float, nargs="+", default=[1.5, 2.0])
    p.add_argument("--methods", nargs="+", default=["itcp", "tp-taylor-round"])
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    s = Settings(a.size, a.train_minutes, a.batch, a.lr, a.test_images, a.score_images, a.finetune_steps,
                 a.finetune_lr, a.max_builds, tuple(a.speedups), tuple(a.methods))
    text = run(s, a.out)
    (a.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
