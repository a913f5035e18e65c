"""The run report: ``report.json`` for machines, ``report.md`` for people, and its three plots.

Plain data in, files out; ``pipeline/stages.py`` fills :class:`RunReport`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from itcp_deploy.atomic_io import atomic_path, write_json, write_text
from itcp_deploy.pipeline.run_dir import RunFolder


@dataclass
class RunReport:
    """What ``itcp-deploy run`` promises in ``report.json``."""

    model: str
    backend: str
    precision: str
    device: str
    sla_ms: float
    percentile: int
    dense_latency_ms: float
    predicted_latency_ms: float
    final_latency_ms: dict[str, float]  # median_ms, p90_ms, p99_ms
    final_over_dense: float
    met_sla: bool
    measured_over_sla: float
    accuracy_dense: float | None
    accuracy_pruned_bn: float | None
    accuracy_final: float | None
    macs_dense: int
    macs_final: int
    params_dense: int
    params_final: int
    rounds: list[dict]
    widths: dict[str, int]
    full_widths: dict[str, int]
    criterion: str
    method: str
    epochs: int
    perf_model_error: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: dict[str, float] = field(default_factory=dict)
    # the levers the run used: layers kept at full width, least-squares compensation (and the layers it
    # refit), block removal (width 0 for residual branches)
    ignore_layers: list[str] = field(default_factory=list)
    compensate: bool = True
    compensated_layers: list[str] = field(default_factory=list)
    block_removal: bool = True
    # one entry per target (name, engine, SLA, predicted, measured, binds, ...); the one-line fields above
    # are the first target's, ``met_sla`` is "every target met" and ``measured_over_sla`` the worst target's
    targets: list[dict] = field(default_factory=list)
    # a mixed-precision plan's groups at INT8 (``--precision mixed``); every other group runs FP32
    int8_groups: list[str] = field(default_factory=list)

    def save(self, folder: RunFolder) -> None:
        write_json(folder.report_json, asdict(self))
        write_text(folder.report_md, self.markdown())

    def levers_line(self) -> str:
        """Which levers were on: ignored layers, compensation, block removal."""
        comp = f"on ({len(self.compensated_layers)} layer(s) refit)" if self.compensate else "off"
        kept = ", ".join(f"`{g}`" for g in self.ignore_layers) or "none"
        return (f"Compensation {comp}; block removal {'allowed' if self.block_removal else 'off'}; "
                f"layers kept at full width: {kept}.")

    def markdown(self) -> str:
        f = self.final_latency_ms
        acc = (lambda a: "n/a" if a is None else f"{a:.2f}%")  # noqa: E731
        lines = [
            f"# itcp-deploy run: {self.model}",
            "",
            f"Backend `{self.backend}` ({self.precision}) on {self.device}; "
            f"SLA {self.sla_ms:.4f} ms at p{self.percentile}; "
            f"criterion `{self.criterion}`, method `{self.method}`, {self.epochs} finetuning epoch(s).",
            "",
            self.levers_line(),
            "",
            *([f"{len(self.targets)} targets, one set of weights: the table and the SLA line below are the first "
               f"target's (`{self.targets[0]['name']}`); every target is in the Targets table.", ""]
              if len(self.targets) > 1 else []),
            "| | dense | pruned |",
            "|---|---|---|",
            f"| latency median (ms) | {self.dense_latency_ms:.4f} | {f['median_ms']:.4f} "
            f"(p90 {f['p90_ms']:.4f}, p99 {f['p99_ms']:.4f}) |",
            f"| predicted (ms) | | {self.predicted_latency_ms:.4f} |",
            f"| accuracy | {acc(self.accuracy_dense)} | {acc(self.accuracy_final)} "
            f"(after pruning + BN re-estimation, before finetuning: {acc(self.accuracy_pruned_bn)}) |",
            *engine_accuracy_rows(self.targets),
            f"| MACs | {self.macs_dense:,} | {self.macs_final:,} |",
            f"| parameters | {self.params_dense:,} | {self.params_final:,} |",
            "",
            f"**SLA {'met' if self.met_sla else 'MISSED'}**: measured/SLA = {self.measured_over_sla:.3f}, "
            f"pruned/dense latency = {self.final_over_dense:.3f} (measured interleaved; with --speedup the SLA "
            "is judged on this ratio, so machine drift between stages cancels).",
        ]
        lines += split_markdown(self.targets[0]) if self.targets and "fixed_ms" in self.targets[0] else []
        lines += targets_markdown(self.targets, self.rounds)
        if self.perf_model_error:
            lines += ["", "## Performance model", "",
                      "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in self.perf_model_error.items()]
            lines += honesty_markdown(self.targets)
        lines += ["", "## Widths", "", "| group | kept | full | precision |", "|---|---|---|---|"]
        lines += [f"| {g} | {self.widths[g] or '0 (block removed)'} | {self.full_widths[g]} | "
                  f"{'int8' if g in self.int8_groups else 'fp32' if self.int8_groups else self.precision} |"
                  for g in self.widths]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        if len(self.targets) == 1:  # several targets: each has its own perf model; no single front to plot
            lines += ["", "Plots: `latency_pred_vs_measured.png`, `pareto.png`, `widths.png`."]
        lines.append("")
        return "\n".join(lines)


def levers_fields(config, finetune: dict) -> dict:
    """The report's record of the levers a run used (``config``: its RunConfig; ``finetune``: the finetune
    stage's result, which names the layers compensation refit)."""
    return {"ignore_layers": list(config.ignore_layers), "compensate": config.compensate,
            "compensated_layers": list(finetune.get("compensated_layers", [])), "block_removal": config.block_removal}


