"""What a profile's measurements are keyed by: the model's architecture and the backend that measured it."""

from __future__ import annotations

import hashlib
from typing import Protocol

from itcp_deploy.engines import EngineOptions, get_backend
from itcp_deploy.engines.int8 import engine_int8_settings


class MeasuredWith(Protocol):
    """What a profile's identity is read from (a :class:`~itcp_deploy.profiling.profiler.ProfileConfig`)."""

    @property
    def backend(self) -> str: ...

    @property
    def precision(self) -> str: ...

    @property
    def engine(self) -> EngineOptions: ...


def model_hash(model) -> str:
    """The architecture (``repr`` and every parameter/buffer name, shape and dtype), hashed: the cache's model
    identity. Weight values are left out on purpose: they do not change dense-kernel latency, so a finetuned
    or retrained model of the same architecture reuses its profile."""
    h = hashlib.sha256(repr(model).encode())
    for name, tensor in model.state_dict().items():
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    return h.hexdigest()[:20]


def profile_identity(config: MeasuredWith) -> dict[str, str]:
    """What a profile taken with ``config`` on this machine records as :meth:`Profile.identity` (and what
    every cache key of the run starts from): backend and version, device, precision, INT8 settings."""
    backend = get_backend(config.backend)
    int8 = engine_int8_settings(backend.name, config.precision, config.engine.provider)
    return {"backend": backend.name, "backend_version": backend.version(), "device": backend.device_name(config.engine),
            "precision": config.precision, "quantization": int8.label if int8 else ""}


__all__ = ["model_hash", "profile_identity"]
