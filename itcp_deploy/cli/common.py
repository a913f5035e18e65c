"""Options and output helpers shared by command modules."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)


def emit_json(data: Any) -> None:
    """Machine-readable output on stdout (progress and tables go to stderr)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


BackendOpt = Annotated[str, typer.Option("--backend", help="onnxruntime, openvino, tensorrt or torch.")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="fp32, fp16, int8, or mixed (each group fp32 or int8, chosen with the widths).")]
SlaOpt = Annotated[str | None, typer.Option("--sla-ms", help="Latency SLA in ms.")]
SpeedupOpt = Annotated[str | None, typer.Option("--speedup", help="SLA = measured dense latency / S.")]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Finetuning epochs (0: BN re-estimation only).")]
PercentileOpt = Annotated[int, typer.Option("--percentile", help="The SLA's latency percentile: 50, 90 or 99.")]
MarginOpt = Annotated[str | None, typer.Option(
    "--margin", help="Safety margin in [0, 0.5): the closed loop aims at (1 - margin) x the SLA [default 0.03]; "
    "widen it where a CI gate re-measures the engine on a noisy runner.")]
CompensateOpt = Annotated[bool, typer.Option("--compensate/--no-compensate", help="Least-squares refit after pruning.")]
BlockRemovalOpt = Annotated[bool, typer.Option("--block-removal/--no-block-removal",
                                               help="Let residual branches be removed (width 0).")]
MinAgreementOpt = Annotated[float, typer.Option(
    "--min-agreement", min=0.0, max=1.0, help="--precision mixed: solve again (up to 3 times), the INT8 groups "
    "that move most top-1s held at FP32, unless the engine agrees with its FP32 model on this share of evaluation "
    "images (95% confidence; 0: off, the default: held groups cost width).")]
WorkspaceOpt = Annotated[int, typer.Option("--workspace-mb", min=1,
                                           help="TensorRT builder workspace (MiB): raise it when a build fails.")]
AdaptiveOpt = Annotated[bool, typer.Option(
    "--adaptive/--no-adaptive", help="Stop building once the perf model meets max(1.5 x noise, 2%) on held-out "
    "engines, and profile the search's own plans before the closed loop (--no-adaptive: the fixed design).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="torch backend device: cpu or cuda.")]