def split_markdown(target: dict) -> list[str]:
    """Where the dense engine's time goes (perf model, scaled to its measured latency) and the fastest plan."""
    return ["", f"Of the dense engine's {target['dense_ms']:.4f} ms, about {target['fixed_ms']:.4f} ms is fixed (work "
            f"outside any layer, e.g. a detector's resize, box decoding and NMS, and layers kept at full width) and "
            f"{target['prunable_ms']:.4f} ms is the prunable network; the fastest plan runs in about "
            f"{target['minimum_ms']:.4f} ms, so an SLA below that is out of reach."]


def engine_accuracy_rows(targets: list[dict]) -> list[str]:
    """The top-1 of the engines themselves (what ships: INT8/FP16 included), per target, and their agreement."""
    rows = []
    for t in targets:
        a = t.get("engine_accuracy")
        if a:
            who = f" `{t['name']}`" if len(targets) > 1 else ""
            source = ("" if "agreement_with_source" not in a else
                      f", with its FP32 model on {100 * a['agreement_with_source']:.1f}%")
            rows.append(f"| engine{who} top-1, measured on the engine ({a['images']} images) | "
                        f"{a['dense_engine_top1']:.2f}% | {a['engine_top1']:.2f}% (agrees with the dense engine on "
                        f"{100 * a['agreement_with_dense']:.1f}%{source}) |")
    return rows


def honesty_markdown(targets: list[dict]) -> list[str]:
    """Each target's held-out error beside the error on the first plan the search chose (issue 24)."""
    rows = [t for t in targets if t.get("perf_err_pct") is not None]
    if not rows:
        return []
    lines = ["", "Where the search used the model: held-out engines are random plans, the search's plans sit where "
             "the model looks cheapest.", "",
             "| target | held-out mean error % | noise % | first plan measured/predicted | first plan measured/SLA "
             "| plan rounds |", "|---|---|---|---|---|---|"]
    for t in rows:
        plan = t.get("first_plan_measured_over_predicted")
        lines.append(f"| {t['name']} | {t['perf_err_pct']:.2f}{' (fit rejected)' if t.get('fit_rejected') else ''} "
                     f"| {_num(t.get('noise_pct'), '.2f')} | {_num(plan, '.3f')} | "
                     f"{_num(t.get('first_plan_over_sla'), '.3f')} | {t.get('plan_rounds', 'n/a')} |")
    return lines


def _num(value: float | None, digits: str = ".4f") -> str:
    return "n/a" if value is None else format(value, digits)  # None: a peer method has no latency model or score


