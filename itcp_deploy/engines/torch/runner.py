"""``TorchRunner``: a built program or an ``nn.Module``, on CPU or on CUDA with CUDA graphs.

torch has no cheap per-layer profile inside one run, so this backend reports no in-context layer times; the
profiler times isolated layers instead (``layer_source="isolated"``).

An in-memory module can run at fp16 (``precision="fp16"``: weights and the bound input cast once, outside the
timed call; the host feeds stay float32), which the staircase measures on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from itcp_deploy.atomic_io import read_json
from itcp_deploy.engines.backend import Backend
from itcp_deploy.engines.base import Artifact, EngineOptions, Runner
from itcp_deploy.engines.lazy_import import require_cuda
from itcp_deploy.engines.torch.build import META, PROGRAM, ProgramFromTorch
from itcp_deploy.errors import InputFileError, UsageError

#: the torch dtype of each precision the runner can run a module at (int8 needs a quantized graph).
DTYPES = {"fp32": "float32", "fp16": "float16"}


def load_program(path: Path) -> tuple[Any, tuple[int, ...]]:
    """The program's module and its input shape, which ``meta.json`` must repeat (a damaged or edited file is
    refused: a wrong shape would feed the program inputs it cannot take)."""
    import torch

    try:
        program = torch.export.load(str(path / PROGRAM))
    except Exception as err:  # missing, truncated or foreign files fail in many ways
        raise InputFileError(f"torch engine {path / PROGRAM} is unreadable or corrupt ({err.__class__.__name__})",
                             "rebuild the engine") from err
    names = set(program.graph_signature.user_inputs)
    shapes = [tuple(n.meta["val"].shape) for n in program.graph.nodes if n.op == "placeholder" and n.name in names]
    meta = read_json(path / META, "torch engine metadata")
    recorded = meta.get("input_shape") if isinstance(meta, dict) else None
    if len(shapes) != 1 or not isinstance(recorded, list) or tuple(recorded) != shapes[0]:
        raise InputFileError(f"torch engine metadata {path / META} records input_shape {recorded!r}, the program "
                             f"takes {[list(s) for s in shapes]}", "rebuild the engine")
    return program.module(), shapes[0]


class TorchRunner(Runner):
    """Runs a :class:`ProgramFromTorch` artifact, or a module given directly with its ``input_shape``, at
    ``precision`` (fp32 or fp16; see :data:`DTYPES`). A module given directly is moved to the device and dtype
    in place.

    Sets ``torch.set_num_threads(options.threads)`` while active and restores it on exit.
    """

    def __init__(
        self,
        artifact: Artifact,
        options: EngineOptions | None = None,
        input_shape: tuple[int, ...] | None = None,
        precision: str = "fp32",
    ) -> None:
        super().__init__(artifact, options)
        if precision not in DTYPES:
            raise UsageError(f"the torch runner runs a module at {' or '.join(DTYPES)}, not {precision!r}",
                             "use fp32 or fp16 with the torch backend")
        self.input_shape = tuple(input_shape) if input_shape else None
        self.precision = precision
        self._module = None
        self._threads = None
        self._graph = None

    def _resolve(self) -> Path | None:
        import torch

        if isinstance(self._artifact, torch.nn.Module):
            self._module = self._artifact
            return None
        return super()._resolve()

    def _activate(self, path: Path | None) -> None:
        import torch

        if path is not None:  # exported in eval mode; the loaded GraphModule does not support .eval()
            self._module, self.input_shape = load_program(path)
        else:
            self._module.eval()
        if self.input_shape is None:
            raise ValueError("TorchRunner over an in-memory module needs input_shape")
        if self.options.device == "cuda":
            require_cuda("the torch backend on cuda")
            self.clock = "cuda"
        self._module = self._module.to(self.options.device, self._dtype())
        self._threads = torch.get_num_threads()
        torch.set_num_threads(self.options.threads)

    def _deactivate(self) -> None:
        import torch

        if self._threads is not None:
            torch.set_num_threads(self._threads)
        self._module = self._graph = None

    def _dtype(self):
        import torch

        return getattr(torch, DTYPES[self.precision])

    def _tensor(self, array: np.ndarray):
        import torch

        return torch.from_numpy(array).to(self.options.device, self._dtype())

    def input_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {"input": (self.input_shape, np.dtype(np.float32))}

    def _forward(self, x):
        import torch

        with torch.inference_mode():
            return self._module(x)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._forward(self._tensor(feeds["input"]))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {("output" if len(outs) == 1 else f"output_{i}"): o.detach().float().cpu().numpy()
                for i, o in enumerate(outs)}

    def _prepare(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
        import torch

        x = self._tensor(feeds["input"])
        if self.options.device != "cuda" or not self.options.cuda_graphs:
            return lambda: self._forward(x)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up on a side stream before capture, as torch.cuda.graphs requires
                self._forward(x)
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph), torch.inference_mode():
            self._module(x)
        return self._graph.replay

    def synchronize(self) -> None:
        if self.options.device == "cuda":
            import torch

            torch.cuda.synchronize()


class TorchBackend(Backend):
    """The PyTorch module itself (CPU, or CUDA with CUDA events and CUDA graphs)."""

    name = "torch"
    source = "torch"
    in_context_layers = False

    def version(self) -> str:
        import torch

        return torch.__version__

    def builder(self, source, artifact_dir: Path, options: EngineOptions, input_shape=None) -> ProgramFromTorch:
        return ProgramFromTorch(source, artifact_dir, options, input_shape)

    def runner(self, artifact: Artifact, options: EngineOptions) -> TorchRunner:
        return TorchRunner(artifact, options)

    def device_name(self, options: EngineOptions) -> str:
        from itcp_deploy.engines.device import device_name

        return device_name(options.device)
