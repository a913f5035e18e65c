"""bench/mixed_table.py (issue 27's evidence table), its pure pieces: variant b's pruning budget S / q and its one
correction, the resumable results file (the last row of a key wins), and the markdown table (errors and misses
said in their rows)."""

from __future__ import annotations

import pytest

from bench.mixed_table import Results, budget_speedup, corrected_speedup, markdown

DENSE = {"kind": "dense", "model": "cifar_resnet20", "fp32_ms": 0.4, "int8_ms": 0.2, "q": 2.0, "fp32_top1": 83.2,
         "int8_top1": 83.6, "images": 256, "groups": 12, "engine": "dense/engines/fp32"}


def _row(variant: str, epochs: int, **kw) -> dict:
    base = {"kind": "variant", "model": "cifar_resnet20", "seed": 0, "speedup": 2.0, "variant": variant,
            "epochs": epochs, "top1": 80.0, "qdq_share": 0.05, "agree_fp32_model": 0.98, "int8_groups": 6}
    return {**base, **kw}


def test_b_prunes_what_int8_leaves_and_corrects_once_by_the_miss():
    assert budget_speedup(3.0, 2.0) == pytest.approx(1.5)
    assert budget_speedup(2.0, 2.5) == 1.0  # INT8 alone is fast enough: nothing to prune
    # aimed at 1/2 of dense, measured 0.55: prune 10% harder
    assert corrected_speedup(1.5, 0.55, 2.0) == pytest.approx(1.65)


def test_results_resume_and_the_last_row_of_a_key_wins(tmp_path):
    results = Results(tmp_path / "results.jsonl")
    results.add(DENSE)
    results.add(_row("d", 0, error="InfeasibleError: no plan"))
    results.add(_row("d", 0, top1=71.0))  # a retry
    again = Results(tmp_path / "results.jsonl")
    assert again.rows[("variant", 0, 2.0, "d", 0)]["top1"] == 71.0
    assert again.rows[("dense", None, None)]["q"] == 2.0


def test_table_says_latency_misses_and_errors():
    latency = {"kind": "latency", "seed": 0, "speedup": 2.0, "dense_ms": 0.4, "ratios": {"d": 0.45, "b": 0.52}}
    text = markdown([DENSE, _row("d", 1), _row("d", 0), _row("b", 1, int8_groups="all", note="pruned FP32 at S/q"),
                     _row("c", 0, error="InfeasibleError: the SLA | is below"), latency])
    lines = [line for line in text.splitlines() if line.startswith("| cifar_resnet20")]
    assert [line.split(" | ")[3:5] for line in lines] == [
        ["b: itcp FP32 at S/q, then INT8", "1"], ["c: itcp --precision int8", "0"],
        ["d: itcp --precision mixed", "0"], ["d: itcp --precision mixed", "1"]]
    assert "0.520 (1.92x) MISS" in lines[0] and "| all |" in lines[0]
    assert "| error |" in lines[1] and "the SLA / is below" in lines[1]  # a pipe would split the cell
    assert "0.450 (2.22x) |" in lines[3] and "| 6/12 |" in lines[3] and "| -3.20 |" in lines[3]
    assert "q = 2.000" in text and markdown([]).startswith("# Mixed precision")
