"""A mixed-precision profile (issue 27): the designs quantize random groups, the cache key says which, and the
engines record their INT8 groups; the plans stay deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from itcp_deploy.profiling.design import DesignConfig, design_plans, engine_id, with_precisions
from itcp_deploy.profiling.profiler import run_profiling
from tests.test_profiler import fast_config, tiny_setup


def _calib(tmp_path, size: int = 16):
    path = tmp_path / f"calib{size}.npz"
    np.savez(path, inputs=np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32),
             indices=np.arange(8))
    return str(path)


def test_mixed_designs_quantize_random_groups_but_the_dense_plan(tmp_path):
    _, space = tiny_setup()
    config = fast_config(tmp_path, precision="mixed", design=DesignConfig(max_builds=12, holdout=3, tries=8))
    plans = with_precisions(design_plans(space, config.design), space, config)
    assert plans[0].role == "dense" and plans[0].int8_groups == () and plans[0].engine_id == engine_id(plans[0].widths)
    prunable = {g.name for g in space.prunable}
    assert all(set(p.int8_groups) <= prunable for p in plans)
    assert len({p.int8_groups for p in plans[1:]}) > 1  # not all alike
    assert with_precisions(plans, space, config) == plans  # settled plans keep their groups
    widths = plans[1].widths
    assert len({engine_id(widths), engine_id(widths, ()), engine_id(widths, ("conv1",))}) == 3
    cells = {(la.name, la.in_group in p.int8_groups, la.out_group in p.int8_groups)
             for p in plans for la in space.layers}
    assert {c[1:] for c in cells if c[0] == "conv3"} == {(False, False), (False, True), (True, False), (True, True)}
    assert plans == with_precisions(design_plans(space, config.design), space, config)
    fp32 = fast_config(tmp_path, design=config.design)
    assert with_precisions(design_plans(space, config.design), space, fp32) == design_plans(space, config.design)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A 6-engine mixed profile of the tiny CNN, its config and its summary."""
    tmp = tmp_path_factory.mktemp("mixed-profile")
    model, space = tiny_setup()
    config = fast_config(tmp, precision="mixed", calib=_calib(tmp))
    profile, summary = run_profiling(model, space, config)
    return model, space, config, profile, summary, tmp


def test_mixed_profile_records_int8_groups_and_reuses_them(mixed):
    model, space, config, profile, summary, _ = mixed
    assert profile.precision == "mixed" and profile.quantization  # the ISA's INT8 settings
    assert summary.builds_new == 6
    quantized = [e for e in profile.engines if e.int8_groups]
    assert quantized and all(e.role != "dense" for e in quantized)
    again, second = run_profiling(model, space, config)
    assert second.builds_new == 0 and [e.int8_groups for e in again.engines] == [e.int8_groups for e in profile.engines]


def test_cache_key_says_which_groups_are_int8(tmp_path):
    from itcp_deploy.profiling.cache import ProfileCache
    from itcp_deploy.profiling.design import PlannedEngine
    from itcp_deploy.profiling.profiler import _Run

    model, space = tiny_setup()
    config = fast_config(tmp_path, precision="mixed", calib=_calib(tmp_path))
    widths = space.full_widths()
    with ProfileCache(tmp_path / "cache") as cache:
        run = _Run(model, space, config, cache, lambda *a: None)
        keys = {run.key(PlannedEngine("x", "design", widths, groups), "build").digest()
                for groups in ((), ("conv1",), ("conv3",), ("conv1", "conv3"))}
    assert len(keys) == 4


def test_search_on_a_mixed_perf_model_plans_widths_and_precisions(mixed):
    """profile --precision mixed -> fit -> search: the plan's INT8 groups and widths meet the budget as the
    mixed perf model predicts them, and widths.json keeps them."""
    from itcp_deploy.perfmodel import fit
    from itcp_deploy.pipeline.planning import SearchConfig, plan_widths
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.target import LatencyTarget

    _, space, _, profile, _, tmp_path = mixed
    perf = fit(profile, force=True)
    perf.save(tmp_path / "perf.json")
    config = SearchConfig("tests.test_profiler:Tiny", str(tmp_path / "perf.json"), LatencyTarget(speedup=1.2),
                          data="synthetic:classes=10,size=16,train=64,test=32", trust_code=True, bins=200)
    plan = plan_widths(config)
    assert set(plan.int8_groups) <= {g.name for g in space.prunable}
    assert plan.predicted_ms == pytest.approx(perf.predict_ms(plan.widths, plan.int8_groups))
    assert plan.predicted_ms <= plan.budget_ms
    plan.save(tmp_path / "widths.json")
    assert PruningPlan.load(tmp_path / "widths.json").int8_groups == plan.int8_groups


def test_cli_profile_engines_precision_mixed(tmp_path, monkeypatch):
    """``--precision mixed`` reaches the profiler: its engines quantize groups (``run`` and ``prune()`` with it:
    ``tests/test_mixed_run.py``)."""
    import json

    from itcp_deploy.profiling.records import Profile
    from tests.conftest import run_cli

    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("profile-engines", "cifar_resnet20", "--input-shape", "1x3x32x32", "--cache", "eng",
                             "--precision", "mixed", "--calib", _calib(tmp_path, 32), "--max-builds", "3",
                             "--holdout", "1", "--rounds", "2", "--runs-per-round", "3", "--layer-runs", "20",
                             "--json")
    assert code == 0, err
    profile = Profile.load(json.loads(out)["profile"])
    assert profile.precision == "mixed" and any(e.int8_groups for e in profile.engines)


def test_prune_refuses_mixed_with_another_method_before_any_work(tmp_path):
    """Widths and precisions are chosen in ITCP's one solve: a baseline method with mixed is refused in one
    line before anything is profiled."""
    import torch

    from itcp_deploy import api
    from itcp_deploy.errors import UsageError

    model, _ = tiny_setup()
    batches = [(torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(UsageError, match="--precision mixed"):
        api.prune(model, torch.randn(1, 3, 16, 16), speedup=2, precision="mixed", score_loader=batches,
                  out_dir=tmp_path / "out", options=api.PruneOptions(method="uniform"))
    assert not (tmp_path / "out" / "profile.json").exists()
