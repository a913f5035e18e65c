"""Which file an engine is, which backend runs it, and which inputs it takes: checked before measuring.

``check-latency`` accepts an engine file, an engine artifact folder (what the builders write) or a ``run``
output folder (which holds the deployable ``model.ort.onnx`` / ``model.plan``). A file the chosen backend
cannot run, or an engine whose input has dynamic dimensions, gets one line that names the fix instead of a
traceback from deep inside the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from itcp_deploy.errors import InputFileError, UsageError
from itcp_deploy.sample_inputs import sample_inputs


@dataclass(frozen=True)
class EngineLayout:
    """``marker``: the file that makes a folder this backend's artifact; ``deployable``: the file ``run`` writes
    into its output folder (None: it writes none); ``suffixes``: engine files this backend loads directly."""

    marker: str
    deployable: str | None
    suffixes: tuple[str, ...]


LAYOUTS = {
    "onnxruntime": EngineLayout("model.opt.onnx", "model.ort.onnx", (".onnx", ".ort")),
    "tensorrt": EngineLayout("engine.plan", "model.plan", (".plan", ".engine", ".trt")),
    "torch": EngineLayout("program.pt2", None, ()),
}


def _backend_of_file(path: Path) -> str | None:
    for name, layout in LAYOUTS.items():
        if path.suffix.lower() in layout.suffixes:
            return name
    return None


def _backend_of_dir(path: Path) -> str | None:
    for name, layout in LAYOUTS.items():
        if (path / layout.marker).is_file() or (layout.deployable and (path / layout.deployable).is_file()):
            return name
    return None


def resolve_engine(path: str | Path, backend: str, what: str = "engine") -> Path:
    """The path ``backend``'s runner should load for ``path``, after checking that it fits ``backend``.

    Raises:
        InputFileError: the path is missing or holds no engine.
        UsageError: the engine is another backend's (names the backend that fits).
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{what} {p} does not exist", "build it first (itcp-deploy run) or fix the path")
    layout = LAYOUTS.get(backend)
    if layout is None:  # a backend registered later: let its runner judge the file
        return p
    fits = _backend_of_file(p) if p.is_file() else _backend_of_dir(p)
    if p.is_dir() and (p / layout.marker).is_file():
        return p
    if p.is_dir() and layout.deployable and (p / layout.deployable).is_file():
        return p / layout.deployable
    if fits is not None and fits != backend:
        kind = "file" if p.is_file() else "folder"
        raise UsageError(f"{what} {p} is an engine {kind} for {fits}, which the {backend} backend does not run",
                         f"pass --backend {fits}")
    if p.is_dir():
        expected = " or ".join(f for f in (layout.deployable, layout.marker) if f)
        raise InputFileError(f"{what} folder {p} holds no {backend} engine (expected {expected} in it)",
                             "point at a `run` output folder, an engine folder, or the engine file itself")
    if backend == "torch":
        raise UsageError(f"{what} {p} is not a torch engine (a folder holding program.pt2 and meta.json)",
                         "point at the folder the torch backend built, or pass the backend that runs this file")
    return p


def _is_static(dim: object) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim > 0


def engine_feeds(specs: dict[str, tuple[tuple, np.dtype]], input_shape: tuple[int, ...] | None, what: str,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs (:func:`~itcp_deploy.sample_inputs.sample_inputs`) for an engine whose input specs are
    ``specs`` (name -> (shape, dtype)).

    Dynamic dimensions (``'batch'``, ``None``) take ``input_shape``; without it they are refused, as is an
    ``input_shape`` that contradicts a static dimension.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (shape, dtype) in specs.items():
        dims = list(shape)
        if input_shape is not None and len(specs) == 1:
            clash = len(dims) != len(input_shape) or any(
                _is_static(d) and d != want for d, want in zip(dims, input_shape, strict=False))
            if clash:
                raise UsageError(f"--input-shape {'x'.join(map(str, input_shape))} does not fit {what}'s input "
                                 f"{name!r} of shape {dims}", "pass the shape the engine was built for, or leave "
                                 "--input-shape out")
            dims = list(input_shape)
        if not all(_is_static(d) for d in dims):
            raise UsageError(f"{what}'s input {name!r} has dynamic dimensions {dims}",
                             "pass --input-shape NxCxHxW to measure it at one shape")
        feeds[name] = sample_inputs(dims, rng, dtype)
    return feeds


def check_same_workload(engine: dict[str, np.ndarray], reference: dict[str, np.ndarray], names: tuple[str, str]
                        ) -> None:
    """The engine and its reference take the same input shapes: a latency ratio of two workloads means nothing."""
    shapes = [{k: list(v.shape) for k, v in feeds.items()} for feeds in (engine, reference)]
    if sorted(shapes[0].values()) != sorted(shapes[1].values()):
        raise UsageError(f"the engine {names[0]} takes input shape {_shapes(shapes[0])} but the reference "
                         f"{names[1]} takes {_shapes(shapes[1])}: their latency ratio compares two different "
                         "workloads", "compare engines built at the same --input-shape")


def _shapes(shapes: dict[str, list[int]]) -> str:
    return ", ".join(str(s) for s in shapes.values())
