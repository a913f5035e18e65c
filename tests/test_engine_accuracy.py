"""The shipped engine's own accuracy (issue 25): logits come from the engine through its runner, in chunks of its
fixed batch (the last padded), and agree with the PyTorch model they were built from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from itcp_deploy.engines.base import EngineOptions
from itcp_deploy.engines.build import EngineSpec, build_engine
from itcp_deploy.engines.evaluate import EngineOutputs, engine_outputs
from itcp_deploy.errors import UsageError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


@pytest.mark.parametrize("batch", [1, 4])
def test_engine_logits_are_the_models_in_order(tmp_path, batch):
    model = _net()
    built = build_engine(model, (batch, 3, 8, 8), tmp_path, "m", EngineSpec("onnxruntime", "fp32"))
    x, y = torch.randn(10, 3, 8, 8), torch.randint(0, 5, (10,))
    loader = [(x[:3], y[:3]), (x[3:], y[3:])]
    out = engine_outputs("onnxruntime", built.artifact, EngineOptions(), loader)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(out.logits, expected, rtol=1e-4, atol=1e-5)
    assert out.top1 == pytest.approx(100.0 * float(np.mean(expected.argmax(1) == y.numpy())))
    assert out.agreement(out) == 1.0
    assert len(engine_outputs("onnxruntime", built.artifact, EngineOptions(), loader, limit=7).labels) == 7


def test_agreement_counts_the_same_class_and_needs_the_same_images():
    a = EngineOutputs(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), np.array([0, 1, 1]))
    b = EngineOutputs(np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), np.array([0, 1, 1]))
    assert a.agreement(b) == pytest.approx(2 / 3) and a.top1 == pytest.approx(200 / 3)
    with pytest.raises(UsageError, match="same batches"):
        a.agreement(EngineOutputs(a.logits[:2], a.labels[:2]))


def test_no_engine_accuracy_when_the_data_is_not_at_the_engines_shape():
    """The 224 sweep's efficientnet_b2: synthetic 32x32 images, an engine built at 224. The PyTorch model takes
    any size; the engine does not, so the run reports no engine accuracy instead of failing its final stage."""
    from types import SimpleNamespace

    from itcp_deploy.pipeline.stages import _engine_accuracy

    state = SimpleNamespace(done=lambda stage: {"accuracy": 10.0, "targets": {"t": "dense"}})
    ctx = SimpleNamespace(state=state, inputs=SimpleNamespace(eval_loader=[(torch.zeros(2, 3, 32, 32), None)]))
    target = SimpleNamespace(name="t", input_shape=(1, 3, 224, 224))
    assert _engine_accuracy(ctx, target, "engine", _net()) is None


def test_quality_compares_the_engine_with_the_model_it_came_from(tmp_path):
    """``source``: the FP32 PyTorch model the engine was built from (a quantized engine's agreement with it is
    what quantization alone cost); its argmax differs from the engine's where the logits differ."""
    from itcp_deploy.engines.evaluate import engine_quality

    model = _net()
    built = build_engine(model, (1, 3, 8, 8), tmp_path, "m", EngineSpec("onnxruntime", "fp32"))
    x, y = torch.randn(20, 3, 8, 8), torch.randint(0, 5, (20,))
    same = engine_quality("onnxruntime", built.artifact, built.artifact, EngineOptions(), [(x, y)], source=model)
    assert same["agreement_with_source"] == 1.0 and same["agreement_with_dense"] == 1.0
    other = _net()
    with torch.no_grad():
        other[-1].weight.neg_()  # another classifier: most images change class
    moved = engine_quality("onnxruntime", built.artifact, built.artifact, EngineOptions(), [(x, y)], source=other)
    with torch.no_grad():
        want = float(np.mean(other(x).argmax(1).numpy() == model(x).argmax(1).numpy()))
    assert moved["agreement_with_source"] == pytest.approx(want) and want < 1.0
    assert "agreement_with_source" not in engine_quality("onnxruntime", built.artifact, built.artifact,
                                                         EngineOptions(), [(x, y)])
