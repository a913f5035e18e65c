"""The latency staircase of one conv signature: measured latency versus output width, next to MACs.

MACs grow linearly with the output width; measured latency grows in steps, because kernels process channels
in blocks (onnxruntime's NCHWc layout pads to 16 channels with AVX-512F, 8 with AVX2; OpenVINO's CPU plugin has
its own blocked layouts and kernels). This plot is why the performance model is staircase-aware; each engine
(``backend``) has its own staircase, and the block it steps by (``engines.device.block_from_staircase``) is
saved beside it, with the device's ISA flags.

ONNX backends build one CPU engine per width; the ``torch`` backend runs the conv modules themselves, on the CPU
or on CUDA (CUDA graphs, CUDA events), at fp32 or fp16: GPU kernels tile output channels too
(``bench/gpu_check.py`` measures where).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from itcp_deploy.engines import EngineOptions, get_backend
from itcp_deploy.engines.device import device_name
from itcp_deploy.errors import UsageError
from itcp_deploy.paths import check_outputs
from itcp_deploy.profiling.timing import TimingConfig, measure_interleaved


@dataclass(frozen=True)
class StaircaseConfig:
    """One 3x3 conv (stride 1, padding 1) on a ``batch`` x ``in_channels`` x ``hw`` x ``hw`` input, measured
    at output widths 1..``max_width`` on ``backend``. Defaults to batch 1, 32 in, 32x32, widths 1..64, 20 rounds
    x 100 runs, onnxruntime on the CPU at fp32. ``device`` and ``precision`` other than cpu/fp32 need the
    ``torch`` backend."""

    in_channels: int = 32
    hw: int = 32
    kernel: int = 3
    max_width: int = 64
    threads: int = 1
    backend: str = "onnxruntime"
    batch: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    timing: TimingConfig = field(
        default_factory=lambda: TimingConfig(warmup=50, rounds=20, runs_per_round=100)
    )

    def validate(self) -> None:
        """Every size >= 1: a 0x0 input or zero output widths would fail deep in torch or plot nothing."""
        for option, value in (("--in-channels", self.in_channels), ("--hw", self.hw),
                              ("--max-width", self.max_width), ("--kernel", self.kernel), ("--batch", self.batch)):
            if value < 1:
                raise UsageError(f"{option} must be >= 1, got {value}", f"pass e.g. {option} 32")


@dataclass(frozen=True)
class StaircasePoint:
    width: int
    median_ms: float
    p90_ms: float
    macs: int


def _input_shape(config: StaircaseConfig) -> tuple[int, int, int, int]:
    return (config.batch, config.in_channels, config.hw, config.hw)


def _conv(config: StaircaseConfig, width: int):
    import torch

    return torch.nn.Conv2d(config.in_channels, width, config.kernel, padding=config.kernel // 2).eval()


def _export_conv(path: Path, config: StaircaseConfig, width: int) -> Path:
    import torch

    with warnings_off():
        torch.onnx.export(
            _conv(config, width),
            (torch.zeros(_input_shape(config)),),
            os.fspath(path),
            input_names=["input"],
            output_names=["output"],
            dynamo=False,
        )
    return path


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _runner(backend, config: StaircaseConfig, options: EngineOptions, tmp: Path, width: int):
    """The conv at ``width`` as a runner: the module itself (torch), or a CPU engine built from its ONNX."""
    if backend.source == "torch":
        from itcp_deploy.engines.torch.runner import TorchRunner

        return TorchRunner(_conv(config, width), options, _input_shape(config), config.precision)
    onnx_path = _export_conv(tmp / f"w{width}.onnx", config, width)
    return backend.runner(backend.builder(onnx_path, tmp / f"w{width}", options)(), options)


def measure_staircase(config: StaircaseConfig | None = None) -> list[StaircasePoint]:
    """One runner per output width, all measured interleaved on one shared input."""
    config = config or StaircaseConfig()
    backend = get_backend(config.backend)
    options = EngineOptions(threads=config.threads, device=config.device)
    if backend.source != "torch":  # an engine built from ONNX: measured on the CPU, at fp32
        if config.device != "cpu" or backend.device_name(options) != device_name("cpu"):
            raise UsageError(f"the staircase measures {backend.name} as a CPU engine only",
                             "use --backend torch for a GPU, onnxruntime or openvino for the CPU")
        if config.precision != "fp32":
            raise UsageError(f"the staircase measures {backend.name} at fp32 only, not {config.precision}",
                             "use --backend torch for fp16")
    widths = list(range(1, config.max_width + 1))
    with tempfile.TemporaryDirectory(prefix="itcp-staircase-") as tmp, contextlib.ExitStack() as stack:
        runners = [stack.enter_context(_runner(backend, config, options, Path(tmp), w)) for w in widths]
        result = measure_interleaved(runners, [runners[0].random_feeds()] * len(runners), config.timing)
    per_out = config.batch * config.kernel * config.kernel * config.in_channels * config.hw * config.hw
    return [
        StaircasePoint(w, s.median_ms, s.p90_ms, per_out * w)
        for w, s in zip(widths, result.stats, strict=True)
    ]


def plot_staircase(points: list[StaircasePoint], path: str | os.PathLike[str], title: str) -> Path:
    """Latency (median with p90 whiskers) and MACs against output width, on two y axes; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from itcp_deploy.atomic_io import atomic_path

    widths = [p.width for p in points]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.errorbar(
        widths,
        [p.median_ms * 1000 for p in points],
        yerr=[[0] * len(points), [(p.p90_ms - p.median_ms) * 1000 for p in points]],
        fmt="o-",
        ms=3,
        color="tab:blue",
        label="measured latency (median, p90)",
    )
    top = 1.6 * max(p.median_ms for p in points) * 1000
    if max(p.p90_ms for p in points) * 1000 > top:  # a preempted round on a busy machine would flatten the steps
        ax.set_ylim(0, top)
        ax.text(0.99, 0.02, "p90 whiskers clipped at the top", transform=ax.transAxes, ha="right", fontsize=8)
    ax.set_xlabel("output channels")
    ax.set_ylabel("latency (µs)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(widths, [p.macs / 1e6 for p in points], "--", color="tab:gray", label="MACs")
    ax2.set_ylabel("MMACs", color="tab:gray")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.legend(loc="upper left", bbox_to_anchor=(0.1, 0.9))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)


