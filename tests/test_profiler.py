"""profile_engines on a tiny CNN with the real pruning and export stages, plus the plan design."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from itcp_deploy.profiling.design import DesignConfig, design_plans, parse_shard, shard
from itcp_deploy.profiling.profiler import ProfileConfig, run_profiling
from itcp_deploy.profiling.records import Profile
from itcp_deploy.profiling.timing import TimingConfig, noise_pct

INPUT_SHAPE = (1, 3, 16, 16)


class Tiny(nn.Module):
    """Two prunable groups (a residual stage, a strided conv) and a classifier; builds in ~0.2 s."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)) + x)
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def tiny_setup():
    from itcp_deploy.pruning import build_space

    torch.manual_seed(0)
    model = Tiny().eval()
    return model, build_space(model, INPUT_SHAPE, model_spec="tiny")


EXTRA = ProfileConfig().noise_sessions - 1  # the dense engine's extra sessions: measurements of their own


def fast_config(cache_dir, **overrides) -> ProfileConfig:
    """A profile small enough for a unit test: 6 engines, 2 rounds x 5 runs."""
    base = dict(
        cache_dir=str(cache_dir),
        design=DesignConfig(max_builds=6, holdout=2, tries=8),
        timing=TimingConfig(warmup=2, rounds=2, runs_per_round=5),
        layer_runs=10,
    )
    return ProfileConfig(**{**base, **overrides})


def test_design_covers_every_candidate_and_roles():
    _, space = tiny_setup()
    plans = design_plans(space, DesignConfig(max_builds=2 + 12 + 3, holdout=3))
    roles = [p.role for p in plans]
    assert roles[0] == "dense" and roles.count("holdout") == 3 and len(plans) == 17  # exactly the budget
    assert plans[0].widths == space.full_widths()
    designs = [p.widths for p in plans if p.role == "design"]
    for g in space.prunable:  # 12 Latin-hypercube designs visit each of 4 or 6 candidates equally often
        seen = [d[g.name] for d in designs[1:]]
        assert sorted(set(seen)) == list(g.candidates)
    assert len({p.engine_id for p in plans}) == len(plans)
    assert [p.engine_id for p in design_plans(space, DesignConfig(max_builds=17, holdout=3))] == [
        p.engine_id for p in plans
    ]


def test_shards_are_disjoint_and_cover_all():
    _, space = tiny_setup()
    plans = design_plans(space, DesignConfig(max_builds=10, holdout=3))
    parts = [shard(plans, i, 3) for i in range(3)]
    ids = [p.engine_id for part in parts for p in part]
    assert sorted(ids) == sorted(p.engine_id for p in plans)
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(Exception, match="--shard"):
            parse_shard(bad)


def test_profile_has_layers_in_context_and_rerun_is_free(tmp_path):
    model, space = tiny_setup()
    profile, first = run_profiling(model, space, fast_config(tmp_path))
    assert first.builds_new == 6 and first.builds_cached == 0 and first.measurements_new == 12 + EXTRA
    assert profile.layer_source == "in-context" and len(profile.engines) == 6
    assert {e.role for e in profile.engines} == {"dense", "design", "holdout"}
    layers = {layer.name for layer in space.layers}
    for e in profile.engines:
        assert layers <= set(e.layer_ms) <= layers | {name + "+" for name in layers}, e.layer_ms
        assert "conv3+" in e.layer_ms  # the mean over H, W reads conv3's output: charged to it, not to "other"
        assert all(ms >= 0 for ms in e.layer_ms.values()) and sum(e.layer_ms.values()) > 0
        assert sum(e.layer_ms.values()) + e.other_ms <= e.latency.median_ms * (1 + 1e-6)  # see split_layers
        assert e.latency.n == 10 and len(e.round_medians_ms) == 2
    split = noise_pct([e.round_medians_ms for e in profile.engines])
    assert math.isfinite(first.session_noise_pct) and profile.noise_pct == max(split, first.session_noise_pct)
    again, second = run_profiling(model, space, fast_config(tmp_path))
    assert (second.builds_new, second.measurements_new) == (0, 0)
    assert second.builds_cached == 6 and second.measurements_cached == 12 + EXTRA
    assert [e.latency for e in again.engines] == [e.latency for e in profile.engines]
    path = tmp_path / "p.json"
    profile.save(path)
    assert Profile.load(path).engines[0].layer_ms == profile.engines[0].layer_ms


