"""The Python the package claims is the Python CI runs (issue 25: ``requires-python >= 3.10`` while the CLI imports
``tomllib``, 3.11+, so ``run`` was a traceback on 3.10)."""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _floor() -> tuple[int, int]:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=\s*3\.(\d+)", spec)
    assert match, f"requires-python {spec!r}: say the minimum as >=3.N"
    return 3, int(match.group(1))


def test_ruff_checks_against_the_declared_minimum():
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["target-version"]
    assert target == f"py3{_floor()[1]}"


def test_this_python_is_supported_and_ci_runs_the_minimum():
    assert sys.version_info[:2] >= _floor()
    if os.environ.get("CI"):
        assert sys.version_info[:2] == _floor(), "CI must run the lowest Python the package claims"


def test_the_docker_image_pins_the_readme_torch():
    readme = (ROOT / "README.md").read_text()
    docker = (ROOT / "Dockerfile").read_text()
    torch, vision = re.search(r"pip install torch==(\S+) torchvision==(\S+)", readme).groups()
    assert f'"torch=={torch}"' in docker and f'"torchvision=={vision}"' in docker
