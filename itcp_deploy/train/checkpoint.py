"""Training checkpoints: everything needed to continue exactly after the last finished epoch.

Written atomically every epoch (a crash mid-write keeps the previous one). Contents are tensors and plain
Python values only, so they load with ``weights_only=True``: RNG states are stored as tensors and ints.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itcp_deploy.atomic_io import atomic_write
from itcp_deploy.errors import InputFileError

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
METRICS_NAME = "metrics.json"
FORMAT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states in a ``weights_only``-loadable form."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(py_state), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (model/optimizer/scheduler state dicts, epoch, rng, metrics)."""
    payload = {"format_version": FORMAT_VERSION, **state}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; failures become one-line errors."""
    p = Path(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise InputFileError(f"checkpoint {p} does not exist", "train without --resume first") from err
    except Exception as err:  # truncated zip, foreign pickle, ...: all mean "not our checkpoint"
        raise InputFileError(f"checkpoint {p} is unreadable or corrupt ({err.__class__.__name__})",
                             "delete it and train without --resume") from err
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise InputFileError(f"{p} is not an itcp-deploy training checkpoint (format {FORMAT_VERSION})",
                             "delete it and train without --resume")
    return state


def save_state_dict(path: str | Path, model: torch.nn.Module) -> Path:
    """The model's weights only (``torch.load(path, weights_only=True)`` reads them back)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda f: torch.save(state, f))
