"""``ProgramFromTorch``: an ``nn.Module`` -> a saved ``torch.export`` program (``program.pt2``).

The torch backend is not an ONNX consumer, so it is built from the (pruned) module itself. ``torch.export``
saves code and weights without pickling Python classes, so the artifact loads without the model's source.
"""

from __future__ import annotations

import os
from pathlib import Path

from itcp_deploy.atomic_io import write_json
from itcp_deploy.engines.base import EngineOptions

PROGRAM = "program.pt2"
META = "meta.json"


class ProgramFromTorch:
    """Export ``module`` (eval mode, CPU) at ``input_shape`` into ``artifact_dir``; call it to build."""

    def __init__(self, module, artifact_dir: Path, options: EngineOptions, input_shape: tuple[int, ...]) -> None:
        self.module = module
        self.artifact_dir = Path(artifact_dir)
        self.options = options
        self.input_shape = tuple(input_shape)

    def __call__(self) -> Path:
        import torch

        module = self.module.eval().cpu()
        with torch.no_grad():
            program = torch.export.export(module, (torch.zeros(self.input_shape),))
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.artifact_dir / f".{os.getpid()}.{PROGRAM}"  # torch.export.save wants a name ending in .pt2
        try:
            torch.export.save(program, os.fspath(tmp))
            os.replace(tmp, self.artifact_dir / PROGRAM)
        finally:
            tmp.unlink(missing_ok=True)
        write_json(self.artifact_dir / META, {"input_shape": list(self.input_shape)})
        return self.artifact_dir
