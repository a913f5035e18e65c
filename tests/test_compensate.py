"""Compensation after pruning: the least-squares refit brings the pruned network's outputs closer to the dense
network's than pruning alone, on fixed data it was not fit on."""

from __future__ import annotations

import pytest
import torch

from itcp_deploy.models import create_model
from itcp_deploy.pruning import apply_widths, build_space, channel_importance
from itcp_deploy.pruning.compensate import CompensationSettings, compensate, kept_channels
from itcp_deploy.train import recalibrate_bn

SHAPE = (1, 3, 32, 32)


def _batches(seed: int, n: int, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *SHAPE[1:], generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n)]


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    dense = create_model("cifar_resnet20", num_classes=10)
    recalibrate_bn(dense, _batches(1, 4), num_batches=4)  # BN statistics that fit the data
    space = build_space(dense, SHAPE, model_spec="cifar_resnet20")
    importance = channel_importance(dense, space, "l1")
    widths = {g.name: g.candidates[len(g.candidates) // 2] for g in space.prunable}
    return dense, space, importance, widths


def _error(pruned, dense, batches) -> float:
    with torch.no_grad():
        return float(sum(((pruned(x) - dense(x)) ** 2).mean() for x, _ in batches) / len(batches))


def test_compensation_lowers_reconstruction_error_on_held_out_data(setting):
    dense, space, importance, widths = setting
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    plain = apply_widths(dense, space, widths, importance=importance).eval()
    fitted = apply_widths(dense, space, widths, importance=importance).eval()
    refit = compensate(fitted, dense, space, kept_channels(dense, space, widths, importance), _batches(2, 4),
                       CompensationSettings(num_batches=4))
    assert "linear" in refit and "layer2.0.shortcut" not in refit  # the fixed shortcut is never refit
    held_out = _batches(3, 3)
    assert _error(fitted, dense, held_out) < 0.5 * _error(plain, dense, held_out)
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())  # dense untouched


def test_no_pruning_means_nothing_to_refit(setting):
    dense, space, importance, _ = setting
    full = space.full_widths()
    same = apply_widths(dense, space, full, importance=importance)
    assert compensate(same, dense, space, kept_channels(dense, space, full, importance), _batches(2, 1)) == []


def test_kept_channels_are_the_ones_apply_widths_keeps(setting):
    dense, space, importance, widths = setting
    kept = kept_channels(dense, space, widths, importance)
    pruned = apply_widths(dense, space, widths, importance=importance)
    assert any(len(kept[g.name]) < g.full_width for g in space.prunable)
    for layer in space.layers:  # every pruned weight is the dense weight on the kept (out, in) channels
        w = dense.get_submodule(layer.name).weight.detach()
        expected = w[torch.as_tensor(kept[layer.out_group])][:, torch.as_tensor(kept[layer.in_group])]
        assert torch.equal(pruned.get_submodule(layer.name).weight.detach(), expected), layer.name


class _TokenMLP(torch.nn.Module):
    """A ConvNeXt/Swin-style MLP: linear layers over the last dimension of N x H x W x C tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x).permute(0, 2, 3, 1)
        t = t + self.fc2(torch.nn.functional.gelu(self.fc1(t)))
        return self.head(t.mean(dim=(1, 2)))


def test_linear_layers_over_tokens_refit_on_their_last_dimension():
    """The refit indexed a linear layer's output channels on dimension 1 (H of N x H x W x C tokens): an
    IndexError on a tiny Swin, and torchvision's ConvNeXt-Tiny failed its 224 sweep run so."""
    torch.manual_seed(0)
    dense = _TokenMLP().eval()
    space = build_space(dense, SHAPE)
    assert not space.group("fc1").fixed
    widths = {g.name: g.candidates[0] for g in space.prunable}
    importance = channel_importance(dense, space, "l1")
    plain = apply_widths(dense, space, widths, importance=importance).eval()
    fitted = apply_widths(dense, space, widths, importance=importance).eval()
    refit = compensate(fitted, dense, space, kept_channels(dense, space, widths, importance), _batches(2, 4),
                       CompensationSettings(num_batches=4))
    assert "fc2" in refit
    held_out = _batches(3, 3)
    assert _error(fitted, dense, held_out) < _error(plain, dense, held_out)


def test_a_layer_is_refit_to_its_own_output_not_the_in_place_activation_after_it():
    """timm's squeeze-excite applies SiLU in place to ``conv_reduce``'s output: a capture that let the forward go
    on recorded the activated tensor as the layer's output (EfficientNet-B0's refit targets were off by up to
    0.29). The dense targets are read inside the layer's hook, before anything after it runs."""
    import numpy as np

    from itcp_deploy.pruning.compensate import _dense_targets

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(inplace=True), torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    (targets,) = _dense_targets(net, {"0": np.arange(8)}, [(x, None)], CompensationSettings())["0"]
    with torch.no_grad():
        expected = net[0](x).permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.equal(targets, expected) and targets.min() < 0  # before the ReLU


def _counted_compensation(target_bytes: int, pruned_calls: list | None = None):
    """ResNet-20 at half width compensated on 3 batches; the refit model and how often the dense model ran
    (``pruned_calls``: gets an item per forward of the pruned model)."""
    torch.manual_seed(0)
    dense = create_model("cifar_resnet20", num_classes=10).eval()
    space = build_space(dense, SHAPE, model_spec="cifar_resnet20")
    widths = {g.name: g.candidates[len(g.candidates) // 2] for g in space.prunable}
    importance = channel_importance(dense, space, "l1")
    fitted = apply_widths(dense, space, widths, importance=importance).eval()
    calls = []
    handle = dense.register_forward_pre_hook(lambda *_: calls.append(1))
    counter = fitted.register_forward_pre_hook(lambda *_: (pruned_calls if pruned_calls is not None else []).append(1))
    try:
        refit = compensate(fitted, dense, space, kept_channels(dense, space, widths, importance), _batches(2, 3),
                           CompensationSettings(num_batches=3, target_bytes=target_bytes))
    finally:
        handle.remove()
        counter.remove()
    return fitted, refit, len(calls)


def test_the_dense_outputs_of_many_layers_come_from_one_forward():
    """The dense network's outputs do not depend on the refits, so one dense forward per batch serves every layer
    whose outputs fit the budget (at 224 the per-layer dense forwards were most of the recipe's time); a budget
    of one layer at a time gives the same weights, with a dense forward per layer and batch."""
    fitted, refit, calls = _counted_compensation(1 << 30)
    one_by_one, same, many = _counted_compensation(1)
    assert len(refit) > 3 and calls == 3 and same == refit and many == 3 * len(refit)
    for (name, a), b in zip(fitted.state_dict().items(), one_by_one.state_dict().values(), strict=True):
        assert torch.equal(a, b), name



def test_the_lockstep_refits_exactly_what_a_forward_per_layer_does(monkeypatch):
    """The pruned forwards run in lockstep, one per batch, each paused before every refit layer until it is refit:
    the same inputs as a forward per layer stopped at it (bit for bit), with one pruned forward per batch in all."""
    from itcp_deploy.pruning import compensate as comp

    counted: list = []
    fitted, refit, _ = _counted_compensation(1 << 30, counted)
    assert len(counted) == 3  # one pruned forward per batch
    with monkeypatch.context() as m:
        m.setattr(comp, "_refit_in_lockstep", lambda *a: None)
        per_layer, same, _ = _counted_compensation(1 << 30, counted := [])
    assert len(counted) == 3 * len(refit) and same == refit
    for (name, a), b in zip(fitted.state_dict().items(), per_layer.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


class _Branchy(torch.nn.Module):
    """A layer that only batches of positive mean reach: their forwards part ways there."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 1), torch.nn.Conv2d(4, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.c(self.b(h) if x.mean() > 0 else h)


def test_forwards_that_part_ways_finish_the_refit_a_layer_at_a_time():
    """Where the batches' forwards reach different layers, the lockstep stops and leaves the rest to a forward per
    layer: the same weights as that from the start, and no thread left waiting."""
    import copy
    import threading

    import numpy as np

    from itcp_deploy.pruning.compensate import _refit_each, _refit_in_lockstep

    torch.manual_seed(0)
    dense, start = _Branchy().eval(), _Branchy().eval()
    batches = [(torch.randn(2, 3, 4, 4) + 1, None), (torch.randn(2, 3, 4, 4) - 1, None)]
    results, threads = [], threading.active_count()  # another test's idle thread is not this one's
    for lockstep in (True, False):
        pruned = copy.deepcopy(start)
        todo = {n: np.arange(4) for n in ("a", "b", "c")}
        targets: dict = {}
        if lockstep:
            _refit_in_lockstep(pruned, dense, todo, targets, batches, CompensationSettings())
            assert list(todo) == ["b", "c"] and threading.active_count() == threads, threading.enumerate()
        _refit_each(pruned, dense, todo, targets, batches, CompensationSettings())
        results.append(pruned.state_dict())
    for name, a in results[0].items():
        assert torch.equal(a, results[1][name]), name


def test_a_batch_taken_a_few_images_at_a_time_gives_the_same_refit(monkeypatch):
    """The Gram matrices are summed over image blocks of at most ROW_BYTES of rows, so VGG at 224 fits in memory;
    the sum is the same up to float64 rounding."""
    import itcp_deploy.pruning.least_squares as ls

    whole, refit, _ = _counted_compensation(1 << 30)
    monkeypatch.setattr(ls, "ROW_BYTES", 1)  # one image at a time
    blocks, refit_blocks, _ = _counted_compensation(1 << 30)
    assert refit == refit_blocks and refit
    for (name, a), (_, b) in zip(whole.state_dict().items(), blocks.state_dict().items(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    assert any(not torch.equal(a, b) for a, b in zip(whole.state_dict().values(), blocks.state_dict().values(),
                                                      strict=True))  # it did sum in a different order


@pytest.mark.parametrize("layer, shape", [(torch.nn.Conv2d(4, 6, 3, stride=2, padding=1), (3, 4, 20, 18)),
                                          (torch.nn.Conv2d(4, 6, 1), (2, 4, 9, 9)),
                                          (torch.nn.Linear(4, 6), (2, 7, 5, 4)), (torch.nn.Linear(4, 6), (3, 4))])
@pytest.mark.parametrize("limit", [5, 10_000])
def test_a_layers_rows_and_targets_take_the_same_positions(layer, shape, limit):
    """Row i of the regression's inputs is the input of the output in row i of its targets: the layer applied to
    the subsampled rows gives the subsampled outputs, at most ``limit`` an image."""
    import numpy as np

    from itcp_deploy.pruning.least_squares import dense_rows, layer_rows, positions_of

    torch.manual_seed(0)
    x = torch.randn(*shape)
    with torch.no_grad():
        y = layer(x)
    rows = layer_rows(layer, x, limit)
    targets = dense_rows(layer, y, np.arange(6), limit)
    per_image = min(limit, positions_of(layer, x))
    assert rows.shape[0] == targets.shape[0] == shape[0] * per_image
    w = layer.weight.detach().reshape(6, -1).double()
    assert torch.allclose(rows @ w.T + layer.bias.detach().double(), targets.double(), atol=1e-5)


def test_compensation_on_a_subset_of_positions_fits_nearly_as_well(setting):
    """ResNet-20's 32x32 maps (1,024 positions an image, 256 after the first stage) refit on 64 of them: the
    held-out error stays within 25% of the full refit's, far below pruning alone."""
    dense, space, importance, widths = setting
    kept = kept_channels(dense, space, widths, importance)
    plain = apply_widths(dense, space, widths, importance=importance).eval()
    errors = []
    for limit in (4096, 64):
        fitted = apply_widths(dense, space, widths, importance=importance).eval()
        compensate(fitted, dense, space, kept, _batches(2, 4), CompensationSettings(num_batches=4, max_positions=limit))
        errors.append(_error(fitted, dense, _batches(3, 3)))
    full, subset = errors
    assert full < subset < 1.25 * full and subset < 0.5 * _error(plain, dense, _batches(3, 3))


@pytest.mark.parametrize("bias", [True, False])
def test_fewer_rows_than_unknowns_solve_the_same_ridge_regression_from_the_kernel(bias):
    """VGG's first classifier layer (25,089 unknowns, a row an image) is solved from the rows' kernel matrix;
    the solution is the Gram matrix's, checked on a layer small enough for both."""
    from itcp_deploy.pruning.least_squares import _row_blocks, _solve_dual, _solve_primal

    torch.manual_seed(0)
    layer = torch.nn.Linear(300, 5, bias=bias)
    x, y = torch.randn(40, 300), torch.randn(40, 5)
    w0 = layer.weight.detach().double()
    if bias:
        w0 = torch.cat([w0, layer.bias.detach().double()[:, None]], dim=1)
    for ridge in (1e-3, 1.0):
        primal = _solve_primal(_row_blocks(layer, [x[:15], x[15:]], [y[:15], y[15:]], 4096), w0, ridge)
        dual = _solve_dual(_row_blocks(layer, [x[:15], x[15:]], [y[:15], y[15:]], 4096), w0, ridge)
        assert torch.allclose(primal, dual, rtol=1e-6, atol=1e-8)
        assert not torch.allclose(primal, w0, atol=1e-3)  # the fit moved the weights


def test_a_layer_with_fewer_rows_than_unknowns_takes_the_kernel_solve(monkeypatch):
    import itcp_deploy.pruning.least_squares as ls

    called = []

    def recorded(name: str):
        inner = getattr(ls, name)
        return lambda *a: called.append(name) or inner(*a)

    for name in ("_solve_primal", "_solve_dual"):
        monkeypatch.setattr(ls, name, recorded(name))
    torch.manual_seed(0)
    ls.refit_layer(torch.nn.Linear(50, 3), [torch.randn(8, 50)], [torch.randn(8, 3)], 1e-3, 4096)  # 51 unknowns
    ls.refit_layer(torch.nn.Linear(5, 3), [torch.randn(8, 5)], [torch.randn(8, 3)], 1e-3, 4096)  # 6
    assert called == ["_solve_dual", "_solve_primal"]
