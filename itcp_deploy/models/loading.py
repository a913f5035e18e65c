"""Loading model files: checkpoints safely (``weights_only``), whole pickles and factories only when trusted.

A checkpoint is read with ``torch.load(weights_only=True)``, which cannot run code. Old checkpoints that hold
numpy scalars (e.g. ``best_prec1``) are read with a small allowlist of numpy/argparse globals instead of
falling back to an unsafe load. Every way a file can be wrong becomes one-line :class:`InputFileError`.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from itcp_deploy.errors import InputFileError, UntrustedCodeError, UsageError
from itcp_deploy.models.cifar_resnet import FixedShortcutConv

# Globals that only rebuild plain data (numpy scalars, dtypes, arrays, argparse namespaces).
SAFE_CHECKPOINT_GLOBALS = frozenset({
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.dtype", "numpy.ndarray", "argparse.Namespace",
})
# The two ways torch's weights-only unpickler names a refused global.
_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>")
_PREFIXES = ("module.", "_orig_mod.")


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputFileError(f"{what} {path} does not exist", "check the path")
    if path.is_dir():
        raise InputFileError(f"{what} {path} is a directory, not a file", "give the file inside it")


def _import_global(name: str) -> Any:
    module_name, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def _is_safe_global(name: str) -> bool:
    return name in SAFE_CHECKPOINT_GLOBALS or bool(re.fullmatch(r"numpy\.dtypes\.\w+DType", name))


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True`` plus the numpy allowlist; never executes file code."""
    path = Path(path)
    _check_file(path, "weights file")
    allowed: list[tuple[Any, str]] = []
    while True:
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            match = _UNSUPPORTED_GLOBAL.search(str(err))
            if match is None:
                raise InputFileError(f"weights file {path} is unreadable or corrupt (not a torch checkpoint)",
                                     "re-save it with torch.save(model.state_dict(), path)") from None
            name = match.group(1) or match.group(2)
            if not _is_safe_global(name) or any(n == name for _, n in allowed):
                raise InputFileError(f"weights file {path} holds objects of type {name}, which a safe load "
                                     "refuses", "re-save it as a plain state_dict: "
                                     "torch.save(model.state_dict(), path)") from None
            allowed.append((_import_global(name), name))
        except Exception as err:  # text or random bytes fail in the unpickler many ways (KeyError, IndexError, ...)
            raise InputFileError(f"weights file {path} is unreadable or corrupt ({err.__class__.__name__})",
                                 "re-save it with torch.save(model.state_dict(), path)") from None


def extract_state_dict(checkpoint: Any, path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state_dict in a bare state_dict, ``{"state_dict": ...}`` or ``{"model": ...}``.

    Strips a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix shared by every key.
    """
    state = checkpoint
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    is_dict = isinstance(state, dict) and bool(state)
    if not (is_dict and all(isinstance(v, torch.Tensor) for v in state.values())):
        kind = [type(checkpoint).__name__]
        keys = ", ".join(list(map(str, checkpoint))[:5] if isinstance(checkpoint, dict) else kind)
        raise InputFileError(f"no state_dict of tensors in {path} (found: {keys})",
                             "save one with torch.save(model.state_dict(), path) or {'state_dict': ...}")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _optional_keys(model: nn.Module) -> set[str]:
    """Keys a checkpoint may lack: BN batch counters and the fixed option-A shortcut convs."""
    keys = {k for k in model.state_dict() if k.endswith("num_batches_tracked")}
    keys |= {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, FixedShortcutConv)}
    return keys


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state`` into ``model`` after checking keys and shapes; the error names the first problem."""
    own = model.state_dict()
    fix = "use the architecture and --num-classes the checkpoint was trained with"
    missing = sorted(set(own) - set(state) - _optional_keys(model))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = [f"{len(missing)} missing key(s) (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[0]})"] if unexpected else []
        raise InputFileError(f"weights {source} do not match the model: {', '.join(parts)}", fix)
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise InputFileError(f"weights {source}: {key} has shape {tuple(value.shape)} but the model "
                                 f"expects {tuple(own[key].shape)}", fix)
    model.load_state_dict(state, strict=False)
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint file into ``model`` (in place) and return it."""
    return load_state_dict_checked(model, extract_state_dict(read_checkpoint(path), path), str(path))


def _untrusted(what: str) -> UntrustedCodeError:
    return UntrustedCodeError(f"loading {what} executes code from it",
                              "pass --trust-code if you trust its source")


def _unpickle(path: Path) -> Any:
    """``torch.load`` (CPU), or plain ``pickle.load`` for files written by ``pickle.dump``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except RuntimeError as err:
        if "magic number" not in str(err):
            raise
    with open(path, "rb") as f:
        return pickle.load(f)


def load_pickled_model(path: str | Path, *, trust_code: bool = False) -> nn.Module:
    """Unpickle a whole model saved with ``torch.save(model)``; needs ``trust_code`` (pickle runs code)."""
    path = Path(path)
    _check_file(path, "model file")
    if not trust_code:
        raise _untrusted(f"the pickled model {path}")
    try:
        obj = _unpickle(path)
    except (ModuleNotFoundError, AttributeError) as err:
        raise InputFileError(f"model file {path} needs code that is not importable ({err})",
                             "put the package defining the model on PYTHONPATH") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise InputFileError(f"model file {path} is unreadable or corrupt ({err.__class__.__name__})",
                             "save the model with torch.save(model, path)") from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        raise InputFileError(f"{path} holds a checkpoint dict, not a whole model",
                             "pass the architecture as MODEL (e.g. cifar_resnet56) and the file as --weights")
    raise InputFileError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module",
                         "save the model with torch.save(model, path)")


def _check_accepts(factory: Any, spec: str, kwargs: dict) -> None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in kwargs:
        if key not in params:
            option = "--" + key.replace("_", "-")
            raise UsageError(f"{spec} takes no argument {key!r}",
                             f"drop {option} or add {key} to the factory")


def load_factory(spec: str, *, trust_code: bool = False, **kwargs) -> nn.Module:
    """Call ``package.module:factory(**kwargs)``; needs ``trust_code`` (importing runs the module's code)."""
    module_name, _, attr = spec.partition(":")
    if not trust_code:
        raise _untrusted(f"{spec!r} (it imports {module_name})")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ModuleNotFoundError as err:
        raise InputFileError(f"cannot import {module_name!r} for {spec!r} ({err})",
                             "install the package or add it to PYTHONPATH") from None
    except AttributeError:
        raise InputFileError(f"module {module_name!r} has no {attr!r}", "check the name after ':'") from None
    _check_accepts(factory, spec, kwargs)
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise InputFileError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module",
                             "point at a function that builds and returns the model")
    return model
