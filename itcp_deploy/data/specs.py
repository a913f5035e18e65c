"""Parse the ``--data`` option into a :class:`DataSpec`.

Accepted forms: ``digits``, ``synthetic`` or ``synthetic:classes=10,size=32,train=1024,test=256,seed=0``,
``detection`` or ``detection:size=320,train=64,test=32,seed=0`` (boxes, for a detector), ``cifar10:DIR``,
``cifar100:DIR``, ``imagefolder:DIR``, ``cifar10:FILE`` (one CIFAR batch file used as the whole split), or a
bare path whose layout is detected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from itcp_deploy.data.cifar_format import CIFAR10_FILES, CIFAR100_FILES, LAYOUT_HELP, read_batch
from itcp_deploy.errors import InputFileError, UnknownNameError, UsageError
from itcp_deploy.registry import Registry

KINDS = ("cifar10", "cifar100", "detection", "digits", "imagefolder", "synthetic")
GENERATED = ("detection", "synthetic")  # made here from a seed, with integer key=value options
_KIND_NAMES: Registry[str] = Registry("dataset kind")
for _kind in KINDS:
    _KIND_NAMES.add(_kind, _kind)

_CIFAR_SUBDIRS = {"cifar-10-batches-py": "cifar10", "cifar-100-python": "cifar100"}


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value: the dataset kind, its path (if any) and ``key=value`` options."""

    kind: str
    path: Path | None = None
    options: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.kind}:{self.path}"
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.kind}:{opts}" if opts else self.kind


def parse_data_spec(text: str, *, download: bool = False) -> DataSpec:
    """Turn ``--data`` text into a :class:`DataSpec`; paths are checked to exist, layouts are detected.

    Args:
        text: the ``--data`` value.
        download: ``cifar10:DIR``/``cifar100:DIR`` may name a directory that does not exist yet.

    Raises:
        UsageError: malformed ``synthetic:`` or ``detection:`` options.
        UnknownNameError: ``kind:...`` with an unknown kind.
        InputFileError: a path that does not exist or whose layout is not recognised.
    """
    text = text.strip()
    if text in ("digits", *GENERATED):
        return DataSpec(text)
    kind, sep, rest = text.partition(":")
    if sep and kind in GENERATED:
        return DataSpec(kind, options=_parse_options(kind, rest))
    if sep and kind.lower() in KINDS and kind.lower() not in ("digits", *GENERATED):
        return _with_path(kind.lower(), Path(rest).expanduser(), download)
    path = Path(text).expanduser()
    if path.exists():
        return detect_layout(path)
    if sep and kind.isidentifier() and len(kind) > 1:
        raise UnknownNameError(_KIND_NAMES.unknown_message(kind), f"use one of: {', '.join(KINDS)}")
    raise InputFileError(f"data path {path} does not exist",
                         "check the path, or use --data digits / --data synthetic for built-in data")


def _with_path(kind: str, path: Path, download: bool) -> DataSpec:
    if download and kind in ("cifar10", "cifar100"):
        return DataSpec(kind, path)
    if not path.exists():
        raise InputFileError(f"data path {path} does not exist", "check the path given to --data")
    if kind in ("cifar10", "cifar100") and path.is_dir():
        for sub, sub_kind in _CIFAR_SUBDIRS.items():
            if sub_kind == kind and (path / sub).is_dir():
                path = path / sub
    return DataSpec(kind, path)


def detect_layout(path: Path) -> DataSpec:
    """Guess the dataset kind from what is in ``path``."""
    if path.is_file():
        return DataSpec(_batch_file_kind(path), path)
    for sub, kind in _CIFAR_SUBDIRS.items():
        if (path / sub).is_dir():
            return DataSpec(kind, path / sub)
    if any((path / name).is_file() for name in CIFAR10_FILES):
        return DataSpec("cifar10", path)
    if all((path / name).is_file() for name in CIFAR100_FILES):
        return DataSpec("cifar100", path)
    if any(child.is_dir() for child in path.iterdir()):
        return DataSpec("imagefolder", path)
    raise InputFileError(f"cannot tell what dataset {path} holds", f"--data expects {LAYOUT_HELP}")


def _batch_file_kind(path: Path) -> str:
    return "cifar100" if "fine_labels" in read_batch(path) else "cifar10"


def _parse_options(kind: str, text: str) -> dict[str, int]:
    options: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not value.strip().lstrip("-").isdigit():
            raise UsageError(f"malformed dataset option {item!r}",
                             f"write integer options as key=value, e.g. {kind}:size=64,train=512")
        options[key.strip()] = int(value)
    return options


def at_size(spec: str, size: int) -> str:
    """``spec``, with ``size=`` set where it names a detection set without one: its images at the engine's
    input size, which is what BatchNorm re-estimation should see (the detector resizes to its own size anyway)."""
    parsed = parse_data_spec(spec)
    if parsed.kind != "detection" or "size" in parsed.options:
        return spec
    return str(DataSpec("detection", options={**parsed.options, "size": size}))


def check_option_names(kind: str, options: dict[str, int], known: dict) -> None:
    """A generated set's options (``synthetic:``, ``detection:``) must be among its dataclass's fields."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"unknown {kind} dataset option {unknown[0]!r}", f"use some of: {', '.join(known)}")
