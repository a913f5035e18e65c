"""One plan for two latency targets at once, against single-target plans (issue 16, part 2 evidence).

Each target (backend, threads, batch, SLA as a fraction of its dense latency) is profiled and fitted on its
own (its own cache key). Plans, all from the same taylor group scores:

1. ``vector``: the exact 2-D DP, both predicted budgets at once (``search.vector.solve_pair``);
2. ``A-alone``, ``B-alone``: the 1-D DP for one target's budget only, then checked on the other.

Every plan is built for both targets and measured there, interleaved with that target's dense engine (the SLA
is a fraction of dense, so the measured ratio to dense is what meets or misses it). Accuracy: one-shot (the
run's default: taylor importance, least-squares compensation, BatchNorm re-estimated) and after one finetuning
epoch (all training images unless ``--train-subset``), on the test split (all unless ``--test-samples``).
Writes ``results.json`` and ``results.md`` into ``--out``; each step's result is saved as it finishes.

Example (docs/benchmarks.md, section 9; resumable: a rerun on the same --out skips every finished step)::

    python bench/vector_targets.py --model cifar_resnet20 \\
        --weights ../shared/weights/cifar10-resnet/resnet20-12fca82f.th --data cifar10:../shared/data/cifar10-jpeg \\
        --target A=onnxruntime,threads=1,batch=1,ratio=0.6 --target B=openvino,threads=2,batch=8,ratio=0.7 \\
        --cache engines --out runs/vector-r20
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itcp_deploy.atomic_io import write_json, write_text  # noqa: E402
from itcp_deploy.engines import EngineOptions  # noqa: E402
from itcp_deploy.engines.build import EngineSpec, build_engine  # noqa: E402
from itcp_deploy.pipeline.config import DeployTarget  # noqa: E402
from itcp_deploy.pipeline.meter import TargetMeter  # noqa: E402
from itcp_deploy.profiling.timing import TimingConfig  # noqa: E402
from itcp_deploy.target import LatencyTarget  # noqa: E402


def parse_target(text: str) -> DeployTarget:
    """``NAME=BACKEND,threads=T,batch=N,ratio=R``: SLA = R x this target's dense latency."""
    head, *rest = text.split(",")
    name, backend = head.split("=", 1)
    kv = dict(item.split("=", 1) for item in rest)
    return DeployTarget(name, EngineSpec(backend, options=EngineOptions(threads=int(kv["threads"]))),
                        (int(kv["batch"]), 3, 32, 32), LatencyTarget(speedup=1.0 / float(kv["ratio"])))


def ratio_of(target: DeployTarget) -> float:
    return 1.0 / float(target.latency.speedup)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--weights")
    p.add_argument("--data", required=True)
    p.add_argument("--target", action="append", required=True, help="NAME=BACKEND,threads=T,batch=N,ratio=R")
    p.add_argument("--cache", default="engines")
    p.add_argument("--max-builds", type=int, default=32)
    p.add_argument("--holdout", type=int, default=10)
    p.add_argument("--score-samples", type=int, default=1024)
    p.add_argument("--train-subset", type=int, default=None, help="finetuning images per epoch (all if unset)")
    p.add_argument("--test-samples", type=int, default=None, help="test images (all if unset)")
    p.add_argument("--margin", type=float, default=0.03, help="safety margin below each SLA (run's default)")
    p.add_argument("--train-threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--out", required=True)
    p.add_argument("--remeasure", action="store_true",
                   help="measure every plan again (--rounds) into measured-again.json; nothing else")
    return p.parse_args(argv)


def profile_and_fit(args, target: DeployTarget, out: Path):
    from itcp_deploy.perfmodel import fit
    from itcp_deploy.profiling.design import DesignConfig
    from itcp_deploy.profiling.profiler import ProfileConfig, profile_model

    config = ProfileConfig(backend=target.engine.backend, cache_dir=args.cache,
                           design=DesignConfig(max_builds=args.max_builds, holdout=args.holdout),
                           engine=target.engine.options)
    profile, _ = profile_model(args.model, target.input_shape, config, weights=args.weights)
    profile.save(out / f"{target.name}.profile.json")
    perf = fit(profile, force=True)
    perf.save(out / f"{target.name}.perf_model.json")
    return perf


