"""``timm:NAME`` as a model source: random init, nothing fetched, local --weights, lazy optional import."""

from __future__ import annotations

import sys

import pytest
import torch

from itcp_deploy.errors import MissingDependencyError, UnknownNameError
from itcp_deploy.models import create_model, list_models
from tests.conftest import run_cli

SMALL = "timm:test_resnet"  # timm's own tiny test network (0.4 M parameters), built offline


@pytest.fixture
def timm():
    return pytest.importorskip("timm")


@pytest.fixture
def no_network(monkeypatch, timm):
    """Every way timm could fetch weights raises: building must not touch any of them."""
    import huggingface_hub
    import timm.models._builder as builder

    def fetch(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(builder, "load_pretrained", fetch)
    monkeypatch.setattr(builder, "load_state_dict_from_url", fetch)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fetch)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fetch)


def test_timm_model_is_built_randomly_initialised_without_fetching(no_network):
    torch.manual_seed(0)
    a = create_model(SMALL, num_classes=7)
    torch.manual_seed(1)
    b = create_model(SMALL, num_classes=7)
    assert a(torch.zeros(1, 3, 64, 64)).shape == (1, 7)
    first = next(iter(a.state_dict()))
    assert not torch.equal(a.state_dict()[first], b.state_dict()[first])  # random, not loaded weights


def test_timm_weights_load_a_local_checkpoint(no_network, tmp_path):
    model = create_model(SMALL, num_classes=5)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = create_model(SMALL, num_classes=5, weights=str(path))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_unknown_timm_name_suggests_the_closest(timm):
    with pytest.raises(UnknownNameError, match="timm:test_resnet"):
        create_model("timm:test_resnt")


def test_timm_names_are_listed_on_request(timm):
    assert SMALL in list_models(include_timm=True) and SMALL not in list_models()


def test_missing_timm_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'itcp-deploy\[timm\]'"):
        create_model(SMALL)
    code, _, err = run_cli("groups", SMALL, "--input-shape", "1x3x64x64")
    assert code == 2 and "itcp-deploy[timm]" in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_groups_of_a_timm_model(no_network):
    code, out, err = run_cli("groups", SMALL, "--input-shape", "1x3x64x64", "--json")
    assert code == 0, err
    assert '"model": "timm:test_resnet"' in out
