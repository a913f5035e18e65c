"""Torchvision detectors by name: built offline, traced by Torch-Pruning (head predictors keep their width),
pruned with unchanged head outputs, exported whole (decoding and NMS) with ONNX Runtime parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from itcp_deploy.data.detection import detection_batches
from itcp_deploy.engines.detection_parity import detections_error
from itcp_deploy.engines.export import export_onnx, verify_onnx
from itcp_deploy.errors import ItcpError
from itcp_deploy.models import create_model, list_models
from itcp_deploy.models.detection import DEPLOY_SIZES, TensorDetector
from itcp_deploy.pruning.apply import apply_widths
from itcp_deploy.pruning.importance import accumulate_gradients
from itcp_deploy.pruning.output_kind import own_loss_applies
from itcp_deploy.pruning.space_builder import build_space
from itcp_deploy.sample_inputs import sample_inputs

SIZE = 128  # tests build the detectors at a small deploy size; docs/detection.md runs them at 320
SHAPE = (1, 3, SIZE, SIZE)
SSD = "torchvision:ssdlite320_mobilenet_v3_large"
RCNN = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"


def _model(spec: str, **kwargs) -> TensorDetector:
    torch.manual_seed(0)
    return create_model(spec, image_size=SIZE, **kwargs).eval()


def _half(space) -> dict[str, int]:
    return {g.name: g.candidates[len(g.candidates) // 2] for g in space.prunable}


def test_detectors_are_listed_with_a_deploy_size():
    names = list_models(include_torchvision=True)
    for name in ("ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn",
                 "retinanet_resnet50_fpn", "fcos_resnet50_fpn"):
        assert "torchvision:" + name in names
    assert DEPLOY_SIZES["ssdlite320_mobilenet_v3_large"] == DEPLOY_SIZES["fasterrcnn_mobilenet_v3_large_320_fpn"]


def test_detector_builds_without_downloading(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    model = create_model(SSD, image_size=SIZE)
    assert isinstance(model, TensorDetector) and model.training
    assert model.detector.transform.fixed_size == (SIZE, SIZE)
    assert next(iter(model.state_dict())).startswith("backbone.")  # torchvision's own keys: checkpoints load


def test_eval_gives_detections_and_train_gives_losses():
    model = _model(SSD)
    with torch.no_grad():
        boxes, scores, labels = model(torch.rand(*SHAPE))
    assert boxes.shape[1] == 4 and scores.shape == labels.shape == boxes.shape[:1] and len(scores) > 0
    assert bool((scores[:-1] >= scores[1:]).all())  # activations do not vanish: scores are not all tied
    assert float(scores.max() - scores.min()) > 1e-3
    model.train()
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([3])}] * 2
    losses = model(torch.rand(2, *SHAPE[1:]), targets)
    assert set(losses) == {"bbox_regression", "classification"}
    assert all(torch.isfinite(v) for v in losses.values())


PREDICTORS = {
    SSD: [f"head.{h}_head.module_list.{i}.1" for h in ("classification", "regression") for i in range(6)],
    RCNN: ["rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_predictor.cls_score",
           "roi_heads.box_predictor.bbox_pred"],
}


def _out_width(module: torch.nn.Module) -> int:
    return module.out_channels if isinstance(module, torch.nn.Conv2d) else module.out_features


@pytest.mark.parametrize("spec", [SSD, RCNN])
def test_head_predictors_keep_their_width_and_outputs_their_shape(spec):
    model = _model(spec)
    space = build_space(model, SHAPE, model_spec=spec)
    layers = {layer.name: layer for layer in space.layers}
    assert space.prunable and all(space.group(layers[p].out_group).fixed for p in PREDICTORS[spec])
    pruned = apply_widths(model, space, _half(space))
    x = torch.rand(*SHAPE)
    with torch.no_grad(), model.network_only():
        dense_out = model(x)
    with torch.no_grad(), pruned.network_only():
        pruned_out = pruned(x)
    # dim 0 of a two-stage head's outputs counts the RPN's proposals, which depend on the weights
    assert [t.shape[1:] for t in pruned_out] == [t.shape[1:] for t in dense_out]
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert all(_out_width(pruned.get_submodule(p)) == _out_width(model.get_submodule(p)) for p in PREDICTORS[spec])


@pytest.mark.parametrize("spec,kwargs", [(SSD, {"score_thresh": 0.0}), (RCNN, {"box_score_thresh": 0.0})])
def test_pruned_engine_boxes_match_the_pruned_model(spec, kwargs, tmp_path):
    model = _model(spec, **kwargs)
    space = build_space(model, SHAPE, model_spec=spec)
    pruned = apply_widths(model, space, _half(space))
    path = export_onnx(pruned, SHAPE, tmp_path / "det.onnx", opset=17, verify=False)
    with torch.no_grad():
        boxes, _scores, _labels = pruned(torch.randn(*SHAPE))
    assert len(boxes) > 0  # parity is checked on real detections, not on empty outputs
    assert verify_onnx(pruned, path, SHAPE, trials=2) <= 1e-3


def _detections(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(0, 300, size=(n, 4)).astype(np.float32)
    scores = np.sort(rng.uniform(0.1, 0.9, size=n)).astype(np.float32)[::-1].copy()
    return [boxes, scores, rng.integers(1, 5, size=n)]


def test_detection_parity_accepts_swapped_ties_and_refuses_a_moved_box():
    want = _detections(20)
    want[1][5] = want[1][4]
    got = [a.copy() for a in want]
    got[0][[4, 5]], got[2][[4, 5]] = want[0][[5, 4]], want[2][[5, 4]]  # two tied detections swap places
    assert detections_error(want, got, 1e-3) < 1e-3
    moved = [a.copy() for a in want]
    moved[0][3] += 5.0
    assert detections_error(want, moved, 1e-3) == float("inf")
    relabelled = [a.copy() for a in want]
    relabelled[2][0] = 99
    assert detections_error(want, relabelled, 1e-3) == float("inf")


def test_detection_parity_allows_disagreement_only_at_the_cut_off():
    want = _detections(20)
    got = [a[:-1] for a in want]  # the lowest-scored detection dropped: the cut-off may differ
    assert detections_error(want, got, 1e-3) == 0.0
    got = [np.delete(a, 3, axis=0) for a in want]  # a high-scored detection missing: a wrong engine
    assert detections_error(want, got, 1e-3) == float("inf")


def test_a_wrong_detector_engine_fails_verification(tmp_path):
    model = _model(SSD)
    path = export_onnx(model, SHAPE, tmp_path / "det.onnx", opset=17, verify=False)
    with torch.no_grad():
        model.head.regression_head.module_list[0][1].bias.add_(3.0)  # the torch model's boxes move
    with pytest.raises(ItcpError, match="differs"):
        verify_onnx(model, path, SHAPE, trials=1)


def test_synthetic_detection_set_is_deterministic_with_boxes_inside_the_image():
    (x, targets), = detection_batches(1, batch_size=3, size=SIZE, seed=5)
    (x2, targets2), = detection_batches(1, batch_size=3, size=SIZE, seed=5)
    assert x.shape == (3, 3, SIZE, SIZE) and torch.equal(x, x2)
    for t, t2 in zip(targets, targets2, strict=True):
        assert torch.equal(t["boxes"], t2["boxes"]) and torch.equal(t["labels"], t2["labels"])
        assert bool((t["boxes"] >= 0).all() and (t["boxes"] <= SIZE).all())
        assert set(t["labels"].tolist()) <= {1, 2, 3}


def test_detector_is_scored_with_its_own_loss_on_labelled_boxes():
    model = _model(SSD, num_classes=4)
    batches = detection_batches(1, batch_size=2, size=SIZE)
    assert own_loss_applies(model, batches[0][1])
    assert not own_loss_applies(model, torch.zeros(2, dtype=torch.long))  # class labels: no box loss
    assert not own_loss_applies(torch.nn.Conv2d(3, 3, 1), batches[0][1])
    accumulate_gradients(model, batches, 1)
    grad = model.backbone.features[0][0][0].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert not model.training  # scored in eval mode, as classifiers are


def test_groupnorm_channels_keep_multiples_of_its_groups():
    """FCOS's head normalises with GroupNorm(32): Torch-Pruning keeps num_groups, so a width that is not a
    multiple of it fails in the pruned forward ("divisible by num_groups")."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.GroupNorm(8, 32), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 4, 1))
    space = build_space(model, (1, 3, 8, 8), model_spec="groupnorm")
    (group,) = space.prunable
    assert group.candidates and all(w % 8 == 0 for w in group.candidates)
    pruned = apply_widths(model, space, {group.name: group.candidates[0]})
    assert pruned(torch.rand(1, 3, 8, 8)).shape == (1, 4, 6, 6)


