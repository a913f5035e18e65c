"""What the commands print: progress bars with ETA and the summary tables (stderr), JSON (stdout)."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

from itcp_deploy.cli.common import console, emit_json

STAGES = {
    "build": "building engines",
    "measure": "measuring (interleaved)",
    "layers": "per-layer profiles",
    "isolated": "isolated layers",
}


@contextlib.contextmanager
def progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """Yield a ``progress(stage, done, total)`` callback drawing one bar per stage."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            if stage == "build":
                console.print(f"{total} engines to build or reuse from the cache")
            tasks[stage] = bar.add_task(STAGES.get(stage, stage), total=max(total, 1))
        bar.update(tasks[stage], completed=done, total=max(total, 1))

    with bar:
        yield update


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}%"


def print_summary(profile, summary, out: Path, json_out: bool) -> None:
    """The end-of-run table (builds, measurements, noise floor, wall time), or JSON with ``--json``."""
    from rich.table import Table

    if summary.builds_damaged:
        console.print(f"warning: {summary.builds_damaged} cached engine(s) were damaged (their files no longer "
                      "match the checksums recorded at build time) and were rebuilt")
    per_engine = summary.wall_s / max(1, summary.planned)
    rows = {
        "engines": summary.planned,
        "builds (new / cached / damaged, rebuilt)": f"{summary.builds_new} / {summary.builds_cached} / "
        f"{summary.builds_damaged}",
        "measurements (new / cached)": f"{summary.measurements_new} / {summary.measurements_cached}",
        "noise floor (re-measurement)": f"{_pct(summary.noise_pct)} "
        f"(new sessions {_pct(summary.session_noise_pct)})",
        "wall time": f"{summary.wall_s:.1f} s ({per_engine:.2f} s per engine)",
        "profile": str(out),
    }
    if json_out:
        emit_json(
            {
                "profile": str(out),
                "engines": summary.planned,
                "builds_new": summary.builds_new,
                "builds_cached": summary.builds_cached,
                "builds_damaged": summary.builds_damaged,
                "measurements_new": summary.measurements_new,
                "measurements_cached": summary.measurements_cached,
                "noise_pct": summary.noise_pct,
                "session_noise_pct": summary.session_noise_pct,
                "wall_s": summary.wall_s,
                "backend": profile.backend,
                "precision": profile.precision,
                "quantization": profile.quantization,
                "device": profile.device,
            }
        )
        return
    table = Table(
        title=f"profile-engines: {profile.model} on {profile.backend} {profile.backend_version} "
        f"{profile.precision}{f' ({profile.quantization})' if profile.quantization else ''}, {profile.device}"
    )
    table.add_column("")
    table.add_column("value")
    for key, value in rows.items():
        table.add_row(key, str(value))
    console.print(table)


def print_report(report, json_out: bool) -> None:
    """A run's dense-vs-pruned table and its notes, or the whole report as JSON with ``--json``."""
    from dataclasses import asdict

    from rich.table import Table

    from itcp_deploy.pipeline.driver import summary_rows

    if json_out:
        emit_json(asdict(report))
        return
    table = Table(title=f"{report.model} on {report.backend} ({report.precision})")
    for col in ("", "dense", "pruned"):
        table.add_column(col)
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    for t in report.targets if len(report.targets) > 1 else []:
        console.print(f"target {t['name']}: SLA {t['sla_ms']:.4f} ms, predicted {t['predicted_ms']:.4f}, measured "
                      f"{t['measured_ms']:.4f} ms ({'met' if t['met'] else 'MISSED'}"
                      f"{', binds' if t['binds'] else ''}); engine {t['engine']}")
    for note in report.notes:
        console.print(f"note: {note}")


def with_progress(job, config, quiet: bool):
    """``job(config)`` silently, or with a log line per stage and rich progress bars."""
    if quiet:  # no progress and no messages but errors: the report still says everything
        logger = logging.getLogger("itcp_deploy")
        level, logger.level = logger.level, logging.ERROR
        try:
            return job(config)
        finally:
            logger.setLevel(level)
    with progress_bar() as progress:
        return job(config, log=logging.getLogger("itcp_deploy").info, progress=progress)


def deliver(config, json_out: bool) -> None:
    """Run the whole pipeline (``itcp-deploy run``, ``profile-engines --sla-ms``): the specs made into the
    objects :func:`itcp_deploy.prune` takes, then the same driver; print its report and exit 1 (like
    ``check-latency``) when a final engine missed its SLA, so a CI step running ``run`` fails on a miss."""
    import sys

    from itcp_deploy.pipeline.driver import run

    report = with_progress(run, config, config.quiet or json_out)
    print_report(report, json_out)
    for t in report.targets:
        if not t["met"]:
            print(f"SLA MISSED: {t['name']} measured {t['measured_over_sla']:.3f} x the SLA {t['sla_ms']:.4g} ms "
                  f"(report: {config.out_dir}/report.md)", file=sys.stderr)
    if not report.met_sla:
        sys.exit(1)
