"""The Torch-Pruning peer (``tp-taylor``, ``tp-taylor-round``): pruning on a tiny model, the bisection on a
known latency curve, and the comparison bench end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from itcp_deploy.engines.device import channel_block
from itcp_deploy.models import create_model
from itcp_deploy.pruning import build_space
from itcp_deploy.pruning.tp_peer import (
    TaylorPeer,
    bisect_measured,
    group_widths,
    peer_round_to,
)

SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10).eval()
    space = build_space(model, SHAPE, model_spec="cifar_resnet20")
    batches = [(torch.randn(8, *SHAPE[1:]), torch.randint(0, 10, (8,))) for _ in range(2)]
    return model, space, batches


def test_prune_cuts_globally_and_leaves_the_dense_model_alone(resnet):
    model, space, batches = resnet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peer = TaylorPeer.prepare(model, space, batches, round_to=None, num_batches=2)
    light, heavy = peer.prune(0.2), peer.prune(0.6)
    full = group_widths(model, space)
    w_light, w_heavy = group_widths(light, space), group_widths(heavy, space)
    assert all(w_heavy[g] <= w_light[g] <= full[g] for g in full)
    assert sum(w_heavy.values()) < sum(w_light.values()) < sum(full.values())
    assert len(set(w / full[g] for g, w in w_heavy.items())) > 1  # global ranking: not one ratio everywhere
    assert heavy(torch.randn(*SHAPE)).shape == (1, 10)  # the classifier's outputs are never pruned
    assert not heavy.get_submodule("layer2.0.shortcut").weight.requires_grad  # the fixed shortcut stays fixed
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_same_batches_same_pruning(resnet):
    model, space, batches = resnet
    a = TaylorPeer.prepare(model, space, batches, round_to=None, num_batches=2).prune(0.5)
    b = TaylorPeer.prepare(model, space, batches, round_to=None, num_batches=2).prune(0.5)
    x = torch.randn(2, *SHAPE[1:])
    assert torch.equal(a(x), b(x))


def test_round_to_keeps_every_pruned_group_on_the_block(resnet):
    model, space, batches = resnet
    block = peer_round_to("tp-taylor-round", channel_block())
    assert block in (4, 8, 16) and peer_round_to("tp-taylor", block) is None
    pruned = TaylorPeer.prepare(model, space, batches, round_to=block, num_batches=2).prune(0.5)
    widths, full = group_widths(pruned, space), group_widths(model, space)
    assert widths != full
    assert all(w % block == 0 for w in widths.values())


def _curve(points: dict[float, float]):
    """A fake engine: measured latency ratio as a step function of the pruning ratio (no clock)."""
    def prune(ratio: float) -> nn.Module:
        module = nn.Identity()
        module.ratio = ratio  # type: ignore[assignment]
        return module

    def measure(model: nn.Module) -> float:
        return next(v for r, v in sorted(points.items(), reverse=True) if model.ratio >= r - 1e-12)

    return prune, measure


def test_bisection_finds_the_least_pruning_that_meets_the_target():
    # latency falls in steps; above 0.85 the pruner leaves groups whole and the model gets slower again
    prune, measure = _curve({0.0: 1.0, 0.3: 0.8, 0.41: 0.6, 0.6: 0.45, 0.85: 0.7})
    found = bisect_measured(prune, measure, 0.65, grid=10, iters=6, max_ratio=0.95)
    assert found.met and found.measured_ratio == 0.6
    assert 0.41 <= found.pruning_ratio < 0.41 + 0.095 / 2 ** 5
    assert found.steps[0]["pruning_ratio"] == pytest.approx(0.095)


def test_bisection_returns_the_fastest_when_the_target_is_out_of_reach():
    prune, measure = _curve({0.0: 1.0, 0.5: 0.7, 0.9: 0.8})
    found = bisect_measured(prune, measure, 0.3, grid=5, iters=3, max_ratio=0.95)
    assert not found.met and found.measured_ratio == 0.7 and len(found.steps) == 5


def test_compare_runs_the_peers_and_compensation(tmp_path):
    from tests.test_compare import _argv, _bench_module

    bench = _bench_module()
    argv = _argv(tmp_path, "--no-dense-finetune")
    argv[argv.index("itcp"): argv.index("itcp") + 2] = ["tp-taylor", "tp-taylor-round", "uniform+comp"]
    argv[argv.index("--progressive") + 1] = "0"
    assert bench.main(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == {"dense", "tp-taylor", "tp-taylor-round", "uniform+comp"}
    assert "linear" in rows["uniform+comp"]["compensated"]
    assert rows["dense"]["accuracy_finetuned"] is None
    for method in ("tp-taylor", "tp-taylor-round"):
        row = rows[method]
        chosen = [s for s in row["bisection"] if s["pruning_ratio"] == row["pruning_ratio"]]
        assert chosen and row["met_target"] == (chosen[0]["measured_ratio"] <= 1 / 1.5)
        assert row["macs"] < rows["dense"]["macs"] and row["accuracy_finetuned"] is not None
        assert row["engine"] in json.loads((tmp_path / "out" / "measured.json").read_text())["engines"]
    assert "| tp-taylor | 1.5x |" in (tmp_path / "out" / "results.md").read_text()
    assert bench.main([*argv[:argv.index("--methods") + 1], "tp-taylor+comp", *argv[argv.index("--seeds"):]]) == 2


def test_run_with_the_peer_method(tmp_path):
    from itcp_deploy.pipeline import run
    from tests.test_pipeline import _config

    config = _config(tmp_path, method="tp-taylor")
    report = run(config)
    out = tmp_path / "out"
    plan = json.loads((out / "widths.json").read_text())
    assert plan["method"] == "tp-taylor" and report.method == "tp-taylor"
    assert report.macs_final < report.macs_dense and (out / "model.ort.onnx").is_file()
    assert all(r["pruning_ratio"] > 0 and r["targets"][0]["predicted_ms"] is None for r in report.rounds)
    from itcp_deploy.pruning import count_macs_params, load_pruned

    chosen = load_pruned(out / "peer_pruned.pt", out / "widths.json")  # the model the peer's search kept
    assert count_macs_params(chosen, (1, 3, 32, 32))[0] == report.macs_final  # ... is what was finetuned
    assert "| 0 |" in (out / "report.md").read_text()


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.mark.parametrize("method", ["tp-taylor", "uniform"])
def test_cli_run_with_one_target_and_a_peer_or_a_baseline(method, engine_cache, tmp_path):
    """Issue 23: `--target` given once is a run's list of one, for every method (the peer and the baselines
    used to be refused on the several-target path, which one `--target` did not reach)."""
    from tests.conftest import run_cli

    out = tmp_path / "out"
    code, stdout, err = run_cli("run", "cifar_resnet20", "--data", "synthetic:train=256,test=128", "--target",
                                "name=edge,shape=1x3x32x32,speedup=1.5", "--method", method, "--epochs", "0",
                                "--max-builds", "6", "--cache", str(engine_cache), "-o", str(out), "--json")
    assert code in (0, 1), err  # 1: the final engine missed its SLA on a noisy machine; the report still says so
    report = json.loads(stdout)
    assert report["method"] == method and [t["name"] for t in report["targets"]] == ["edge"]
    assert report["macs_final"] < report["macs_dense"] and (out / "model.ort.onnx").is_file()
    assert report["met_sla"] == (code == 0) and json.loads((out / "widths.json").read_text())["method"] == method
