"""The walk of the SLA through the code (issue 23): which functions and modules ("rooms") one run hands the SLA
to, from the CLI to the final report, and how often the walk goes back into a room it had left.

A frame counts when, at its call, one of its arguments is the run's ``LatencyTarget`` or holds it within five
levels of attributes and items (a RunConfig, a DeployTarget, a meter, the run context). Dataclass ``__init__``,
``__post_init__``, comprehensions and lambdas are left out of the function walk; consecutive calls within one
room are one step. ``reads``: the functions that read an attribute of the ``LatencyTarget`` itself (where the SLA
is used rather than carried). ``loop_stage``: the function walk within the loop stage alone (``stage_loop``),
the scope of issue 23's own count. Runs ``profile-engines --sla-ms`` (the same pipeline as ``run``) on a small
synthetic set.

Example (before/after: run it with PYTHONPATH at each checkout)::

    PYTHONPATH=. python bench/sla_walk.py --out /tmp/walk-run --cache /tmp/walk-cache
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itcp_deploy.target import LatencyTarget  # noqa: E402

SKIP = re.compile(r"__create_fn__|<listcomp>|<dictcomp>|<genexpr>|<lambda>|__post_init__")


def holds(value, depth: int = 0, seen: set[int] | None = None) -> bool:
    """Whether ``value`` is the SLA or holds it within five levels."""
    if isinstance(value, LatencyTarget):
        return True
    if depth >= 5 or value is None or isinstance(value, int | float | str | bytes | bool):
        return False
    seen = seen if seen is not None else set()
    if id(value) in seen:
        return False
    seen.add(id(value))
    if isinstance(value, tuple | list) and len(value) <= 8:
        return any(holds(v, depth + 1, seen) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(holds(getattr(value, f.name, None), depth + 1, seen) for f in dataclasses.fields(value))
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict) and type(value).__module__.startswith("itcp_deploy"):
        return any(holds(v, depth + 1, seen) for v in list(attrs.values())[:20])
    return False


def walk_counts(steps: list[str]) -> dict:
    """Rooms entered, returns to a room already left, and the walk's length (consecutive repeats merged)."""
    merged = [s for i, s in enumerate(steps) if i == 0 or steps[i - 1] != s]
    return {"rooms": len(dict.fromkeys(merged)), "returns": sum(1 for i, s in enumerate(merged) if s in merged[:i]),
            "steps": len(merged)}


def _spy_reads(log: list[tuple[str, bool]], inside: list[object]) -> None:
    """Record the function that reads each attribute of a ``LatencyTarget``: the rooms where the SLA is used,
    not only carried inside a config or a context; each read with whether it was within the loop stage."""
    original = LatencyTarget.__getattribute__

    def spy(self, name: str):
        if not name.startswith("__"):
            frame = sys._getframe(1)
            module = frame.f_globals.get("__name__", "")
            if module.startswith("itcp_deploy"):
                log.append((f"{module.removeprefix('itcp_deploy.')}.{frame.f_code.co_qualname}", bool(inside)))
        return original(self, name)

    LatencyTarget.__getattribute__ = spy  # type: ignore[method-assign]


def _read_counts(reads: list[tuple[str, bool]]) -> dict:
    """The reading walk four ways: the whole run or the loop stage alone, with dataclass-made methods,
    comprehensions and lambdas left out (``reads``) or counted (``reads_all``)."""
    kept = [(r, loop) for r, loop in reads if not SKIP.search(r)]
    return {"reads": walk_counts([r for r, _ in kept]), "reading_rooms": list(dict.fromkeys(r for r, _ in kept)),
            "reads_all": walk_counts([r for r, _ in reads]),
            "loop_reads": walk_counts([r for r, loop in kept if loop]),
            "loop_reads_all": walk_counts([r for r, loop in reads if loop]),
            "loop_reading_rooms_all": list(dict.fromkeys(r for r, loop in reads if loop))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--cache", required=True)
    args = p.parse_args(argv)
    modules: list[str] = []
    functions: list[str] = []
    loop: list[str] = []  # the functions entered within the loop stage (the "stage_loop walk")
    inside: list[object] = []

    def profile(frame, event, arg) -> None:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("itcp_deploy") or module.startswith("itcp_deploy.cli.common"):
            return
        if frame.f_code.co_name == "stage_loop":
            if event == "call":
                inside.append(frame)
            elif event == "return" and inside:
                inside.pop()
        if event != "call":
            return
        if any(holds(v) for v in list(frame.f_locals.values())):
            modules.append(module.removeprefix("itcp_deploy."))
            name = f"{module.removeprefix('itcp_deploy.')}.{frame.f_code.co_qualname}"
            if not SKIP.search(name):
                functions.append(name)
                if inside:
                    loop.append(name)

    reads: list[tuple[str, bool]] = []
    _spy_reads(reads, inside)
    from itcp_deploy.cli import main as cli

    sys.setprofile(profile)
    code = cli(["profile-engines", "cifar_resnet20", "--input-shape", "1x3x32x32", "--data",
                "synthetic:train=256,test=128", "--speedup", "1.5", "--epochs", "0", "--max-builds", "10",
                "--holdout", "3", "--rounds", "4", "--runs-per-round", "25", "--cache", args.cache, "-o", args.out,
                "--json"])
    sys.setprofile(None)
    result = {"exit": code, "modules": walk_counts(modules), "functions": walk_counts(functions),
              "loop_stage": walk_counts(loop), "loop_rooms": list(dict.fromkeys(loop)),
              "rounds": len(json.loads((Path(args.out) / "report.json").read_text())["rounds"]),
              **_read_counts(reads),
              "function_rooms": list(dict.fromkeys(functions)),
              "module_walk": " -> ".join(s for i, s in enumerate(modules) if i == 0 or modules[i - 1] != s)}
    print(json.dumps(result, indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
