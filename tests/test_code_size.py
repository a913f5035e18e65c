"""Size limits of the package (STYLE.md): no file over 400 lines, no function over 60 (decorators and
docstrings included), so each module and function can be read in one go."""

from __future__ import annotations

import ast
from pathlib import Path

import itcp_deploy

ROOT = Path(itcp_deploy.__file__).resolve().parent
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _files() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``name (N lines)`` for every function or method of ``path`` longer than ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines = node.end_lineno - first + 1
            if lines > limit:
                found.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_package_is_found():
    assert len(_files()) > 50


def test_no_file_over_400_lines():
    long = [f"{p.relative_to(ROOT.parent)} ({n} lines)" for p in _files()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert long == []


def test_no_function_over_60_lines():
    assert [f for p in _files() for f in long_functions(p)] == []


def test_long_function_check_counts_lines(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("@decorator\ndef f():\n" + "    x = 1\n" * 58)  # 60 lines with its decorator
    assert long_functions(source, limit=60) == []
    assert len(long_functions(source, limit=59)) == 1


def test_no_benchmark_file_over_400_lines():
    """The benchmarks are read as evidence: the same limit."""
    bench = ROOT.parent / "bench"
    long = [f"{p.name} ({n} lines)" for p in sorted(bench.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert long == []
