"""Numbers read from model files must be finite and in range: NaN, inf or a negative latency would pass every
later check silently (a NaN compares False with everything) or crash the solver far from the file."""

from __future__ import annotations

import math

import numpy as np

from itcp_deploy.errors import InputFileError


def check_numbers(values: object, where: str, field: str, fix: str, *,
                  minimum: float | None = 0.0, allow_nan: bool = False) -> None:
    """Raise one line naming ``where`` (the file) and ``field`` unless every value is finite and >= ``minimum``.

    Args:
        values: one number, a sequence or an array.
        where: the file, e.g. ``perf model pm.json``.
        field: the field inside it, e.g. ``tables.layer1.0.conv1``.
        fix: how to get a good file.
        minimum: the smallest allowed value; ``None`` for no lower bound.
        allow_nan: NaN means "not measured" for this field.
    """
    if isinstance(values, np.ndarray):
        array = values.astype(float).ravel()
    else:
        items = list(values) if isinstance(values, (list, tuple)) else [values]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            raise InputFileError(f"{where}: {field} holds something that is not a number", fix)
        array = np.asarray(items, dtype=float)
    for value in array:
        if math.isnan(value) and allow_nan:
            continue
        if not math.isfinite(value) or (minimum is not None and value < minimum):
            bound = "finite" if minimum is None else f"finite and >= {minimum:g}"
            raise InputFileError(f"{where}: {field} is {value!r}, it must be {bound}", fix)


def check_number(value: object, where: str, field: str, fix: str, *, minimum: float | None = 0.0,
                 allow_nan: bool = False) -> None:
    """:func:`check_numbers` for a field that holds one number (a list there is as wrong as text)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InputFileError(f"{where}: {field} is not a number", fix)
    check_numbers(value, where, field, fix, minimum=minimum, allow_nan=allow_nan)
