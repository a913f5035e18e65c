"""Issue 27: ``--precision mixed`` reaches the pipeline through ``run``, ``profile-engines --sla-ms`` and
``prune(precision="mixed")``: the profile mixes precisions, the scores stage measures each group's INT8 cost, the
loop searches (width, precision) states, and the plan's INT8 groups are the final engine's; the dense engine, the
reference of a speed-up, stays FP32. ``--min-agreement`` (``PruneOptions.min_agreement``) reaches the final stage's
precision control through each entry point: every entry point builds one ``RunConfig`` for one driver, so each
shows the option in the run's recorded config, and ``run`` shows its effect end to end (a resume that re-solves)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import itcp_deploy
from itcp_deploy.api import PruneOptions
from itcp_deploy.pipeline.config import LoopSettings, ProfileSettings
from itcp_deploy.pipeline.driver import retries_left
from tests.conftest import run_cli
from tests.test_probe import near_the_sla

DATA = "synthetic:train=256,test=128"
COMMON = ("--input-shape", "1x3x32x32", "--data", DATA, "--speedup", "1.3", "--epochs", "0", "--max-builds", "12",
          "--precision", "mixed", "--min-agreement", "0.99", "--json")


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


def _check_min_agreement_recorded(out: Path) -> None:
    """The entry point put ``--min-agreement 0.99`` into the run's config, which the final stage's control reads
    (and a resume re-reads), and the final stage measured the agreement it judges."""
    state = json.loads((out / "state.json").read_text())
    assert state["config"]["min_agreement"] == 0.99
    final = state["stages"]["final"]["targets"]
    assert all("agreement_with_source" in t["engine_accuracy"] for t in final.values())


def _check_precision_control(out: Path, again) -> None:
    """``--min-agreement 0.99`` reaches the final stage's precision control. The random net predicts one class
    on noise, so its mixed engine agrees with its FP32 model on every image: the measured agreement in the
    finished run's state is set to 0.97 (which the default, off, lets through), as a resume reads it, and
    ``again()`` (the same command) resumes: the run goes back to the loop once, with INT8 groups of the plan held
    at FP32, measured on that pruned model, and the new plan puts none of them at INT8."""
    state_path = out / "state.json"
    state = json.loads(state_path.read_text())
    first = json.loads((out / "report.json").read_text())
    accuracy = state["stages"]["final"]["targets"][first["targets"][0]["name"]]["engine_accuracy"]
    assert "agreement_with_source" in accuracy and not state.get("retries")
    if not first["int8_groups"]:
        pytest.skip("the plan put no group at INT8: nothing for the precision control to hold")
    accuracy["agreement_with_source"] = 0.97
    state_path.write_text(json.dumps(state))
    again()
    retries = json.loads(state_path.read_text())["retries"]
    report = _check_mixed_run(out)
    assert len(retries) == 1 and set(retries[0]["fp32_groups"]) <= set(first["int8_groups"]), retries
    assert retries[0]["fp32_groups"] and not set(retries[0]["fp32_groups"]) & set(report["int8_groups"])
    assert any("agrees with its FP32 model on 97.0%" in n and "at FP32" in n for n in report["notes"])


def test_run_precision_mixed_searches_widths_and_precisions(tmp_path, cache):
    out = tmp_path / "out"
    args = ("run", "cifar_resnet20", *COMMON, "--cache", str(cache), "-o", str(out))
    code, _, err = run_cli(*args)
    assert code in (0, 1), err  # 1: the final engine missed the SLA (noise); the wiring is what is checked
    _check_mixed_run(out)
    _check_min_agreement_recorded(out)
    _check_precision_control(out, lambda: run_cli(*args))


def test_profile_engines_with_an_sla_takes_precision_mixed(tmp_path, cache):
    out = tmp_path / "out"
    args = ("profile-engines", "cifar_resnet20", *COMMON, "--cache", str(cache), "-o", str(out))
    code, _, err = run_cli(*args)
    assert code in (0, 1), err
    _check_mixed_run(out)
    _check_min_agreement_recorded(out)


def test_prune_precision_mixed(tmp_path, cache):
    torch.manual_seed(0)
    from itcp_deploy.models import create_model

    model = create_model("cifar_resnet20", num_classes=10).eval()
    data = TensorDataset(torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,)))
    loader = DataLoader(data, batch_size=32)
    options = PruneOptions(profile=ProfileSettings(cache_dir=str(cache), max_builds=12), eval_loader=loader,
                           min_agreement=0.99)

    result = itcp_deploy.prune(model, torch.randn(1, 3, 32, 32), speedup=1.3, precision="mixed",
                               score_loader=loader, out_dir=tmp_path / "out", options=options)
    report = _check_mixed_run(tmp_path / "out")
    assert result.report.int8_groups == report["int8_groups"]
    _check_min_agreement_recorded(tmp_path / "out")


def test_mixed_needs_itcp_and_every_target_mixed(tmp_path):
    code, _, err = run_cli("run", "cifar_resnet20", *COMMON, "--method", "uniform", "-o", str(tmp_path / "o"))
    assert code == 2 and "--precision mixed" in err and "Traceback" not in err


def test_precision_and_latency_re_solves_have_their_own_budgets():
    """Three precision re-solves by default (a narrower re-solved one-shot model has more near-ties: the first
    re-solve lowered three measured plans' agreement), apart from the latency correction's one; a re-solve that
    was both counts for both."""
    loop = LoopSettings()
    assert retries_left(loop, []) == (True, True)
    precision = {"aim_factor": {}, "fp32_groups": ["layer1.0.conv1"]}
    assert retries_left(loop, [precision, precision]) == (True, True)
    assert retries_left(loop, [precision] * 3) == (True, False)
    both = {"aim_factor": {"t": 0.97}, "fp32_groups": ["layer1.0.conv1"]}
    assert retries_left(loop, [both]) == (False, True)
    assert retries_left(replace(loop, precision_retries=0, final_retries=2), [both]) == (True, False)


def test_an_exhausted_precision_control_is_not_measured_again(monkeypatch):
    """With its re-solves spent, the final stage does not run the control (a quantization per INT8 group), and a
    latency miss the loop can correct still re-solves."""
    from itcp_deploy.pipeline import driver

    called = []
    monkeypatch.setattr(driver, "_precision_control", lambda ctx: called.append(1) or (("g",), "precision"))
    monkeypatch.setattr(driver, "_aim_factors", lambda ctx: ({}, ""))
    retries = [{"aim_factor": {}, "fp32_groups": ["g"]}]
    state = SimpleNamespace(retries=retries, retry=lambda stages, record: retries.append(record))
    ctx = SimpleNamespace(config=SimpleNamespace(loop=LoopSettings(precision_retries=1)), state=state,
                          log=lambda msg: None, folder=SimpleNamespace(finetune=Path("/nonexistent/finetune")))
    assert not driver._solve_again(ctx) and not called and len(retries) == 1
    monkeypatch.setattr(driver, "_aim_factors", lambda ctx: ({"t": 0.97}, "latency"))
    assert driver._solve_again(ctx) and not called and retries[-1]["aim_factor"] == {"t": 0.97}


@pytest.mark.parametrize("entry", ["run", "profile-engines", "prune"])
def test_min_agreement_without_a_mixed_target_is_refused(tmp_path, entry):
    """The control holds a mixed plan's INT8 groups at FP32; on an fp32 or int8 run it would do nothing, so
    every entry point refuses it in one line rather than let the user think the engine is guarded."""
    if entry == "prune":
        from itcp_deploy.errors import UsageError
        from itcp_deploy.models import create_model

        options = PruneOptions(min_agreement=0.95, profile=ProfileSettings(cache_dir=str(tmp_path / "c")))
        loader = DataLoader(TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))), batch_size=4)
        with pytest.raises(UsageError, match="--precision mixed only"):
            itcp_deploy.prune(create_model("cifar_resnet20", num_classes=10).eval(), torch.randn(1, 3, 32, 32),
                              speedup=1.3, precision="int8", score_loader=loader, out_dir=tmp_path / "out",
                              options=options)
        assert not (tmp_path / "out").exists()
        return
    code, _, err = run_cli(entry, "cifar_resnet20", "--input-shape", "1x3x32x32", "--data", DATA, "--speedup", "1.3",
                           "--min-agreement", "0.95", "-o", str(tmp_path / "out"))
    assert code == 2 and "--precision mixed only" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def _note_ctx(agreement: float | None, retries: int) -> SimpleNamespace:
    """A finished mixed run's context as the report reads it: one target whose engine measured ``agreement`` on
    1,000 images (None: not measured), after ``retries`` precision re-solves, under --min-agreement 0.95."""
    accuracy = {} if agreement is None else {"agreement_with_source": agreement, "images": 1000}
    target = SimpleNamespace(name="t", engine=SimpleNamespace(precision="mixed"))
    state = SimpleNamespace(retries=[{"aim_factor": {}, "fp32_groups": ["g"]}] * retries,
                            done=lambda stage: {"targets": {"t": {"engine_accuracy": accuracy}}})
    return SimpleNamespace(config=SimpleNamespace(min_agreement=0.95, targets=[target]), state=state)


def test_the_report_says_when_min_agreement_is_unmet_or_unjudged():
    from itcp_deploy.pipeline.driver import _agreement_note

    assert _agreement_note(_note_ctx(0.97, 1)) is None  # over the aim (0.961 on 1,000 images)
    assert "93.0% of 1000 evaluation images, under 96.1%" in _agreement_note(_note_ctx(0.93, 3))
    assert "after 3 precision re-solve(s)" in _agreement_note(_note_ctx(0.93, 3))
    assert "was not applied" in _agreement_note(_note_ctx(None, 0))
