"""bench/doc_example_repeat.py reads what a run folder recorded: the loop's and the final engine's measurements."""

from __future__ import annotations

import ast
import json

from bench.doc_example_repeat import _measured, example, table


def test_the_example_is_the_one_the_tests_run():
    code = example("## Example 1")
    ast.parse(code)
    assert "itcp_deploy.prune(" in code and 'out_dir="itcp-out/mobilenet"' in code


def test_a_run_folder_gives_its_ratios_and_the_table_sums_them(tmp_path):
    loop = {"rounds": [{"targets": [{"measured_ms": 0.5}]}, {"targets": [{"measured_ms": 0.45}]}],
            "accepted_round": 1, "aim_ms": {"t": 0.5}}
    (tmp_path / "state.json").write_text(json.dumps({"stages": {"loop": loop}, "retries": [{"note": "x"}]}))
    target = {"name": "t", "measured_ms": 0.468, "measured_over_sla": 0.9}
    (tmp_path / "report.json").write_text(json.dumps({"met_sla": True, "targets": [target]}))
    row = _measured(tmp_path)
    assert row["retries"] == 1 and row["rounds"] == 2 and row["met_sla"] is True
    assert abs(row["loop_over_aim"] - 0.9) < 1e-9 and abs(row["final_over_loop"] - 1.04) < 1e-9
    rows = [{**row, "commit": "abc", "exit": 0, "wall_s": 1.0, "load_start": 1.0, "load_end": 1.0},
            {"commit": "abc", "exit": 1, "wall_s": 1.0, "load_start": 1.0, "load_end": 1.0, "met_sla": False}]
    text = table(rows)
    assert "1 of 2 runs met the SLA" in text and "median 1.0400" in text and "| 1 | abc | 1 | False | n/a" in text
