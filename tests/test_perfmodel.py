"""The perf model recovers a known additive staircase from per-layer times, and refuses garbage."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from itcp_deploy.errors import FitRejectedError, InputFileError
from itcp_deploy.perfmodel import PerfModel, fit
from itcp_deploy.perfmodel.tables import layer_class
from itcp_deploy.space import CandidateGrid
from tests.conftest import run_cli
from tests.synthetic_spaces import resnet_space, staircase_ms, synthetic_profile


@pytest.fixture(scope="module")
def space():
    return resnet_space(3)


@pytest.fixture(scope="module")
def model(space):
    return fit(synthetic_profile(space, seed=1))


def _truth(space, widths):
    w = space.complete(widths)
    return 0.05 + sum(staircase_ms(la, w[la.in_group], w[la.out_group]) for la in space.layers)


def test_fit_recovers_held_out_latency_near_the_noise_floor(space, model):
    report = model.report
    assert report.validation == "holdout" and report.n_validation == 15
    assert report.mape_pct < 1.5 * report.noise_pct
    assert report.mape_pct < 0.5 * report.flops_mape_pct
    assert not report.rejected
    # the 40% overestimate of summed layer times is calibrated away (folded into the tables)
    assert model.calibration[0] == pytest.approx(1 / 1.4, rel=0.05)
    rng = np.random.default_rng(9)
    for _ in range(10):
        widths = {g.name: int(rng.choice(g.candidates)) for g in space.prunable}
        assert model.predict_ms(widths) == pytest.approx(_truth(space, widths), rel=0.04)


def test_model_is_additive_over_layers(space, model):
    widths = {g.name: g.candidates[0] for g in space.prunable}
    w = space.complete(widths)
    total = model.constant_ms + sum(
        model.layer_table(la.name)[
            space.group(la.in_group).index(w[la.in_group]), space.group(la.out_group).index(w[la.out_group])
        ]
        for la in space.layers
    )
    assert model.predict_ms(widths) == pytest.approx(total)
    for la in space.layers:
        shape = (len(space.group(la.in_group).candidates), len(space.group(la.out_group).candidates))
        assert model.layer_table(la.name).shape == shape
    from itcp_deploy.search.dp import min_latency_ms

    assert 0 < min_latency_ms(model) <= model.predict_ms(widths) + 1e-12


def test_tables_keep_the_staircase():
    """Ground truth rounds widths up to tiles of 8: 60 and 64 channels cost the same, 56 costs less."""
    space = resnet_space(2, CandidateGrid(step_small=4, step_large=4))
    model = fit(synthetic_profile(space, n_design=80, noise=0.005, seed=2))
    table = model.layer_table("layer3.1.conv1")
    cands = space.group("layer3.0.conv2").candidates
    i56, i60, i64 = cands.index(56), cands.index(60), cands.index(64)
    step = table[i60, i64] - table[i56, i64]
    assert step > 0
    assert abs(table[i64, i64] - table[i60, i64]) < 0.3 * step


def test_garbage_profile_is_rejected_unless_forced(space):
    garbage = synthetic_profile(space, garbage=True)
    with pytest.raises(FitRejectedError, match="held-out error"):
        fit(garbage)
    forced = fit(garbage, force=True)
    assert forced.report.rejected


def test_profile_without_layer_times_needs_flops_method(space):
    profile = synthetic_profile(space, n_design=10, n_holdout=5)
    profile.engines = [replace(e, layer_ms={}) for e in profile.engines]
    with pytest.raises(InputFileError, match="per-layer"):
        fit(profile)
    flops = fit(profile, method="flops", force=True)
    assert flops.method == "flops" and flops.report.flops_mape_pct == pytest.approx(flops.report.mape_pct)


def test_without_holdout_engines_it_cross_validates(space):
    profile = synthetic_profile(space, n_design=20, n_holdout=0, seed=4)
    report = fit(profile).report
    assert report.validation == "cross-validation" and report.n_validation == 21


def test_layer_class_pools_identical_layers(space):
    a, b = (next(la for la in space.layers if la.name == n) for n in ("layer1.0.conv1", "layer1.2.conv2"))
    assert layer_class(a) == layer_class(b)
    assert layer_class(a) != layer_class(next(la for la in space.layers if la.name == "layer2.0.conv1"))


def test_save_load_roundtrip_and_corrupt_file(space, model, tmp_path):
    path = tmp_path / "perf_model.json"
    model.save(path)
    loaded = PerfModel.load(path)
    widths = {g.name: g.candidates[1] for g in space.prunable}
    assert loaded.predict_ms(widths) == pytest.approx(model.predict_ms(widths))
    assert loaded.report == model.report
    data = json.loads(path.read_text())
    data["tables"]["conv1"] = [[1.0]]
    path.write_text(json.dumps(data))
    with pytest.raises(InputFileError, match="conv1"):
        PerfModel.load(path)
    path.write_text("{not json")
    with pytest.raises(InputFileError):
        PerfModel.load(path)


def test_dense_reference_is_the_profiled_dense_engine(space, model, tmp_path):
    """Speed-ups divide, and other windows are scaled by, the dense engine as profiled: the fit's error at the
    dense plan must not shift every budget. A file written before the field existed falls back to predicted."""
    profile = synthetic_profile(space, seed=1)
    measured = profile.by_role("dense")[0].latency.median_ms
    assert model.dense_measured_ms == pytest.approx(measured)
    assert model.dense_reference_ms() == pytest.approx(measured)
    assert abs(model.dense_ms() - measured) > 1e-9 * measured  # the fit does not pass through it exactly
    path = tmp_path / "perf_model.json"
    model.save(path)
    assert PerfModel.load(path).dense_reference_ms() == pytest.approx(measured)
    data = json.loads(path.read_text())
    del data["dense_measured_ms"]
    path.write_text(json.dumps(data))
    assert PerfModel.load(path).dense_reference_ms() == pytest.approx(model.dense_ms())
    data["dense_measured_ms"] = -1.0
    path.write_text(json.dumps(data))
    with pytest.raises(InputFileError, match="dense_measured_ms"):
        PerfModel.load(path)


def test_cli_fit_prints_report_and_rejects_garbage(space, tmp_path):
    good, bad = tmp_path / "profile.json", tmp_path / "garbage.json"
    synthetic_profile(space, seed=5).save(good)
    synthetic_profile(space, garbage=True).save(bad)
    code, out, err = run_cli("fit", str(good), "-o", str(tmp_path / "pm.json"), "--json")
    assert code == 0, err
    report = json.loads(out)["report"]
    assert report["mape_pct"] < report["flops_mape_pct"]
    assert "linear FLOPs model" in err and "noise floor" in err
    code, out, err = run_cli("fit", str(bad), "-o", str(tmp_path / "pm2.json"))
    assert code == 2 and err.count("\n") == 1 and "held-out error" in err
    assert not (tmp_path / "pm2.json").exists()


def test_layer_errors_name_the_layer_that_carries_the_error(space):
    """One layer costs 0.2 ms more on the held-out engines than the design showed: it carries the error."""
    from itcp_deploy.perfmodel.explain import OTHER, explain_lines, layer_errors

    profile = synthetic_profile(space, seed=3)
    bad = space.layers[len(space.layers) // 2].name
    for i, e in enumerate(profile.engines):
        if e.role == "holdout":
            total = e.latency.median_ms + 0.2
            profile.engines[i] = replace(e, layer_ms={**e.layer_ms, bad: e.layer_ms[bad] + 0.2 * 1.4},
                                         latency=replace(e.latency, median_ms=total))
    model = fit(profile, force=True)
    rows = layer_errors(model, profile.by_role("holdout"))
    assert rows[0].layer == bad and rows[0].share_pct > 50
    assert rows[0].mean_error_ms == pytest.approx(-0.2, rel=0.2)  # on the calibrated scale
    assert {r.layer for r in rows} == {la.name for la in space.layers} | {OTHER}
    assert sum(r.share_pct for r in rows) == pytest.approx(100)
    assert bad in explain_lines(rows, top=1)[1]


def test_cli_fit_explains_a_rejected_fit(space, tmp_path):
    bad = tmp_path / "garbage.json"
    synthetic_profile(space, garbage=True).save(bad)
    code, _, err = run_cli("fit", str(bad), "-o", str(tmp_path / "pm.json"), "--explain")
    assert code == 2 and "held-out error by layer" in err and "--explain" in err.splitlines()[-1]
    assert not (tmp_path / "pm.json").exists()
    good = tmp_path / "profile.json"
    synthetic_profile(space, seed=5).save(good)
    code, _, err = run_cli("fit", str(good), "-o", str(tmp_path / "pm2.json"))
    assert code == 0 and "held-out error by layer" not in err
    code, _, err = run_cli("fit", str(good), "-o", str(tmp_path / "pm3.json"), "--explain")
    assert code == 0 and "held-out error by layer" in err and space.layers[0].name in err
