"""Adaptive profiling (issue 24): rounds of builds until the judge is satisfied or the budget is spent, resumable
from the cache; and a user's small residual net whose fit meets max(1.5 x noise, 2%) with default settings."""

from __future__ import annotations

import pytest
import torch

from bench.small_residual import SmallResidual
from itcp_deploy.profiling.design import FIRST_BUILDS, STEP_BUILDS, DesignConfig, first_round, next_round
from itcp_deploy.profiling.profiler import run_profiling
from tests.test_profiler import EXTRA, fast_config, tiny_setup


class Judge:
    """Satisfied once the profile has ``enough`` engines; records the profiles it saw."""

    def __init__(self, enough: int) -> None:
        self.enough, self.seen = enough, []

    def __call__(self, profile):
        self.seen.append(profile)
        return len(profile.engines) >= self.enough, {}


def _config(tmp_path, max_builds: int):
    return fast_config(tmp_path, design=DesignConfig(max_builds=max_builds, holdout=10, tries=64))


def test_rounds_stop_when_the_judge_is_satisfied_and_replay_from_the_cache(tmp_path):
    model, space = tiny_setup()
    judge = Judge(FIRST_BUILDS + STEP_BUILDS)
    profile, summary = run_profiling(model, space, _config(tmp_path, 32), judge=judge)
    assert len(profile.engines) == FIRST_BUILDS + STEP_BUILDS and summary.rounds == 2
    # latency and layers of each new engine per round, then every engine's latency again in one session (the
    # dense engine's extra sessions in the first round and in that one)
    n = FIRST_BUILDS + STEP_BUILDS
    assert summary.measurements_new == 2 * FIRST_BUILDS + 2 * STEP_BUILDS + n + 2 * EXTRA
    assert [e.latency for e in profile.engines] != [judge.seen[1].engines[i].latency for i in range(n)]
    assert [e.latency for e in profile.engines] == [e.latency for e in judge.seen[-1].engines]  # confirmed there
    assert [len(p.engines) for p in judge.seen] == [FIRST_BUILDS, n, n]
    first_holdouts = [e.engine_id for e in judge.seen[0].by_role("holdout")]
    roles = {e.engine_id: e.role for e in profile.engines}
    assert [roles[i] for i in first_holdouts[:2]] == ["design", "design"]  # the two oldest holdouts are fitted now
    assert len(profile.by_role("holdout")) == 4 and all(e.layer_ms for e in profile.engines)
    again, second = run_profiling(model, space, _config(tmp_path, 32), judge=Judge(FIRST_BUILDS + STEP_BUILDS))
    assert second.builds_new == 0 and second.measurements_new == 0
    assert [e.engine_id for e in again.engines] == [e.engine_id for e in profile.engines]


def test_a_good_round_not_confirmed_in_the_one_window_profiles_on(tmp_path):
    """The judge said good on the rounds' own windows, not on the one window the model is fitted on (MNASNet at
    224: 1.9% then 2.6%): profiling goes on instead of stopping above the bar."""
    model, space = tiny_setup()
    verdicts = iter([False, True, False, True, True])  # round 1, round 2, its window, round 3, its window
    seen = []

    def judge(profile):
        seen.append(len(profile.engines))
        return next(verdicts), {}

    profile, summary = run_profiling(model, space, _config(tmp_path, 32), judge=judge)
    n = FIRST_BUILDS + 2 * STEP_BUILDS
    assert seen == [FIRST_BUILDS, FIRST_BUILDS + STEP_BUILDS, FIRST_BUILDS + STEP_BUILDS, n, n]
    assert summary.rounds == 3 and len(profile.engines) == n


def test_budget_caps_the_rounds_and_no_judge_means_the_fixed_design(tmp_path):
    model, space = tiny_setup()
    never = Judge(10**6)
    profile, summary = run_profiling(model, space, _config(tmp_path, 18), judge=never)
    assert len(profile.engines) == 18 and summary.rounds == 3 and len(never.seen) == 2
    fixed, once = run_profiling(model, space, fast_config(tmp_path / "fixed"))
    assert len(fixed.engines) == 6 and once.measurements_new == 12 + EXTRA  # fixed 6 builds, measured once
    assert len(fixed.by_role("holdout")) == 2


