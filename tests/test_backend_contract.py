"""One contract, every registered backend: a new backend that drifts from the Runner interface fails here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from itcp_deploy.engines import EngineOptions, get_backend, list_backends
from itcp_deploy.errors import MissingDependencyError, UsageError
from tests.test_profiler import INPUT_SHAPE, Tiny


def _backend_or_skip(name: str):
    backend = get_backend(name)
    try:
        backend.version()
    except MissingDependencyError as err:
        pytest.skip(f"{name} is not usable here: {err}")
    return backend


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return Tiny().eval()


def _build(backend, model, tmp_path):
    options = EngineOptions()
    if backend.source == "onnx":
        from itcp_deploy.engines.export import export_onnx

        source = export_onnx(model, INPUT_SHAPE, tmp_path / "tiny.onnx")
    else:
        source = model
    try:
        return backend.builder(source, tmp_path / "artifact", options, INPUT_SHAPE)(), options
    except MissingDependencyError as err:
        pytest.skip(f"{backend.name} cannot build here: {err}")


@pytest.mark.parametrize("name", list_backends())
def test_runner_contract(name, tiny_model, tmp_path):
    backend = _backend_or_skip(name)
    artifact, options = _build(backend, tiny_model, tmp_path)
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(x)).numpy()

    idle = backend.runner(artifact, options)
    with pytest.raises(RuntimeError, match="not active"):
        idle.infer({"input": x})

    with backend.runner(lambda: artifact, options) as runner:  # lazy: resolved on enter
        assert runner.active
        specs = runner.input_specs()
        assert len(specs) == 1
        ((input_name, (shape, dtype)),) = specs.items()
        assert tuple(shape) == INPUT_SHAPE and dtype == np.float32
        outputs = runner.infer({input_name: x})
        assert isinstance(outputs, dict) and len(outputs) == 1
        np.testing.assert_allclose(next(iter(outputs.values())), expected, rtol=1e-3, atol=1e-4)
        with pytest.raises(UsageError, match="engine wants"):
            runner.infer({input_name: x[:, :, :8]})
        with pytest.raises(UsageError, match="do not match"):
            runner.infer({"wrong": x})
        run_once = runner.prepare({input_name: x})
        assert callable(run_once)
        run_once()
        runner.synchronize()
        feeds = runner.random_feeds()
        assert feeds[input_name].shape == INPUT_SHAPE
        layers = runner.layer_times_ms(feeds, runs=5, warmup=1)
        if backend.in_context_layers:
            assert layers and all(ms >= 0 for ms in layers.values()) and sum(layers.values()) > 0
        else:
            assert layers is None
    assert not runner.active
