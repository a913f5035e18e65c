"""INT8 calibration sets: a seeded sample of the training split, preprocessed exactly as at inference.

``calib/<name>.npz`` holds ``inputs`` (N, C, H, W float32) and ``indices``; ``calib/<name>.json`` is the
manifest (source spec, indices, seed, preprocessing mean/std/size), so a set can be audited and redrawn.
No augmentation: calibration must see the activation ranges of real inference inputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from itcp_deploy.atomic_io import atomic_write, read_json, write_json
from itcp_deploy.errors import InputFileError, UsageError
from itcp_deploy.paths import safe_name

CALIB_DIR = "calib"


def draw_calibration(dataset, num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``num`` samples (all if fewer) drawn without replacement with ``seed``: (inputs, sorted indices)."""
    if num < 1:
        raise UsageError(f"--num must be >= 1, got {num}", "pass e.g. --num 512")
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(dataset), size=min(num, len(dataset)), replace=False))
    inputs = np.stack([np.asarray(dataset[int(i)][0], dtype=np.float32) for i in indices])
    return inputs, indices


def calibrate(
    spec: str,
    *,
    num: int = 512,
    seed: int = 0,
    name: str | None = None,
    out_dir: str | os.PathLike[str] = CALIB_DIR,
    input_shape: tuple[int, ...] | None = None,
) -> Path:
    """Draw a calibration set from ``spec``'s training split into ``out_dir/<name>.npz`` + ``.json``.

    Args:
        spec: dataset spec (``digits``, ``synthetic``, ``cifar10:DIR``, ...; see ``itcp_deploy.data``).
        num: samples to draw. Defaults to 512.
        seed: sampling seed. Defaults to 0.
        name: set name. Defaults to ``<dataset name>-<num>-s<seed>``.
        out_dir: where to write. Defaults to ``calib/``.
        input_shape: if given, the samples must have its (C, H, W).

    Returns:
        The ``.npz`` path.
    """
    from itcp_deploy.data import load_dataset

    if name is not None:
        safe_name(name, "--name")
    info = load_dataset(spec, "train", augment=False, labelled=False)
    inputs, indices = draw_calibration(info.dataset, num, seed)
    if input_shape is not None and tuple(inputs.shape[1:]) != tuple(input_shape[1:]):
        raise UsageError(
            f"{spec} samples are {list(inputs.shape[1:])}, --input-shape wants {list(input_shape[1:])}",
            "pass the --input-shape the model runs at",
        )
    name = name or f"{info.name}-{len(indices)}-s{seed}".replace("/", "_").replace("\\", "_")
    preprocessing = {"mean": list(info.mean), "std": list(info.std), "size": list(info.input_size), "augment": False}
    return _write_set(Path(out_dir) / f"{name}.npz", inputs, indices,
                      {"source": spec, "split": "train", "seed": seed, "preprocessing": preprocessing})


def _write_set(npz: Path, inputs: np.ndarray, indices: np.ndarray, manifest: dict) -> Path:
    """The set's ``.npz`` and its manifest (name, count, indices and shape added), each written atomically."""
    atomic_write(npz, lambda f: np.savez(f, inputs=inputs, indices=indices))
    write_json(npz.with_suffix(".json"), {"name": npz.stem, **manifest, "num": int(len(indices)),
                                          "indices": indices.tolist(), "shape": list(inputs.shape)})
    return npz


def calibration_from_batches(batches: list, path: str | os.PathLike[str], *, num: int, seed: int,
                             source: str) -> Path:
    """A calibration set drawn (``num`` images, ``seed``) from batches already in memory, e.g. a run's own score
    batches, the un-augmented training images: ``run --precision int8`` needs no ``--calib`` when it has data.
    Written to ``path`` (``.npz``) with the same manifest as :func:`calibrate`, ``source`` saying where from."""
    images = [image for x, *_ in batches for image in np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)]
    if not images:
        raise UsageError("no images to draw an int8 calibration set from", "give data, or --calib NAME")
    inputs, indices = draw_calibration([(image,) for image in images], num, seed)
    return _write_set(Path(path), inputs, indices, {"source": source, "seed": seed})


def load_calibration(
    name_or_path: str | None,
    input_shape: tuple[int, ...] | None = None,
    calib_dir: str | os.PathLike[str] = CALIB_DIR,
) -> np.ndarray:
    """The inputs of a set by name (``calib/<name>.npz``) or path, checked against ``input_shape``."""
    if name_or_path is None:
        raise UsageError(
            "int8 needs a calibration set", "create one with `itcp-deploy calibrate` and pass --calib NAME"
        )
    path = Path(name_or_path)
    if path.suffix != ".npz":  # a name: it must stay inside calib/
        path = Path(calib_dir) / f"{safe_name(name_or_path, '--calib')}.npz"
    if not path.is_file():
        raise InputFileError(
            f"calibration set {path} does not exist", "create it with `itcp-deploy calibrate`"
        )
    try:
        with np.load(path) as data:
            inputs = np.asarray(data["inputs"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as err:
        raise InputFileError(
            f"calibration set {path} is unreadable or corrupt ({err.__class__.__name__})",
            "recreate it with `itcp-deploy calibrate`",
        ) from err
    if input_shape is not None and tuple(inputs.shape[1:]) != tuple(input_shape[1:]):
        raise UsageError(
            f"calibration set {path} holds {list(inputs.shape[1:])} inputs, the model takes "
            f"{list(input_shape[1:])}",
            "draw a set at the model's input shape",
        )
    return inputs


def read_manifest(npz: str | os.PathLike[str]) -> dict:
    return read_json(Path(npz).with_suffix(".json"), "calibration manifest")
