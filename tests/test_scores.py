"""Channel importance and group scores: shapes, monotonicity, Taylor arithmetic, sensitivity cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from itcp_deploy.errors import UnknownNameError, UsageError
from itcp_deploy.pruning import (
    IMPORTANCE,
    SCORES,
    ScoreSettings,
    build_space,
    channel_importance,
    group_scores,
)
from tests.test_pruning_space import GroupedNet


def _batches(count: int, size: int = 8, shape: tuple[int, ...] = (3, 8, 8), classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=g), torch.randint(0, classes, (size,), generator=g))
            for _ in range(count)]


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def grouped():
    torch.manual_seed(0)
    net = GroupedNet().eval()
    return net, build_space(net, (1, 3, 8, 8))


def test_registries_list_names_and_reject_unknown():
    assert {"l1", "l2", "bn_scale", "taylor"} <= set(IMPORTANCE.names())
    assert {"taylor", "sensitivity", "l1-fraction", "width"} <= set(SCORES.names())
    with pytest.raises(UnknownNameError, match="did you mean 'taylor'"):
        group_scores(TinyNet(), build_space(TinyNet(), (1, 3, 8, 8)), "taylr")


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "taylor"])
def test_every_criterion_gives_one_value_per_channel(grouped, criterion):
    net, space = grouped
    imp = channel_importance(net, space, criterion, loader=_batches(2))
    assert set(imp) == {g.name for g in space.prunable}
    for g in space.prunable:
        assert imp[g.name].shape == (g.full_width,) and (imp[g.name] >= 0).all() and imp[g.name].sum() > 0


def test_taylor_importance_is_summed_abs_w_times_grad():
    torch.manual_seed(0)
    net = TinyNet().eval()
    space = build_space(net, (1, 3, 8, 8))
    data = _batches(3)
    imp = channel_importance(net, space, "taylor", loader=data, num_batches=3)["conv"]
    ref = TinyNet().eval()
    ref.load_state_dict(net.state_dict())
    for x, y in data:
        F.cross_entropy(ref(x), y).backward()
    conv, fc = ref.conv, ref.fc
    out_side = (conv.weight * conv.weight.grad).sum((1, 2, 3)) + conv.bias * conv.bias.grad
    in_side = (fc.weight * fc.weight.grad).sum(0)
    expected = (out_side.abs() + in_side.abs()).detach().double().numpy() / 3
    np.testing.assert_allclose(imp, expected, rtol=1e-5)
    assert net.conv.weight.grad is None  # the caller's model is untouched


@pytest.mark.parametrize("score", ["taylor", "l1-fraction", "width"])
def test_scores_are_monotone_and_aligned_with_candidates(grouped, score):
    net, space = grouped
    scores = group_scores(net, space, score, loader=_batches(2))
    assert set(scores) == {g.name for g in space.prunable}
    for g in space.prunable:
        s = scores[g.name]
        assert s.shape == (len(g.candidates),) and np.all(np.diff(s) >= 0)
        assert s[-1] == (1.0 if score == "l1-fraction" else 0.0)
        assert s[0] < s[-1]


def test_taylor_score_on_cifar_resnet_with_fixed_shortcuts():
    from itcp_deploy.models import create_model

    model = create_model("cifar_resnet20").eval()
    space = build_space(model, (1, 3, 32, 32), model_spec="cifar_resnet20")
    scores = group_scores(model, space, "taylor", loader=_batches(2, shape=(3, 32, 32), classes=10),
                          settings=ScoreSettings(gradient_batches=2))
    assert len(scores) == 12 and all(s[-1] == 0.0 and s[0] < 0 for s in scores.values())


def test_data_scores_need_data(grouped):
    net, space = grouped
    with pytest.raises(UsageError, match="taylor"):
        group_scores(net, space, "taylor")
    with pytest.raises(UsageError, match="calib"):
        group_scores(net, space, "sensitivity", loader=_batches(1))


def test_sensitivity_measures_caches_and_resumes(grouped, tmp_path, monkeypatch):
    net, space = grouped
    settings = ScoreSettings(bn_images=16, calib_images=16, max_widths_per_group=2)
    cache = tmp_path / "sens.json"
    kwargs = dict(loader=_batches(2), calib_loader=_batches(2, seed=1), cache_path=cache, settings=settings)
    scores = group_scores(net, space, "sensitivity", **kwargs)
    for g in space.prunable:
        s = scores[g.name]
        assert s.shape == (len(g.candidates),) and np.all(np.diff(s) >= 0) and s[-1] == 0.0 and (s <= 0).all()
    entry = next(iter(json.loads(cache.read_text())["entries"].values()))
    assert entry["evaluations"] == sum(min(2, len(g.candidates) - 1) for g in space.prunable)
    assert entry["seconds"] > 0

    import itcp_deploy.pruning.sensitivity as sensitivity

    def fail(*args, **kwargs):
        raise AssertionError("cached scores were recomputed")

    monkeypatch.setattr(sensitivity, "apply_widths", fail)
    again = group_scores(net, space, "sensitivity", **kwargs)
    assert all(np.array_equal(again[k], scores[k]) for k in scores)
    with pytest.raises(AssertionError, match="recomputed"):  # other settings -> another key -> recompute
        group_scores(net, space, "sensitivity", **{**kwargs, "settings": ScoreSettings(bn_images=8,
                                                                                       calib_images=16)})


class _MemoryCapped(nn.Module):
    """A net whose forward fails like torch's CPU allocator on batches larger than ``cap`` images."""

    def __init__(self, cap: int, message: str = "DefaultCPUAllocator: can't allocate memory") -> None:
        super().__init__()
        self.cap, self.message, self.failures = cap, message, 0
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.cap:
            self.failures += 1
            raise RuntimeError(f"[enforce fail at alloc_cpu.cpp:127] {self.message}")
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))


