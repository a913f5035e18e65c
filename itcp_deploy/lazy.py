"""Lazy package exports: a subpackage names its public API without importing torch on ``import``.

``perfmodel/`` and ``search/`` must stay numpy-only and ``itcp-deploy --help`` fast, so ``data``, ``train``,
``pruning`` and ``profiling`` resolve their exports on first attribute access.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package.<exports[name]>`` when ``name`` is first used.

    Example::

        __getattr__ = lazy_exports(__name__, {"train": "loop", "evaluate": "evaluation"})
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