def test_random_ssd_sends_a_trained_models_number_of_boxes_to_nms():
    """At torchvision's zero classifier bias every class score of a random SSD passes its 0.001 threshold and
    NMS dominates the engine; with the background prior a small share does (about detections_per_img on the
    random images it was set on, a few times that on another)."""
    model = _model(SSD)
    image = torch.from_numpy(sample_inputs(SHAPE, np.random.default_rng(1)))  # what engines are timed on
    with torch.no_grad(), model.network_only():
        logits = model(image)[1]
    passing = int((logits.softmax(-1)[..., 1:] > model.detector.score_thresh).sum())
    assert 0 < passing < logits[..., 1:].numel() // 10


@pytest.mark.slow  # about 2 minutes: Torch-Pruning's grouping of SSDLite
def test_tp_peer_prunes_a_detector_and_keeps_its_head_widths():
    """Torch-Pruning's own pruner (``tp-taylor-round``) traces the detector's network without its NMS, as the
    space was traced, and leaves every width the space keeps (the head predictors) whole."""
    from itcp_deploy.pruning.tp_peer import TaylorPeer, group_widths

    model = _model(SSD, num_classes=4)
    space = build_space(model, SHAPE, model_spec=SSD)
    peer = TaylorPeer.prepare(model, space, detection_batches(1, batch_size=2, size=SIZE), round_to=8, num_batches=1)
    pruned = peer.prune(0.5)
    full, cut = group_widths(model, space), group_widths(pruned, space)
    assert sum(cut.values()) < sum(full.values())
    assert all(_out_width(pruned.get_submodule(p)) == _out_width(model.get_submodule(p)) for p in PREDICTORS[SSD])
    boxes, scores, labels = pruned.eval()(torch.rand(*SHAPE))  # the whole forward still runs, NMS included
    assert boxes.shape[1] == 4 and len(scores) == len(labels) == len(boxes)


