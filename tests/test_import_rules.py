"""The layering rule: perfmodel/ and search/ stay pure (numpy, stdlib, pure-data modules); engines/ never
imports search/."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import itcp_deploy

ROOT = Path(itcp_deploy.__file__).resolve().parent
PURE = ("perfmodel", "search")
PURE_DATA = ("space", "plan", "profiling.records", "errors", "atomic_io", "paths", "finite", "registry", "perfmodel",
             "search")
ALLOWED_PROJECT = tuple(f"itcp_deploy.{m}" for m in PURE_DATA)
ALLOWED_THIRD_PARTY = ("numpy", "matplotlib")  # matplotlib: search/plot.py only, inside the function


def _modules(package: str) -> list[str]:
    return [f"itcp_deploy.{package}"] + [f"itcp_deploy.{package}.{m.name}"
                                         for m in pkgutil.iter_modules([str(ROOT / package)])]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_pure_packages_import_without_torch_or_backends():
    modules = [m for p in PURE for m in _modules(p)]
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "heavy = ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'matplotlib')\n"
            "bad = [n for n in heavy if n in sys.modules]\n"
            "assert not bad, bad\nprint(len(sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_pure_packages_import_only_allowed_modules():
    stdlib = set(sys.stdlib_module_names)
    for package in PURE:
        for path in (ROOT / package).glob("*.py"):
            for name in _imports(path):
                top = name.split(".")[0]
                ok = (top in stdlib or top == "__future__" or top in ALLOWED_THIRD_PARTY
                      or any(name == a or name.startswith(a + ".") for a in ALLOWED_PROJECT))
                assert ok, f"{path.relative_to(ROOT)} imports {name}"


def test_engines_never_import_search():
    for path in (ROOT / "engines").rglob("*.py"):
        assert not [n for n in _imports(path) if n.startswith("itcp_deploy.search")], path