def staircase(
    config: StaircaseConfig | None = None,
    out: str | os.PathLike[str] = "docs/staircase_ort_cpu.png",
) -> tuple[list[StaircasePoint], Path]:
    """Measure and plot (what ``itcp-deploy staircase`` runs); the data goes beside the plot as JSON."""
    from itcp_deploy.atomic_io import write_json
    from itcp_deploy.engines.device import block_from_staircase, detect_isa, isa_channel_block

    config = config or StaircaseConfig()
    config.validate()
    check_outputs({"-o": out, "-o (its .json)": Path(out).with_suffix(".json")}, {})
    points = measure_staircase(config)
    block = block_from_staircase([p.width for p in points], [p.median_ms for p in points])
    version = get_backend(config.backend).version().split("-")[0]
    where = f"CPU, {config.threads} thread(s)" if config.device == "cpu" else f"{config.device}, CUDA graphs"
    title = (
        f"{config.kernel}x{config.kernel} conv, batch {config.batch}, {config.in_channels} in, "
        f"{config.hw}x{config.hw}, {config.precision}, {config.backend} {version} {where}, "
        f"steps of {block or 'none found'}\n{device_name(config.device)}"
    )
    path = plot_staircase(points, out, title)
    write_json(
        Path(out).with_suffix(".json"),
        {"config": asdict(config), "device": device_name(config.device), "block_measured": block,
         "block_isa": isa_channel_block(detect_isa()) if config.device == "cpu" else None,
         "points": [asdict(p) for p in points]},
    )
    return points, path
