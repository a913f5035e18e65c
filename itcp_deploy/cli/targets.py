"""Parsing several deployment targets: a repeatable ``--target key=value,...`` or a ``--targets FILE.toml``
with one ``[[target]]`` table per target (the same keys).

Keys: ``name``, ``backend`` (onnxruntime), ``precision`` (fp32), ``shape`` (NxCxHxW, batch included; default
the run's ``--input-shape``), ``threads`` (1), ``percentile`` (50), ``margin`` (0.03: the closed loop aims at
(1 - margin) x the SLA), and exactly one of ``sla_ms`` and ``speedup``. Example::

    --target name=edge,backend=onnxruntime,shape=1x3x32x32,threads=1,speedup=1.67
    --target name=server,backend=openvino,shape=8x3x32x32,threads=2,percentile=99,sla_ms=10,margin=0.05
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from itcp_deploy.cli.shapes import number, parse_input_shape, positive_float
from itcp_deploy.engines import EngineOptions
from itcp_deploy.engines.build import EngineSpec
from itcp_deploy.errors import InputFileError, UnknownNameError, UsageError
from itcp_deploy.names import check_engine
from itcp_deploy.pipeline.config import DeployTarget, check_targets
from itcp_deploy.target import LatencyTarget

KEYS = ("name", "backend", "precision", "shape", "threads", "percentile", "sla_ms", "speedup", "margin")
EXAMPLE = "e.g. --target backend=onnxruntime,shape=1x3x32x32,threads=1,speedup=1.67"


def _int(where: str, key: str, value: Any, choices: tuple[int, ...] | None = None) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise UsageError(f"{where}: {key}={value!r} is not a whole number", f"write e.g. {key}=1") from None
    if number < 1 or (choices and number not in choices):
        allowed = ", ".join(map(str, choices)) if choices else "a whole number >= 1"
        raise UsageError(f"{where}: {key}={value!r} is not allowed", f"use {allowed}")
    return number


def _positive(where: str, key: str, value: Any) -> float:
    try:
        return positive_float(value, key)
    except UsageError as e:
        raise UsageError(f"{where}: {e.problem}", f"write e.g. {key}=2") from None


def target_from_fields(fields: dict[str, Any], where: str, default_shape: tuple[int, int, int, int] | None,
                       index: int) -> DeployTarget:
    """One :class:`DeployTarget` from its keys (strings from ``--target``, or TOML values)."""
    unknown = sorted(set(fields) - set(KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}", f"use {', '.join(KEYS)}")
    if ("sla_ms" in fields) == ("speedup" in fields):
        raise UsageError(f"{where}: give exactly one of sla_ms and speedup", "add e.g. speedup=1.67 or sla_ms=2")
    try:
        shape = parse_input_shape(str(fields["shape"])) if "shape" in fields else default_shape
    except UsageError as e:
        raise UsageError(f"{where}: shape={fields['shape']!r} is not NxCxHxW", "write e.g. shape=8x3x32x32") from e
    if shape is None:
        raise UsageError(f"{where}: no input shape", "add shape=NxCxHxW (batch first), or pass --input-shape")
    backend, precision = str(fields.get("backend", "onnxruntime")), str(fields.get("precision", "fp32"))
    try:
        check_engine(backend, precision)
    except UnknownNameError as e:
        raise UsageError(f"{where}: {e.problem}", e.fix) from None
    threads = _int(where, "threads", fields.get("threads", 1))
    sla = {k: _positive(where, k, fields[k]) if k in fields else None for k in ("sla_ms", "speedup")}
    percentile = _int(where, "percentile", fields.get("percentile", 50), (50, 90, 99))
    try:
        margin = {"margin": number(fields["margin"], "margin")} if "margin" in fields else {}
        latency = LatencyTarget(**sla, percentile=percentile, **margin)
    except UsageError as e:
        raise UsageError(f"{where}: {e.problem}", "write e.g. margin=0.05") from None
    target = DeployTarget.named(EngineSpec(backend, precision, EngineOptions(threads=threads)), shape, latency, index)
    return target if "name" not in fields else replace(target, name=str(fields["name"]))


def split_spec(text: str, where: str) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}`` (each key once)."""
    fields: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"{where}: {item!r} is not key=value", EXAMPLE)
        if key.strip() in fields:
            raise UsageError(f"{where}: key {key.strip()!r} given twice", "give each key once")
        fields[key.strip()] = value.strip()
    if not fields:
        raise UsageError(f"{where}: empty target", EXAMPLE)
    return fields


def read_targets_file(path: str | Path) -> list[dict[str, Any]]:
    """The ``[[target]]`` tables of a TOML file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"targets file {p} does not exist", "check the path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputFileError(f"targets file {p} is not valid TOML ({e})", "fix its syntax") from None
    tables = data.get("target")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise InputFileError(f"targets file {p} has no [[target]] tables",
                             "write one [[target]] table per target, e.g. backend = \"openvino\"")
    return tables


def parse_targets(specs: list[str] | None, file: str | Path | None,
                  default_shape: tuple[int, int, int, int] | None) -> list[DeployTarget]:
    """Every target given by ``--target`` (in order) and then by ``--targets FILE``; checked together."""
    fields = [(split_spec(s, f"--target {i + 1}"), f"--target {i + 1}") for i, s in enumerate(specs or [])]
    if file is not None:
        fields += [(t, f"{file} [[target]] {i + 1}") for i, t in enumerate(read_targets_file(file))]
    targets = [target_from_fields(f, where, default_shape, i + 1) for i, (f, where) in enumerate(fields)]
    check_targets(targets)
    return targets


def data_input_shape(data: str) -> tuple[int, int, int, int]:
    """Batch 1 at the size of ``data``'s images: ``run``'s input shape when none is given (said in one line)."""
    import logging

    from itcp_deploy.data import load_dataset

    shape = (1, *load_dataset(data, "test", augment=False).input_size)
    logging.getLogger("itcp_deploy").info(f"input shape {'x'.join(map(str, shape))}: batch 1 at the size of "
                                          "--data's images (--input-shape chooses another)")
    return shape  # type: ignore[return-value]


def run_targets(specs: list[str] | None, file: str | Path | None, input_shape: str | None,
                sla_options: tuple[object, object, int, object], engine: EngineSpec,
                data: str) -> tuple[DeployTarget, ...]:
    """``run``'s targets: those of ``--target``/``--targets`` (one or more), else the one target that
    ``--input-shape`` (default: :func:`data_input_shape`), ``--sla-ms``/``--speedup``, ``--percentile``,
    ``--margin`` and the engine options describe."""
    from itcp_deploy.cli.shapes import parse_target

    sla_ms, speedup, percentile, margin = sla_options
    if specs or file:
        if sla_ms is not None or speedup is not None:
            raise UsageError("--sla-ms/--speedup and --target both give an SLA", "put the SLA in each --target")
        if margin is not None:
            raise UsageError("--margin is for the one target of --sla-ms/--speedup", "put margin= in each --target")
        return tuple(parse_targets(specs, file, parse_input_shape(input_shape) if input_shape else None))
    latency = parse_target(sla_ms, speedup, percentile, margin)
    shape = parse_input_shape(input_shape) if input_shape is not None else data_input_shape(data)
    return (DeployTarget.named(engine, shape, latency),)
