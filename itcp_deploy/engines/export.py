"""ONNX export with BatchNorm folded in torch, checked by ``onnx.checker`` and ONNX Runtime parity.

Exported with the TorchScript-based exporter (``dynamo=False``): it names every node after the torch module
scope that produced it (``/layer1/layer1.0/conv1/Conv``), so per-node engine profiles map back to layers
(:func:`onnx_node_to_module`). BatchNorm is folded into the preceding conv *in torch*, keeping the conv's
module name; the BN module becomes ``nn.Identity``. Shapes are static (the batch size is the one exported).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from itcp_deploy.atomic_io import atomic_path
from itcp_deploy.engines.detection_parity import detections_error
from itcp_deploy.engines.exportable import exportable_pooling
from itcp_deploy.errors import ItcpError, is_out_of_memory
from itcp_deploy.models.copying import model_tensors, sharing_copy
from itcp_deploy.models.detection import is_detector
from itcp_deploy.sample_inputs import sample_inputs

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(7, 21)  # the TorchScript exporter writes 7..20; onnxruntime runs all of them
# max |ORT - torch| / max |torch|: float32 summation order differs between the two (kernel choice, fused BN);
# deep nets at 224 reach a few 1e-4 (pruned efficientnet_b2 and regnet_y_1_6gf: 6.4e-4, docs/benchmarks.md
# section 13), a wrong export differs by O(0.1-1)
PARITY_RTOL = 1e-3
# protobuf's limit on one message: a model past it is written with its weights in external files, which the
# engine chain (one ONNX file per engine, copied and optimised by each backend) does not carry
SINGLE_FILE_BYTES = 2 << 30
INPUT_NAME = "input"
OUTPUT_NAME = "output"
_WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
_FOLDABLE_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FOLDABLE_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class ExportResult:
    """Where the ONNX file went and how closely ONNX Runtime matched PyTorch (max error / max |output|)."""

    path: Path
    input_shape: tuple[int, ...]
    max_rel_err: float


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where the BN's only input is the conv and each is called exactly once."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # untraceable user model: the ONNX exporter still fuses Conv+BN itself
        return []
    calls = [n for n in graph.nodes if n.op == "call_module"]
    counts: dict[str, int] = {}
    for node in calls:
        counts[node.target] = counts.get(node.target, 0) + 1
    pairs = []
    for node in calls:
        source = node.args[0] if node.args else None
        if (type(model.get_submodule(node.target)) in _FOLDABLE_NORMS
                and isinstance(source, torch.fx.Node) and source.op == "call_module"
                and type(model.get_submodule(source.target)) in _FOLDABLE_CONVS
                and len(source.users) == 1 and counts[source.target] == 1 and counts[node.target] == 1):
            pairs.append((str(source.target), str(node.target)))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm into the conv that feeds it (the model must be in eval mode). The modules change in
    place; the folded weights are new tensors, so tensors ``model`` shares with another model stay as they were.

    Returns:
        ``model``, whose folded BN modules are now ``nn.Identity`` and whose convs carry a bias.
    """
    for conv_name, bn_name in _conv_bn_pairs(model):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if bn.running_mean is None or bn.running_var is None:
            continue
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        # new tensors, not written in place: the export's copy shares its weights with the caller's model
        conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        conv.bias = nn.Parameter(bias * scale + shift)
        parent_name, _, attr = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, nn.Identity())
    return model


def _flat_outputs(output: object) -> list[np.ndarray]:
    """The arrays of a model's output, in ONNX's order (a tensor, or tuples, lists and dicts of them)."""
    leaves = tree_leaves(output)
    if wrong := [leaf for leaf in leaves if not isinstance(leaf, torch.Tensor)]:
        raise ItcpError(f"model returns a {type(wrong[0]).__name__}, which ONNX cannot hold",
                        "return a tensor (or a tuple of tensors) from forward()")
    return [leaf.detach().numpy() for leaf in leaves]


