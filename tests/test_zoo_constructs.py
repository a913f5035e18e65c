"""Each failure class the zoo sweep found, on a tiny model with that construct (issue 15):

- channel split + shuffle (ShuffleNet): Torch-Pruning's tracing divided by zero;
- dense concatenation (DenseNet): a layer reading several groups crashed the profile design (KeyError);
- grouped convs (ResNeXt, RegNet): candidate widths stepped by 8 x groups, so groups were barely prunable;
- a dense-prediction output (a dict of maps): no classification loss for the taylor score;
- a channel concatenation deep in a network (Swin-S's patch merging after 18 blocks): TP's size inference
  gave up (None) and added None to an int while tracing;
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from itcp_deploy.engines.export import export_onnx, verify_onnx
from itcp_deploy.perfmodel import fit
from itcp_deploy.pruning import apply_widths, build_space, group_scores
from itcp_deploy.pruning.output_kind import criteria_for
from itcp_deploy.search.baselines import SearchInputs, run_method
from tests.synthetic_spaces import synthetic_profile


def _cbr(cin: int, cout: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class ShuffleBlock(nn.Module):
    """ShuffleNetV2's stride-1 unit: split, transform one half, concatenate, shuffle."""

    def __init__(self, width: int) -> None:
        super().__init__()
        half = width // 2
        self.branch = nn.Sequential(_cbr(half, half), _cbr(half, half, 3, groups=half), _cbr(half, half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        out = torch.cat([a, self.branch(b)], dim=1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, 3)
        self.blocks = nn.Sequential(ShuffleBlock(16), ShuffleBlock(16))
        self.head = _cbr(16, 24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1).flatten(1))


class DenseNet(nn.Module):
    """Two dense layers (bottleneck 1x1 then 3x3 growth, concatenated onto their input) and a transition."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, 3)
        self.l1 = nn.Sequential(_cbr(16, 32), _cbr(32, 8, 3))
        self.l2 = nn.Sequential(_cbr(24, 32), _cbr(32, 8, 3))
        self.transition = _cbr(32, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat([x, self.l2(x)], 1)
        return self.fc(F.adaptive_avg_pool2d(self.transition(x), 1).flatten(1))


class GroupedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 32, 3)
        self.grouped = _cbr(32, 32, 3, groups=8)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.grouped(self.stem(x)), 1).flatten(1))


class SegNet(nn.Module):
    """A dense-prediction head: per-pixel class maps upsampled to the input size, returned in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(3, 16, 3), _cbr(16, 24, 3))
        self.classifier = nn.Conv2d(24, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.classifier(self.body(F.avg_pool2d(x, 2)))
        return {"out": F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def _min_widths(space) -> dict[str, int]:
    return {g.name: g.candidates[0] for g in space.prunable}


def _parity(model: nn.Module, shape, tmp_path) -> float:
    path = export_onnx(model, shape, tmp_path / "m.onnx", verify=False)
    return verify_onnx(model.eval(), path, shape)


def test_channel_shuffle_traces_and_prunes_only_what_it_can_map(tmp_path):
    net, shape = ShuffleNet().eval(), (1, 3, 16, 16)
    space = build_space(net, shape)
    prunable = {g.name for g in space.prunable}
    assert {"blocks.0.branch.0.0", "blocks.1.branch.0.0", "head.0"} <= prunable  # inner channels stay prunable
    # what passes a shuffle keeps its width: the stem and the branches' last convs
    assert not prunable & {"stem.0", "blocks.0.branch.2.0", "blocks.1.branch.2.0"}
    pruned = apply_widths(net, space, _min_widths(space)).eval()
    assert pruned.blocks[0].branch[0][0].out_channels == 4
    assert _parity(pruned, shape, tmp_path) < 1e-4


def test_dense_concatenation_profiles_fits_searches_and_prunes(tmp_path):
    from itcp_deploy.profiling.design import DesignConfig, design_plans

    net, shape = DenseNet().eval(), (1, 3, 16, 16)
    space = build_space(net, shape)
    assert {"l1.0.0", "l2.0.0"} <= {g.name for g in space.prunable}  # the bottlenecks
    assert all("+" not in layer.in_group for layer in space.layers)
    plans = design_plans(space, DesignConfig(max_builds=8, holdout=2))  # KeyError here before
    assert len(plans) == 8
    perf = fit(synthetic_profile(space, n_design=12, n_holdout=4))
    scores = {g.name: np.linspace(-1.0, 0.0, len(g.candidates)) for g in space.prunable}
    solution = run_method("itcp", SearchInputs(space, perf, scores), perf.dense_ms() / 1.2, bins=200)
    assert solution.cost <= perf.dense_ms() / 1.2
    pruned = apply_widths(net, space, solution.widths).eval()
    assert _parity(pruned, shape, tmp_path) < 1e-4


def test_grouped_conv_groups_step_by_their_conv_groups():
    net = GroupedNet().eval()
    space = build_space(net, (1, 3, 16, 16))
    assert space.group("stem.0").candidates == (8, 16, 24, 32)  # was (32,): step 4 x 8 groups = 32
    pruned = apply_widths(net, space, {"stem.0": 16})
    assert pruned.grouped[0].groups == 8 and pruned.grouped[0].in_channels == 16


def test_dense_prediction_output_falls_back_to_a_data_free_score_and_exports(tmp_path):
    net, shape = SegNet().eval(), (1, 3, 16, 16)
    space = build_space(net, shape)
    criteria = criteria_for(net, shape, "taylor", "taylor")
    assert (criteria.score, criteria.importance) == ("magnitude", "l1") and "not classification" in criteria.note
    assert criteria_for(ShuffleNet(), shape, "taylor", "taylor").note is None  # classifiers keep taylor
    scores = group_scores(net, space, criteria.score)
    assert all(np.all(np.diff(s) > 0) and s[-1] == 0.0 for s in scores.values())
    pruned = apply_widths(net, space, _min_widths(space), importance=criteria.importance).eval()
    assert pruned(torch.zeros(shape))["out"].shape == (1, 4, 16, 16)
    assert _parity(pruned, shape, tmp_path) < 1e-4


def test_evaluate_gives_no_accuracy_for_dense_outputs():
    from itcp_deploy.train import evaluate

    batches = [(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))]
    assert evaluate(SegNet(), batches)["accuracy"] is None


class SegNetFactory(SegNet):
    """SegNet as a model spec builds it (with ``num_classes``)."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()


def test_the_evaluate_command_refuses_a_model_without_top1_in_one_line():
    """It printed ``accuracy {None:.2f}``: a TypeError traceback for any segmentation model."""
    from tests.conftest import run_cli

    code, _, err = run_cli("evaluate", "tests.test_zoo_constructs:SegNetFactory", "--data",
                           "synthetic:size=16,train=8,test=8", "--trust-code")
    assert code == 2 and "no top-1 accuracy" in err and "Traceback" not in err, err


class PoolTo3(nn.Module):
    """VGG's head in small: adaptive pooling to 3x3 from a 2x2 map (3 is no factor of 2), then flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 8, 3), nn.MaxPool2d(4))
        self.pool = nn.AdaptiveAvgPool2d((3, 3))
        self.fc = nn.Linear(8 * 9, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_adaptive_pooling_to_a_non_factor_size_exports_exactly(tmp_path):
    net, shape = PoolTo3().eval(), (1, 3, 8, 8)
    assert _parity(net, shape, tmp_path) < 1e-5  # the exporter refused it before ("not factor of input size")
    space = build_space(net, shape)  # a 3x3 map flattened into a Linear: that conv group keeps its width
    assert space.group("features.0.0").fixed and space.group("fc:in").full_width == 72


def _tiny_swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[2, 2],
                           num_classes=5).eval()


@pytest.mark.timeout(120)
def test_window_attention_groups_without_exploding_and_prunes_the_mlps(tmp_path):
    """Swin: a 4-D matmul reshapes attention maps inside aten (no Python-level view to see); TP took that
    reshape for a flatten and multiplied index lists by the head dim at every block (13.5 GB, killed, for
    swin_t). Only verified NCHW flattens keep TP's stride mapping; groups through the others keep width."""
    net, shape = _tiny_swin(), (1, 3, 32, 32)
    space = build_space(net, shape)
    prunable = {g.name for g in space.prunable}
    assert prunable == {"features.1.0.mlp.0", "features.1.1.mlp.0", "features.3.0.mlp.0", "features.3.1.mlp.0"}
    assert space.group("features.0.0").fixed  # the embedding width runs through the attention reshapes
    pruned = apply_widths(net, space, _min_widths(space)).eval()
    assert pruned.features[1][0].mlp[0].out_features == space.group("features.1.0.mlp.0").candidates[0]
    assert _parity(pruned, shape, tmp_path) < 1e-4


def test_a_width_the_forward_hard_codes_keeps_its_group_fixed(tmp_path):
    """torchvision's ViT reshapes the patch embedding to (n, self.hidden_dim, -1): pruning that group traces
    fine but the pruned forward fails. The group is found (bisection) and kept; the MLPs stay prunable."""
    from torchvision.models.vision_transformer import VisionTransformer

    net = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=5).eval()
    shape = (1, 3, 32, 32)
    with pytest.warns(UserWarning, match="forward fails with them pruned.*conv_proj"):
        space = build_space(net, shape)
    assert space.group("conv_proj").fixed
    assert {g.name for g in space.prunable} == {"encoder.layers.encoder_layer_0.mlp.0",
                                                "encoder.layers.encoder_layer_1.mlp.0"}
    pruned = apply_widths(net, space, _min_widths(space)).eval()
    assert pruned(torch.zeros(shape)).shape == (1, 5)


