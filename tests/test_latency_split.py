"""The report's latency split: the part of the dense engine no plan changes (work outside any layer, such as a
detector's NMS, and layers whose groups are all fixed), the prunable network's share, and the fastest plan."""

from __future__ import annotations

import numpy as np
import pytest

from itcp_deploy.perfmodel import PerfModel
from itcp_deploy.pipeline.closed_loop import latency_split
from itcp_deploy.pipeline.report import split_markdown
from itcp_deploy.search.dp import min_latency_ms
from tests.synthetic_spaces import resnet_space, staircase_ms


@pytest.mark.parametrize("constant_ms", [0.05, 3.0])
def test_split_adds_up_and_the_fixed_part_grows_with_post_processing(constant_ms):
    space = resnet_space(3)
    tables = {}
    for layer in space.layers:
        cin, cout = space.group(layer.in_group).candidates, space.group(layer.out_group).candidates
        tables[layer.name] = np.array([[staircase_ms(layer, a, b) for b in cout] for a in cin])
    perf = PerfModel(space, tables, constant_ms)
    fixed_layers = sum(float(tables[ly.name][0, 0]) for ly in space.layers
                       if space.group(ly.in_group).fixed and space.group(ly.out_group).fixed)
    measured = 2 * perf.dense_ms()  # the engine measured twice as slow as predicted: every part scales
    split = latency_split(perf, measured)
    assert split["fixed_ms"] == pytest.approx(2 * (constant_ms + fixed_layers))
    assert split["fixed_ms"] + split["prunable_ms"] == pytest.approx(measured)
    assert split["minimum_ms"] == pytest.approx(2 * min_latency_ms(perf))
    assert split["fixed_ms"] < split["minimum_ms"] < measured
    line = split_markdown({"dense_ms": measured, **split})[-1]
    assert f"{split['fixed_ms']:.4f} ms is fixed" in line and "out of reach" in line


def test_an_sla_below_the_fastest_plan_is_refused_naming_the_fixed_part():
    from types import SimpleNamespace

    from itcp_deploy.errors import InfeasibleError
    from itcp_deploy.pipeline.closed_loop import check_reachable

    space = resnet_space(3)
    tables = {ly.name: np.full((len(space.group(ly.in_group).candidates), len(space.group(ly.out_group).candidates)),
                               0.1) for ly in space.layers}
    perf = PerfModel(space, tables, 50.0)  # post-processing far over the SLA: no width can meet it
    dense = perf.dense_ms()
    meter = SimpleNamespace(dense_ms=lambda: dense, sla_ms=10.0, aim_ms=9.7, latency=SimpleNamespace(margin=0.03))
    with pytest.raises(InfeasibleError, match=r"of which about 50(\.\d+)? ms no width changes"):
        check_reachable([meter], [perf], ["edge"])