def _proposals(model: TensorDetector, x: torch.Tensor) -> int:
    det = model.eval().detector
    with torch.no_grad():
        images, _ = det.transform(list(x))
        return sum(len(p) for p in det.rpn(images, det.backbone(images.tensors))[0])


def test_a_random_rpn_proposes_a_trained_ones_number_of_boxes_under_other_batchnorm_statistics():
    """Faster R-CNN's engine time is mostly its box head over the RPN's proposals. Random RPN deltas under
    BatchNorm statistics re-estimated on the run's images (as every shipped pruned copy's are) collapsed most
    proposals, and the engine looked 8x faster than its widths make it; with the deltas zeroed the RPN proposes
    about ``post_nms_top_n`` boxes whatever the statistics, as a trained one does."""
    from itcp_deploy.train import recalibrate_bn

    model = _model(RCNN)
    x = torch.from_numpy(sample_inputs(SHAPE, np.random.default_rng(1)))
    top_n = model.detector.rpn._post_nms_top_n["testing"]  # 150
    assert _proposals(model, x) == top_n
    recalibrate_bn(model, detection_batches(2, 2, SHAPE[-1]), num_batches=2)
    assert _proposals(model, x) > 0.8 * top_n  # 132 (which anchors NMS keeps moves); 4 with random deltas
