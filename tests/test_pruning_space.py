"""Channel groups and layer specs found by build_space (Torch-Pruning dependency graph)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from itcp_deploy.errors import UsageError
from itcp_deploy.pruning import build_space
from itcp_deploy.space import CandidateGrid, PruningSpace
from tests.conftest import run_cli


class ConcatNet(nn.Module):
    """Two branches concatenated, then a conv reading both groups."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 12, 1)
        self.c = nn.Conv2d(20, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        x = F.relu(self.bn(self.c(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class GroupedNet(nn.Module):
    """A grouped conv (groups=4), a depthwise conv and a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.pw = nn.Conv2d(32, 16, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.grouped(s)))
        y = F.relu(self.bn2(self.dw(y)))
        y = self.bn3(self.pw(y)) + s
        return self.fc(F.adaptive_avg_pool2d(F.relu(y), 1).flatten(1))


class NoGradNet(nn.Module):
    """forward() under torch.no_grad(): nothing for Torch-Pruning to trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fc(self.conv(x).mean((2, 3)))


def no_grad_net(num_classes: int | None = None) -> nn.Module:
    """Factory for the CLI test (``tests.test_pruning_space:no_grad_net``)."""
    return NoGradNet()


def _check_layers_match(model: nn.Module, space: PruningSpace) -> None:
    w = space.full_widths()
    for layer in space.layers:
        assert layer.in_channels == sum(w[g] for g in layer.in_group.split("+")), layer
        assert layer.out_channels == w[layer.out_group], layer
        assert model.get_submodule(layer.name) is not None


def test_cifar_resnet56_has_three_stage_groups_and_27_inner_groups():
    from itcp_deploy.models import create_model

    model = create_model("cifar_resnet56")
    space = build_space(model, (1, 3, 32, 32), model_spec="cifar_resnet56")
    stage = {g.name: g for g in space.prunable if len(g.layers_out) > 1}
    assert set(stage) == {"conv1", "layer2.0.conv2", "layer3.0.conv2"}
    assert set(stage["conv1"].layers_out) == {"conv1"} | {f"layer1.{i}.conv2" for i in range(9)}
    for s, width in ((2, 32), (3, 64)):
        g = stage[f"layer{s}.0.conv2"]
        assert set(g.layers_out) == {f"layer{s}.0.shortcut"} | {f"layer{s}.{i}.conv2" for i in range(9)}
        assert g.full_width == width
    inner = [g for g in space.prunable if len(g.layers_out) == 1]
    assert sorted(g.name for g in inner) == sorted(f"layer{s}.{i}.conv1" for s in (1, 2, 3) for i in range(9))
    assert len(space.prunable) == 30
    assert space.group("input").fixed and space.group("input").candidates == (3,)
    assert space.group("output").fixed and space.group("output").layers_out == ("linear",)
    assert space.group("conv1").candidates == (4, 8, 12, 16)
    assert space.group("layer3.0.conv2").candidates == tuple(range(4, 65, 4))
    shortcut = next(lay for lay in space.layers if lay.name == "layer2.0.shortcut")
    assert (shortcut.in_group, shortcut.out_group) == ("conv1", "layer2.0.conv2")
    assert (shortcut.kernel, shortcut.stride) == ((1, 1), (2, 2))
    assert (shortcut.in_hw, shortcut.out_hw) == ((32, 32), (16, 16))
    _check_layers_match(model, space)
    assert not model.layer2[0].shortcut.weight.requires_grad  # the trace restored the fixed conv
    assert space.macs({}) == sum(lay.macs(lay.in_channels, lay.out_channels) for lay in space.layers)


def test_concat_reader_reads_one_fixed_group_and_concatenated_groups_keep_width():
    """The pairwise perf model cannot cost a layer over three widths: the concatenated groups are fixed and
    the reader reads one fixed group of their summed width; the stem (read by both branches) stays prunable."""
    space = build_space(ConcatNet(), (1, 3, 16, 16))
    c = next(lay for lay in space.layers if lay.name == "c")
    assert c.in_group == "c:in" and space.group("c:in").full_width == 20 and space.group("c:in").fixed
    assert space.group("a").fixed and space.group("b").fixed
    assert space.group("a").full_width == 8 and space.group("b").full_width == 12
    assert space.group("stem").layers_in == ("a", "b") and not space.group("stem").fixed
    assert not space.group("c").fixed
    _check_layers_match(ConcatNet(), space)
    assert space.macs({"stem": 4}) < space.macs({})


def test_grouped_conv_candidates_respect_divisibility_and_depthwise_shares_group():
    model = GroupedNet()
    space = build_space(model, (1, 3, 8, 8), grid=CandidateGrid(step_small=2, min_width=2))
    assert all(w % 4 == 0 for w in space.group("stem").candidates)  # read by the groups=4 conv
    assert all(w % 4 == 0 for w in space.group("grouped").candidates)
    dw = next(lay for lay in space.layers if lay.name == "dw")
    assert dw.in_group == dw.out_group == "grouped" and dw.depthwise
    assert set(space.group("stem").layers_out) == {"stem", "pw"}  # tied by the residual add
    _check_layers_match(model, space)


def test_space_round_trips_through_dict_and_json():
    space = build_space(GroupedNet(), (1, 3, 8, 8))
    again = PruningSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again == space


def test_build_space_leaves_model_mode_and_flags_alone():
    model = GroupedNet().train()
    model.stem.weight.requires_grad_(False)
    build_space(model, (1, 3, 8, 8))
    assert model.training and not model.stem.weight.requires_grad and model.pw.weight.requires_grad


def test_untraceable_model_is_one_line_usage_error():
    with pytest.raises(UsageError) as err:
        build_space(NoGradNet(), (1, 3, 8, 8), model_spec="nograd")
    assert "nograd" in str(err.value) and "\n" not in str(err.value)


def test_wrong_input_shape_is_one_line_usage_error():
    with pytest.raises(UsageError, match="could not trace"):
        build_space(GroupedNet(), (1, 1, 8, 8))


def test_cli_groups_json_and_table():
    code, out, err = run_cli("groups", "cifar_resnet20", "--input-shape", "1x3x32x32", "--json")
    assert code == 0, err
    space = PruningSpace.from_dict(json.loads(out))
    assert len(space.prunable) == 3 + 9
    assert space.group("layer3.0.conv2").candidates[-1] == 64
    code, out, err = run_cli("groups", "cifar_resnet20", "--input-shape", "1x3x32x32", "--grid-small", "8",
                             "--min-width", "8")
    assert code == 0, err
    assert "layer2.0.shortcut" in out + err and "12 prunable groups" in out + err


def test_cli_groups_bad_inputs_exit_2_with_one_line():
    code, _, err = run_cli("groups", "cifar_resnet20", "--input-shape", "1x1x32x32")
    assert code == 2 and err.count("\n") == 1 and "could not trace" in err
    code, _, err = run_cli("groups", "tests.test_pruning_space:no_grad_net", "--trust-code",
                           "--input-shape", "1x3x8x8")
    assert code == 2 and err.count("\n") == 1
    code, _, err = run_cli("groups", "cifar_resnet20", "--input-shape", "32x32")
    assert code == 2 and "input-shape" in err


class _ChannelsLastMlp(nn.Module):
    """A ConvNeXt stage in miniature: a conv, then Linear layers on (N, H, W, C), at two spatial sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mlp1 = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))
        self.down = nn.Conv2d(8, 16, 2, stride=2)
        self.mlp2 = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.mlp1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.down(x)
        x = x + self.mlp2(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def test_a_linear_on_a_feature_map_costs_its_rows_and_is_classed_by_its_size():
    """ConvNeXt's Linear layers read (N, H, W, C): each row is a pixel, so their MACs are H x W times a
    classifier's at the same widths, and the perf model must not pool a 16x16 stage with an 8x8 one (it did:
    every Linear was one class at 1x1, and ConvNeXt-Tiny's fit erred 14.9% at 224)."""
    from itcp_deploy.perfmodel.tables import layer_class
    from itcp_deploy.profiling.isolated import layer_module

    space = build_space(_ChannelsLastMlp().eval(), (1, 3, 16, 16))
    layers = {layer.name: layer for layer in space.layers}
    assert layers["mlp1.0"].in_hw == layers["mlp1.0"].out_hw == (16, 16)
    assert layers["mlp2.2"].out_hw == (8, 8) and layers["head"].in_hw == (1, 1)
    assert layers["mlp1.0"].macs(8, 32) == 8 * 32 * 256 and layers["head"].macs(16, 10) == 160
    assert layer_class(layers["mlp1.0"]) != layer_class(layers["mlp2.0"])
    from itcp_deploy.pruning.space_builder import _hw  # a windowed attention's Linear: (N x windows, tokens, C)

    assert _hw(torch.Size([2 * 4, 49, 96]), True, 2) == (196, 1) and _hw(torch.Size([2, 96]), True, 2) == (1, 1)
    module, shape = layer_module(layers["mlp1.0"], 8, 32)  # the torch backend times it at its rows
    assert shape == (1, 16, 16, 8) and module(torch.zeros(shape)).shape == (1, 16, 16, 32)
    assert layer_module(layers["head"], 16, 10)[1] == (1, 16)