class _OutOfMemoryWhenPruned(nn.Module):
    """Runs at full width; its pruned forward fails like torch's CPU allocator."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = _cbr(3, 16, 3), _cbr(16, 16, 3), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.a[0].out_channels < 16:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 33732864 bytes")
        return self.fc(F.adaptive_avg_pool2d(self.b(self.a(x)), 1).flatten(1))


def test_running_out_of_memory_checking_the_pruned_forward_is_said_not_taken_for_the_models_code():
    """regnet_y_128gf and vit_h_14 in the sweep: the check ran out of memory, every group was fixed as if
    the model's code stored its widths, and the sweep recorded 0 groups without a reason."""
    from itcp_deploy.errors import ItcpError

    with pytest.raises(ItcpError, match="ran out of memory running a pruned copy"):
        build_space(_OutOfMemoryWhenPruned().eval(), (1, 3, 16, 16))


def test_run_inputs_report_no_accuracy_for_dense_outputs():
    """`run` on lraspp/fcn stopped at the dense stage: float(None) for the accuracy of a dict of maps."""
    from itcp_deploy.pipeline.sources import ModelInputs

    batches = [(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))]
    assert ModelInputs(SegNet(), batches, eval_loader=batches).accuracy(SegNet()) is None


def test_a_constant_input_subnetwork_keeps_its_width_instead_of_refusing(tmp_path):
    """Swin V2's position-bias MLP (`cpb_mlp`) reads a fixed coordinate table, not the image: TP's trace
    misses it and build_space refused the model. Such layers now keep their widths; the rest prunes."""
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    net = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[2, 2],
                          num_classes=5, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2).eval()
    shape = (1, 3, 32, 32)
    space = build_space(net, shape)
    assert space.group("features.1.0.attn.cpb_mlp.0").fixed
    assert "features.1.0.mlp.0" in {g.name for g in space.prunable}
    pruned = apply_widths(net, space, _min_widths(space)).eval()
    assert _parity(pruned, shape, tmp_path) < 1e-4


