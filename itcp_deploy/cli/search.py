"""CLI commands of the search stage: ``fit`` (perf model), ``search`` (width plan), ``pareto`` (plot)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from itcp_deploy.cli.app import app
from itcp_deploy.errors import UsageError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable output on stdout.")]
PerfModelOpt = Annotated[
    Path, typer.Option("--perf-model", help="perf_model.json written by `itcp-deploy fit`.")
]
CriterionOpt = Annotated[
    str, typer.Option("--criterion", help="Group score: taylor, sensitivity, l1-fraction.")
]
DataOpt = Annotated[
    str | None, typer.Option("--data", help="Data spec for data-driven scores (taylor, ...).")
]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help="Weights file for MODEL.")]
BinsOpt = Annotated[int, typer.Option("--bins", min=10, help="Budget bins of the DP (resolution).")]
TrustOpt = Annotated[bool, typer.Option("--trust-code", help="Allow MODEL specs that execute code.")]


def _inputs(model: str, perf_model: Path, weights: str | None, data: str | None) -> dict[str, str | Path | None]:
    """The files ``search`` and ``pareto`` read, which their ``-o`` must never overwrite."""
    return {"model file": model, "perf model": perf_model, "weights": weights,
            "data": data.partition(":")[2] or data if data else None}


@app.command("fit")
def fit_cmd(
    profile: Annotated[Path, typer.Argument(help="profile.json written by `itcp-deploy profile-engines`.")],
    output: Annotated[Path, typer.Option("-o", "--out", help="Where to write perf_model.json.")],
    method: Annotated[str, typer.Option("--method", help="table (staircase tables) or flops.")] = "table",
    force: Annotated[
        bool, typer.Option("--force", help="Keep a fit whose held-out error is too high.")
    ] = False,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Print which layers carry the held-out error (also before a rejection).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fit the perf model on a profile and report its held-out error next to the noise floor and FLOPs."""
    from dataclasses import asdict

    from rich.table import Table

    from itcp_deploy.cli.common import console, emit_json
    from itcp_deploy.perfmodel.fit import fit_file

    def show(report, rows) -> None:
        if explain:
            from itcp_deploy.perfmodel.explain import explain_lines

            console.print("\n".join(["held-out error by layer (predicted vs profiled, mean over engines):",
                                       *explain_lines(rows)]), markup=False, highlight=False, soft_wrap=True)

    model = fit_file(profile, output, method=method, force=force, explain=show)
    report = model.report
    table = Table(title=f"perf model ({report.validation}: {report.n_validation} engines)")
    for col in ("model", "mean abs err %", "max abs err %"):
        table.add_column(col)
    for name, mean, worst in report.rows():
        table.add_row(name, f"{mean:.2f}", "" if math.isnan(worst) else f"{worst:.2f}")
    console.print(table)
    console.print(f"wrote {output}" + (" (FORCED past the rejection threshold)" if report.rejected else ""))
    if json_out:
        emit_json({"output": str(output), "report": asdict(report)})


@app.command("search")
def search_cmd(
    model: Annotated[
        str, typer.Argument(help="Model spec (zoo name, torchvision:NAME, path, module:factory).")
    ],
    perf_model: PerfModelOpt,
    output: Annotated[Path, typer.Option("-o", "--out", help="Where to write widths.json.")],
    sla_ms: Annotated[float | None, typer.Option("--sla-ms", help="Latency budget in ms.")] = None,
    speedup: Annotated[
        float | None, typer.Option("--speedup", help="Budget = the perf model's predicted dense latency / S.")
    ] = None,
    criterion: CriterionOpt = "taylor",
    method: Annotated[
        str, typer.Option("--method", help="itcp, uniform, flops, global-magnitude, knapsack-linear.")
    ] = "itcp",
    data: DataOpt = None,
    weights: WeightsOpt = None,
    bins: BinsOpt = 1000,
    trust_code: TrustOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Choose every group's width: the best score whose predicted latency meets the budget."""
    from dataclasses import asdict

    from itcp_deploy.cli.common import console, emit_json
    from itcp_deploy.cli.shapes import parse_target
    from itcp_deploy.paths import check_outputs
    from itcp_deploy.pipeline.planning import SearchConfig, plan_widths

    check_outputs({"-o": output}, _inputs(model, perf_model, weights, data))

    config = SearchConfig(
        model,
        str(perf_model),
        parse_target(sla_ms, speedup),
        criterion,
        method,
        data,
        weights,
        bins,
        trust_code=trust_code,
    )
    plan = plan_widths(config, log=console.print)
    plan.save(output)
    console.print(
        f"{method}: predicted {plan.predicted_ms:.4f} ms <= budget {plan.budget_ms:.4f} ms, "
        f"score {plan.score:.4g}; wrote {output}"
    )
    if plan.int8_groups:
        console.print(f"INT8 groups ({len(plan.int8_groups)}): {', '.join(plan.int8_groups)}; the rest FP32")
    if json_out:
        emit_json(asdict(plan))


@app.command("pareto")
def pareto_cmd(
    model: Annotated[str, typer.Argument(help="Model spec.")],
    perf_model: PerfModelOpt,
    output: Annotated[Path, typer.Option("-o", "--out", help="Where to write the PNG.")],
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated search methods.")
    ] = "itcp,uniform,flops,global-magnitude,knapsack-linear",
    points: Annotated[int, typer.Option("--points", min=2, help="Budgets per baseline.")] = 12,
    criterion: CriterionOpt = "taylor",
    data: DataOpt = None,
    weights: WeightsOpt = None,
    bins: BinsOpt = 1000,
    trust_code: TrustOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Plot the predicted Pareto fronts (latency vs score) of ITCP and the baselines."""
    from itcp_deploy.cli.common import console, emit_json
    from itcp_deploy.paths import check_outputs
    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.pipeline.planning import SearchConfig, pareto_fronts
    from itcp_deploy.search.plot import plot_fronts

    check_outputs({"-o": output}, _inputs(model, perf_model, weights, data))
    method_names = [m.strip() for m in methods.split(",") if m.strip()]
    if not method_names:
        raise UsageError(f"--methods {methods!r} names no method",
                         "pass comma-separated methods, e.g. --methods itcp,uniform,flops")

    config = SearchConfig(
        model,
        str(perf_model),
        criterion=criterion,
        data=data,
        weights=weights,
        bins=bins,
        trust_code=trust_code,
    )
    fronts, dense_ms = pareto_fronts(config, method_names, points=points)
    device = PerfModel.load(perf_model).meta.get("device", "device unknown")
    plot_fronts(fronts, output, title=f"{model}: predicted Pareto fronts ({criterion})\n{device}",
                dense_ms=dense_ms)
    console.print(f"wrote {output}")
    if json_out:
        emit_json({"output": str(output), "dense_ms": dense_ms, "fronts": fronts})