def verify_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...], *, trials: int = 2,
                seed: int = 0) -> float:
    """ONNX Runtime (CPU) vs PyTorch on seeded inputs (:func:`~itcp_deploy.sample_inputs.sample_inputs`); returns
    max |diff| / max |torch output| (a detector's detections are matched as sets first, see
    :mod:`~itcp_deploy.engines.detection_parity`).

    Raises:
        ItcpError: the relative error exceeds ``PARITY_RTOL`` (1e-3) on any trial, or, where PyTorch's own FP32
            is that far from exact, :data:`FP32_SLACK` times its error (:func:`_against_float64`).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    reference = copy.deepcopy(model).cpu().float().eval()
    compare = _detections_error if is_detector(model) else _outputs_error
    rng = np.random.default_rng(seed)
    checked = []  # (error, tolerance) per trial
    for _ in range(trials):
        x = torch.from_numpy(sample_inputs(input_shape, rng))
        with torch.no_grad():
            expected = _flat_outputs(reference(x))
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        error, tol = compare(expected, got, path, PARITY_RTOL), PARITY_RTOL
        if not error <= tol:
            error, tol = _against_float64(reference, x, expected, got, path, compare) or (error, tol)
        checked.append((error, tol))
    for error, tol in checked:
        if not error <= tol:
            raise ItcpError(f"ONNX Runtime output differs from PyTorch (relative error {error:.2e} > "
                            f"{tol:.0e}) for {path}", "report the model; try another --opset")
    return max(error for error, _ in checked)


FP32_SLACK = 4.0  # an engine as far from exact as this many times PyTorch's own FP32 result is as good as it
ILL_CONDITIONED = PARITY_RTOL / FP32_SLACK  # PyTorch's FP32 this far from exact: judge against float64
FP32_LADDER = tuple(PARITY_RTOL * 4 ** k for k in range(4))  # tolerances to match PyTorch's detections at
Compare = Callable[[list[np.ndarray], list[np.ndarray], "str | Path", float], float]  # error at a tolerance


def _against_float64(model: nn.Module, x: torch.Tensor, expected: list[np.ndarray], got: list[np.ndarray],
                     path: str | Path, compare: Compare) -> tuple[float, float] | None:
    """(the engine's error, its tolerance) against an exact (float64) forward, when PyTorch's own FP32 result
    is off exact by more than :data:`ILL_CONDITIONED`: a network can be ill-conditioned enough that two
    FP32 summation orders differ by more than ``PARITY_RTOL`` (an EfficientNet-B1 at 224 after pruning and
    BatchNorm re-estimation: 1.4e-3; a random Faster R-CNN's saturated boxes after the same); a wrong
    export is off by far more than PyTorch's rounding. Detections are matched within a tolerance, so PyTorch's
    own error is the first of :data:`FP32_LADDER`'s tolerances it matches at. None when the float64 forward
    fails or PyTorch's FP32 is close to exact (the plain check stands)."""
    try:
        with torch.no_grad():
            exact = _flat_outputs(copy.deepcopy(model).double()(x.double()))
    except (RuntimeError, TypeError):
        return None
    fp32 = next((e for rtol in FP32_LADDER if math.isfinite(e := compare(exact, expected, path, rtol))), math.inf)
    if not ILL_CONDITIONED < fp32 < math.inf:
        return None
    return compare(exact, got, path, FP32_SLACK * fp32), FP32_SLACK * fp32


def _check_finite(arrays: list[np.ndarray], path: str | Path) -> None:
    if not all(np.isfinite(a).all() for a in arrays):  # NaN compares False: never "0 error"
        raise ItcpError(f"the model's outputs hold NaN or inf, so parity cannot hold, for {path}",
                        "check the weights for NaN or inf values")


def _outputs_error(expected: list[np.ndarray], got: list[np.ndarray], path: str | Path, _rtol: float) -> float:
    """Max over outputs of max |diff| / max |torch output| (the tolerance is the caller's to apply)."""
    worst = 0.0
    for want, have in zip(expected, got, strict=True):
        _check_finite([want, have], path)
        scale = max(float(np.abs(want).max()), 1e-12)
        worst = max(worst, float(np.abs(want - have).max()) / scale)
    return worst


def _detections_error(expected: list[np.ndarray], got: list[np.ndarray], path: str | Path, rtol: float) -> float:
    """Detections matched as sets within ``rtol`` (:mod:`~itcp_deploy.engines.detection_parity`): ties may swap."""
    _check_finite(expected + got, path)
    return detections_error(expected, got, rtol)


def _torch_export(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated upstream, still works
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True)
        except Exception as err:  # unsupported operators and the like; the message says which
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
            if is_out_of_memory(err):
                raise ItcpError(f"ONNX export ran out of memory: {first_line}",
                                "free memory (a smaller model or input) or raise the process's memory "
                                "limit") from err
            raise ItcpError(f"ONNX export failed: {first_line}",
                            "replace the unsupported operation or try another --opset") from err


def _export_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy to fold and export, sharing the caller's weights; a model not all CPU float32 is
    copied whole and converted (converting shared tensors would change the caller's model)."""
    if any(t.is_floating_point() and (t.device.type != "cpu" or t.dtype != torch.float32)
           for t in model_tensors(model)):
        return copy.deepcopy(model).cpu().float().eval()
    return sharing_copy(model).eval()


def _export_checked(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, opset: int,
                    verify: bool) -> float | None:
    """Export a folded copy to a temp file, check it, then move it onto ``path``; returns the error."""
    import onnx

    # a copy only to verify against (the caller may change the model meanwhile); the exported one shares its
    # weights: a model's size is paid once per full copy (ViT-L, 1.2 GB, ran out of the zoo sweep's 6 GB)
    original = copy.deepcopy(model).cpu().float().eval() if verify else model
    folded = exportable_pooling(fold_batchnorm(_export_copy(original)), input_shape)
    example = torch.randn(tuple(input_shape))
    max_rel_err = None
    with atomic_path(path) as tmp:
        _torch_export(folded, example, tmp, opset)
        del folded
        if verify:
            try:
                onnx.checker.check_model(str(tmp))
            except onnx.checker.ValidationError as err:
                raise ItcpError(f"exported ONNX model is invalid: {str(err).splitlines()[0]}",
                                "try another --opset") from err
            max_rel_err = verify_onnx(original, tmp, tuple(input_shape))
    return max_rel_err


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, *,
                opset: int = DEFAULT_OPSET, verify: bool = True) -> Path:
    """Export ``model`` to ONNX at ``path`` (atomically): eval mode, BN folded, static ``input_shape``.

    The caller's model is not changed (a copy sharing its weights is exported). Input and output are named
    ``input`` and ``output``. A file that fails verification is never put in place.

    Args:
        model: any ``nn.Module`` taking one NCHW tensor.
        input_shape: (N, C, H, W) of the exported input.
        path: where the ``.onnx`` file goes.
        opset: ONNX opset. Defaults to 17.
        verify: run ``onnx.checker`` and the ONNX Runtime parity check (:func:`verify_onnx`).

    Raises:
        ItcpError: the weights are over 2 GB, export fails, or the checker or parity check rejects the result.
    """
    check_opset(opset)
    check_single_file(model)
    _export_checked(model, input_shape, path, opset, verify)
    return Path(path)


def check_single_file(model: nn.Module) -> None:
    """Refuse, before exporting, a model whose float32 weights cannot fit in one ONNX file (2 GB)."""
    size = sum(t.numel() * 4 for t in model_tensors(model) if t.is_floating_point())
    if size >= SINGLE_FILE_BYTES:
        raise ItcpError(f"the model's float32 weights take {size / 1e9:.2f} GB, over the 2 GB one ONNX file holds "
                        "(its weights would go to external files, which the engine chain does not carry)",
                        "prune or distil it in PyTorch below 2 GB first, or export and build it by hand")


def check_opset(opset: int) -> None:
    """Refuse an opset the exporter cannot write, before any model is built (it failed late and obscurely)."""
    if opset not in SUPPORTED_OPSETS:
        raise ItcpError(f"--opset {opset} is not supported (supported: {SUPPORTED_OPSETS.start} to "
                        f"{SUPPORTED_OPSETS.stop - 1})", f"pass e.g. --opset {DEFAULT_OPSET}, the default")


def export_model(spec: str, input_shape: tuple[int, ...], path: str | Path, *, num_classes: int | None = None,
                 weights: str | Path | None = None, trust_code: bool = False,
                 opset: int = DEFAULT_OPSET) -> ExportResult:
    """Build a model from a spec (:func:`itcp_deploy.models.create_model`) and export it, verified."""
    from itcp_deploy.models import create_model
    from itcp_deploy.paths import check_outputs

    check_outputs({"--out": path}, {"weights": weights, "model file": spec})
    check_opset(opset)
    model = create_model(spec, num_classes=num_classes, weights=weights, trust_code=trust_code)
    max_rel_err = _export_checked(model, input_shape, path, opset, verify=True)
    return ExportResult(path=Path(path), input_shape=tuple(input_shape),
                        max_rel_err=float(max_rel_err or 0.0))


def _scope_to_module(node_name: str) -> str | None:
    """``/features/features.1/conv/conv.0/conv.0.0/Conv`` -> ``features.1.conv.0.0``.

    Each scope segment is a child's attribute name, except that children of containers appear as
    ``<container segment>.<index>``; attribute names never contain dots, so this is unambiguous.
    """
    segments = [s for s in node_name.split("/")[:-1] if s]
    if not segments:
        return None
    name, previous = "", ""
    for segment in segments:
        if previous and segment.startswith(previous + "."):
            name += segment[len(previous):]
        else:
            name = f"{name}.{segment}" if name else segment
        previous = segment
    return name


def onnx_node_to_module(onnx_model: str | Path | object) -> dict[str, str]:
    """Map each Conv/Gemm/MatMul node name of an exported model to its torch module name.

    Args:
        onnx_model: path to an ``.onnx`` file or a loaded ``onnx.ModelProto``.

    Returns:
        ``{"/layer1/layer1.0/conv1/Conv": "layer1.0.conv1", ...}``. Nodes outside any module (a
        functional call in the top-level ``forward``) are left out.
    """
    import onnx

    proto = onnx_model if isinstance(onnx_model, onnx.ModelProto) else onnx.load(str(onnx_model),
                                                                                 load_external_data=False)
    mapping = {}
    for node in proto.graph.node:
        if node.op_type in _WEIGHTED_OPS:
            module = _scope_to_module(node.name)
            if module:
                mapping[node.name] = module
    return mapping


VALUE_DEPENDENT_OPS = frozenset({"NonMaxSuppression", "NonZero", "Compress", "Loop", "If"})


def value_dependent(path: str | Path) -> bool:
    """Whether an ONNX graph's work depends on its values, not only on its shapes (non-max suppression,
    data-dependent indexing, control flow): such an engine's latency moves with its weights (a detector's NMS
    keeps more or fewer boxes)."""
    import onnx

    return any(n.op_type in VALUE_DEPENDENT_OPS for n in onnx.load(str(path), load_external_data=False).graph.node)
