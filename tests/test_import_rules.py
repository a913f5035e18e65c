"""The layering rules: perfmodel/ and search/ stay pure (numpy, stdlib, pure-data modules); engines/ never
imports search/; no import cycles between modules or between folders, lazy (function-level) imports included."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import itcp_deploy

ROOT = Path(itcp_deploy.__file__).resolve().parent
PURE = ("perfmodel", "search")
PURE_DATA = ("space", "plan", "target", "profiling.records", "errors", "atomic_io", "registry", "perfmodel",
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
    modules = [m for p in PURE for m in _modules(p)] + ["itcp_deploy.target"]
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


def test_latency_target_is_stdlib_only():
    names = _imports(ROOT / "target.py")
    assert all(n.split(".")[0] in sys.stdlib_module_names or n in ("__future__", "itcp_deploy.errors")
               for n in names), names


def test_engines_never_import_search():
    for path in (ROOT / "engines").rglob("*.py"):
        assert not [n for n in _imports(path) if n.startswith("itcp_deploy.search")], path


# ---------------------------------------------------------------- no cycles, lazy imports included


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lazy_exports(path: Path) -> dict[str, str]:
    """A package's ``_EXPORTS`` table (``lazy_exports``): name -> submodule that defines it."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return {k.value: v.value for k, v in zip(node.value.keys, node.value.values, strict=True)}
    return {}


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> project modules it imports anywhere in its body (function-level imports too), with
    ``from pkg import name`` resolved to the submodule a lazy ``_EXPORTS`` table loads, and a string literal
    that names a project module (``importlib.import_module("...")`` registrations) counted as an import."""
    top = root.name
    paths = {_module_name(p, root): p for p in root.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    def targets(module: str, node: ast.AST) -> list[str | None]:
        if isinstance(node, ast.Import):
            return [resolve(a.name) for a in node.names if a.name.split(".")[0] == top]
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if paths[module].name == "__init__.py" else module.rpartition(".")[0]
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(kept + ([node.module] if node.module else []))
            if base.split(".")[0] != top:
                return []
            exports = _lazy_exports(paths[base]) if base in paths else {}
            return [f"{base}.{a.name}" if f"{base}.{a.name}" in paths
                    else f"{base}.{exports[a.name]}" if a.name in exports else resolve(base) for a in node.names]
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in paths:
            return [node.value] if "." in node.value else []
        return []

    graph = {}
    for module, path in paths.items():
        found = {t for node in ast.walk(ast.parse(path.read_text())) for t in targets(module, node)}
        graph[module] = found - {module, None}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), i.e. every import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to folders: ``pkg.engines.onnxruntime.runner`` -> ``pkg.engines``; a
    top-level module (``pkg.space``) is its own node."""

    def folder(module: str) -> str:
        return ".".join(module.split(".")[:2])

    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(folder(module), set()).update(folder(t) for t in targets if folder(t) != folder(module))
    return out


def test_no_import_cycles_between_modules():
    assert cycles(import_graph(ROOT)) == []


def test_no_import_cycles_between_folders():
    assert cycles(folder_graph(import_graph(ROOT))) == []


def test_cycle_check_sees_lazy_and_exported_imports(tmp_path):
    """The checker must fail on a circle closed only by a function-level import through a lazy export."""
    pkg = tmp_path / "fakepkg"
    for folder, body in {
        "a": "from fakepkg.b.mod import thing\n",
        "b": "def f():\n    from fakepkg.a import helper\n",
    }.items():
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "mod.py").write_text(body)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text('_EXPORTS = {"helper": "mod"}\n')
    (pkg / "b" / "__init__.py").write_text("")
    graph = import_graph(pkg)
    assert graph["fakepkg.b.mod"] == {"fakepkg.a.mod"}
    assert cycles(graph) == [["fakepkg.a.mod", "fakepkg.b.mod"]]
    assert cycles(folder_graph(graph)) == [["fakepkg.a", "fakepkg.b"]]
