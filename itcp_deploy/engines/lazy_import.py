"""Import optional packages on first use, failing with one line that names the extra to install.

Optional backends (TensorRT, OpenVINO, onnxruntime-gpu) must never be imported at module level: ``itcp-deploy --help``
and every CPU code path have to work without them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from itcp_deploy.errors import MissingDependencyError

EXTRAS = {"tensorrt": "tensorrt", "openvino": "openvino"}


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip extra that provides it.

    Args:
        module: dotted module name, e.g. ``"tensorrt"``.
        extra: the ``itcp-deploy[extra]`` that installs it; defaults to :data:`EXTRAS` by top-level name.

    Raises:
        MissingDependencyError: the module is not installed (or fails to import, e.g. a missing CUDA library).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = extra or EXTRAS.get(module.split(".")[0])
        fix = f"pip install 'itcp-deploy[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise MissingDependencyError(
            f"this needs `{module}`, which is not importable ({err})", f"needs `{fix}`"
        ) from err


def require_cuda(what: str) -> None:
    """Raise :class:`MissingDependencyError` unless torch sees a CUDA device.

    Called before any TensorRT Builder or Runtime is created: without a GPU they abort the whole process
    instead of raising.
    """
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError(
            f"{what} needs a CUDA device and torch sees none",
            "run on a machine with an NVIDIA GPU, or use --backend onnxruntime",
        )