def test_targeted_designs_measure_the_cells_of_the_layers_that_err():
    from tests.synthetic_spaces import resnet_space

    space = resnet_space(1)
    config = DesignConfig(max_builds=40, holdout=4, tries=64)
    plans = first_round(space, config)
    layer = space.layers[-2]

    def new_cells(weights):
        more = next_round(space, plans, weights, config, 1)
        known = {(w[layer.in_group], w[layer.out_group]) for w in
                 (space.complete(p.widths) for p in more[:len(plans)] if p.role != "holdout")}
        added = [space.complete(p.widths) for p in more[len(plans):] if p.role == "design"]
        return len({(w[layer.in_group], w[layer.out_group]) for w in added} - known), len(more) - len(plans)

    targeted, builds = new_cells({layer.name: 100.0})
    assert builds == STEP_BUILDS and targeted == 2  # both targeted designs measure unseen cells of that layer


def test_a_focus_draws_half_the_designs_where_the_search_will_look():
    """With the SLA's latency fraction known, half the first round's designs and holdouts and every other
    targeted design use widths near sqrt(focus) of each group's (uniform plans sit at a fraction of the latency
    a 1.5x SLA asks for); the other holdouts stay uniform, so the error is measured in both places."""
    from tests.synthetic_spaces import resnet_space

    space, focus = resnet_space(1), 1 / 1.5
    config = DesignConfig(max_builds=40, holdout=4, tries=16, focus=focus)

    def near(widths: dict[str, int]) -> bool:
        dist = {g.name: abs(widths[g.name] / g.full_width - focus ** 0.5) for g in space.prunable}
        return all(d <= 0.2 or d == min(abs(w / g.full_width - focus ** 0.5) for w in g.candidates)
                   for g in space.prunable for d in [dist[g.name]])

    plans = first_round(space, config)
    designs = [p for p in plans if p.role == "design"][1:]  # after the all-minimum plan
    assert sum(near(p.widths) for p in designs) >= len(designs) // 2
    uniform = first_round(space, DesignConfig(max_builds=40, holdout=4, tries=16))
    assert sum(near(p.widths) for p in uniform if p.role == "design") < len(designs) // 2
    holdouts = [p for p in plans if p.role == "holdout"]
    assert len(holdouts) == sum(p.role == "holdout" for p in uniform) == 4
    assert 2 <= sum(near(p.widths) for p in holdouts) < 4  # validated where it is searched, and elsewhere
    added = next_round(space, plans, {}, config, 1)[len(plans):]
    assert any(near(p.widths) for p in added if p.role == "design")
    assert first_round(space, config) == plans  # deterministic for a seed


def test_small_residual_net_fit_meets_the_bar_with_default_settings(tmp_path):
    """Before issue 24: 7.7-8.4% held-out error at 0.1-0.6% noise (the tables' residuals, interpolated across
    ONNX Runtime's 16-channel steps, predicted 17 us for a 55 us conv)."""
    from itcp_deploy.engines.build import EngineSpec
    from itcp_deploy.perfmodel import fit
    from itcp_deploy.pipeline.config import ProfileSettings
    from itcp_deploy.pipeline.stages import profile_engines
    from itcp_deploy.pruning import build_space

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = SmallResidual().eval()
    space = build_space(model, (1, 3, 32, 32))
    profile, summary = profile_engines(model, space, EngineSpec(), ProfileSettings(cache_dir=str(tmp_path)))
    report = fit(profile, force=True).report
    assert report.mape_pct <= max(1.5 * profile.noise_pct, 2.0), (report, profile.builds)
    assert report.mape_pct < report.flops_mape_pct and not report.rejected
    assert profile.builds <= 32 and summary.rounds >= 1


