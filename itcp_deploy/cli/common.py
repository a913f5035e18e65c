"""Options and output helpers shared by command modules."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

console = Console(stderr=True)


def emit_json(data: Any) -> None:
    """Machine-readable output on stdout (progress and tables go to stderr)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
