"""bench/mixed_table.py's table: one markdown line per (seed, S, variant, epochs) of its ``results.jsonl`` rows."""

from __future__ import annotations

VARIANTS = {"a": "itcp FP32", "b": "itcp FP32 at S/q, then INT8", "c": "itcp --precision int8",
            "d": "itcp --precision mixed"}


def _cell(row: dict, latency: dict | None, dense_top1: float) -> list[str]:
    """One variant row's table cells after its first four (model, seed, S, variant)."""
    if row.get("error"):
        return [str(row["epochs"]), "error", "", "", "", "", "", row["error"].replace("|", "/")]
    ratio = (latency or {}).get("ratios", {}).get(row["variant"])
    lat = "n/a" if ratio is None else f"{ratio:.3f} ({1 / ratio:.2f}x){'' if ratio <= 1 / row['speedup'] else ' MISS'}"
    groups, note = row["int8_groups"], row.get("note", "")
    return [str(row["epochs"]), f"{row['top1']:.2f}%", f"{row['top1'] - dense_top1:+.2f}", lat,
            f"{groups}/{row.get('groups', '')}" if isinstance(groups, int) else str(groups),
            f"{100 * row['qdq_share']:.1f}%", f"{row['agree_fp32_model']:.3f}", note]


def markdown(rows: list[dict]) -> str:
    """The table of ``results.jsonl``'s rows: one line per (seed, S, variant, epochs)."""
    dense = next((r for r in rows if r["kind"] == "dense"), None)
    if dense is None:
        return "# Mixed precision (issue 27)\n\nNo dense row yet.\n"
    lat = {(r["seed"], r["speedup"]): r for r in rows if r["kind"] == "latency"}
    lines = [f"# Mixed precision (issue 27): {dense['model']}, CIFAR-10 (JPEG copy)", "",
             f"ONNX Runtime CPU, batch 1, one thread. Dense FP32 engine {dense['fp32_ms']:.4f} ms, top-1 "
             f"{dense['fp32_top1']:.2f}%; dense INT8 {dense['int8_ms']:.4f} ms, top-1 {dense['int8_top1']:.2f}% "
             f"(q = {dense['q']:.3f}); top-1 measured on each engine over {dense['images']} test images. Latency: "
             "engine / dense FP32, every final engine of a point and the dense one in one interleaved session "
             "(MISS: slower than dense / S). Agreement: top-1 agreement with the FP32 PyTorch model the engine "
             "came from (the issue asks >= 0.95 for mixed).", "",
             "| model | seed | S | variant | epochs | engine top-1 | vs dense FP32 | latency / dense FP32 "
             "| INT8 groups | Q/DQ share | agreement with FP32 model | note |", "|" + "---|" * 12]
    variants = sorted((r for r in rows if r["kind"] == "variant"),
                      key=lambda r: (r["seed"], r["speedup"], r["variant"], r["epochs"]))
    for r in variants:
        cells = [r["model"], str(r["seed"]), f"{r['speedup']:g}", f"{r['variant']}: {VARIANTS[r['variant']]}",
                 *_cell({**r, "groups": dense["groups"]}, lat.get((r["seed"], r["speedup"])), dense["fp32_top1"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