def test_measured_plans_are_cached_and_refit_learns_them(tmp_path):
    from dataclasses import replace

    from itcp_deploy.perfmodel import fit
    from itcp_deploy.perfmodel.fit import refit
    from itcp_deploy.profiling.profiler import measure_plans
    from tests.synthetic_spaces import resnet_space, synthetic_profile

    model, space = tiny_setup()
    plan = {g.name: g.candidates[1] for g in space.prunable}
    engines = measure_plans(model, space, [plan, space.full_widths()], fast_config(tmp_path))
    assert [e.role for e in engines] == ["plan"] and engines[0].layer_ms  # the dense plan is the reference
    assert measure_plans(model, space, [plan], fast_config(tmp_path))[0].latency == engines[0].latency  # cached

    space = resnet_space(2)
    profile = synthetic_profile(space, n_design=4, noise=0.002, seed=4)
    plans = [replace(e, role="plan", engine_id=f"plan{i}")
             for i, e in enumerate(synthetic_profile(space, n_design=30, n_holdout=0, noise=0.002, seed=8).engines[1:])]
    before = fit(profile, force=True)
    merged, after = refit(profile, plans)
    assert len(merged.engines) == len(profile.engines) + len(plans) and after.report.n_design == 5 + len(plans)

    def error(m):
        return sum(abs(m.predict_ms(e.widths) - e.latency.median_ms) for e in plans)

    assert error(after) < 0.5 * error(before)


def test_a_contended_plan_session_is_measured_again(monkeypatch, tmp_path):
    """A probe's session whose dense engine ran far slower at its median than at its fastest (more busy
    processes than cores) is measured again, and the least contended session scales the plans."""
    from dataclasses import replace

    import itcp_deploy.profiling.profiler as profiler

    model, space = tiny_setup()
    plan = {g.name: g.candidates[1] for g in space.prunable}
    real, returned = profiler._measure_round, []

    def contended_first(run, plans, started, session=None):
        profile = real(run, plans, started, session)
        if not returned:  # the first window: the dense engine preempted in most of its runs
            dense = profile.engines[0]
            slow = replace(dense.latency, median_ms=3 * dense.latency.median_ms)
            profile = replace(profile, engines=[replace(dense, latency=slow), *profile.engines[1:]])
        returned.append((session, profile))
        return profile

    monkeypatch.setattr(profiler, "_measure_round", contended_first)
    engines = profiler.measure_plans(model, space, [plan], fast_config(tmp_path), reference_ms=1.0)
    assert len(returned) >= 2 and returned[1][0] != returned[0][0]
    kept = min((p for _, p in returned), key=lambda p: p.engines[0].latency.slowdown())
    assert kept is not returned[0][1]
    assert engines[0].latency.median_ms == pytest.approx(
        kept.engines[1].latency.median_ms / kept.engines[0].latency.median_ms)


def test_the_build_budget_reaches_run_profile_engines_and_prune(monkeypatch, tmp_path):
    import pytest

    import itcp_deploy.api as api
    import itcp_deploy.pipeline.driver as driver
    import itcp_deploy.profiling.profiler as profiler
    from tests.conftest import run_cli

    class Stop(Exception):
        pass

    seen = []

    def fake_stages(config, inputs, log=None, progress=None, **kw):
        seen.append(config.profile)
        raise Stop

    def fake_profile_model(spec, shape, config, judge=None, **kw):
        seen.append((config.design, judge))
        raise Stop

    monkeypatch.setattr(driver, "run_stages", fake_stages)
    monkeypatch.setattr(profiler, "profile_model", fake_profile_model)
    common = ("cifar_resnet20", "--input-shape", "1x3x32x32", "--max-builds", "14")
    sla = ("--data", "synthetic:train=64,test=32", "-o", str(tmp_path / "o"), "--speedup", "2", "--epochs", "0")
    for args in (("run", *common, *sla), ("profile-engines", *common, *sla),
                 ("profile-engines", *common, "--no-adaptive", "-o", str(tmp_path / "p.json"))):
        with pytest.raises(Stop):
            run_cli(*args)
    from itcp_deploy import PruneOptions
    from itcp_deploy.pipeline.config import ProfileSettings

    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))]
    with pytest.raises(Stop):
        api.prune(SmallResidual().eval(), torch.randn(1, 3, 32, 32), speedup=2.0, score_loader=batches,
                  out_dir=tmp_path / "api", options=PruneOptions(profile=ProfileSettings(max_builds=14)))
    assert [s.max_builds for s in seen[:2]] == [14, 14] and seen[0].adaptive and seen[1].adaptive
    design, judge = seen[2]
    assert design.max_builds == 14 and not design.adaptive and judge is not None
    assert seen[3].max_builds == 14 and seen[3].adaptive
