"""Is a plan tuned for one engine worse on another? ITCP's plans for ONNX Runtime and OpenVINO, each measured
on both engines (issue 16).

For each engine E: E's perf model and the taylor group scores give E's own plan at ``dense predicted / speed-up``.
Both plans are built for both engines and measured there, interleaved. Then, on each engine E, E's own plan is
solved again at the foreign plan's measured latency (the foreign/own ratio measured on E, times the own plan's
prediction, then corrected from each measurement as the closed loop does) and measured with the others: at equal
latency on E, which plan keeps more score? Dense engines are left out: on the loaded shared machine ONNX Runtime's
dense ResNet-56 took 6.5 ms a run against 2.6 ms of kernel time (session profile), a gap its pruned engines did not
show, which would skew any ratio to dense. One-shot accuracy (BatchNorm re-estimated, no finetuning) on a fixed test
subset is reported beside the score. Writes ``results.json`` and ``results.md`` into ``--out``.

Example (ResNet-56, the profiles of bench/profile_zoo.sh)::

    python bench/cross_engine.py --model cifar_resnet56 \\
        --weights ../shared/weights/cifar10-resnet/resnet56-4bfd9763.th --data cifar10:../shared/data/cifar10-jpeg \\
        --perf-model onnxruntime=bench/results/r56.perf_model.json \\
        --perf-model openvino=bench/results/r56-openvino.perf_model.json --speedup 2 --out docs/bench/cross-engine
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itcp_deploy.atomic_io import write_json, write_text  # noqa: E402
from itcp_deploy.engines import EngineOptions, get_backend  # noqa: E402
from itcp_deploy.engines.build import EngineSpec, build_engine  # noqa: E402
from itcp_deploy.errors import InfeasibleError  # noqa: E402
from itcp_deploy.perfmodel.model import PerfModel  # noqa: E402
from itcp_deploy.pipeline.planning import SearchConfig, search_inputs  # noqa: E402
from itcp_deploy.profiling.timing import TimingConfig, measure_interleaved, round_ratios  # noqa: E402
from itcp_deploy.search.baselines import run_method  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--weights")
    p.add_argument("--data", required=True, help="scores (train split) and one-shot accuracy (test split)")
    p.add_argument("--perf-model", action="append", required=True, metavar="BACKEND=PATH",
                   help="exactly two: one fitted perf model per backend, same model and space")
    p.add_argument("--speedup", type=float, default=2.0)
    p.add_argument("--score-samples", type=int, default=1024)
    p.add_argument("--test-samples", type=int, default=2000, help="one-shot accuracy subset (0 = skip)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def own_plan(inputs, perf: PerfModel, budget_ms: float) -> dict:
    solution = run_method("itcp", replace(inputs, perf_model=perf), budget_ms)
    return {"widths": solution.widths, "score": float(solution.score)}


def measure(backend: str, out: Path, model, space, plans: dict[str, dict], timing: TimingConfig) -> dict:
    """Build every plan for ``backend``, measure all interleaved; median and ratio to the backend's own plan."""
    from itcp_deploy.pruning import apply_widths

    spec = EngineSpec(backend=backend, options=EngineOptions(threads=1))
    shape = tuple(space.input_shape)
    artifacts = {}
    for name, plan in plans.items():
        pruned = apply_widths(model, space, plan["widths"])
        artifacts[name] = build_engine(pruned, shape, out / backend, name, spec).artifact
    names = list(artifacts)
    b = get_backend(backend)
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(b.runner(artifacts[n], spec.options)) for n in names]
        result = measure_interleaved(runners, None, timing)
    own = result.samples_ms[names.index(f"{backend}-plan")]
    return {
        n: {"median_ms": result.stats[i].median_ms, "p90_ms": result.stats[i].p90_ms,
            "ratio": float(np.median(round_ratios(result.samples_ms[i], own, 50)))}
        for i, n in enumerate(names)
    }


