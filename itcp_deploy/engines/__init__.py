"""Engine backends by name: ``get_backend("onnxruntime")``, ``list_backends()``.

Registered here, in one explicit place, as loaders: a backend's module (and its optional dependency) is
imported only when the backend is asked for, so this package imports nothing heavy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from itcp_deploy.engines.backend import Backend
from itcp_deploy.engines.base import EngineOptions, Runner
from itcp_deploy.registry import Registry

_BACKENDS: Registry[Callable[[], Backend]] = Registry("backend")


def _loader(module: str, attr: str) -> Callable[[], Backend]:
    def load() -> Backend:
        return getattr(importlib.import_module(module), attr)()

    return load


_BACKENDS.add("onnxruntime", _loader("itcp_deploy.engines.onnxruntime.runner", "OrtBackend"))
_BACKENDS.add("openvino", _loader("itcp_deploy.engines.openvino.runner", "OvBackend"))
_BACKENDS.add("tensorrt", _loader("itcp_deploy.engines.tensorrt.runner", "TrtBackend"))
_BACKENDS.add("torch", _loader("itcp_deploy.engines.torch.runner", "TorchBackend"))


def get_backend(name: str | Backend) -> Backend:
    """The backend registered under ``name`` (or ``name`` itself if it is already a backend).

    Raises:
        UnknownNameError: no such backend (lists the valid ones and the closest match).
    """
    if isinstance(name, Backend):
        return name
    return _BACKENDS.get(name)()


def list_backends() -> list[str]:
    """Names of the registered backends (installed or not)."""
    return _BACKENDS.names()


__all__ = ["Backend", "EngineOptions", "Runner", "get_backend", "list_backends"]