def measure(target: DeployTarget, model, space, plans: dict[str, dict], out: Path, timing: TimingConfig) -> dict:
    """Every plan and dense built for ``target``, measured interleaved; median and ratio to dense."""
    from itcp_deploy.pruning import apply_widths

    spec, shape = target.engine, target.input_shape
    where = out / "engines" / target.name
    dense = build_engine(model, shape, where, "dense", spec).artifact
    artifacts = {name: build_engine(apply_widths(model, space, plan["widths"]), shape, where, name, spec).artifact
                 for name, plan in plans.items()}
    torch.set_num_threads(target.engine.options.threads)
    measured = TargetMeter(spec, target.latency, dense, timing).measure_all(list(artifacts.values()))
    torch.set_num_threads(1)
    out = {"dense": {"median_ms": measured[0].dense.median_ms, "p90_ms": measured[0].dense.p90_ms, "ratio": 1.0}}
    for name, m in zip(artifacts, measured, strict=True):
        out[name] = {"median_ms": m.latency.stats.median_ms, "p90_ms": m.latency.stats.p90_ms, "ratio": m.ratio}
    return out


def pruned_one_shot(args, model, space, widths: dict[str, int]):
    """The run's default one-shot recipe (``prune_one_shot``): taylor channel importance, prune, least-squares
    compensation, BatchNorm re-estimation (20 batches)."""
    from itcp_deploy.data import load_dataset, make_loader
    from itcp_deploy.pruning import channel_importance
    from itcp_deploy.pruning.compensate import OneShot, prune_one_shot

    plain = make_loader(load_dataset(args.data, "train", augment=False), 64, shuffle=True, max_samples=1280)
    batches = list(plain)
    imp = channel_importance(model, space, "taylor", loader=batches)
    return prune_one_shot(model, space, widths, imp, OneShot(batches, plain, 20))[0]


def accuracies(args, model, space, widths: dict[str, int], path: Path) -> dict:
    """One-shot (compensated, BN re-estimated) and one-epoch-finetuned top-1 (percent) on the test split;
    each saved to ``path`` as soon as it is known (a rerun resumes)."""
    import json

    from torch.utils.data import Subset

    from itcp_deploy.data import load_dataset, make_loader, seeded_indices
    from itcp_deploy.train import TrainConfig, evaluate, train

    done = json.loads(path.read_text()) if path.exists() else {}
    if "one_epoch" in done or ("one_shot" in done and args.epochs == 0):
        return done
    test = make_loader(load_dataset(args.data, "test", augment=False), 256, shuffle=False,
                       max_samples=args.test_samples)
    torch.manual_seed(0)
    pruned = pruned_one_shot(args, model, space, widths)
    done["one_shot"] = float(evaluate(pruned, test)["accuracy"])
    write_json(path, done)
    if args.epochs == 0:
        return done
    info = load_dataset(args.data, "train", augment=True)
    if args.train_subset:
        subset = seeded_indices(len(info.dataset), args.train_subset, 0)
        info = replace(info, dataset=Subset(info.dataset, [int(i) for i in subset]))
    train(pruned, info, None, TrainConfig(epochs=1, lr=0.01, batch_size=64, seed=0, device="cpu", quiet=True))
    done["one_epoch"] = float(evaluate(pruned.cpu().eval(), test)["accuracy"])
    write_json(path, done)
    return done


def solve_plans(problems, budgets: list[float], targets: list[DeployTarget]) -> dict:
    """The vector plan and each target's own 1-D plan, all judged on both predicted budgets."""
    from itcp_deploy.search.dp import solve
    from itcp_deploy.search.vector import solve_pair, vector_solution

    solutions = {"vector": solve_pair(problems, budgets, names=[t.name for t in targets])}
    for i, t in enumerate(targets):
        widths = solve(problems[i], budgets[i]).widths
        solutions[f"{t.name}-alone"] = vector_solution(problems, budgets, widths, exact=True, method="itcp-1d")
    return {k: {**asdict(s), "widths": {g: int(w) for g, w in s.widths.items()}} for k, s in solutions.items()}