@pytest.mark.parametrize("message", ["DefaultCPUAllocator: can't allocate memory", "could not create a primitive"])
def test_a_batch_out_of_memory_is_taken_in_halves_with_the_same_gradient(message):
    from itcp_deploy.pruning.importance import accumulate_gradients

    torch.manual_seed(0)
    whole, capped = _MemoryCapped(cap=64), _MemoryCapped(cap=3, message=message)
    capped.load_state_dict(whole.state_dict())
    batches = _batches(2, size=10)
    assert accumulate_gradients(whole, batches, 2) == accumulate_gradients(capped, batches, 2) == 2
    for a, b in zip(whole.parameters(), capped.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)
    assert capped.failures == 3  # 10, then both 5s, of the first batch; the second starts at the size that fit


def test_one_image_out_of_memory_is_one_line_naming_the_fix():
    from itcp_deploy.errors import ItcpError
    from itcp_deploy.pruning.importance import accumulate_gradients

    with pytest.raises(ItcpError, match="ran out of memory on a batch of 1 .*--criterion magnitude"):
        accumulate_gradients(_MemoryCapped(cap=0), _batches(1, size=4), 1)


def test_a_failing_kernel_on_one_image_is_raised_as_it_is():
    from itcp_deploy.pruning.importance import accumulate_gradients

    with pytest.raises(RuntimeError, match="could not create a primitive"):
        accumulate_gradients(_MemoryCapped(cap=0, message="could not create a primitive"), _batches(1, size=4), 1)


def test_a_batch_is_taken_as_many_images_at_a_time_as_its_activations_allow(monkeypatch):
    """RetinaNet at 512 held 19.5 GB for its 64 score images in one pass, and the OOM killer ended the run: a pass
    takes at most PASS_BYTES of activations (x ACTIVATION_COPIES), with the same gradient."""
    import itcp_deploy.pruning.importance as importance

    torch.manual_seed(0)
    whole, parts = _MemoryCapped(cap=64), _MemoryCapped(cap=64)
    parts.load_state_dict(whole.state_dict())
    batches = _batches(1, size=10)
    assert importance.images_per_pass(whole, batches[0][0]) >= 10  # a few KB an image: one pass
    importance.accumulate_gradients(whole, batches, 1)
    passes = []
    monkeypatch.setattr(importance, "PASS_BYTES", 1)  # one image a pass
    monkeypatch.setattr(parts, "forward", lambda x, f=parts.forward: passes.append(len(x)) or f(x))
    importance.accumulate_gradients(parts, batches, 1)
    assert passes == [1] * 11  # the probe's image, then each of the ten
    for a, b in zip(whole.parameters(), parts.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)