def test_other_thread_count_is_measured_anew(tmp_path):
    model, space = tiny_setup()
    run_profiling(model, space, fast_config(tmp_path))
    from itcp_deploy.engines import EngineOptions

    _, summary = run_profiling(model, space, fast_config(tmp_path, engine=EngineOptions(threads=2)))
    assert summary.builds_cached == 6 and summary.measurements_new == 12 + EXTRA  # same engines, new timings


def test_shards_then_merge_measures_nothing_new(tmp_path):
    model, space = tiny_setup()
    for i in range(2):
        _, s = run_profiling(model, space, fast_config(tmp_path, shard=f"{i}/2"))
        assert s.planned == 3
    _, merged = run_profiling(model, space, fast_config(tmp_path))
    assert (merged.builds_new, merged.measurements_new, merged.planned) == (0, 0, 6)


def test_torch_backend_uses_isolated_layers(tmp_path):
    model, space = tiny_setup()
    config = fast_config(tmp_path, backend="torch", design=DesignConfig(max_builds=3, holdout=1, tries=2))
    profile, summary = run_profiling(model, space, config)
    assert profile.layer_source == "isolated" and profile.backend == "torch"
    signatures = {
        layer.signature(e.widths[layer.in_group], e.widths[layer.out_group])
        for e in profile.engines
        for layer in space.layers
    }
    assert summary.measurements_new == 3 + EXTRA + len(signatures)  # identical signatures timed once
    dense = profile.by_role("dense")[0]
    assert set(dense.layer_ms) == {layer.name for layer in space.layers}


def test_split_layers_removes_per_node_profiler_cost():
    from itcp_deploy.profiling.profiler import split_layers

    raw = {"a_nchwc": 0.05, "ReorderOutput": 0.01, "b": 0.03, "pool": 0.004}
    nodes = {"a_nchwc": "conv1", "ReorderOutput": "conv1", "b": "fc", "pool": None}
    out = split_layers(raw, nodes, latency_ms=0.074)  # 0.02 ms too much: 4 us off the 0.004 node, 5.33 off others
    assert out["other_ms"] == 0.0
    assert sum(out["layer_ms"].values()) == pytest.approx(0.074)
    assert out["layer_ms"] == pytest.approx({"conv1": 0.05 - 0.016 / 3 + 0.01 - 0.016 / 3, "fc": 0.03 - 0.016 / 3})
    same = split_layers(raw, nodes, latency_ms=1.0)  # profile cheaper than the run: nothing removed
    assert same["layer_ms"] == pytest.approx({"conv1": 0.06, "fc": 0.03}) and same["other_ms"] == 0.004


def test_split_layers_scales_when_the_profiler_costs_nothing_per_node():
    """OpenVINO: an excess is drift between the two measurement windows, removed by one factor, no clamping."""
    from itcp_deploy.profiling.profiler import split_layers

    raw = {"a": 0.05, "r": 0.01, "b": 0.03, "pool": 0.004}
    nodes = {"a": "conv1", "r": "conv1", "b": "fc", "pool": None}
    out = split_layers(raw, nodes, latency_ms=0.047, per_node_cost=False)  # half of the 0.094 ms node sum
    assert out["layer_ms"] == pytest.approx({"conv1": 0.03, "fc": 0.015}) and out["other_ms"] == pytest.approx(0.002)


def test_cli_profile_engines_json(tmp_path, monkeypatch):
    from tests.conftest import run_cli

    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        "profile-engines",
        "cifar_resnet20",
        "--input-shape",
        "1x3x32x32",
        "--cache",
        "eng",
        "--max-builds",
        "3",
        "--holdout",
        "1",
        "--rounds",
        "2",
        "--runs-per-round",
        "3",
        "--layer-runs",
        "20",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["engines"] == 3 and summary["builds_new"] == 3
    assert Profile.load(summary["profile"]).backend == "onnxruntime"
    assert "3 engines to build" in err
