"""``--ignore-layers PATTERN``: layers whose output width must stay (a detection head), on every command that
builds groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from itcp_deploy.errors import UsageError
from itcp_deploy.pruning import apply_widths, build_space
from itcp_deploy.space import PruningSpace
from tests.conftest import run_cli


class Detector(nn.Module):
    """A backbone and a two-conv head whose output layout is fixed by a decoder the user does not prune."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1))
        self.head = nn.Sequential(nn.Conv2d(32, 24, 1), nn.ReLU(), nn.Conv2d(24, 6, 1))
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.head(F.relu(self.backbone(x))), 1).flatten(1))


def test_ignored_layers_keep_their_width_and_the_rest_prunes():
    net, shape = Detector().eval(), (1, 3, 8, 8)
    free = build_space(net, shape)
    assert {"head.0", "head.2"} <= {g.name for g in free.prunable}
    space = build_space(net, shape, ignore_layers=["head"])  # a module matches every layer inside it
    prunable = {g.name for g in space.prunable}
    assert not prunable & {"head.0", "head.2"} and {"backbone.0", "backbone.2"} <= prunable
    assert space.ignore_layers == ("head",)
    pruned = apply_widths(net, space, {g.name: g.candidates[0] for g in space.prunable})
    assert pruned.head[0].out_channels == 24 and pruned.head[2].out_channels == 6
    assert pruned.head[0].in_channels == 4  # its input is the backbone's, which still prunes


def test_glob_patterns_and_round_trip():
    space = build_space(Detector().eval(), (1, 3, 8, 8), ignore_layers=["head.[0-1]", "backbone.*"])
    assert {g.name for g in space.prunable} == {"head.2"}
    assert PruningSpace.from_dict(space.to_dict()) == space


def test_a_pattern_that_matches_nothing_is_a_one_line_error():
    with pytest.raises(UsageError, match="'neck' matches no Conv/Linear layer of det") as err:
        build_space(Detector().eval(), (1, 3, 8, 8), model_spec="det", ignore_layers=["neck"])
    assert "\n" not in str(err.value)


def test_cli_groups_ignore_layers_is_repeatable():
    code, out, err = run_cli("groups", "cifar_resnet20", "--input-shape", "1x3x32x32", "--json",
                             "--ignore-layers", "layer3.*", "--ignore-layers", "linear")
    assert code == 0, err
    space = PruningSpace.from_dict(__import__("json").loads(out))
    assert space.ignore_layers == ("layer3.*", "linear")
    assert not [g for g in space.prunable if any(n.startswith("layer3.") for n in g.layers_out)]
    code, _, err = run_cli("groups", "cifar_resnet20", "--input-shape", "1x3x32x32", "--ignore-layers", "neck")
    assert code == 2 and "matches no Conv/Linear layer" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["groups", "profile-engines", "run"])
def test_every_command_that_builds_groups_takes_ignore_layers(command):
    code, out, _ = run_cli(command, "--help")
    assert code == 0 and "--ignore-layers" in out
