"""apply_widths over the zoo: pruned models run, match their plan, export to ONNX, and reload exactly."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from itcp_deploy.errors import UsageError
from itcp_deploy.plan import PruningPlan
from itcp_deploy.pruning import apply_widths, build_space, channel_importance, count_macs_params
from itcp_deploy.pruning.apply import keep_indices, pruned_layer_widths
from tests.test_pruning_space import ConcatNet, GroupedNet

PLANS_PER_MODEL = 10
ZOO = [
    ("cifar_resnet20", (1, 3, 32, 32)),
    ("cifar_resnet56", (1, 3, 32, 32)),
    ("cifar_vgg16_bn", (1, 3, 32, 32)),
    ("torchvision:resnet18", (1, 3, 64, 64)),
    pytest.param("torchvision:resnet50", (1, 3, 64, 64), marks=pytest.mark.slow),
    ("torchvision:mobilenet_v2", (1, 3, 64, 64)),
    ("torchvision:mobilenet_v3_small", (1, 3, 64, 64)),
]


def _model(spec: str) -> torch.nn.Module:
    from itcp_deploy.models import create_model

    torch.manual_seed(0)
    model = create_model(spec).eval()
    with torch.no_grad():  # non-trivial BN statistics so channel choice and exactness are really tested
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _plans(space, seed: int, count: int) -> list[dict[str, int]]:
    rng = random.Random(seed)
    plans = [{g.name: g.candidates[0] for g in space.prunable}]
    plans += [{g.name: rng.choice(g.candidates) for g in space.prunable} for _ in range(count - 1)]
    return plans


def _assert_matches_plan(pruned, space, widths) -> None:
    plan = space.complete(widths)
    actual = pruned_layer_widths(pruned, space)
    for layer in space.layers:
        expected = (sum(plan[g] for g in layer.in_group.split("+")), plan[layer.out_group])
        assert actual[layer.name] == expected, layer.name


@pytest.mark.parametrize(("spec", "shape"), ZOO)
def test_random_plans_run_and_match_layer_shapes(spec, shape):
    model = _model(spec)
    space = build_space(model, shape, model_spec=spec)
    x = torch.randn(2, *shape[1:])
    with torch.no_grad():
        reference = model(x)
        assert torch.equal(apply_widths(model, space, {})(x), reference)
    importance = channel_importance(model, space)
    macs = []
    for widths in _plans(space, seed=len(spec), count=PLANS_PER_MODEL):
        pruned = apply_widths(model, space, widths, importance=importance)
        _assert_matches_plan(pruned, space, widths)
        with torch.no_grad():
            y = pruned(x)
        assert y.shape == reference.shape and torch.isfinite(y).all()
        macs.append(space.macs(widths))
    assert min(macs) < space.macs({})
    with torch.no_grad():
        assert torch.equal(model(x), reference)  # the original is untouched


@pytest.mark.parametrize(("spec", "shape"), ZOO)
def test_pruned_model_exports_to_onnx_and_matches_onnxruntime(spec, shape, tmp_path):
    from itcp_deploy.engines.export import export_onnx

    model = _model(spec)
    space = build_space(model, shape, model_spec=spec)
    widths = _plans(space, seed=1, count=2)[1]
    pruned = apply_widths(model, space, widths)
    path = export_onnx(pruned, shape, tmp_path / "pruned.onnx", verify=True)  # ORT parity rel err <= 1e-4
    import onnx

    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    assert len(convs) == sum(lay.op == "conv" for lay in space.layers)


def test_fixed_shortcut_stays_fixed_and_pruned_with_its_group():
    model = _model("cifar_resnet20")
    space = build_space(model, (1, 3, 32, 32), model_spec="cifar_resnet20")
    pruned = apply_widths(model, space, {"conv1": 8, "layer2.0.conv2": 12})
    w = pruned.layer2[0].shortcut.weight
    assert w.shape == (12, 8, 1, 1) and not w.requires_grad
    assert set(w.unique().tolist()) <= {0.0, 1.0} and (w.sum(dim=1) <= 1).all() and (w.sum(dim=0) <= 1).all()


def test_handmade_nets_concat_grouped_depthwise():
    cases = ((ConcatNet(), {"stem": 4, "c": 8}), (GroupedNet(), {"stem": 8, "grouped": 12}))
    for net, widths in cases:
        net.eval()
        space = build_space(net, (1, 3, 16, 16))
        pruned = apply_widths(net, space, widths)
        _assert_matches_plan(pruned, space, widths)
        assert pruned(torch.randn(1, 3, 16, 16)).shape == net(torch.randn(1, 3, 16, 16)).shape
    assert pruned.grouped.groups == 4 and pruned.dw.groups == 12


def test_keeps_most_important_channels():
    net = GroupedNet().eval()
    space = build_space(net, (1, 3, 8, 8))
    imp = channel_importance(net, space)
    keep = keep_indices(imp["grouped"], 12, 4)
    pruned = apply_widths(net, space, {"grouped": 12})
    assert torch.equal(pruned.dw.weight, net.dw.weight[torch.as_tensor(keep)])
    assert keep_indices(np.array([1.0, 5.0, 3.0, 5.0]), 2).tolist() == [1, 3]
    blocks = keep_indices(np.array([9.0, 0, 1, 0, 2, 0]), 4, multiple_of=2)  # same positions per block
    assert blocks.tolist() == [0, 1, 3, 4]  # position sums 9, 2, 1


def test_bad_widths_and_names_are_usage_errors():
    net = GroupedNet()
    space = build_space(net, (1, 3, 8, 8))
    with pytest.raises(UsageError, match="not a candidate"):
        apply_widths(net, space, {"grouped": 13})
    with pytest.raises(UsageError, match="does not exist"):
        apply_widths(net, space, {"nope": 4})
    with pytest.raises(UsageError, match="not a candidate"):
        apply_widths(net, space, {"output": 2})


def test_count_macs_params_shrinks_with_plan():
    model = _model("cifar_resnet20")
    space = build_space(model, (1, 3, 32, 32), model_spec="cifar_resnet20")
    macs, params = count_macs_params(model, (1, 3, 32, 32))
    assert params == sum(p.numel() for p in model.parameters())
    assert macs >= space.macs({}) > 0
    small = apply_widths(model, space, {g.name: g.candidates[0] for g in space.prunable})
    small_macs, small_params = count_macs_params(small, (1, 3, 32, 32))
    assert small_macs < macs / 4 and small_params < params / 4


def test_save_and_load_pruned_reproduces_outputs(tmp_path):
    from itcp_deploy.pruning import load_pruned, save_pruned

    model = _model("cifar_resnet20")
    space = build_space(model, (1, 3, 32, 32), model_spec="cifar_resnet20")
    widths = _plans(space, seed=3, count=2)[1]
    pruned = apply_widths(model, space, widths, importance="l2")
    plan = PruningPlan(model="cifar_resnet20", input_shape=(1, 3, 32, 32), widths=widths)
    pt, plan_file = save_pruned(tmp_path / "model.pt", pruned, plan)
    assert plan_file.name == "widths.json" and pt.exists()
    loaded = load_pruned(pt, plan_file).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert not loaded.layer2[0].shortcut.weight.requires_grad


def test_all_groups_cut_at_once_equal_cutting_them_one_by_one():
    """apply_widths reads every group off the unpruned graph and runs each layer's pruning once (swin_s's 79
    groups each cost a whole-graph remap when cut one by one); the result must be TP's one-by-one pruning."""
    from itcp_deploy.pruning.tracing import root_group, trace

    model, shape = _model("cifar_resnet20"), (1, 3, 32, 32)
    space = build_space(model, shape, model_spec="cifar_resnet20")
    imp = channel_importance(model, space)
    widths = _plans(space, seed=3, count=2)[1]
    at_once = apply_widths(model, space, widths, importance=imp)
    one_by_one = copy.deepcopy(model)
    graph = trace(one_by_one, shape, "cifar_resnet20")
    for g in space.prunable:
        keep = set(keep_indices(imp[g.name], widths[g.name]).tolist())
        if len(keep) < g.full_width:
            root_group(graph, one_by_one, g.name, [i for i in range(g.full_width) if i not in keep]).prune(
                record_history=False)
    expected = one_by_one.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in at_once.state_dict().items())
    assert sum(p.numel() for p in at_once.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("importance", ["l1", "taylor"])
def test_the_pruned_copy_shares_no_tensor_with_the_callers_model(importance):
    """The copy shares the caller's tensors while it is pruned (a full copy cost ViT-L 1.2 GB a plan), then
    owns what pruning did not replace: finetuning the pruned model must not move its teacher."""
    model = _model("torchvision:resnet18")
    space = build_space(model, (1, 3, 64, 64), model_spec="torchvision:resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))]
    pruned = apply_widths(model, space, _plans(space, seed=1, count=2)[1], importance=importance, loader=batches)
    theirs = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert not theirs & {t.data_ptr() for t in [*pruned.parameters(), *pruned.buffers()] if t.numel()}
    with torch.no_grad():
        for t in pruned.parameters():
            t.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_a_saved_pruned_model_keeps_module_versions(tmp_path):
    """torchvision's MNASNet checks its state_dict's version on load ("version should be set to 1 or 2"): the
    saved file keeps the state_dict's metadata (issue 24's sweep: mnasnet1_0 failed at 224 without it)."""
    import torchvision

    from itcp_deploy.pruning import save_pruned

    model = torchvision.models.mnasnet0_5(num_classes=10).eval()
    plan = PruningPlan(model="torchvision:mnasnet0_5", input_shape=(1, 3, 64, 64), widths={})
    pt, _ = save_pruned(tmp_path / "model.pt", model, plan)
    fresh = torchvision.models.mnasnet0_5(num_classes=10)
    fresh.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))
