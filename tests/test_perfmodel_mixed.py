"""The perf model of mixed-precision engines (issue 27): a table per layer and precision pair, fitted from
engines that quantize random groups, predicts held-out mixed plans; the DP over (width, precision) states
searches it; a profile at one precision fits exactly as before."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from itcp_deploy.errors import UsageError
from itcp_deploy.perfmodel import fit
from itcp_deploy.perfmodel.mixed import FP32, INT8, SAME, layer_combos
from itcp_deploy.perfmodel.model import PerfModel
from itcp_deploy.profiling.records import EngineMeasurement, LatencyStats, Profile
from itcp_deploy.search.dp import solve
from itcp_deploy.search.precision import int8_groups, problem_from_mixed, split_plan
from tests.synthetic_spaces import random_scores, random_widths, resnet_space, staircase_ms, synthetic_profile


def true_ms(layer, w_in, w_out, combo):
    """Ground truth: INT8 layers 55% of FP32 time; a precision change costs a Q/DQ pass over the input."""
    base = staircase_ms(layer, w_in, w_out) * (0.55 if combo[1] == INT8 else 1.0)
    return base + (0.002 + 2e-7 * w_in * layer.in_hw[0] * layer.in_hw[1] if combo[0] != combo[1] else 0.0)


def true_latency(space, widths, groups):
    w, combos = space.complete(widths), layer_combos(space, groups)
    return 0.05 + sum(true_ms(la, w[la.in_group], w[la.out_group], combos[la.name]) for la in space.layers)


def mixed_profile(space, n_design=60, n_holdout=15, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    names = [g.name for g in space.prunable]

    def engine(i, widths, groups, role):
        w, combos = space.complete(widths), layer_combos(space, groups)
        layer_ms = {la.name: 1.4 * true_ms(la, w[la.in_group], w[la.out_group], combos[la.name])
                    * (1 + 2 * noise * rng.standard_normal()) for la in space.layers}
        total = true_latency(space, widths, groups) * (1 + noise * rng.standard_normal())
        stats = LatencyStats(total, total, total, total, total, 0.0, 100)
        return EngineMeasurement(f"e{i}", w, role, stats, layer_ms, int8_groups=tuple(sorted(groups)))

    def draw(i, role):
        return engine(i, random_widths(space, rng), [g for g in names if rng.random() < 0.5], role)

    engines = [engine(0, {}, [], "dense")] + [draw(i + 1, "design") for i in range(n_design)]
    engines += [draw(i + 1 + n_design, "holdout") for i in range(n_holdout)]
    return Profile(space.model, space.input_shape, "synthetic", "0", "mixed", "cpu", space, engines,
                   layer_source="isolated", noise_pct=100 * noise)


@pytest.fixture(scope="module")
def space():
    return resnet_space(2)


@pytest.fixture(scope="module")
def model(space):
    return fit(mixed_profile(space))


def test_fit_predicts_held_out_mixed_plans(space, model):
    assert model.precision_tables and not model.report.rejected
    assert model.report.mape_pct < 3.0
    rng = np.random.default_rng(5)
    names = [g.name for g in space.prunable]
    for _ in range(10):
        widths, groups = random_widths(space, rng), tuple(g for g in names if rng.random() < 0.5)
        assert model.predict_ms(widths, groups) == pytest.approx(true_latency(space, widths, groups), rel=0.05)


def test_boundary_cost_is_on_the_layers_that_change_precision(space, model):
    """Quantizing one inner group costs less on its own conv and more (a Q/DQ) on the layer reading it."""
    full = space.full_widths()
    one = ("layer2.1.conv1",)
    conv1 = model.layer_table("layer2.1.conv1", (FP32, INT8))[-1, -1] / model.layer_table("layer2.1.conv1")[-1, -1]
    conv2 = model.layer_table("layer2.1.conv2", (INT8, FP32))[-1, -1] / model.layer_table("layer2.1.conv2")[-1, -1]
    want1, want2 = (true_ms(space.layers[i], 32, 32, c) / true_ms(space.layers[i], 32, 32, SAME)
                    for i, c in ((_index(space, "layer2.1.conv1"), (FP32, INT8)),
                                 (_index(space, "layer2.1.conv2"), (INT8, FP32))))
    assert conv1 == pytest.approx(want1, rel=0.1) and conv2 == pytest.approx(want2, rel=0.1)
    assert model.predict_ms(full, one) != pytest.approx(model.predict_ms(full), rel=1e-3)


def _index(space, name):
    return next(i for i, la in enumerate(space.layers) if la.name == name)


def test_save_load_keeps_the_precision_tables(space, model, tmp_path):
    model.save(tmp_path / "perf.json")
    back = PerfModel.load(tmp_path / "perf.json")
    widths = random_widths(space, np.random.default_rng(1))
    assert back.predict_ms(widths, ("conv1",)) == pytest.approx(model.predict_ms(widths, ("conv1",)))


def test_single_precision_profile_has_no_precision_tables(space):
    plain = fit(synthetic_profile(space, n_design=30, n_holdout=8))
    assert not plain.precision_tables
    with pytest.raises(UsageError, match="no table"):
        plain.predict_ms({}, ("conv1",))
    with pytest.raises(UsageError, match="no mixed-precision tables"):
        problem_from_mixed(space, plain, random_scores(space), {})


def test_dp_on_the_fitted_model_meets_the_true_latency(space, model):
    """At 45% of the dense latency the plan quantizes some groups, and its true latency meets the budget
    within the model's error."""
    scores = random_scores(space)
    problem = problem_from_mixed(space, model, scores, {g.name: 0.05 for g in space.prunable})
    budget = 0.45 * model.predict_ms({})
    plan = solve(problem, budget).widths
    widths, _ = split_plan(plan)
    groups = int8_groups(plan)
    assert groups and problem.cost(plan) <= budget
    assert true_latency(space, widths, groups) <= budget * 1.05


def test_a_layer_never_measured_at_a_pair_takes_its_class_table(space):
    """ResNet-56 at 4x was refused because one of its alike layer3 convs had no engine at int8>int8: a layer whose
    class (same kind, kernel and shape) was measured at a pair takes the class's table there; a pair no layer of
    the class ran at is still refused."""
    from itcp_deploy.perfmodel.mixed import at_combo, combo_tables
    from itcp_deploy.perfmodel.tables import layer_class

    engines = [e for e in mixed_profile(space, n_design=30, n_holdout=0).engines if e.role == "design"]
    pair, full = (INT8, INT8), combo_tables(space, engines)
    classes: dict[str, list[str]] = {}
    for la in space.layers:
        if pair in full[la.name]:
            classes.setdefault(layer_class(la), []).append(la.name)
    alike = next(names for names in classes.values() if len(names) > 1)

    def without(names):
        return [replace(e, layer_ms={k: v for k, v in e.layer_ms.items() if k not in names}) for e in engines]

    assert not any(alike[0] in e.layer_ms for e in at_combo(space, without(alike[:1]), pair))
    assert combo_tables(space, without(alike[:1]))[alike[0]][pair].shape  # from its class, not refused
    with pytest.raises(UsageError, match="no engine measured layer"):
        combo_tables(space, without(alike))
