"""ImageFolder directories (one sub-directory of images per class), validated before any epoch starts.

Cheap checks up front (a class with no images, no classes at all, a first image that does not open) and a
loader that turns a corrupt image met later into one-line :class:`InputFileError` naming the file, instead
of a traceback in the middle of an epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from itcp_deploy.errors import InputFileError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_DIRS = {
    "train": ("train",),
    "test": ("test", "val", "validation"),
    "val": ("val", "validation", "test"),
}
_FIX = "every class needs its own sub-directory holding at least one readable image"


class CorruptImageError(InputFileError):
    """An image file that PIL cannot decode.

    A DataLoader worker re-raises it as ``CorruptImageError(text_with_traceback)``; keeping only the last
    line of that text keeps the CLI's one-line error.
    """

    def __init__(self, problem: str, fix: str | None = None) -> None:
        if "\n" in problem:
            last = problem.strip().splitlines()[-1]
            problem, _, fix = last.split(": ", 1)[-1].partition(". Fix: ")
        super().__init__(problem, fix or "delete or replace the file")


def load_image(path: str) -> Any:
    """Open an RGB image, raising :class:`CorruptImageError` naming the file when it cannot be decoded."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:  # PIL signals bad data with all three
        raise CorruptImageError(f"image {path} is corrupt or unreadable ({err.__class__.__name__})") from err


def resolve_split_dir(root: Path, split: str) -> Path:
    """``root/train`` or ``root/val`` when present; otherwise ``root`` itself is the (only) split."""
    for name in SPLIT_DIRS.get(split, (split,)):
        if (root / name).is_dir():
            return root / name
    return root


def validate_folder(root: Path) -> list[str]:
    """Class names of an ImageFolder directory, after checking every class has an image file."""
    if not root.is_dir():
        raise InputFileError(f"ImageFolder path {root} is not a directory", _FIX)
    classes = sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise InputFileError(f"{root} has no class sub-directories (expected ROOT/CLASS/IMAGE files)", _FIX)
    for name in classes:
        if not any(_is_image(p) for p in (root / name).rglob("*")):
            raise InputFileError(f"class directory {root / name} holds no images "
                                 f"({', '.join(IMAGE_SUFFIXES)})",
                                 f"remove the empty directory or add images; {_FIX}")
    return classes


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def load_image_folder(root: Path, transform: Callable | None) -> Any:
    """A validated ``torchvision.datasets.ImageFolder`` whose loader raises one-line errors."""
    from torchvision.datasets import ImageFolder

    validate_folder(root)
    try:
        dataset = ImageFolder(str(root), transform=transform, loader=load_image)
    except (FileNotFoundError, OSError) as err:
        raise InputFileError(f"{root} is not a usable ImageFolder directory ({err})", _FIX) from err
    load_image(dataset.samples[0][0])  # a first decode catches a folder of non-images before training
    return dataset


def probe_size_px(path: str) -> int:
    """Square side to resize a folder's images to: its first image's short side if small, else 224."""
    image = load_image(path)
    short_side = min(image.size)
    return short_side if short_side <= 64 else 224