class LongChainConcat(nn.Module):
    """Slices concatenated along channels after a 600-op chain: past TP's 500-step size inference."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.mid, self.head, self.fc = _cbr(3, 8, 3), _cbr(8, 16), _cbr(32, 8), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.stem(x))
        for _ in range(600):
            h = h * 1.0
        merged = torch.cat([h[:, :, 0::2], h[:, :, 1::2]], 1)
        return self.fc(F.adaptive_avg_pool2d(self.head(merged), 1).flatten(1))


def test_a_concatenation_past_tps_size_inference_traces_with_recorded_sizes(tmp_path):
    """swin_s failed at groups ("unsupported operand type(s) for +: 'int' and 'NoneType'") where swin_t
    passed: TP's walk to a concatenation's input sizes gave up. The sizes are now recorded at the cat."""
    net = LongChainConcat().eval()
    shape = (1, 3, 16, 16)
    space = build_space(net, shape)
    assert {g.name for g in space.prunable} == {"stem.0", "head.0"}
    pruned = apply_widths(net, space, _min_widths(space)).eval()
    assert pruned.stem[0].out_channels < 8 and _parity(pruned, shape, tmp_path) < 1e-4


def test_group_queries_reuse_the_index_mapping_until_a_pruning_changes_a_shape(monkeypatch):
    """TP remapped the whole graph on every group query (swin_s: 79 passes in build_space, 37 CPU-s, 14
    without; its profile ran out of the sweep's CPU cap). A pass now runs only after a shape changed."""
    from torch_pruning.dependency import index_mapping

    from itcp_deploy.pruning.tracing import root_group, trace, traced_groups

    net = ShuffleNet().eval()
    graph = trace(net, (1, 3, 16, 16), "shufflenet")
    passes = []
    monkeypatch.setattr(index_mapping, "update_reshape_index_mapping",
                        lambda g, node, inner=index_mapping.update_reshape_index_mapping: passes.append(
                            node) or inner(g, node))
    assert len(traced_groups(graph, net)) > 3 and passes == []
    root_group(graph, net, "stem.0", [0]).prune(record_history=False)
    root_group(graph, net, "head.0", [0])
    assert passes  # the pruning changed shapes: the next query remapped

class Res2Block(nn.Module):
    """Res2Net's hierarchical split: each chunk's conv output is added to the next chunk before its conv."""

    def __init__(self, width: int = 4, scale: int = 3) -> None:
        super().__init__()
        self.width = width
        self.stem = _cbr(3, 16, 3)
        self.conv1 = _cbr(16, width * scale)
        self.convs = nn.ModuleList(_cbr(width, width, 3) for _ in range(scale - 1))
        self.conv3 = nn.Conv2d(width * scale, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        chunks = torch.split(self.conv1(x), self.width, 1)
        outs, sp = [], chunks[0]
        for i, conv in enumerate(self.convs):
            sp = conv(chunks[i] if i == 0 else sp + chunks[i])
            outs.append(sp)
        out = F.relu(self.conv3(torch.cat([*outs, chunks[-1]], 1)) + x)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def test_a_layer_the_trace_misreads_keeps_what_it_touches_and_the_rest_prunes(tmp_path):
    """timm's Res2Net (and MixNet, GhostNet, DPN) refused: a split chunk added to a conv's output put the
    4-channel conv in the 12-channel group of the split. That layer now writes its own fixed group and every
    group it touches keeps its width; the residual stream stays prunable and prunes correctly."""
    net, shape = Res2Block().eval(), (1, 3, 16, 16)
    space = build_space(net, shape)
    assert {g.name for g in space.prunable} == {"stem.0"}
    assert space.group("convs.0.0").fixed and space.group("conv1.0").fixed
    pruned = apply_widths(net, space, _min_widths(space)).eval()
    assert pruned.stem[0].out_channels == pruned.conv3.out_channels == space.group("stem.0").candidates[0] < 16
    assert _parity(pruned, shape, tmp_path) < 1e-4


class GainConv(nn.Conv2d):
    """A conv with a parameter of its own per output channel, as timm's ScaledStdConv2d (NF-ResNets)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1)
        self.gain = nn.Parameter(torch.rand(cout, 1, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.gain, self.bias, self.stride, self.padding)


def test_a_conv_subclass_with_per_channel_parameters_prunes_them_with_its_channels(tmp_path):
    """timm's NF-ResNets had no prunable group: Torch-Pruning cut weight and bias but not `gain`, so every
    pruned forward failed and every group was kept whole. The extra parameters are now cut with the channels,
    and compensation leaves such a layer alone (its forward is not a plain linear map of its weight)."""
    from itcp_deploy.pruning.compensate import _refittable

    net = nn.Sequential(GainConv(3, 16), nn.ReLU(), GainConv(16, 16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(16, 5)).eval()
    shape = (1, 3, 16, 16)
    space = build_space(net, shape)
    assert {g.name for g in space.prunable} == {"0", "2"}
    pruned = apply_widths(net, space, {"0": 8, "2": 4}).eval()
    assert pruned[0].gain.shape[0] == pruned[0].out_channels == 8 and pruned[2].gain.shape[0] == 4
    assert _parity(pruned, shape, tmp_path) < 1e-4
    assert not _refittable(net[0]) and _refittable(nn.Conv2d(3, 4, 1))