def targets_markdown(targets: list[dict], rounds: list[dict]) -> list[str]:
    """Every target's SLA, predicted and measured latency, verdict and whether it binds; then the rounds."""
    lines = ["", "## Targets", "",
             "| target | engine | SLA (ms) | predicted (ms) | measured (ms) | measured/SLA | met | binds | "
             "engine file |", "|---|---|---|---|---|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['name']} | {t['backend']} {t['precision']}, {t['input_shape']}, {t['threads']}t, "
                     f"p{t['percentile']} | {t['sla_ms']:.4f} | {_num(t['predicted_ms'])} | {t['measured_ms']:.4f} | "
                     f"{t['measured_over_sla']:.3f} | {'yes' if t['met'] else 'NO'} | "
                     f"{'yes' if t['binds'] else 'no'} | `{t['engine']}` |")
    lines += ["", "Predicted: the perf model's latency of the plan (its own units; n/a for a peer method); "
              "measured: the final engine (ratio to the dense engine, measured interleaved, x the dense latency "
              "for a speed-up SLA). Binds: "
              "the plan's predicted cost is within 2% of that target's budget (the constraint that stops the "
              "plan from keeping more channels).", "", "## Closed loop rounds", "",
              "| round | plan (verdict) | score | target | budget (ms) | predicted (ms) | measured (ms) | aim (ms) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        plan = r["kind"] + (f" ({r['verdict']})" if r.get("verdict") else "")
        lines += [f"| {r['round']} | {plan} | {_num(r['score'], '.4g')} | {t['name']} | {t['budget_ms']:.4f} | "
                  f"{_num(t['predicted_ms'])} | {t['measured_ms']:.4f} | {t['aim_ms']:.4f} |" for t in r["targets"]]
    return lines


def _save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")


def plot_pred_vs_measured(predicted_ms: Sequence[float], measured_ms: Sequence[float], path: Path,
                          title: str = "held-out engines") -> None:
    """Predicted against measured latency of the profile's held-out engines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(measured_ms, predicted_ms, s=14)
    lo, hi = min(min(measured_ms), min(predicted_ms)), max(max(measured_ms), max(predicted_ms))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title)
    ax.legend()
    _save_figure(fig, path)
    plt.close(fig)


def plot_holdout(profile_path: Path, perf, path: Path, model: str) -> None:
    """:func:`plot_pred_vs_measured` for a saved profile's held-out engines (its design engines if it holds
    none out), titled with the model and the profile's device: the one check a reader does first."""
    from itcp_deploy.profiling.records import Profile

    profile = Profile.load(profile_path)
    engines = profile.by_role("holdout") or profile.by_role("design")
    plot_pred_vs_measured([perf.predict_ms(e.widths) for e in engines], [e.latency.median_ms for e in engines],
                          path, f"{model}: perf model on held-out engines\n{profile.device}")


def plot_front(front: Sequence[tuple[float, float]], chosen: tuple[float, float], sla_ms: float, path: Path,
               others: Mapping[str, Sequence[tuple[float, float]]] | None = None, title: str = "") -> None:
    """The Pareto front (predicted latency, score) with the chosen point and the SLA line; ``title``: say
    which model and device (the front is only valid there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = zip(*front, strict=True) if front else ((), ())
    ax.step(xs, ys, where="post", label="ITCP front")
    for name, pts in (others or {}).items():
        if pts:
            ox, oy = zip(*pts, strict=True)
            ax.plot(ox, oy, ".-", label=name, alpha=0.7)
    ax.scatter([chosen[0]], [chosen[1]], color="red", zorder=5, label="chosen plan")
    ax.axvline(sla_ms, color="gray", ls="--", label="SLA")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("score (higher = better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    _save_figure(fig, path)
    plt.close(fig)


def plot_widths(widths: Mapping[str, int], full_widths: Mapping[str, int], path: Path) -> None:
    """Kept width per group next to its full width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(widths)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(names)), 4))
    ax.bar(range(len(names)), [full_widths[n] for n in names], color="lightgray", label="full")
    ax.bar(range(len(names)), [widths[n] for n in names], color="tab:blue", label="kept")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ax.legend()
    _save_figure(fig, path)
    plt.close(fig)
