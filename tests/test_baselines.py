"""Every search method meets the predicted-latency budget; ITCP scores at least as well as each baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from itcp_deploy.errors import InfeasibleError, UnknownNameError
from itcp_deploy.perfmodel import PerfModel
from itcp_deploy.plan import PruningPlan
from itcp_deploy.search import SEARCH_METHODS, SearchInputs, run_method
from itcp_deploy.search.baselines import importance_from_scores, linear_slopes_ms
from itcp_deploy.search.front import method_fronts, pareto_filter
from tests.conftest import run_cli
from tests.synthetic_spaces import random_scores, resnet_space, staircase_ms, synthetic_profile

BASELINES = ("uniform", "flops", "global-magnitude", "knapsack-linear")


@pytest.fixture(scope="module")
def inputs() -> SearchInputs:
    space = resnet_space(3)
    tables = {}
    for layer in space.layers:
        cin, cout = space.group(layer.in_group).candidates, space.group(layer.out_group).candidates
        tables[layer.name] = np.array([[staircase_ms(layer, a, b) for b in cout] for a in cin])
    return SearchInputs(space, PerfModel(space, tables, 0.05), random_scores(space, seed=3))


def test_unknown_method_error_names_torch_pruning_peers_too():
    from itcp_deploy.names import check_search

    check_search("tp-taylor")
    with pytest.raises(UnknownNameError, match="did you mean 'tp-taylor'.*tp-taylor-round"):
        check_search("tp-taylr")


def test_registry_lists_every_method():
    assert set(SEARCH_METHODS) == {"itcp", *BASELINES}
    with pytest.raises(UnknownNameError, match="did you mean 'uniform'"):
        SEARCH_METHODS.get("uniformm")


@pytest.mark.parametrize("speedup", [1.5, 2.5])
@pytest.mark.parametrize("method", BASELINES)
def test_baseline_meets_budget_and_itcp_beats_it(inputs, method, speedup):
    budget = inputs.perf_model.dense_ms() / speedup
    sol = run_method(method, inputs, budget, bins=2000)
    assert sol.method == method
    assert sol.cost == pytest.approx(inputs.perf_model.predict_ms(sol.widths))
    # equal-ish: uniform moves every group at once, so its steps are coarse
    assert (0.6 if method == "uniform" else 0.8) * budget <= sol.cost <= budget
    best = run_method("itcp", inputs, budget, bins=2000)
    assert best.cost <= budget
    assert best.score >= sol.score - 1e-9


@pytest.mark.parametrize("method", ["itcp", *BASELINES])
def test_infeasible_budget_raises(inputs, method):
    with pytest.raises(InfeasibleError, match="ms"):
        run_method(method, inputs, 0.01)


def test_global_magnitude_uses_given_channel_importance(inputs):
    # a few dominant channels per group, except the stage-3 group whose channels all matter alike: normalised
    # by each group's mean, the stage-3 channels outrank the tails of every other group
    importance = {g.name: np.r_[10.0, 10.0, np.full(g.full_width - 2, 0.01)] for g in inputs.space.prunable}
    importance["layer3.0.conv2"] = np.full(64, 1.0)
    given = SearchInputs(inputs.space, inputs.perf_model, inputs.scores, importance)
    sol = run_method("global-magnitude", given, inputs.perf_model.dense_ms() / 2)
    assert sol.widths["layer3.0.conv2"] == 64
    assert sol.cost <= inputs.perf_model.dense_ms() / 2


def test_importance_from_scores_spreads_gains_over_channels():
    imp = importance_from_scores((4, 8, 16), np.array([1.0, 3.0, 4.0]))
    assert imp.shape == (16,)
    assert np.allclose(imp[:4], 0.25) and np.allclose(imp[4:8], 0.5) and np.allclose(imp[8:], 0.125)


def test_linear_slopes_are_marginal_latency_at_full_width(inputs):
    slopes = linear_slopes_ms(inputs.space, inputs.perf_model)
    assert set(slopes) == {g.name for g in inputs.space.prunable}
    assert all(s >= 0 for s in slopes.values())
    assert slopes["layer3.0.conv2"] > slopes["layer3.1.conv1"] > 0  # the stage group feeds many more layers


def test_fronts_are_monotone_and_itcp_dominates(inputs, tmp_path):
    fronts = method_fronts(inputs, ["itcp", *BASELINES], points=5, bins=1000)
    for front in fronts.values():
        assert front == pareto_filter(front)
    itcp = fronts["itcp"]
    for name in BASELINES:
        for cost, score in fronts[name]:
            reachable = [s for c, s in itcp if c <= cost]
            assert reachable and max(reachable) >= score - 0.05 * abs(score)
    from itcp_deploy.search.plot import plot_fronts

    plot_fronts(fronts, tmp_path / "pareto.png", dense_ms=inputs.perf_model.dense_ms())
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def perf_model_file(tmp_path):
    """A perf model fitted on the space ``build_space`` gives the real CIFAR ResNet-20 (same names)."""
    fitted = PerfModel.__new__(PerfModel)
    from itcp_deploy.perfmodel import fit

    fitted = fit(synthetic_profile(resnet_space(3)))
    path = tmp_path / "perf_model.json"
    fitted.save(path)
    return path


def test_cli_search_writes_a_plan_within_budget(perf_model_file, tmp_path):
    out = tmp_path / "widths.json"
    code, stdout, err = run_cli(
        "search",
        "cifar_resnet20",
        "--perf-model",
        str(perf_model_file),
        "--speedup",
        "2",
        "--criterion",
        "l1-fraction",
        "-o",
        str(out),
        "--json",
    )
    assert code == 0, err
    assert "profiled dense latency" in err  # --speedup says which dense latency it divided
    plan = PruningPlan.load(out)
    assert json.loads(stdout)["widths"] == plan.widths
    assert plan.predicted_ms <= plan.budget_ms
    perf = PerfModel.load(perf_model_file)  # the dense engine as profiled, not the fit's prediction of it
    assert perf.dense_measured_ms and perf.dense_measured_ms != pytest.approx(perf.dense_ms(), rel=1e-9)
    assert plan.budget_ms == pytest.approx(perf.dense_measured_ms / 2)
    assert plan.pareto and plan.pareto[-1][1] == pytest.approx(plan.score)


def test_cli_search_usage_errors(perf_model_file, tmp_path):
    base = ("search", "cifar_resnet20", "--perf-model", str(perf_model_file), "-o", str(tmp_path / "w.json"))
    code, _, err = run_cli(*base, "--sla-ms", "1", "--speedup", "2")
    assert code == 2 and "exactly one" in err
    code, _, err = run_cli(*base, "--sla-ms", "1", "--method", "greedy")
    assert code == 2 and "unknown search method" in err
    code, _, err = run_cli(*base, "--sla-ms", "0.001", "--criterion", "l1-fraction")
    errors = [line for line in err.splitlines() if not line.startswith("warning: ")]  # cifar_resnet20: random
    assert code == 2 and "minimum achievable" in err and len(errors) == 1, err
