"""The 64x64 sweep's comparison of two results files (``bench/zoo_sweep.py --compare``)."""

from __future__ import annotations

from bench.zoo_table import compare


def _row(model: str, status: str = "pass", err: float | None = 2.0, noise: float = 1.0) -> dict:
    return {"model": model, "status": status, "perf_err_pct": err, "noise_pct": noise}


def test_compare_counts_passes_and_errors_worse_by_more_than_a_point():
    before = {m: _row(m) for m in ("a", "b", "c", "d")} | {"e": _row("e", "fail", None)}
    after = {"a": _row("a", err=2.5, noise=2.0), "b": _row("b", err=3.5), "c": _row("c", "fail", None),
             "d": _row("d", err=1.0), "e": _row("e"), "new": _row("new")}
    both, median, worse, better, bar, tail = compare(before, after)
    assert "models in both: 5; pass in both: 3" in both and "before only: 1 (c)" in both and "after only: 1 (e)" in both
    assert "2.00% before, 2.50% after; better in 1 of 3" in median
    assert worse.endswith("(1): b 2.0 -> 3.5")  # a is half a point worse: within the sweep's noise
    # the P1 bar, max(1.5 x noise, 2%): a's 2.5% is within 1.5 x its 2% noise, b's 3.5% is not
    assert bar.endswith("1.00% before, 1.00% after; held-out error within max(1.5 x noise, 2%): 3 of 3 before, "
                        "2 after")
    assert better == "- more than a point better after (0): "  # d is exactly a point better
    assert tail.endswith("2.00%, 2.00%, 0 before; 2.33%, 2.50%, 0 after")
