"""Torchvision detectors (``torchvision:ssdlite320_mobilenet_v3_large``) as one-tensor-in, tensors-out models.

The product treats a model as ``forward(NCHW tensor) -> tensor(s)``: traced, profiled, exported and measured
that way. A torchvision detector takes a list of images and returns a list of ``{boxes, scores, labels}`` dicts;
:class:`TensorDetector` gives it the product's form without changing what runs: its forward is the detector's
whole eval forward (resize and normalise, backbone, head, box decoding, score threshold, NMS), and it returns
``(boxes, scores, labels)`` for each image in turn. The exported engine is exactly that: what a user deploys.

The wrapper's submodules are the detector's own (``backbone``, ``head``, ``transform``, ...), so layer names
and state_dict keys are torchvision's, and a torchvision checkpoint loads through ``--weights`` as it is.

Each detector is built at a stated deploy size (:data:`DEPLOY_SIZES`): its transform resizes every image to
that size (320 for the ``*320*`` models, as torchvision trains them; 512 for RetinaNet and FCOS, whose
torchvision default of 800 to 1333 is too large to deploy on a CPU). Random weights, nothing downloaded:
``weights=None`` and ``weights_backbone=None``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from itcp_deploy.sample_inputs import sample_inputs

#: Box detectors this module builds, with the square input size their transform resizes to.
DEPLOY_SIZES = {
    "ssdlite320_mobilenet_v3_large": 320,
    "fasterrcnn_mobilenet_v3_large_320_fpn": 320,
    "fasterrcnn_mobilenet_v3_large_fpn": 512,
    "fasterrcnn_resnet50_fpn": 512,
    "fasterrcnn_resnet50_fpn_v2": 512,
    "retinanet_resnet50_fpn": 512,
    "retinanet_resnet50_fpn_v2": 512,
    "fcos_resnet50_fpn": 512,
    "ssd300_vgg16": 300,
}
COCO_CLASSES = 91  # torchvision's detection default (COCO's 90 categories and the background)
_HIDDEN = "_detector"


def detector_names() -> list[str]:
    """Names of the torchvision box detectors :func:`torchvision_detector` builds."""
    return sorted(DEPLOY_SIZES)


def _set_size(detector: nn.Module, size: int) -> None:
    """Make the detector's transform resize every image to ``size`` x ``size`` (its deploy size)."""
    transform = detector.transform
    transform.min_size, transform.max_size = (size,), size
    if getattr(transform, "fixed_size", None) is not None:
        transform.fixed_size = (size, size)


