"""``itcp_deploy.load``: the pruned model of a run, back in a user's code (issue 25; Torch-Pruning users ask this
often, TP#139, TP#29). A zoo model rebuilds from its name; a user's own module is cut from the module they pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import itcp_deploy
from itcp_deploy.errors import UsageError
from itcp_deploy.plan import PruningPlan
from itcp_deploy.pruning import apply_widths, save_pruned
from itcp_deploy.pruning.space_builder import build_space


class Mine(nn.Module):
    """A user's own architecture: no zoo name rebuilds it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def _save(tmp_path, model: nn.Module, spec: str, widths: dict[str, int]) -> nn.Module:
    space = build_space(model, (1, 3, 16, 16), model_spec=spec).with_removal()
    pruned = apply_widths(model, space, widths, importance="l1").eval()
    save_pruned(tmp_path / "pruned.pt", pruned,
                PruningPlan(model=spec, input_shape=(1, 3, 16, 16), widths=space.complete(widths)))
    return pruned


@pytest.mark.parametrize("by", ["folder", "file"])
def test_a_zoo_model_loads_by_name(tmp_path, by):
    from itcp_deploy.models import create_model

    torch.manual_seed(0)
    pruned = _save(tmp_path, create_model("cifar_resnet20").eval(), "cifar_resnet20", {"layer2.0.conv1": 8})
    loaded = itcp_deploy.load(tmp_path if by == "folder" else tmp_path / "pruned.pt")
    assert not loaded.training
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x))


def test_a_users_own_module_loads_on_the_module_given(tmp_path):
    torch.manual_seed(0)
    dense = Mine().eval()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    pruned = _save(tmp_path, dense, "Mine@0123", {"stem.0": 8, "body.0": 12})
    loaded = itcp_deploy.load(tmp_path, model=dense)
    assert loaded.stem[0].out_channels == 8 and loaded.body[0].out_channels == 12
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x))
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())


def test_a_folder_without_a_plan_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="not a pruned run's output"):
        itcp_deploy.load(tmp_path)
