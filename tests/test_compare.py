"""The accuracy-vs-latency comparison (bench/accuracy_vs_latency.py, bench/comparison/) on tiny settings:
every row complete, budgets kept, one interleaved measurement, resume, the progressive schedule's space."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from itcp_deploy.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
DATA = "synthetic:train=256,test=128"
ROW_FIELDS = (
    "method",
    "speedup",
    "seed",
    "budget_ms",
    "predicted_ms",
    "measured",
    "macs",
    "params",
    "accuracy_oneshot",
    "accuracy_finetuned",
    "widths",
    "engine",
    "finetune_images_per_epoch",
)


def _bench_module():
    path = ROOT / "bench" / "accuracy_vs_latency.py"
    spec = importlib.util.spec_from_file_location("accuracy_vs_latency", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _argv(tmp: Path, *extra: str) -> list[str]:
    return [
        "--model",
        "cifar_resnet20",
        "--data",
        DATA,
        "--speedups",
        "1.5",
        "--methods",
        "itcp",
        "uniform",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--train-subset",
        "64",
        "--batch-size",
        "32",
        "--score-samples",
        "64",
        "--max-builds",
        "8",
        "--holdout",
        "2",
        "--timing-warmup",
        "5",
        "--timing-rounds",
        "3",
        "--timing-runs",
        "20",
        "--measure-rounds",
        "3",
        "--measure-runs",
        "20",
        "--force-fit",
        "--progressive",
        "2",
        "--out",
        str(tmp / "out"),
        "--cache",
        str(tmp / "engines"),
        *extra,
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    bench = _bench_module()
    assert bench.main(_argv(tmp)) == 0
    return tmp, bench, json.loads((tmp / "out" / "results.json").read_text())


def test_every_row_is_complete_and_within_budget(finished):
    _, _, results = finished
    rows = results["rows"]
    assert {(r["method"], r["speedup"]) for r in rows} == {
        ("dense", 1.0),
        ("itcp", 1.5),
        ("uniform", 1.5),
        ("itcp-progressive", 1.5),
    }
    dense = next(r for r in rows if r["method"] == "dense")
    for row in rows:
        missing = [f for f in ROW_FIELDS if f not in row]
        assert not missing, (row["method"], missing)
        assert row["measured"]["median_ms"] > 0 and row["measured"]["p90_ms"] >= row["measured"]["median_ms"]
        assert row["predicted_ms"] <= row["budget_ms"] * 1.001, row["method"]
        assert 0 <= row["accuracy_finetuned"] <= 100 and 0 <= row["accuracy_oneshot"] <= 100
        assert row["finetune_images_per_epoch"] > 0
        if row["method"] != "dense":
            assert row["macs"] < dense["macs"] and row["params"] < dense["params"]
        if row["method"] in ("itcp", "uniform"):  # run's closed loop: first round at the predicted budget
            assert row["loop"][0]["budget_ms"] == pytest.approx(results["dense_predicted_ms"] / 1.5)
            ratios = [r["ratio_to_dense"] for r in row["loop"]]
            assert row["loop_ratio"] in ratios and row["met_target"] == (row["loop_ratio"] <= 1 / 1.5)
            assert row["met_target"] or min(ratios) > 1 / 1.5  # a plan that met is kept whenever one did
    assert dense["measured"]["ratio_to_dense"] == 1.0
    progressive = next(r for r in rows if r["method"] == "itcp-progressive")
    assert progressive["finetune_images_per_epoch"] == 64 == dense["finetune_images_per_epoch"]
    budgets = [s["budget_ms"] for s in progressive["steps"]]
    assert len(budgets) == 2 and budgets[0] > budgets[1] == pytest.approx(progressive["budget_ms"])
    assert progressive["budget_ms"] == pytest.approx(results["dense_predicted_ms"] / 1.5)
    assert all(s["predicted_ms"] <= s["budget_ms"] * 1.001 for s in progressive["steps"])
    assert results["recipe"]["train_subset"] == 64 and results["recipe"]["epochs"] == 1


def test_one_interleaved_measurement_covers_every_engine(finished):
    tmp, _, results = finished
    measured = json.loads((tmp / "out" / "measured.json").read_text())
    assert set(measured["engines"]) == {r["engine"] for r in results["rows"]}
    assert all(s["n"] == 3 * 20 for s in measured["stats"].values())


def test_markdown_and_plot_are_written(finished):
    tmp, _, results = finished
    md = (tmp / "out" / "results.md").read_text()
    assert "| method | speed-up | seeds | predicted ms | measured ms (median)" in md
    for method in ("dense", "itcp", "uniform", "itcp-progressive"):
        assert f"| {method} | " in md
    assert "CIFAR-10 (JPEG copy)" not in md  # only for the JPEG copy
    assert (tmp / "out" / "accuracy_vs_latency.png").stat().st_size > 1000


def test_rerun_skips_finished_rows_and_measurement(finished, capsys):
    tmp, bench, results = finished
    rows = sorted((tmp / "out" / "rows").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in rows]
    capsys.readouterr()
    assert bench.main(_argv(tmp)) == 0
    err = capsys.readouterr().err
    assert "measurement: reusing" in err and "finetuning" not in err and "step 1/2" not in err
    assert [p.stat().st_mtime_ns for p in rows] == stamps
    assert json.loads((tmp / "out" / "results.json").read_text())["rows"] == results["rows"]


def test_measure_only_measures_rows_of_separate_runs_and_computes_none(finished, capsys):
    """Rows finished by separate runs (here: other methods than listed) are all measured, none is computed."""
    tmp, bench, results = finished
    rows = sorted((tmp / "out" / "rows").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in rows]
    argv = _argv(tmp, "--measure-only")
    argv[argv.index("--methods") + 1: argv.index("--methods") + 3] = ["knapsack-linear"]  # not in the rows
    assert bench.main(argv) == 0
    err = capsys.readouterr().err
    assert "knapsack-linear" not in err and "round 0" not in err
    assert [p.stat().st_mtime_ns for p in rows] == stamps
    again = json.loads((tmp / "out" / "results.json").read_text())["rows"]
    assert {(r["method"], r["speedup"], r["seed"]) for r in again} == {
        (r["method"], r["speedup"], r["seed"]) for r in results["rows"]}


def test_other_recipe_in_same_out_dir_is_refused(finished, capsys):
    tmp, bench, _ = finished
    assert bench.main(_argv(tmp, "--lr", "0.5")) == 2
    assert "other settings" in capsys.readouterr().err
    from bench.comparison.compare import CompareConfig, compare

    with pytest.raises(UsageError):
        compare(CompareConfig(model="cifar_resnet20", data=DATA, out_dir=str(tmp / "x"), speedups=(0.5,)))


def test_restricted_space_predicts_like_the_dense_perf_model(finished):
    tmp, _, results = finished
    from bench.comparison.progressive import restricted
    from itcp_deploy.models import create_model
    from itcp_deploy.perfmodel import PerfModel
    from itcp_deploy.pruning import apply_widths

    perf = PerfModel.load(tmp / "out" / "perf_model.json")
    space = perf.space
    model = create_model("cifar_resnet20", num_classes=10).eval()
    current = space.complete(next(r for r in results["rows"] if r["method"] == "uniform")["widths"])
    pruned = apply_widths(model, space, current)
    small_space, small_perf = restricted(space, perf, pruned, current, space.input_shape)
    for g in small_space.groups:
        assert g.candidates[-1] == current[g.name] == g.full_width
        assert set(g.candidates) <= set(space.group(g.name).candidates)
    narrower = {g.name: g.candidates[0] for g in small_space.prunable}
    assert small_perf.predict_ms(narrower) == pytest.approx(perf.predict_ms(narrower))
    assert small_perf.dense_ms() == pytest.approx(perf.predict_ms(current))


def test_distill_flag_finetunes_every_row_from_the_dense_model(monkeypatch, tmp_path):
    """``--distill`` is the recipe's distillation (``run --distill``): the teacher is the dense model."""
    import types

    import torch

    import itcp_deploy.train as train_module
    from bench.comparison import rows as compare_rows

    config = _bench_module().config_from(_bench_module().parse_args(_argv(tmp_path, "--distill")))
    assert config.recipe.distill and "distill" in json.dumps(config.fingerprint())
    seen = {}
    monkeypatch.setattr(train_module, "train", lambda model, info, val, tc: seen.setdefault("teacher", tc.teacher))
    monkeypatch.setattr(compare_rows, "evaluate", lambda b, model: 0.0)
    dense = torch.nn.Linear(2, 2)
    bench = types.SimpleNamespace(config=config, model=dense)
    compare_rows.finetune(bench, torch.nn.Linear(2, 2), 0, types.SimpleNamespace(dataset=[0]))
    assert seen["teacher"] is dense
