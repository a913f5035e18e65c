"""Accuracy against measured latency: ITCP and the baselines through the same pipeline pieces (issue 7).

For one model and dataset, each search method starts from the same predicted budget (dense predicted / speed-up)
and goes through ``run``'s closed-loop rounds until its engine measures at or under 1 / speed-up x dense (the
Torch-Pruning peers bisect to the same measured target); then BatchNorm is re-estimated (one-shot accuracy), the
model finetuned with the same recipe per seed, and every engine of the table measured interleaved with the dense
engine in one run. Writes ``results.json``, ``results.md`` and
``accuracy_vs_latency.png`` into ``--out``; a rerun skips every finished (method, speed-up, seed) row.

Example (ResNet-20, published weights, CIFAR-10 JPEG copy)::

    python bench/accuracy_vs_latency.py --model cifar_resnet20 \\
        --weights ../shared/weights/cifar10-resnet/resnet20-12fca82f.th \\
        --data cifar10:../shared/data/cifar10-jpeg --speedups 1.5 2 3 \\
        --methods itcp uniform flops global-magnitude knapsack-linear --criterion taylor \\
        --epochs 1 --train-subset 10000 --seeds 0 1 --out runs/bench-r20
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.comparison.compare import compare  # noqa: E402
from bench.comparison.config import CompareConfig  # noqa: E402
from itcp_deploy.atomic_io import write_text  # noqa: E402
from itcp_deploy.engines.build import EngineSpec  # noqa: E402
from itcp_deploy.errors import ItcpError  # noqa: E402
from itcp_deploy.pipeline.config import FinetuneRecipe, ProfileSettings  # noqa: E402
from itcp_deploy.profiling.timing import TimingConfig  # noqa: E402

METHODS = ["itcp", "uniform", "flops", "global-magnitude", "knapsack-linear", "tp-taylor", "tp-taylor-round"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="zoo name or spec, e.g. cifar_resnet20")
    p.add_argument("--weights", help="checkpoint (random weights without it)")
    p.add_argument("--data", required=True, help="e.g. cifar10:DIR, synthetic:train=256,test=128")
    p.add_argument("--speedups", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    p.add_argument("--methods", nargs="+", default=METHODS,
                   help="search methods, tp-taylor, tp-taylor-round; suffixes +comp (e.g. itcp+comp): least-squares "
                   "compensation before BN re-estimation, +rm (e.g. itcp+rm+comp): block removal allowed")
    p.add_argument("--criterion", default="taylor", help="group score, the same for every method")
    p.add_argument("--importance", default="taylor", help="channel importance: which channels are kept")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-subset", type=int, default=10000, help="finetuning images per epoch (0 = all)")
    p.add_argument("--distill", action="store_true",
                   help="finetune with distillation from the dense model (the recipe of `run --distill`)")
    p.add_argument("--test-samples", type=int, default=0, help="fixed test subset (0 = all)")
    p.add_argument("--progressive", type=int, default=0, metavar="K", help="also itcp-progressive in K steps")
    p.add_argument("--out", required=True)
    p.add_argument("--cache", default="engines", help="profiling cache directory (shared between runs)")
    p.add_argument("--profile", help="reuse this profile.json")
    p.add_argument("--perf-model", help="reuse this perf_model.json")
    p.add_argument("--max-builds", type=int, default=32)
    p.add_argument("--holdout", type=int, default=10)
    p.add_argument("--timing-warmup", type=int, default=20, help="profiling: warm-up runs")
    p.add_argument("--timing-rounds", type=int, default=10, help="profiling: rounds")
    p.add_argument("--timing-runs", type=int, default=60, help="profiling: runs per round")
    p.add_argument("--measure-rounds", type=int, default=20, help="final measurement: rounds")
    p.add_argument("--measure-runs", type=int, default=50, help="final measurement: runs per round")
    p.add_argument("--force-fit", action="store_true", help="keep a perf model above the error threshold")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--score-samples", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch threads for finetuning and evaluation")
    p.add_argument("--no-dense-finetune", action="store_true", help="skip finetuning the dense reference")
    p.add_argument("--measure-only", action="store_true",
                   help="compute no row: measure every row already in OUT/rows (from separate runs) interleaved")
    p.add_argument("--calib-seed", type=int, default=0,
                   help="seed of the calibration images (scores, channel importance, compensation, the peer's "
                   "gradients): the one-shot rows' seed")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> CompareConfig:
    recipe = FinetuneRecipe(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        train_subset=args.train_subset or None,
        distill=args.distill,
        test_samples=args.test_samples or None,
    )
    profile = ProfileSettings(
        cache_dir=args.cache,
        profile_path=args.profile,
        perf_model_path=args.perf_model,
        max_builds=args.max_builds,
        holdout=args.holdout,
        force_fit=args.force_fit,
        timing=TimingConfig(
            warmup=args.timing_warmup, rounds=args.timing_rounds, runs_per_round=args.timing_runs
        ),
    )
    return CompareConfig(
        model=args.model,
        data=args.data,
        out_dir=args.out,
        weights=args.weights,
        speedups=tuple(args.speedups),
        methods=tuple(args.methods),
        seeds=tuple(args.seeds),
        criterion=args.criterion,
        importance=args.importance,
        progressive_steps=args.progressive,
        recipe=recipe,
        profile=profile,
        engine=EngineSpec(backend=args.backend),
        measure_timing=TimingConfig(warmup=50, rounds=args.measure_rounds, runs_per_round=args.measure_runs),
        score_samples=args.score_samples,
        threads=args.threads,
        dense_finetune=not args.no_dense_finetune,
        calib_seed=args.calib_seed,
        measure_only=args.measure_only,
    )


# ---------------------------------------------------------------- report


def _spread(values: list[float | None], digits: int = 2) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    mean, half = float(np.mean(vals)), (max(vals) - min(vals)) / 2
    return f"{mean:.{digits}f}" if round(half, digits) == 0 else f"{mean:.{digits}f} ± {half:.{digits}f}"


def loop_ratio(row: dict) -> float | None:
    """The ratio to dense the row's own search measured when it accepted the plan (closed-loop round, or the
    peer's bisection step); the table's ``measured / dense`` is the final interleaved run of every engine."""
    if "loop_ratio" in row:
        return row["loop_ratio"]
    steps = [s["measured_ratio"] for s in row.get("bisection", []) if s["pruning_ratio"] == row.get("pruning_ratio")]
    return steps[-1] if steps else None


def grouped(rows: list[dict]) -> dict[tuple[str, float], list[dict]]:
    """Rows by (method, speed-up), in table order: dense first, then by speed-up."""
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["method"] != "dense", r["speedup"], r["method"], r["seed"])):
        groups[(row["method"], row["speedup"])].append(row)
    return groups


def markdown(results: dict) -> str:
    """The table: one line per (method, speed-up), mean ± half-range over seeds; then every seed's row."""
    dataset = "CIFAR-10 (JPEG copy)" if results["jpeg_copy"] else results["dataset"]
    r = results["recipe"]
    subset = "all" if r["train_subset"] is None else f"{r['train_subset']:,}"
    test = "" if r["test_samples"] is None else f" ({r['test_samples']:,} test images)"
    lines = [
        f"# Accuracy vs latency: {results['model']} on {dataset}",
        "",
        f"Backend {results['backend']} {results['precision']}, batch 1, device `{results['device']}`. "
        f"Group score `{results['criterion']}`, channel importance `{results['importance']}`. "
        "Budget per speed-up = dense "
        f"predicted latency ({results['dense_predicted_ms']:.4f} ms) / speed-up, the same for every method. "
        f"Finetuning: {r['epochs']} epoch(s) x {subset} seeded training images, lr {r['lr']}, batch "
        f"{r['batch_size']}; accuracy on {dataset}{test}. Measured latency: every "
        f"engine and the dense one interleaved in one run ({results['measure_timing']['rounds']} rounds x "
        f"{results['measure_timing']['runs_per_round']} runs); ratio = median over rounds of engine/dense. "
        "Search's own measured / dense: what the method's search measured when it accepted the plan (closed-loop "
        "round or bisection step, target <= 1 / speed-up), in its own run.",
        "",
        "| method | speed-up | seeds | predicted ms | measured ms (median) | measured / dense | search's own "
        "measured / dense | p90 ms | MACs | params | one-shot acc (%) | finetuned acc (%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (method, speedup), rows in grouped(results["rows"]).items():
        measured = [x["measured"] for x in rows]
        lines.append(
            f"| {method} | {speedup:g}x | {','.join(str(x['seed']) for x in rows)} "
            f"| {_spread([x['predicted_ms'] for x in rows], 4)} "
            f"| {_spread([m['median_ms'] for m in measured], 4)} "
            f"| {_spread([m['ratio_to_dense'] for m in measured], 3)} "
            f"| {_spread([loop_ratio(x) for x in rows], 3)} "
            f"| {_spread([m['p90_ms'] for m in measured], 4)} "
            f"| {_spread([x['macs'] / 1e6 for x in rows])}M "
            f"| {_spread([x['params'] / 1e3 for x in rows], 1)}k "
            f"| {_spread([x['accuracy_oneshot'] for x in rows])} "
            f"| {_spread([x['accuracy_finetuned'] for x in rows])} |"
        )
    lines += [
        "",
        "Spread: ± half the range over seeds. Per seed:",
        "",
        "| method | speed-up | seed | predicted ms | measured ms | one-shot acc | finetuned acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for rows in grouped(results["rows"]).values():
        for x in rows:
            ft = "n/a" if x["accuracy_finetuned"] is None else f"{x['accuracy_finetuned']:.2f}"
            one = "n/a" if x["accuracy_oneshot"] is None else f"{x['accuracy_oneshot']:.2f}"
            lines.append(
                f"| {x['method']} | {x['speedup']:g}x | {x['seed']} | {_spread([x['predicted_ms']], 4)} "
                f"| {x['measured']['median_ms']:.4f} | {one} | {ft} |"
            )
    if results["progressive_steps"]:
        lines += [
            "",
            f"itcp-progressive: {results['progressive_steps']} steps, budget lowered geometrically from "
            "dense to the final budget; each step re-scores the current model, re-solves the DP over widths "
            "<= the current ones, prunes, re-estimates BN and finetunes on 1/K of the images (same total "
            "finetuning budget). Its one-shot accuracy is after the last prune, before the last short "
            "finetune; its plan differs per seed.",
        ]
    if results["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in results["notes"]]]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Accuracy against each plan's own measured latency, one line per method (one-shot | finetuned)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = "CIFAR-10 (JPEG copy)" if results["jpeg_copy"] else results["dataset"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    groups = grouped(results["rows"])
    by_method: dict[str, list[list[dict]]] = defaultdict(list)
    for (method, _), rows in groups.items():
        by_method[method].append(rows)
    colors = {m: f"C{i}" for i, m in enumerate(sorted(by_method))}  # the same colour per method in both panels
    for ax, key, title in (
        (axes[0], "accuracy_oneshot", "one-shot (BN re-estimated)"),
        (axes[1], "accuracy_finetuned", "finetuned"),
    ):
        for method, points in sorted(by_method.items()):
            pts = sorted(
                (
                    float(np.mean([x["measured"]["median_ms"] for x in rows])),
                    float(np.mean(v)),
                    (max(v) - min(v)) / 2,
                )
                for rows in points
                if (v := [x[key] for x in rows if x[key] is not None])
            )
            if pts:
                ms, acc, err = zip(*pts, strict=True)
                dense = method == "dense"
                style = dict(marker="*", markersize=12, linestyle="none") if dense else dict(marker="o")
                ax.errorbar(ms, acc, yerr=err, label=method, capsize=3, color=colors[method], **style)
        ax.set_title(title)
        ax.set_xlabel("measured latency, median (ms)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    (axes[1] if axes[1].get_legend_handles_labels()[0] else axes[0]).legend(fontsize=8)  # one-shot only: left
    fig.suptitle(
        f"{results['model']} on {dataset}: accuracy vs measured latency "
        f"({results['backend']} {results['precision']}, batch 1)\n{results.get('device') or 'device not recorded'}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        results = compare(config_from(args), log)
    except ItcpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    write_text(out / "results.md", markdown(results))
    plot(results, out / "accuracy_vs_latency.png")
    log(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'accuracy_vs_latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
