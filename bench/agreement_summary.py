"""Issue 27's agreement item over every engine measured so far: the top-1 agreement of each all-INT8 (c) and
mixed (d) engine with the FP32 PyTorch model it came from, from the rows ``bench/mixed_table.py`` wrote, grouped
by speed-up, finetuning epochs and variant (lowest, highest, how many under 0.95). Usage::

    python bench/agreement_summary.py docs/bench/i27-mixed/results*.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

BAR = 0.95


def rows(paths: list[Path]) -> list[dict]:
    """The c and d variant rows with an agreement, each tagged with its file's name."""
    out = []
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("kind") == "variant" and row.get("variant") in ("c", "d") and "agree_fp32_model" in row:
                out.append({**row, "file": path.name})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path)
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows(p.parse_args(argv).results):
        cells[(row["speedup"], row["epochs"], row["variant"])].append(row)
    print(f"| speed-up | epochs | variant | engines | agreement, lowest | highest | under {BAR} |")
    print("|---|---|---|---|---|---|---|")
    for (speedup, epochs, variant), group in sorted(cells.items()):
        values = [r["agree_fp32_model"] for r in group]
        cells_out = (f"{speedup:g}x", epochs, variant, len(values), f"{min(values):.4f}", f"{max(values):.4f}",
                     sum(v < BAR for v in values))
        print("| " + " | ".join(str(c) for c in cells_out) + " |")


if __name__ == "__main__":
    main()
