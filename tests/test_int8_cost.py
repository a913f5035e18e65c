"""What INT8 costs each group (issue 27): the held-out loss increase of the engine with that group alone at INT8.

The net is a CIFAR ResNet-8 whose inner group of block layer2.0 carries an outlier channel (x1000, undone by the
next conv: the FP32 function is unchanged). Per-tensor activation scales then leave the other channels of that
tensor a few levels at most, so quantizing it costs much loss, and only the groups that quantize that tensor
(its own, and layer2.0.conv2's, whose conv reads it through a Q/DQ) pay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from itcp_deploy.engines.int8 import ORT_FULL_RANGE
from itcp_deploy.models.cifar_resnet import cifar_resnet
from itcp_deploy.pruning.int8_cost import Int8Loss, int8_costs, int8_disagreements
from itcp_deploy.pruning.space_builder import build_space

SHAPE = (1, 3, 32, 32)
OUTLIER = "layer2.0.conv1"


@pytest.fixture(scope="module")
def loss():
    torch.manual_seed(0)
    model = cifar_resnet(8).eval()
    block = model.layer2[0]
    with torch.no_grad():
        block.bn1.weight[3] *= 1000
        block.bn1.bias[3] *= 1000
        block.conv2.weight[:, 3] /= 1000
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((48, *SHAPE[1:])).astype(np.float32))
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the FP32 model gets right: quantization can only raise the loss
    calib = rng.standard_normal((16, *SHAPE[1:])).astype(np.float32)
    with Int8Loss(model, build_space(model, SHAPE), calib, [(x[:24], y[:24]), (x[24:], y[24:])],
                  ORT_FULL_RANGE) as evaluator:
        yield evaluator


def test_the_group_with_outliers_costs_most(loss):
    costs = int8_costs(loss)
    assert set(costs) == {g.name for g in loss.space.prunable} and min(costs.values()) >= 0
    assert costs[OUTLIER] > 0.3 and costs["layer2.0.conv2"] > 0.3  # both quantize the outlier tensor
    assert all(c < 0.1 for g, c in costs.items() if g not in (OUTLIER, "layer2.0.conv2"))
    assert loss.increase(()) == 0.0


def test_pairs_add_up_unless_they_share_a_tensor(loss):
    """The additivity the search's scores assume, measured: two groups apart add up; two groups that
    quantize the same tensor do not (the second pays nothing more)."""
    alone = {g: loss.increase((g,)) for g in (OUTLIER, "layer2.0.conv2", "layer3.0.conv2")}
    apart = loss.increase((OUTLIER, "layer3.0.conv2"))
    shared = loss.increase((OUTLIER, "layer2.0.conv2"))
    assert apart == pytest.approx(alone[OUTLIER] + alone["layer3.0.conv2"], rel=0.1)
    assert shared < 0.75 * (alone[OUTLIER] + alone["layer2.0.conv2"])


def test_disagreement_counts_the_top1s_a_group_moves_alone(loss):
    """The precision control's ranking: the outlier group, quantized alone, moves far more top-1s than a
    quiet group; nothing at INT8 moves none."""
    moved = int8_disagreements(loss, (OUTLIER, "layer3.0.conv2"))
    assert loss.disagreement(()) == 0.0 and all(0.0 <= v <= 1.0 for v in moved.values())
    assert moved[OUTLIER] >= 0.2 and moved[OUTLIER] > 2 * moved["layer3.0.conv2"]
