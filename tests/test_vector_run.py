"""`run` with two targets end to end on real runtimes (ONNX Runtime batch 1, OpenVINO batch 4): one plan, each
target profiled, fitted, built and measured on its own, the report and `check-latency --run` per target."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from itcp_deploy.engines import EngineOptions  # noqa: E402
from itcp_deploy.engines.build import EngineSpec  # noqa: E402
from itcp_deploy.errors import InfeasibleError  # noqa: E402
from itcp_deploy.perfmodel import PerfModel  # noqa: E402
from itcp_deploy.pipeline import run  # noqa: E402
from itcp_deploy.pipeline.config import DeployTarget  # noqa: E402
from itcp_deploy.target import LatencyTarget  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.test_pipeline import _config  # noqa: E402


def _targets(speedup_a: float, speedup_b: float) -> tuple[DeployTarget, ...]:
    return (DeployTarget("edge", EngineSpec("onnxruntime"), (1, 3, 32, 32), LatencyTarget(speedup=speedup_a)),
            DeployTarget("server", EngineSpec("openvino", options=EngineOptions(threads=1)), (4, 3, 32, 32),
                         LatencyTarget(speedup=speedup_b)))


def _two_target_config(tmp_path, out: str, speedups: tuple[float, float]):
    targets = _targets(*speedups)
    config = _config(tmp_path, epochs=0, out_dir=str(tmp_path / out), targets=targets)
    # force_fit: a 10-engine test profile is too small to judge the fit (benchmarked in docs/benchmarks.md)
    return replace(config, profile=replace(config.profile, force_fit=True))


@pytest.fixture(scope="module")
def two_targets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vector")
    config = _two_target_config(tmp, "out", (1.25, 1.2))
    return tmp, config, run(config)


def test_each_target_gets_its_engine_and_its_measured_verdict(two_targets):
    tmp, _, report = two_targets
    out = tmp / "out"
    assert (out / "targets" / "edge" / "model.ort.onnx").is_file()
    assert (out / "targets" / "server" / "model.ov.blob").is_file()
    data = json.loads((out / "report.json").read_text())
    assert [t["name"] for t in data["targets"]] == ["edge", "server"]
    for t in data["targets"]:
        assert t["met"] and t["measured_ms"] <= t["sla_ms"], t  # measured, as reported
        assert t["measured_over_sla"] == pytest.approx(t["measured_ms"] / t["sla_ms"])
        assert t["predicted_ms"] > 0 and isinstance(t["binds"], bool)
    loop = json.loads((out / "state.json").read_text())["stages"]["loop"]
    accepted = loop["rounds"][loop["accepted_round"]]["targets"]
    for t, r in zip(data["targets"], accepted, strict=True):  # binds: the plan's predicted cost fills its budget
        assert t["binds"] == (r["predicted_ms"] >= 0.98 * r["budget_ms"]) and t["predicted_ms"] == r["predicted_ms"]
    assert report.met_sla and report.macs_final < report.macs_dense
    md = (out / "report.md").read_text()
    assert "## Targets" in md and "| edge |" in md and "| server |" in md
    # each target profiled under its own cache key: two profiles of different batches and backends
    profiles = [json.loads((out / "targets" / n / "profile.json").read_text()) for n in ("edge", "server")]
    assert profiles[0]["backend"] != profiles[1]["backend"]
    png = b"\x89PNG\r\n\x1a\n"  # the widths plot, and each target's held-out check next to its profile
    held_out = [out / "targets" / n / "latency_pred_vs_measured.png" for n in ("edge", "server")]
    for path in (out / "widths.png", *held_out):
        assert path.read_bytes()[:8] == png, path


def test_check_latency_gates_every_target_of_the_run(two_targets):
    tmp, _, _ = two_targets
    code, stdout, err = run_cli("check-latency", "--run", str(tmp / "out"))
    lines = stdout.strip().splitlines()
    assert code == 0, stdout + err
    assert [ln.split(":")[0] for ln in lines] == ["edge", "server"] and all("PASS" in ln for ln in lines)
    # the same engines against an SLA no engine meets on the server target: exit 1, that line FAIL
    strict = tmp / "strict"
    shutil.copytree(tmp / "out", strict)
    data = json.loads((strict / "report.json").read_text())
    data["targets"][1]["sla"]["speedup"] = 50.0
    (strict / "report.json").write_text(json.dumps(data))
    code, stdout, _ = run_cli("check-latency", "--run", str(strict))
    lines = stdout.strip().splitlines()
    assert code == 1 and "PASS" in lines[0] and lines[1].startswith("server: FAIL"), stdout


def test_a_target_no_plan_reaches_is_refused_naming_every_minimum(two_targets):
    tmp, _, _ = two_targets
    config = _two_target_config(tmp, "infeasible", (1.25, 1000.0))  # with block removal 40x is reachable on ResNet-20
    with pytest.raises(InfeasibleError) as e:
        run(config)
    text = str(e.value)
    assert "edge: SLA" in text and "server: SLA" in text and text.count("minimum about") == 2
    assert "relax server" in text and "relax edge" not in text


def _flops_model(model: PerfModel) -> PerfModel:
    """A stand-in engine (a fake, named so): latency proportional to each layer's multiply-adds at the plan's
    widths, 1 ms dense of which 0.05 ms constant; the same on any machine at any load."""
    space = model.space

    def macs(layer, c_in: int, c_out: int) -> float:
        per_out = layer.in_channels / layer.groups if layer.groups > 1 else c_in  # depthwise: its own width
        return layer.kernel[0] * layer.kernel[1] * layer.out_hw[0] * layer.out_hw[1] * per_out * c_out

    tables = {layer.name: np.array([[macs(layer, i, o) for o in space.group(layer.out_group).candidates]
                                    for i in space.group(layer.in_group).candidates]) for layer in space.layers}
    flat = replace(model, tables=tables, constant_ms=0.0, dense_measured_ms=None, removal_ms_per_element=0.0)
    scale = 0.95 / flat.dense_ms()
    return replace(flat, tables={k: v * scale for k, v in tables.items()}, constant_ms=0.05)


def _pessimistic(model: PerfModel, keep: float) -> PerfModel:
    """A deliberately wrong perf model (a fake, named so): it predicts only ``keep`` of every layer's
    saving, so pruned plans look slower than they are (dense predicted unchanged)."""
    dense = model.space.complete({})
    tables = {}
    for layer in model.space.layers:
        t = model.tables[layer.name]
        d = t[model.space.group(layer.in_group).index(dense[layer.in_group]),
              model.space.group(layer.out_group).index(dense[layer.out_group])]
        tables[layer.name] = keep * t + (1 - keep) * d
    return replace(model, tables=tables)


def test_measurement_keeps_a_single_target_plan_that_beats_the_vector_plan(two_targets, monkeypatch, tmp_path):
    """Both targets' engines take time in proportion to their multiply-adds (:func:`_flops_model`, standing in
    for building and timing each round's engine, so the premise holds at any load). The server's perf model
    predicts a fifth of every saving and the edge's 80% (:func:`_pessimistic`): the vector DP, exact for the
    predicted budgets, is bound by the server's wrong model and prunes far more than either engine needs, while
    the edge's own plan meets both SLAs as measured and scores higher. The loop must measure the higher-scoring
    single-target plans best first, keep the first that meets both, and record them."""
    from types import SimpleNamespace

    from itcp_deploy.models import create_model
    from itcp_deploy.pipeline.closed_loop import closed_loop
    from itcp_deploy.pipeline.meter import Measured, TargetMeter
    from itcp_deploy.pipeline.report import targets_markdown
    from itcp_deploy.pipeline.run_dir import RunFolder
    from itcp_deploy.pipeline.sources import ModelInputs
    from itcp_deploy.pipeline.stages import RunContext
    from itcp_deploy.pipeline.strategies import STRATEGIES
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.profiling.engine_timing import EngineLatency
    from itcp_deploy.profiling.records import LatencyStats
    from itcp_deploy.pruning import build_space

    tmp, _, _ = two_targets
    out = tmp_path / "pessimistic"
    shutil.copytree(tmp / "out", out, ignore=shutil.ignore_patterns("engines", "rounds", "finetune"))
    config = _two_target_config(tmp, "unused", (1.25, 1.05))
    config = replace(config, loop=replace(config.loop, accept_low=0.05))  # the first plan meeting both is accepted
    names = [t.name for t in config.targets]
    true = {n: _flops_model(PerfModel.load(out / "targets" / n / "perf_model.json")) for n in names}
    keep = {"edge": 0.8, "server": 0.2}
    monkeypatch.setattr(PerfModel, "load", lambda path: _pessimistic(true[Path(path).parent.name],
                                                                     keep[Path(path).parent.name]))
    backend = {t.engine.backend: t.name for t in config.targets}

    def fake_measure(self, artifact, timing=None, precise=False):  # artifact: the plan's widths (fake build)
        model = true[backend[self.engine.backend]]
        ratio = model.predict_ms(artifact) / model.dense_ms()
        return Measured(EngineLatency(LatencyStats.from_samples([ratio]), ratio), None, 4, ratio)

    monkeypatch.setattr(TargetMeter, "dense_ms", lambda self: 1.0)
    monkeypatch.setattr(TargetMeter, "measure", fake_measure)
    monkeypatch.setattr("itcp_deploy.pruning.apply_widths", lambda model, space, widths, **k: widths)
    monkeypatch.setattr("itcp_deploy.engines.build.build_engine",
                        lambda pruned, *a, **k: SimpleNamespace(artifact=pruned))
    model = create_model("cifar_resnet20", num_classes=10).eval()
    space = build_space(model, (1, 3, 32, 32), model_spec="cifar_resnet20").with_removal(config.block_removal)
    context = RunContext(replace(config, profile=replace(config.profile, adaptive=False)), RunFolder(out, names),
                         SimpleNamespace(retries=[]), ModelInputs(model, []), space, STRATEGIES.get("itcp"),
                         lambda m: None)
    result = closed_loop(context, [TargetMeter(t.engine, t.latency, tmp_path, config.loop.timing)
                                   for t in config.targets])
    rounds, kept = result["rounds"], result["rounds"][result["accepted_round"]]
    assert rounds[0]["kind"] == "plan" and all(t["measured_ms"] <= t["aim_ms"] for t in rounds[0]["targets"])
    assert rounds[0]["verdict"].startswith("replaced by round"), rounds
    assert kept["kind"] == "candidate: 1-D DP for edge" and kept["verdict"].startswith("accepted"), rounds
    assert kept["score"] > rounds[0]["score"] and all(t["measured_ms"] <= t["aim_ms"] for t in kept["targets"])
    tried = [r for r in rounds if r["kind"].startswith("candidate")]
    assert [r["score"] for r in tried] == sorted((r["score"] for r in tried), reverse=True) and tried[-1] is kept
    assert PruningPlan.load(out / "widths.json").score == pytest.approx(kept["score"])
    assert f"{kept['kind']} (accepted" in "\n".join(targets_markdown([], rounds))


def test_one_target_and_two_targets_go_through_the_same_loop(two_targets, monkeypatch):
    """Issue 23: one closed loop for any number of targets. The loop function is spied on (it records how
    many targets it was given, then stops the run): a one-target run and the two-target run both reach it."""
    import itcp_deploy.pipeline.closed_loop as cl

    tmp, config, _ = two_targets
    calls: list[list[str]] = []

    class Stop(Exception):
        pass

    def spy(rounds, *args, **kwargs):
        calls.append(list(rounds.names))
        raise Stop

    monkeypatch.setattr(cl, "run_rounds", spy)
    again = tmp / "again"  # the finished two-target run, resumed at its loop stage
    shutil.copytree(tmp / "out", again)
    state = json.loads((again / "state.json").read_text())
    for stage in ("loop", "finetune", "final"):
        state["stages"].pop(stage)
    (again / "state.json").write_text(json.dumps(state))
    with pytest.raises(Stop):
        run(replace(config, out_dir=str(again)))
    one = _config(tmp, epochs=0, out_dir=str(tmp / "one"), targets=config.targets[:1])  # the edge target alone
    with pytest.raises(Stop):
        run(replace(one, profile=config.profile))
    assert calls == [["edge", "server"], ["edge"]]
