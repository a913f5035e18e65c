"""Model zoo, option-A conversion, safe checkpoint loading and the trust boundary for code-executing specs."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch
from torch import nn

from itcp_deploy.errors import InputFileError, UnknownNameError, UntrustedCodeError, UsageError
from itcp_deploy.models import (
    FixedShortcutConv,
    OptionAShortcut,
    convert_option_a,
    create_model,
    list_models,
    register_model,
)
from itcp_deploy.models import registry as registry_module
from itcp_deploy.registry import Registry

PUBLISHED = {"cifar_resnet20": "resnet20-12fca82f.th", "cifar_resnet56": "resnet56-4bfd9763.th"}


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", list_models())
def test_zoo_entry_builds_and_runs_on_cifar_input(name):
    model = create_model(name)
    assert _outputs(model, torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert _outputs(create_model(name, num_classes=7), torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_cifar_resnet_has_published_module_names():
    names = set(create_model("cifar_resnet20").state_dict())
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer3.2.bn2.bias",
                "layer2.0.shortcut.weight", "linear.weight"):
        assert key in names
    blocks = [m for m in create_model("cifar_resnet110").modules() if m.__class__.__name__ == "BasicBlock"]
    assert len(blocks) == 54


def test_torchvision_models_never_pretrained():
    model = create_model("torchvision:resnet18", num_classes=5)
    assert model.fc.out_features == 5
    assert create_model("torchvision:mobilenet_v2").classifier[-1].out_features == 1000
    assert "torchvision:mobilenet_v3_small" in list_models(include_torchvision=True)


@pytest.mark.parametrize("spec, close", [("cifar_resnet21", "cifar_resnet20"),
                                         ("torchvision:resnet19", "torchvision:resnet18")])
def test_unknown_names_list_closest_match(spec, close):
    with pytest.raises(UnknownNameError, match=close):
        create_model(spec)


@pytest.mark.parametrize("depth", [20, 56])
def test_option_a_conversion_is_exact(depth):
    torch.manual_seed(depth)
    plain = create_model(f"cifar_resnet{depth}", convert=False)
    for m in plain.modules():  # non-trivial BN statistics so every channel matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    assert any(isinstance(m, OptionAShortcut) for m in plain.modules())
    converted = convert_option_a(create_model(f"cifar_resnet{depth}", convert=False))
    converted.load_state_dict(plain.state_dict(), strict=False)
    assert not any(isinstance(m, OptionAShortcut) for m in converted.modules())
    x = torch.randn(4, 3, 32, 32)
    assert (_outputs(plain, x) - _outputs(converted, x)).abs().max().item() <= 1e-5


def test_fixed_shortcut_places_channel_i_at_i_plus_quarter_and_never_trains():
    conv = create_model("cifar_resnet20").layer2[0].shortcut
    assert isinstance(conv, FixedShortcutConv) and conv.stride == (2, 2) and conv.bias is None
    assert not conv.weight.requires_grad
    w = conv.weight[:, :, 0, 0]
    assert torch.equal(w[8:24], torch.eye(16)) and w.sum().item() == 16
    conv.weight.requires_grad_(True)  # as after Torch-Pruning re-creates the parameter
    x = torch.randn(1, 16, 8, 8, requires_grad=True)
    conv(x).sum().backward()
    assert conv.weight.grad is None and x.grad is not None


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "module_prefix_numpy"])
def test_state_dict_round_trip(tmp_path, wrap):
    model = create_model("cifar_resnet20")
    state = model.state_dict()
    payload = {
        "bare": state,
        "state_dict": {"state_dict": state},
        "model": {"model": state, "epoch": 3},
        "module_prefix_numpy": {"state_dict": {f"module.{k}": v for k, v in state.items()},
                                "best_prec1": np.float64(91.5), "lr": np.array([0.1])},
    }[wrap]
    path = tmp_path / "ckpt.pt"
    torch.save(payload, path)
    loaded = create_model("cifar_resnet20", weights=str(path))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_outputs(model, x), _outputs(loaded, x))


def test_option_a_checkpoint_loads_into_converted_model(tmp_path):
    plain = create_model("cifar_resnet20", convert=False)
    path = tmp_path / "published_style.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in plain.state_dict().items()
                               if not k.endswith("num_batches_tracked")}}, path)
    converted = create_model("cifar_resnet20", weights=str(path))
    x = torch.randn(2, 3, 32, 32)
    assert (_outputs(plain, x) - _outputs(converted, x)).abs().max().item() <= 1e-5


class _Opaque:
    """Not on the safe allowlist: a weights-only load must refuse it."""


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    (b"not a checkpoint at all", "unreadable or corrupt"),
    ({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _Opaque()}, "safe load refuses"),
    ({"epoch": 3}, "no state_dict"),
    ({"foo.weight": torch.zeros(3)}, "missing key"),
])
def test_bad_weights_files_raise_one_line(tmp_path, content, match):
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(InputFileError, match=match) as info:
        create_model("cifar_resnet20", weights=str(path))
    assert "\n" not in str(info.value)


def test_wrong_shape_names_the_key(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(create_model("cifar_resnet20", num_classes=100).state_dict(), path)
    with pytest.raises(InputFileError, match=r"linear\.weight has shape \(100, 64\)"):
        create_model("cifar_resnet20", weights=str(path))


def test_pickled_model_needs_trust_code(tmp_path):
    model = create_model("cifar_vgg16_bn", num_classes=4)
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(UntrustedCodeError, match="--trust-code"):
        create_model(str(path))
    loaded = create_model(str(path), trust_code=True)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(_outputs(model, x), _outputs(loaded, x))
    with pytest.raises(InputFileError, match="outputs 4 classes"):
        create_model(str(path), trust_code=True, num_classes=10)


@pytest.mark.parametrize("obj, match", [([1, 2, 3], "not a torch.nn.Module"),
                                        ({"a": torch.zeros(1)}, "--weights")])
def test_non_model_pickle_is_input_error(tmp_path, obj, match):
    path = tmp_path / "thing.pkl"
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    with pytest.raises(InputFileError, match=match):
        create_model(str(path), trust_code=True)


def test_factory_spec(tmp_path, monkeypatch):
    (tmp_path / "tiny_factory.py").write_text(
        "from torch import nn\n"
        "def build(num_classes=3):\n    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n"
        "def fixed():\n    return nn.Linear(2, 2)\n"
        "def not_a_model():\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tiny_factory", raising=False)
    with pytest.raises(UntrustedCodeError):
        create_model("tiny_factory:build")
    assert create_model("tiny_factory:build", trust_code=True, num_classes=6)[1].out_features == 6
    with pytest.raises(UsageError, match="num_classes"):
        create_model("tiny_factory:fixed", trust_code=True, num_classes=6)
    with pytest.raises(InputFileError, match="not a torch.nn.Module"):
        create_model("tiny_factory:not_a_model", trust_code=True)
    with pytest.raises(InputFileError, match="cannot import"):
        create_model("no_such_package_xyz:build", trust_code=True)


def test_register_model(monkeypatch):
    monkeypatch.setattr(registry_module, "MODELS", Registry("model"))

    @register_model("tiny")
    def tiny(*, num_classes: int = 2) -> nn.Module:
        return nn.Linear(4, num_classes)

    assert create_model("tiny", num_classes=3).out_features == 3
    assert list_models() == ["tiny"]
    with pytest.raises(ValueError, match="twice"):
        register_model("tiny")(tiny)


def test_converted_resnet_is_coupled_by_torch_pruning():
    tp = pytest.importorskip("torch_pruning")
    model = create_model("cifar_resnet20").eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    group = graph.get_pruning_group(model.layer2[0].conv2, tp.prune_conv_out_channels, idxs=[0, 1])
    coupled = {graph._module2name.get(dep.target.module) for dep, _ in group}
    assert {"layer2.0.shortcut", "layer2.2.conv2", "layer3.0.conv1"} <= coupled
    group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0])
    assert "layer2.0.shortcut" in {graph._module2name.get(dep.target.module) for dep, _ in group}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_weights_load_and_conversion_keeps_outputs(shared_dir, name):
    path = shared_dir / "weights" / "cifar10-resnet" / PUBLISHED[name]
    plain = create_model(name, weights=str(path), convert=False)
    converted = create_model(name, weights=str(path))
    with open(shared_dir / "data" / "cifar10-exact-test-1017", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    images = torch.tensor(batch["data"][:200], dtype=torch.float32).reshape(-1, 3, 32, 32) / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (images - mean[:, None, None]) / std[:, None, None]
    logits = _outputs(converted, x)
    assert (_outputs(plain, x) - logits).abs().max().item() <= 1e-5
    accuracy = (logits.argmax(1) == torch.tensor(batch["labels"][:200])).float().mean().item()
    assert accuracy > 0.85  # published ~92-93%; a mis-loaded model scores ~10%