class TensorDetector(nn.Module):
    """A torchvision detector with ``forward(images: NCHW tensor)``.

    Eval mode: the detector's detections, flattened to ``(boxes_0, scores_0, labels_0, boxes_1, ...)``.
    With ``targets`` (a list of ``{"boxes": (K, 4) xyxy, "labels": (K,)}``): the detector's loss dict, with
    BatchNorm left in its mode (eval mode: gradients for channel scores with the model's statistics).
    Train mode without targets, or within :meth:`network_only`: the raw head outputs (BatchNorm recalibration
    runs the network this way).
    """

    loss_from_targets = True  # ``model(images, targets)`` is its training loss dict, in either mode

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.__dict__[_HIDDEN] = detector  # not a submodule: its children are registered here instead
        for name, child in detector.named_children():
            self.add_module(name, child)
        self.train(detector.training)

    @property
    def detector(self) -> nn.Module:
        """The torchvision detector itself (sharing every submodule with this wrapper)."""
        return self.__dict__[_HIDDEN]

    def train(self, mode: bool = True) -> TensorDetector:
        super().train(mode)
        self.detector.training = mode  # the detector's own flag picks losses or detections
        return self

    @contextlib.contextmanager
    def network_only(self) -> Iterator[None]:
        """Within it, forward returns the network's raw head outputs, not detections: what Torch-Pruning traces
        (the post-processing's top-k, gathers and NMS hold no channels, and made its grouping take hours)."""
        self.__dict__["_network_only"] = True
        try:
            yield
        finally:
            self.__dict__["_network_only"] = False

    def _network(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        det = self.detector
        batch, _ = det.transform(list(images))
        features = det.backbone(batch.tensors)
        features = {"0": features} if isinstance(features, torch.Tensor) else features
        if not hasattr(det, "rpn"):  # one-stage: SSD, RetinaNet, FCOS
            return tuple(det.head(list(features.values())).values())
        objectness, deltas = det.rpn.head(list(features.values()))
        training, det.rpn.training = det.rpn.training, False  # proposals only: no targets, no RPN loss
        try:
            proposals, _ = det.rpn(batch, features)
        finally:
            det.rpn.training = training
        heads = det.roi_heads
        boxes = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes)))
        return (*objectness, *deltas, *boxes)

    def _losses(self, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]]) -> dict:
        """The detector's training losses; the BatchNorm layers keep their mode."""
        modes = {m: m.training for m in self.modules()}
        detector_mode = self.detector.training
        for m in modes:
            if not isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.training = True
        self.detector.training = True
        try:
            return self.detector(list(images), list(targets))
        finally:
            for m, mode in modes.items():
                m.training = mode
            self.detector.training = detector_mode

    def forward(self, images: torch.Tensor,
                targets: Sequence[dict[str, torch.Tensor]] | None = None) -> tuple[torch.Tensor, ...] | dict:
        if self.__dict__.get("_network_only") or (self.training and targets is None):
            return self._network(images)
        if targets is not None:
            return self._losses(images, targets)
        detections = self.detector(list(images))
        return tuple(d[k] for d in detections for k in ("boxes", "scores", "labels"))


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` returns detections (boxes, scores, labels per image), compared as sets."""
    return isinstance(model, TensorDetector)


def torchvision_detector(name: str, *, num_classes: int = COCO_CLASSES, image_size: int | None = None,
                         **kwargs) -> TensorDetector:
    """``torchvision.models.get_model(NAME, weights=None, weights_backbone=None, **kwargs)``, wrapped, resizing
    images to ``image_size`` (default: its deploy size, :data:`DEPLOY_SIZES`)."""
    import torchvision

    size = image_size or DEPLOY_SIZES[name]
    detector = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes,
                                            **kwargs)
    _set_size(detector, size)
    model = TensorDetector(detector)
    images = torch.from_numpy(sample_inputs((2, 3, size, size), np.random.default_rng(0)))  # as engines are timed
    _normalise_activations(model, images)
    _background_prior(model, images)
    _anchored_proposals(model)
    return model.train()


@torch.no_grad()
def _anchored_proposals(model: TensorDetector) -> None:
    """Zero a two-stage detector's RPN box deltas, so its proposals are its anchors: a trained RPN's deltas are
    small corrections, and it proposes ``post_nms_top_n`` boxes on any image. Random deltas under other
    BatchNorm statistics (a pruned copy's, re-estimated on the run's images) collapsed most of Faster R-CNN's 150
    proposals to slivers, and its box head (1.9 GMACs at 150 boxes) went with them: that engine measured 0.135 of
    dense where its widths give 0.650 (docs/benchmarks.md section 22), the latency of a random model."""
    rpn = getattr(model.detector, "rpn", None)
    if rpn is not None:
        rpn.head.bbox_pred.weight.zero_()
        rpn.head.bbox_pred.bias.zero_()


@torch.no_grad()
def _background_prior(model: TensorDetector, images: torch.Tensor) -> None:
    """Raise an SSD's background bias until about ``detections_per_img`` class scores per image pass its
    score threshold on ``images`` (what NMS then sorts through, as on a trained model's image). At
    torchvision's zero bias every one of SSDLite's 3234 x 90 scores is about 1/91, over its 0.001 threshold,
    and NMS over those boxes took 97% of the engine (bench/detector_split.py): the latency of an untrained
    model, not of one anyone deploys.
    RetinaNet and FCOS start their classifiers at a prior probability of 0.01 in torchvision already."""
    from torchvision.models.detection.ssd import SSD

    det = model.detector
    if not isinstance(det, SSD) or det.score_thresh <= 0:  # no threshold: every box goes to NMS whatever the bias
        return
    with model.network_only():
        logits = model.eval()(images)[1]  # (N, anchors, classes), column 0 the background
    margins = (logits[..., 1:] - logits[..., :1]).flatten()
    keep = min(det.detections_per_img * len(images), margins.numel())
    shift = float(margins.topk(keep).values[-1]) - math.log(det.score_thresh)
    head = det.head.classification_head
    for block in head.module_list:
        block[-1].bias[0::head.num_columns] += max(shift, 0.0)


@torch.no_grad()
def _normalise_activations(model: TensorDetector, images: torch.Tensor) -> None:
    """Set every BatchNorm's statistics from random ``images``. At torchvision's random init with identity
    statistics, MobileNet-V3's activations shrink to 1e-13 over its depth: every score ties, so NMS keeps an
    arbitrary set of boxes and no two runtimes agree on it. A checkpoint (``--weights``) replaces these."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: this one batch's statistics
    model.train()
    model(images)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
