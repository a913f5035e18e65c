"""Issue 27: ``--precision mixed`` reaches the pipeline through ``run``, ``profile-engines --sla-ms`` and
``prune(precision="mixed")``: the profile mixes precisions, the scores stage measures each group's INT8 cost, the
loop searches (width, precision) states, and the plan's INT8 groups are the final engine's; the dense engine, the
reference of a speed-up, stays FP32."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import itcp_deploy
from itcp_deploy.api import PruneOptions
from itcp_deploy.pipeline.config import ProfileSettings
from tests.conftest import run_cli
from tests.test_probe import near_the_sla

DATA = "synthetic:train=256,test=128"
COMMON = ("--input-shape", "1x3x32x32", "--data", DATA, "--speedup", "1.3", "--epochs", "0", "--max-builds", "12",
          "--precision", "mixed", "--json")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


def _quantized(path: Path) -> int:
    return sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path), load_external_data=False).graph.node)


def _check_mixed_run(out: Path) -> dict:
    """What every entry point must show for a mixed run in ``out``; returns the report."""
    report = json.loads((out / "report.json").read_text())
    state = json.loads((out / "state.json").read_text())["stages"]
    prunable = set(report["widths"])
    assert report["precision"] == "mixed"
    costs = json.loads((out / "int8_cost.json").read_text())  # the run folder's one copy
    assert set(costs) == prunable and state["scores"]["int8_cost_groups"] == len(prunable)  # every group's cost
    assert all(v >= 0 for v in costs.values())
    profile = json.loads((out / "profile.json").read_text())
    assert any(e.get("int8_groups") for e in profile["engines"])  # the designs mixed precisions
    assert near_the_sla(profile, 1.3) >= 3  # and half of them were drawn near the SLA's latency
    assert json.loads((out / "perf_model.json").read_text())["precision_tables"]
    assert set(report["int8_groups"]) <= prunable
    assert all(set(r.get("int8_groups", [])) <= prunable for r in report["rounds"])
    assert _quantized(out / "dense.mixed.onnx") == 0  # the reference is FP32
    assert (_quantized(out / "model.mixed.onnx") > 0) == bool(report["int8_groups"])  # the engine is the plan
    assert "| precision |" in (out / "report.md").read_text()
    return report


def test_run_precision_mixed_searches_widths_and_precisions(tmp_path, cache):
    out = tmp_path / "out"
    code, _, err = run_cli("run", "cifar_resnet20", *COMMON, "--cache", str(cache), "-o", str(out))
    assert code in (0, 1), err  # 1: the final engine missed the SLA (noise); the wiring is what is checked
    _check_mixed_run(out)


def test_profile_engines_with_an_sla_takes_precision_mixed(tmp_path, cache):
    out = tmp_path / "out"
    code, _, err = run_cli("profile-engines", "cifar_resnet20", *COMMON, "--cache", str(cache), "-o", str(out))
    assert code in (0, 1), err
    _check_mixed_run(out)


def test_prune_precision_mixed(tmp_path, cache):
    torch.manual_seed(0)
    from itcp_deploy.models import create_model

    model = create_model("cifar_resnet20", num_classes=10).eval()
    data = TensorDataset(torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,)))
    loader = DataLoader(data, batch_size=32)
    options = PruneOptions(profile=ProfileSettings(cache_dir=str(cache), max_builds=12), eval_loader=loader)
    result = itcp_deploy.prune(model, torch.randn(1, 3, 32, 32), speedup=1.3, precision="mixed",
                               score_loader=loader, out_dir=tmp_path / "out", options=options)
    report = _check_mixed_run(tmp_path / "out")
    assert result.report.int8_groups == report["int8_groups"]


def test_mixed_needs_itcp_and_every_target_mixed(tmp_path):
    code, _, err = run_cli("run", "cifar_resnet20", *COMMON, "--method", "uniform", "-o", str(tmp_path / "o"))
    assert code == 2 and "--precision mixed" in err and "Traceback" not in err