def planned(args, targets: list[DeployTarget], out: Path):
    """Profiles, fits, scores and plans, each step saved to ``out`` and reused on a rerun."""
    import json

    from itcp_deploy.data import load_dataset, make_loader
    from itcp_deploy.models import create_model
    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.pruning import group_scores
    from itcp_deploy.search.problem import problem_from

    perf = [PerfModel.load(out / f"{t.name}.perf_model.json") if (out / f"{t.name}.perf_model.json").exists()
            else profile_and_fit(args, t, out) for t in targets]
    model = create_model(args.model, weights=args.weights).eval()
    space = perf[0].space
    if (out / "plans.json").exists():
        saved = json.loads((out / "plans.json").read_text())
        return model, space, saved["budgets_ms"], saved["plans"]
    loader = make_loader(load_dataset(args.data, "train", augment=False), 64, shuffle=True,
                         max_samples=args.score_samples)
    scores = group_scores(model, space, "taylor", loader=loader)
    problems = [problem_from(p.space, p, scores) for p in perf]
    # the run's aim: each SLA (ratio x predicted dense) less the default 3% safety margin
    budgets = [p.dense_ms() * ratio_of(t) * (1 - args.margin) for p, t in zip(perf, targets, strict=True)]
    plans = solve_plans(problems, budgets, targets)
    write_json(out / "plans.json", {"budgets_ms": budgets, "plans": plans})
    return model, space, budgets, plans


def main(argv: list[str] | None = None) -> None:
    import json

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = [parse_target(t) for t in args.target]
    torch.set_num_threads(1)
    model, space, budgets, plans = planned(args, targets, out)
    if args.remeasure:  # a second, independent interleaved measurement: how far two runs of one plan differ
        timing = TimingConfig(warmup=20, rounds=args.rounds, runs_per_round=args.runs)
        again = {t.name: measure(t, model, space, plans, out / "again", timing) for t in targets}
        write_json(out / "measured-again.json", again)
        print(json.dumps({t: {k: round(v["ratio"], 3) for k, v in m.items()} for t, m in again.items()}))
        return
    if (out / "measured.json").exists():
        measured = json.loads((out / "measured.json").read_text())
    else:
        timing = TimingConfig(warmup=20, rounds=args.rounds, runs_per_round=args.runs)
        measured = {t.name: measure(t, model, space, plans, out, timing) for t in targets}
        write_json(out / "measured.json", measured)
    torch.set_num_threads(args.train_threads)
    for stage in ("one-shot", "epoch"):  # every plan's one-shot first: partial results stay useful
        for plan in plans.values():
            same = next(k for k, p in plans.items() if p["widths"] == plan["widths"])
            saved = dict(vars(args), epochs=0 if stage == "one-shot" else 1)
            plan["accuracy"] = accuracies(argparse.Namespace(**saved), model, space, plan["widths"],
                                          out / f"accuracy-{same}.json")
            write_json(out / "results.json", {"args": vars(args), "targets": args.target, "budgets_ms": budgets,
                                              "plans": plans, "measured": measured})
            write_text(out / "results.md", table(targets, plans, measured))
    print(table(targets, plans, measured))


def table(targets: list[DeployTarget], plans: dict, measured: dict) -> str:
    head = "| plan | score | " + " | ".join(
        f"{t.name} ({t.engine.backend}, b{t.input_shape[0]}, {t.engine.options.threads}t, SLA {ratio_of(t):g}x): "
        "predicted ms / measured x dense"
        for t in targets) + " | meets both | one-shot acc | 1-epoch acc |"
    rows = [head, "|" + "---|" * (5 + len(targets))]
    for name, plan in plans.items():
        cells, ok = [], True
        for i, t in enumerate(targets):
            m = measured[t.name][name]
            ok &= m["ratio"] <= ratio_of(t)
            cells.append(f"{plan['costs'][i]:.3f} / **{m['ratio']:.3f}**")
        acc = {k: f"{v:.2f}%" for k, v in plan.get("accuracy", {}).items()}
        rows.append(f"| {name} | {plan['score']:.2f} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} | "
                    f"{acc.get('one_shot', 'pending')} | {acc.get('one_epoch', 'pending')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
