"""Width and precision in one DP (issue 27): the solve over (width, precision) states equals brute force, and
with fp32 alone it is exactly today's width solve."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from itcp_deploy.errors import UsageError
from itcp_deploy.search.dp import min_cost, solve
from itcp_deploy.search.precision import (
    FP32,
    INT8,
    MIXED,
    agreement_aim,
    fp32_costs,
    group_states,
    int8_groups,
    keep_fp32,
    mixed_problem,
    plan_states,
    split_plan,
    split_states,
)
from itcp_deploy.search.problem import problem_from_tables
from itcp_deploy.space import CandidateGrid
from tests.synthetic_spaces import random_scores, resnet_space, staircase_tables

#: 16 -> (8, 16), 32 -> (32,), 64 -> (32, 64): six prunable groups, 1024 mixed plans to enumerate
SMALL = CandidateGrid(step_small=8, step_large=32, small_max=16, min_width=8)


def combo_tables(space, rng, integer=True):
    """Per layer and precision pair: int8 a random 40-90% of fp32, plus a Q/DQ cost on the input where the pair
    changes precision (proportional to the input width)."""
    fp32 = staircase_tables(space)
    out = {}
    for layer in space.layers:
        cin = np.array(space.group(layer.in_group).candidates, dtype=float)[:, None]
        speed, qdq = rng.uniform(0.4, 0.9), rng.uniform(0.5e-3, 3e-3)
        tabs = {}
        for p_in, p_out in itertools.product(MIXED, MIXED):
            t = fp32[layer.name] * (speed if p_out == INT8 else 1.0) + (qdq * cin / 8 if p_in != p_out else 0.0)
            tabs[(p_in, p_out)] = np.ceil(t * 1000) if integer else t  # integer: whole microseconds
        out[layer.name] = tabs
    return out


def int8_costs(space, rng):
    return {g.name: float(rng.uniform(0.0, 0.8)) for g in space.prunable}


def brute_force(problem, budget):
    best, groups = -np.inf, list(problem.candidates)
    for combo in itertools.product(*(problem.candidates[g] for g in groups)):
        plan = dict(zip(groups, combo, strict=True))
        if problem.cost(plan) <= budget:
            best = max(best, problem.score(plan))
    return best


def test_states_are_width_then_precision_and_fixed_groups_stay_fp32():
    space = resnet_space(1, SMALL)
    states = group_states(space)
    assert states["conv1"] == ((8, INT8), (8, FP32), (16, INT8), (16, FP32))
    assert states["input"] == ((3, FP32),) and states["output"] == ((10, FP32),)
    with pytest.raises(UsageError, match="subset"):
        group_states(space, ("fp16",))


def test_mixed_dp_equals_brute_force():
    """Integer costs, budget between integers: the exact DP over states finds the brute-force optimum."""
    space = resnet_space(1, SMALL)
    rng = np.random.default_rng(27)
    mixed = 0
    for trial in range(4):
        tables = combo_tables(space, rng)
        problem = mixed_problem(space, tables, 50.0, random_scores(space, seed=trial), int8_costs(space, rng))
        low = min_cost(problem)[0]
        for frac in (0.2, 0.5, 0.8):
            budget = np.floor(low + (problem.cost(problem.widest()) - low) * frac) + 0.5
            sol = solve(problem, budget, bins=8000)
            assert sol.exact and sol.cost <= budget
            assert sol.score == pytest.approx(brute_force(problem, budget), abs=1e-9)
            mixed += 0 < len(int8_groups(sol.widths)) < len(space.prunable)
    assert mixed > 0  # some optima really mix precisions


def test_qdq_cost_sits_on_the_edge_where_precision_changes():
    """A layer's cost is its output group's precision plus a boundary where the input group differs."""
    space = resnet_space(1, SMALL)
    tables = combo_tables(space, np.random.default_rng(0))
    problem = mixed_problem(space, tables, 0.0, random_scores(space), int8_costs(space, np.random.default_rng(1)))
    full = {g.name: (g.candidates[-1], FP32) for g in space.groups}
    one = {**full, "layer1.0.conv1": (16, INT8)}  # conv1 of block 1 at int8: Q on its input, DQ after conv2's input
    change = problem.cost(one) - problem.cost(full)
    conv1, conv2 = tables["layer1.0.conv1"], tables["layer1.0.conv2"]
    want = (conv1[(FP32, INT8)][-1, -1] - conv1[(FP32, FP32)][-1, -1]
            + conv2[(INT8, FP32)][-1, -1] - conv2[(FP32, FP32)][-1, -1])
    assert change == pytest.approx(want)


def test_int8_cost_lowers_the_score_of_int8_states_only():
    space = resnet_space(1, SMALL)
    widths = random_scores(space)
    problem = mixed_problem(space, combo_tables(space, np.random.default_rng(0)), 0.0, widths,
                            {g.name: 0.25 for g in space.prunable})
    states = problem.candidates["conv1"]
    assert problem.scores["conv1"].tolist() == pytest.approx(
        [widths["conv1"][space.group("conv1").index(w)] - (0.25 if p == INT8 else 0.0) for w, p in states])
    with pytest.raises(UsageError, match="no INT8 cost"):
        mixed_problem(space, combo_tables(space, np.random.default_rng(0)), 0.0, widths, {})


def test_all_fp32_plan_is_exactly_todays_plan():
    """fp32 alone: the same costs and scores as the width problem, so the same plan at every budget."""
    space = resnet_space(3)
    rng = np.random.default_rng(5)
    tables, scores = combo_tables(space, rng, integer=False), random_scores(space)
    today = problem_from_tables(space, {k: v[(FP32, FP32)] for k, v in tables.items()}, 0.05, scores)
    fp32 = mixed_problem(space, tables, 0.05, scores, precisions=(FP32,))
    for frac in (0.3, 0.6, 0.9):
        budget = today.cost(today.widest()) * frac
        want, got = solve(today, budget, bins=300), solve(fp32, budget, bins=300)
        widths, precisions = split_plan(got.widths)
        assert widths == want.widths and set(precisions.values()) == {FP32}
        assert got.cost == pytest.approx(want.cost) and got.score == pytest.approx(want.score)


def test_int8_pays_where_it_is_cheap_in_score():
    """Free INT8 (no loss) and a budget only INT8 meets: the plan quantizes; a prohibitive cost: it prunes."""
    space = resnet_space(1, SMALL)
    tables = combo_tables(space, np.random.default_rng(2), integer=False)
    scores = random_scores(space)
    free = mixed_problem(space, tables, 0.0, scores, {g.name: 0.0 for g in space.prunable})
    dear = mixed_problem(space, tables, 0.0, scores, {g.name: 1e3 for g in space.prunable})
    budget = 0.8 * free.cost({g.name: (g.candidates[-1], FP32) for g in space.groups})
    assert int8_groups(solve(free, budget).widths)
    assert not int8_groups(solve(dear, budget).widths)
    plan = {g: list(s) for g, s in solve(free, budget).widths.items()}  # as read back from JSON
    assert free.cost(plan) <= budget


def _inverted_residual_space():
    """input -> expand 1x1 (g1) -> depthwise 3x3 (g1 -> g1) -> project 1x1 (g2) -> linear: a layer reading and
    writing one group, which can only be at one precision."""
    from itcp_deploy.space import ChannelGroup, LayerSpec, PruningSpace

    layers = (LayerSpec("expand", "conv", "input", "g1", 3, 32, (1, 1), in_hw=(16, 16), out_hw=(16, 16)),
              LayerSpec("dw", "conv", "g1", "g1", 32, 32, (3, 3), (1, 1), (1, 1), 32, (16, 16), (16, 16)),
              LayerSpec("project", "conv", "g1", "g2", 32, 16, (1, 1), in_hw=(16, 16), out_hw=(16, 16)),
              LayerSpec("linear", "linear", "g2", "output", 16, 10))
    groups = (ChannelGroup("input", 3, (3,), fixed=True), ChannelGroup("g1", 32, (8, 16, 24, 32)),
              ChannelGroup("g2", 16, (8, 16)), ChannelGroup("output", 10, (10,), fixed=True))
    return PruningSpace("ir", (1, 3, 16, 16), groups, layers)


def test_a_layer_within_one_group_needs_one_precision_and_the_dp_stays_exact():
    space = _inverted_residual_space()
    rng = np.random.default_rng(3)
    tables = combo_tables(space, rng)
    for layer in ("dw",):  # only its same-precision tables exist, as a mixed fit gives them
        tables[layer] = {c: t for c, t in tables[layer].items() if c[0] == c[1]}
    problem = mixed_problem(space, tables, 10.0, random_scores(space), int8_costs(space, rng))
    low = min_cost(problem)[0]
    for frac in (0.3, 0.6):
        budget = np.floor(low + (problem.cost(problem.widest()) - low) * frac) + 0.5
        sol = solve(problem, budget, bins=8000)
        assert sol.score == pytest.approx(brute_force(problem, budget), abs=1e-9)
    plan = {"input": (3, FP32), "g1": (16, INT8), "g2": (8, FP32), "output": (10, FP32)}
    dw = tables["dw"][(INT8, INT8)][1, 1]  # the depthwise layer at g1's state, from the diagonal
    others = (tables["expand"][(FP32, INT8)][0, 1] + tables["project"][(INT8, FP32)][1, 0]
              + tables["linear"][(FP32, FP32)][0, 0])
    assert problem.cost(plan) == pytest.approx(10.0 + dw + others)


def test_a_removed_group_has_one_fp32_state_and_is_never_named_int8():
    """Width 0 removes the residual branch: no layer is left to quantize, so the search offers (0, fp32) only and a
    plan never names a removed group INT8 (its engine has none of the group's layers: the mixed build refused it)."""
    from dataclasses import replace

    plain = resnet_space(1, SMALL)  # its residual branches' inner groups, marked removable as build_space does
    space = replace(plain, groups=tuple(replace(g, removable=g.name.endswith(".conv1") and g.name != "conv1")
                                        for g in plain.groups)).with_removal()
    removable = [g for g in space.groups if g.removable]
    assert removable and all(g.candidates[0] == 0 for g in removable)
    states = group_states(space)
    for g in removable:
        assert states[g.name][0] == (0, FP32) and (0, INT8) not in states[g.name]
        assert (g.candidates[1], INT8) in states[g.name]
    assert group_states(space, (INT8,))[removable[0].name][0] == (0, INT8)  # one state, whatever is searched
    assert int8_groups({removable[0].name: (0, INT8), "conv1": (8, INT8), "x": (16, FP32)}) == ("conv1",)


def test_held_groups_have_no_int8_state_and_the_dp_stays_exact_over_the_rest():
    """The final stage's precision control holds groups at FP32: their INT8 states are gone, and the DP over
    what is left still equals brute force."""
    space = resnet_space(1, SMALL)
    rng = np.random.default_rng(5)
    held = ("conv1", "layer1.0.conv1")
    problem = mixed_problem(space, combo_tables(space, rng), 50.0, random_scores(space), int8_costs(space, rng),
                            fp32_groups=held)
    assert all(p == FP32 for g in held for _, p in problem.candidates[g])
    assert any(p == INT8 for _, p in problem.candidates["layer2.0.conv1"])
    low = min_cost(problem)[0]
    budget = np.floor(low + (problem.cost(problem.widest()) - low) * 0.3) + 0.5
    sol = solve(problem, budget, bins=8000)
    assert sol.exact and not set(held) & set(int8_groups(sol.widths))
    assert sol.score == pytest.approx(brute_force(problem, budget), abs=1e-9)
    with pytest.raises(UsageError, match="at fp32"):
        group_states(space, (INT8,), fp32_groups=held)


def test_keep_fp32_takes_the_groups_that_flip_most_until_the_excess_is_covered():
    alone = {"a": 0.01, "b": 0.04, "c": 0.02, "d": 0.0}
    assert keep_fp32(alone, measured=0.05, allowed=0.05) == ()  # agreement met: nothing held
    # 8% disagree, 5% allowed: 3/8 of the summed 7% (2.6%) to remove: b alone (4%) covers it
    assert keep_fp32(alone, measured=0.08, allowed=0.05) == ("b",)
    # 20% disagree, 5% allowed: 3/4 of 7% (5.25%): b, then c
    assert keep_fp32(alone, measured=0.20, allowed=0.05) == ("b", "c")
    assert keep_fp32({"a": 0.0, "b": 0.0}, measured=0.2, allowed=0.05) == ("a", "b")  # flips only together
    assert keep_fp32({}, measured=0.2, allowed=0.05) == ()
    # with what each costs to hold (ms): b, which moves most, takes 100x c's time; c and a cover the excess
    assert keep_fp32(alone, measured=0.08, allowed=0.05, cost={"a": 1.0, "b": 10.0, "c": 0.1, "d": 0.1}) == ("a", "c")


def test_fp32_costs_are_the_time_each_int8_group_saves():
    space = resnet_space(1, SMALL)
    rng = np.random.default_rng(3)
    problem = mixed_problem(space, combo_tables(space, rng), 5.0, random_scores(space), int8_costs(space, rng))
    states = {g.name: (g.candidates[-1], INT8 if not g.fixed else FP32) for g in space.groups}
    costs = fp32_costs(problem, states, ("conv1", "layer2.0.conv1"))
    for g, ms in costs.items():
        assert ms == pytest.approx(problem.cost({**states, g: (states[g][0], FP32)}) - problem.cost(states))
        assert ms > 0  # INT8 is 40-90% of FP32 in these tables: holding a group at FP32 costs time


def test_the_agreement_aim_covers_the_measurements_noise():
    """1,000 images at 0.95: 1.645 standard errors (0.0113) above; fewer images, a wider margin; 1 and 0 exact."""
    assert agreement_aim(0.95, 1000) == pytest.approx(0.95 + 1.645 * (0.95 * 0.05 / 1000) ** 0.5)
    assert agreement_aim(0.95, 128) > agreement_aim(0.95, 1000) > 0.95
    assert agreement_aim(1.0, 1000) == 1.0 and agreement_aim(0.0, 1000) == 0.0 and agreement_aim(0.9, 0) == 1.0


def test_plan_states_is_split_states_inverse_and_checks_the_int8_groups():
    space = resnet_space(1, SMALL)
    widths = {g.name: g.candidates[0] for g in space.prunable}
    states = plan_states(space, widths, ("layer1.0.conv1",))
    assert split_states(states) == ({**widths, **{g.name: g.candidates[-1] for g in space.groups if g.fixed}},
                                    ("layer1.0.conv1",))
    fixed = next(g.name for g in space.groups if g.fixed)
    with pytest.raises(UsageError, match="cannot be INT8"):
        plan_states(space, widths, (fixed,))