def equal_latency_plan(e: str, foreign: str, plans: dict, first: dict, ctx: tuple, rounds: int = 3) -> dict:
    """E's own plan at the foreign plan's latency on E: solved at the measured ratio times the own plan's
    prediction, then corrected from each interleaved measurement (the closed loop's step) until within 3%."""
    inputs, perf, model, out, timing = ctx
    name = f"{e}-plan@{foreign}-plan-latency"
    budget = perf.predict_ms(plans[f"{e}-plan"]["widths"]) * first[f"{foreign}-plan"]["ratio"]
    measured = first
    for _ in range(rounds):
        try:
            plans[name] = own_plan(inputs, perf, budget)
        except InfeasibleError as err:  # the foreign plan is faster here than any plan e's perf model knows
            print(f"{name}: {err}")
            return measured
        own = {k: v for k, v in plans.items() if k.endswith("-plan") or k == name}
        measured = measure(e, out, model, inputs.space, own, timing)
        off = measured[name]["ratio"] / measured[f"{foreign}-plan"]["ratio"]
        plans[name]["off_by"] = off
        if abs(off - 1) <= 0.03:
            break
        budget = perf.predict_ms(plans[name]["widths"]) / off
    return measured


def one_shot_accuracy(model, space, widths, data: str, samples: int) -> float | None:
    if samples <= 0:
        return None
    from itcp_deploy.data import load_dataset, make_loader
    from itcp_deploy.pruning import apply_widths
    from itcp_deploy.train import evaluate
    from itcp_deploy.train.bn import recalibrate_bn

    pruned = apply_widths(model, space, widths)
    train = make_loader(load_dataset(data, "train", augment=False), 64, shuffle=True, max_samples=1024)
    recalibrate_bn(pruned, train, num_batches=16)
    test = make_loader(load_dataset(data, "test", augment=False), 256, shuffle=False, max_samples=samples)
    return float(evaluate(pruned, test)["accuracy"])  # percent


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = dict(s.split("=", 1) for s in args.perf_model)
    perf = {k: PerfModel.load(v) for k, v in paths.items()}
    a, b = list(perf)
    torch.set_num_threads(1)
    inputs = search_inputs(SearchConfig(model=args.model, perf_model=paths[a], data=args.data,
                                        weights=args.weights, max_samples=args.score_samples))
    from itcp_deploy.models import create_model

    model = create_model(args.model, weights=args.weights).eval()
    plans = {f"{e}-plan": own_plan(inputs, perf[e], perf[e].dense_ms() / args.speedup) for e in (a, b)}
    timing = TimingConfig(warmup=20, rounds=args.rounds, runs_per_round=args.runs)
    # first pass: the foreign plan's latency on each engine; then each engine's own plan at that latency
    first = {e: measure(e, out, model, inputs.space, plans, timing) for e in (a, b)}
    measured = {}
    for e, foreign in ((a, b), (b, a)):
        measured[e] = equal_latency_plan(e, foreign, plans, first[e], (inputs, perf[e], model, out, timing))
    for plan in plans.values():
        plan["predicted_ms"] = {e: perf[e].predict_ms(plan["widths"]) for e in (a, b)}
        plan["one_shot_accuracy"] = one_shot_accuracy(model, inputs.space, plan["widths"], args.data,
                                                      args.test_samples)
    write_json(out / "results.json", {"args": vars(args), "plans": plans, "measured": measured})
    write_text(out / "results.md", table(plans, measured))
    print(table(plans, measured))


def table(plans: dict, measured: dict) -> str:
    engines = list(measured)
    head = "| plan | score | one-shot acc | " + " | ".join(
        f"{e}: predicted / measured ms (x {e}'s own plan)" for e in engines) + " |"
    rows = [head, "|" + "---|" * (3 + len(engines))]
    for name, plan in plans.items():
        acc = plan["one_shot_accuracy"]
        cells = []
        for e in engines:
            m = measured[e].get(name)
            got = f"{m['median_ms']:.3f} ({m['ratio']:.3f})" if m else "-"
            cells.append(f"{plan['predicted_ms'][e]:.3f} / {got}")
        rows.append(f"| {name} | {plan['score']:.2f} | {'-' if acc is None else f'{acc:.2f}%'} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n\n" + json.dumps({e: len(measured[e]) for e in engines}) + " engines measured\n"


if __name__ == "__main__":
    main()
