"""One plan for two latency targets at once, against single-target plans (issue 16, part 2 evidence).

Each target (backend, threads, batch, SLA as a fraction of its dense latency) is profiled and fitted on its
own (its own cache key). Plans, all from the same taylor group scores:

1. ``vector``: the exact 2-D DP, both predicted budgets at once (``search.vector.solve_pair``);
2. ``A-alone``, ``B-alone``: the 1-D DP for one target's budget only, then checked on the other.

Every plan is built for both targets and measured there, interleaved with that target's dense engine (the SLA
is a fraction of dense, so the measured ratio to dense is what meets or misses it). Accuracy: one-shot
(BatchNorm re-estimated) and after one finetuning epoch on a seeded training subset, on a fixed test subset.
Writes ``results.json`` and ``results.md`` into ``--out``.

Example (the README's two-target example)::

    python bench/vector_targets.py --model cifar_resnet20 \\
        --weights ../shared/weights/cifar10-resnet/resnet20-12fca82f.th --data cifar10:../shared/data/cifar10-jpeg \\
        --target A=onnxruntime,threads=1,batch=1,ratio=0.6 --target B=openvino,threads=2,batch=8,ratio=0.7 \\
        --cache engines --out docs/bench/vector-r20
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itcp_deploy.atomic_io import write_json, write_text  # noqa: E402
from itcp_deploy.engines import EngineOptions, get_backend  # noqa: E402
from itcp_deploy.engines.build import EngineSpec, build_engine  # noqa: E402
from itcp_deploy.profiling.timing import TimingConfig, measure_interleaved, round_ratios  # noqa: E402


@dataclass(frozen=True)
class Target:
    name: str
    backend: str
    threads: int
    batch: int
    ratio: float  # SLA = ratio x this target's dense latency

    @classmethod
    def parse(cls, text: str) -> Target:
        head, *rest = text.split(",")
        name, backend = head.split("=", 1)
        kv = dict(item.split("=", 1) for item in rest)
        return cls(name, backend, int(kv["threads"]), int(kv["batch"]), float(kv["ratio"]))


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
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--test-samples", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def profile_and_fit(args, target: Target, out: Path):
    from itcp_deploy.perfmodel import fit
    from itcp_deploy.profiling.design import DesignConfig
    from itcp_deploy.profiling.profiler import ProfileConfig, profile_model

    config = ProfileConfig(backend=target.backend, cache_dir=args.cache,
                           design=DesignConfig(max_builds=args.max_builds, holdout=args.holdout),
                           engine=EngineOptions(threads=target.threads))
    profile, _ = profile_model(args.model, (target.batch, 3, 32, 32), config, weights=args.weights)
    profile.save(out / f"{target.name}.profile.json")
    perf = fit(profile, force=True)
    perf.save(out / f"{target.name}.perf_model.json")
    return perf


def measure(target: Target, model, space, plans: dict[str, dict], out: Path, timing: TimingConfig) -> dict:
    """Every plan and dense built for ``target``, measured interleaved; median and ratio to dense."""
    from itcp_deploy.pruning import apply_widths

    spec = EngineSpec(backend=target.backend, options=EngineOptions(threads=target.threads))
    shape = (target.batch, 3, 32, 32)
    where = out / "engines" / target.name
    artifacts = {"dense": build_engine(model, shape, where, "dense", spec).artifact}
    for name, plan in plans.items():
        artifacts[name] = build_engine(apply_widths(model, space, plan["widths"]), shape, where, name, spec).artifact
    backend = get_backend(target.backend)
    torch.set_num_threads(target.threads)
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(backend.runner(a, spec.options)) for a in artifacts.values()]
        result = measure_interleaved(runners, None, timing)
    torch.set_num_threads(1)
    return {
        name: {"median_ms": result.stats[i].median_ms, "p90_ms": result.stats[i].p90_ms,
               "ratio": float(np.median(round_ratios(result.samples_ms[i], result.samples_ms[0], 50)))}
        for i, name in enumerate(artifacts)
    }


def accuracies(args, model, space, widths: dict[str, int]) -> dict:
    """One-shot (BN re-estimated) and one-epoch-finetuned top-1 (percent) on a fixed test subset."""
    from torch.utils.data import Subset

    from itcp_deploy.data import load_dataset, make_loader, seeded_indices
    from itcp_deploy.pruning import apply_widths
    from itcp_deploy.train import TrainConfig, evaluate, train
    from itcp_deploy.train.bn import recalibrate_bn

    train_info = load_dataset(args.data, "train", augment=True)
    plain = make_loader(load_dataset(args.data, "train", augment=False), 64, shuffle=True, max_samples=1024)
    test = make_loader(load_dataset(args.data, "test", augment=False), 256, shuffle=False,
                       max_samples=args.test_samples)
    pruned = recalibrate_bn(apply_widths(model, space, widths), plain, num_batches=16)
    one_shot = float(evaluate(pruned, test)["accuracy"])
    subset = seeded_indices(len(train_info.dataset), args.train_subset, 0)
    info = replace(train_info, dataset=Subset(train_info.dataset, [int(i) for i in subset]))
    tuned = copy.deepcopy(pruned)
    train(tuned, info, None, TrainConfig(epochs=1, lr=0.01, batch_size=64, seed=0, device="cpu", quiet=True))
    return {"one_shot": one_shot, "one_epoch": float(evaluate(tuned.cpu().eval(), test)["accuracy"])}


def main(argv: list[str] | None = None) -> None:
    from itcp_deploy.models import create_model
    from itcp_deploy.pruning import group_scores
    from itcp_deploy.search.dp import solve
    from itcp_deploy.search.problem import problem_from
    from itcp_deploy.search.vector import solve_pair, vector_solution

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = [Target.parse(t) for t in args.target]
    torch.set_num_threads(1)
    perf = [profile_and_fit(args, t, out) for t in targets]
    model = create_model(args.model, weights=args.weights).eval()
    space = perf[0].space
    from itcp_deploy.data import load_dataset, make_loader

    loader = make_loader(load_dataset(args.data, "train", augment=False), 64, shuffle=True,
                         max_samples=args.score_samples)
    scores = group_scores(model, space, "taylor", loader=loader)
    problems = [problem_from(p.space, p, scores) for p in perf]
    budgets = [p.dense_ms() * t.ratio for p, t in zip(perf, targets, strict=True)]
    names = [t.name for t in targets]
    solutions = {"vector": solve_pair(problems, budgets, names=names)}
    for i, t in enumerate(targets):
        widths = solve(problems[i], budgets[i]).widths
        solutions[f"{t.name}-alone"] = vector_solution(problems, budgets, widths, exact=True, method="itcp-1d")
    plans = {k: {**asdict(s), "widths": {g: int(w) for g, w in s.widths.items()}} for k, s in solutions.items()}
    timing = TimingConfig(warmup=20, rounds=args.rounds, runs_per_round=args.runs)
    measured = {t.name: measure(t, model, space, plans, out, timing) for t in targets}
    for plan in plans.values():
        plan["accuracy"] = accuracies(args, model, space, plan["widths"])
    write_json(out / "results.json", {"args": vars(args), "targets": [asdict(t) for t in targets],
                                      "budgets_ms": budgets, "plans": plans, "measured": measured})
    write_text(out / "results.md", table(targets, plans, measured))
    print(table(targets, plans, measured))


def table(targets: list[Target], plans: dict, measured: dict) -> str:
    head = "| plan | score | " + " | ".join(
        f"{t.name} ({t.backend}, b{t.batch}, {t.threads}t, SLA {t.ratio}x): predicted ms / measured x dense"
        for t in targets) + " | meets both | one-shot acc | 1-epoch acc |"
    rows = [head, "|" + "---|" * (5 + len(targets))]
    for name, plan in plans.items():
        cells, ok = [], True
        for i, t in enumerate(targets):
            m = measured[t.name][name]
            ok &= m["ratio"] <= t.ratio
            cells.append(f"{plan['costs'][i]:.3f} / **{m['ratio']:.3f}**")
        acc = plan["accuracy"]
        rows.append(f"| {name} | {plan['score']:.2f} | " + " | ".join(cells)
                    + f" | {'yes' if ok else 'no'} | {acc['one_shot']:.2f}% | {acc['one_epoch']:.2f}% |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
