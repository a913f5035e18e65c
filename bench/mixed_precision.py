"""Mixed precision (issue 27), the pieces that stand alone: what INT8 costs each group and whether those costs add
up over pairs (``costs``); the held-out error of the per-precision-pair perf model beside the FP32 one, from the
same design budget (``fit``); the DP's plans over (width, precision) at predicted speed-ups (``plans``).

Not here (it needs ``run --precision mixed``, not wired yet): pruning, finetuning and the engines' measured top-1
and latency at each point (the issue's evidence table).

Usage (ResNet-20, published weights, CIFAR-10 JPEG copy)::

    python bench/mixed_precision.py costs --model cifar_resnet20 \\
        --weights ../shared/weights/cifar10-resnet/resnet20-12fca82f.th --data cifar10:../shared/data/cifar10-jpeg
    python bench/mixed_precision.py fit --model cifar_resnet20 --max-builds 64 --out /tmp/mp
    python bench/mixed_precision.py plans --model cifar_resnet20 --weights ... --data ... --out /tmp/mp
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itcp_deploy.data import load_dataset, make_loader  # noqa: E402
from itcp_deploy.models import create_model  # noqa: E402
from itcp_deploy.perfmodel import fit  # noqa: E402
from itcp_deploy.perfmodel.fit import judge  # noqa: E402
from itcp_deploy.profiling.design import DesignConfig  # noqa: E402
from itcp_deploy.profiling.profiler import ProfileConfig, run_profiling  # noqa: E402
from itcp_deploy.profiling.records import Profile  # noqa: E402
from itcp_deploy.pruning import build_space  # noqa: E402
from itcp_deploy.pruning.int8_cost import Int8Loss, int8_costs  # noqa: E402

SHAPE = (1, 3, 32, 32)


def _batches(spec: str, split: str, n: int, batch: int = 64, seed: int = 0) -> list:
    info = load_dataset(spec, split, augment=False)
    return [(x, y) for x, y in make_loader(info, batch, shuffle=True, seed=seed, max_samples=n)]


def _int8_loss(args: argparse.Namespace):
    model = create_model(args.model, weights=args.weights).eval()
    space = build_space(model, SHAPE, model_spec=args.model)
    calib = torch.cat([x for x, _ in _batches(args.data, "train", args.calib, seed=1)]).numpy()
    held_out = _batches(args.data, "test", args.images)
    return Int8Loss(model, space, calib, held_out)


def costs(args: argparse.Namespace) -> None:
    """Each group's INT8 cost, then pairs: measured together against the sum of each alone."""
    with _int8_loss(args) as loss:
        print(f"FP32 graph loss on {len(loss.labels)} held-out images: {loss.base:.4f}")
        alone = int8_costs(loss)
        raw = {g: loss.increase((g,)) for g in alone}
        for g, c in sorted(alone.items(), key=lambda kv: -kv[1]):
            print(f"  {g:24s} {c:.4f} (raw {raw[g]:+.4f})")
        rng = np.random.default_rng(0)
        pairs = [tuple(p) for p in rng.permutation(list(itertools.combinations(sorted(alone), 2)))[: args.pairs]]
        rows = [(a, b, raw[a] + raw[b], loss.increase((a, b))) for a, b in pairs]
        everything = loss.increase(tuple(alone))
    summed = np.array([r[2] for r in rows])
    measured = np.array([r[3] for r in rows])
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    rho = float(np.corrcoef(ranks(summed), ranks(measured))[0, 1])
    print("| pair | sum alone | together |\n|---|---|---|")
    for a, b, s, m in rows:
        print(f"| {a} + {b} | {s:+.4f} | {m:+.4f} |")
    print(f"pairs: Spearman rank correlation (sum alone vs together) {rho:.3f}; median |together - sum| "
          f"{np.median(np.abs(measured - summed)):.4f}; all groups INT8: {everything:+.4f}, sum of all alone "
          f"{sum(raw.values()):+.4f}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "int8_costs.json").write_text(json.dumps(alone, indent=1))


def fit_both(args: argparse.Namespace) -> None:
    """A mixed and an FP32 profile of the same design budget; each model's held-out error."""
    model = create_model(args.model).eval()  # latency does not depend on the weights
    space = build_space(model, SHAPE, model_spec=args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calib = out / "calib.npz"
    np.savez(calib, inputs=np.random.default_rng(0).standard_normal((32, *SHAPE[1:])).astype(np.float32),
             indices=np.arange(32))
    for precision in args.precisions:
        config = ProfileConfig(precision=precision, cache_dir=args.cache, calib=str(calib),
                               design=DesignConfig(max_builds=args.max_builds, holdout=args.holdout,
                                                   adaptive=args.adaptive))
        profile, summary = run_profiling(model, space, config, judge=judge if args.adaptive else None)
        profile.save(out / f"{precision}.profile.json")
        report = fit(profile, force=True).report
        print(f"{precision}: {len(profile.engines)} engines in {summary.rounds} round(s), noise "
              f"{profile.noise_pct:.2f}%, held-out error "
              f"{report.mape_pct:.2f}% (max {report.max_pct:.2f}%) on {report.n_validation}, bar {report.bar_pct:.1f}%,"
              f" FLOPs model {report.flops_mape_pct:.2f}%")


def plans(args: argparse.Namespace) -> None:
    """The DP's plans over (width, precision) and over widths alone at predicted speed-ups of the dense FP32;
    each mixed plan's engine (pruned, l1 channels, no compensation or finetuning) is built and measured
    interleaved with the dense FP32 engine, and its top-1 agreement with the pruned FP32 model it came from."""
    from itcp_deploy.pruning import group_scores
    from itcp_deploy.search.dp import solve
    from itcp_deploy.search.precision import int8_groups, problem_from_mixed, split_plan
    from itcp_deploy.search.problem import problem_from

    out = Path(args.out)
    perf = fit(Profile.load(out / "mixed.profile.json"), force=True)
    model = create_model(args.model, weights=args.weights).eval()
    scores = group_scores(model, perf.space, "taylor", loader=_batches(args.data, "train", 512))
    cost = json.loads((out / "int8_costs.json").read_text())
    mixed, fp32 = problem_from_mixed(perf.space, perf, scores, cost), problem_from(perf.space, perf, scores)
    dense = perf.predict_ms({})
    test = _batches(args.data, "test", args.images)
    calib = torch.cat([x for x, _ in _batches(args.data, "train", args.calib, seed=1)]).numpy()
    print("| speed-up (predicted) | fp32 plan score | mixed plan score | INT8 groups | predicted ms | measured ms "
          "| measured speed-up | top-1 agreement with its FP32 model | Q/DQ share |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in args.speedups:
        m = solve(mixed, dense / s)
        try:
            f = f"{solve(fp32, dense / s).score:.4f}"
        except Exception as err:  # noqa: BLE001 (an infeasible FP32 budget is a result here)
            f = type(err).__name__
        widths, _ = split_plan(m.widths)
        ms, dense_ms, agree, qdq = _measure(model, perf.space, widths, int8_groups(m.widths), calib, test,
                                            out / f"x{s}")
        print(f"| {s} | {f} | {m.score:.4f} | {len(int8_groups(m.widths))}/{len(perf.space.prunable)} | "
              f"{m.cost:.4f} | {ms:.4f} | {dense_ms / ms:.2f} | {agree:.3f} | {100 * qdq:.1f}% |")


def _measure(model, space, widths, groups, calib, test, folder: Path) -> tuple[float, float, float, float]:
    """The mixed engine's median latency, the dense FP32 engine's (interleaved), the engine's top-1 agreement
    with the pruned FP32 model, and the share of its profiled node time in QuantizeLinear/DequantizeLinear."""
    import onnx

    from itcp_deploy.engines import EngineOptions, get_backend
    from itcp_deploy.engines.build import EngineSpec, build_engine
    from itcp_deploy.engines.mixed import group_layers
    from itcp_deploy.profiling.timing import TimingConfig, measure_interleaved
    from itcp_deploy.pruning import apply_widths

    pruned = apply_widths(model, space, widths).eval()
    np.savez(folder.with_suffix(".npz"), inputs=calib, indices=np.arange(len(calib)))
    spec = EngineSpec("onnxruntime", "mixed", EngineOptions(), str(folder.with_suffix(".npz")),
                      group_layers(space, groups))
    built = build_engine(pruned, SHAPE, folder, "mixed", spec)
    ref = build_engine(model, SHAPE, folder, "dense", EngineSpec())
    backend = get_backend("onnxruntime")
    with backend.runner(built.artifact, EngineOptions()) as a, backend.runner(ref.artifact, EngineOptions()) as b:
        timing = measure_interleaved([a, b], None, TimingConfig(warmup=50, rounds=10, runs_per_round=50))
        nodes = a.layer_times_ms(a.random_feeds(), 200, 20) or {}
        got = np.concatenate([a.infer({"input": x[i:i + 1].numpy()})["output"] for x, _ in test
                              for i in range(len(x))])
    with torch.no_grad():
        want = torch.cat([pruned(x) for x, _ in test]).numpy()
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    ops = {n.name: n.op_type for n in onnx.load(built.artifact / "model.opt.onnx").graph.node}
    qdq = sum(ms for name, ms in nodes.items() if ops.get(name) in ("QuantizeLinear", "DequantizeLinear"))
    return timing.stats[0].median_ms, timing.stats[1].median_ms, agree, qdq / max(sum(nodes.values()), 1e-12)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("costs", "fit", "plans"))
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--weights")
    p.add_argument("--data", default="cifar10:../shared/data/cifar10-jpeg")
    p.add_argument("--calib", type=int, default=128, help="calibration images (training split)")
    p.add_argument("--images", type=int, default=512, help="held-out images (test split)")
    p.add_argument("--pairs", type=int, default=12)
    p.add_argument("--out", default="")
    p.add_argument("--cache", default="engines")
    p.add_argument("--max-builds", type=int, default=64)
    p.add_argument("--holdout", type=int, default=12)
    p.add_argument("--precisions", nargs="+", default=["mixed", "fp32"])
    p.add_argument("--adaptive", action="store_true", help="profile in rounds until the held-out bar is met")
    p.add_argument("--speedups", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    args = p.parse_args(argv)
    {"costs": costs, "fit": fit_both, "plans": plans}[args.what](args)


if __name__ == "__main__":
    main()
