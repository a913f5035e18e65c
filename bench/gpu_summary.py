"""The GPU check's verdicts and tables (bench/gpu_check.py, issue 28): each bar from a part's result, the machine it
ran on, and the markdown for docs/benchmarks.md, so that no number is typed by hand."""

from __future__ import annotations

import math
import platform
import shutil
import subprocess
from pathlib import Path


def why_not(result: dict) -> str:
    """Why a part gave no numbers: its skip note or its first error line."""
    notes = [v for k, v in result.items() if k == "skipped" or "error" in k]
    return "not measured: " + (str(notes[0]) if notes else "no result")


def fit_bar(result: dict) -> dict:
    """Held-out error <= max(1.5 x noise, 2%), beside FLOPs-linear's error."""
    if "fit" not in result:
        return {"pass": None, "why": why_not(result)}
    r = result["fit"]
    noise = r["noise_pct"]
    limit = max(1.5 * noise, 2.0) if math.isfinite(noise) else 2.0
    return {"pass": r["mape_pct"] <= limit, "precision": result["precision"], "held_out_err_pct": r["mape_pct"],
            "noise_pct": noise, "limit_pct": limit, "flops_linear_err_pct": r["flops_mape_pct"],
            "better_than_flops": r["mape_pct"] < r["flops_mape_pct"]}


def run_bar(result: dict) -> dict:
    """Meets the SLA within 2 rounds, at final/SLA >= 0.90."""
    return {"pass": bool(result["met_sla"] and result["measured_over_sla"] >= 0.90 and result["rounds"] <= 2),
            **{k: result[k] for k in ("precision", "measured_over_sla", "rounds", "met_sla", "final_over_dense")}}


def environment(device: str) -> dict:
    import torch

    import itcp_deploy
    from itcp_deploy.engines.device import device_name

    try:
        from importlib.metadata import version

        tp = version("torch-pruning")
    except Exception:  # a wheel put on PYTHONPATH with --target still has its metadata; say so if not
        tp = "unknown"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent) if shutil.which("git") else None
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "torch_pruning": tp, "itcp_deploy": itcp_deploy.__version__, "device": device_name(device),
            "host_cpu": device_name("cpu"), "commit": commit.stdout.strip() if commit and commit.returncode == 0
            else None}


def markdown(summary: dict) -> str:
    """The tables for docs/benchmarks.md, from a summary.json (no number typed by hand)."""
    e, parts, b = summary["env"], summary["parts"], summary.get("bars", {})
    lines = [f"{e['device']}; torch {e['torch']} (CUDA {e['cuda']}, cuDNN {e['cudnn']}, TF32 convs "
             f"{e.get('cudnn_allow_tf32')}); itcp-deploy {e['commit']}; {summary.get('wall_s')} s of "
             f"{summary['budget_s']:.0f} s budget.", "",
             "| staircase | steps found (block_from_staircase) | channel_block() | largest jumps after width | "
             "µs at 1 / 64 / 128 / 256 |", "|---|---|---|---|---|"]
    for name, r in parts.get("staircase", {}).items():
        if not isinstance(r, dict):
            continue
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} | | | |")
            continue
        at = " / ".join(f"{r['median_ms'][w - 1] * 1000:.1f}" for w in (1, 64, 128, 256) if w <= len(r["median_ms"]))
        lines.append(f"| {name} | {r['block_from_staircase']} | {r['channel_block']} ({r['channel_block_from']}) | "
                     f"{r['largest_jumps_after']} | {at} |")
    lines += ["", "| perf model | precision | noise % | held-out err % | FLOPs-linear err % | bar (<= %) | met |",
              "|---|---|---|---|---|---|---|"]
    for key, r in b.items():
        if key.startswith("fit:"):
            lines.append(f"| {key[4:]} | " + (" | ".join([r["precision"], *(f"{r[k]:.2f}" for k in (
                "noise_pct", "held_out_err_pct", "flops_linear_err_pct", "limit_pct")), str(r["pass"])])
                if r["pass"] is not None else f"{r['why']} | | | | | |") + " |")
    lines += ["", "| run --epochs 0 | precision | measured/SLA | final/dense | rounds | met SLA | bar met |",
              "|---|---|---|---|---|---|---|"]
    for key, r in b.items():
        if key.startswith("run:"):
            lines.append(f"| {key[4:]} | " + (f"{r['precision']} | {r['measured_over_sla']:.3f} | "
                         f"{r['final_over_dense']:.3f} | {r['rounds']} | {r['met_sla']} | {r['pass']}"
                         if r["pass"] is not None else f"{r['why']} | | | | | |") + " |")
    return "\n".join(lines)
