"""Every command's help renders as written: no text eaten as Rich markup (issue 25: ``[[target]]`` showed as ``[]``,
``the [timm] extra`` as ``the  extra``), and ``staircase --backend`` (documented, once lost) is back."""

from __future__ import annotations

import json

import pytest
import typer

from tests.conftest import run_cli


def _commands() -> dict[str, object]:
    from itcp_deploy.cli.app import app

    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _letters(text: str) -> str:
    """The text without whitespace: wrapping (Rich breaks lines at spaces and hyphens) is not a change."""
    return "".join(text.split())


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_help_text_renders_as_written(name, monkeypatch):
    code, out, _ = run_cli(name, "--help")
    assert code == 0
    shown = _letters(out)
    command = _commands()[name]
    texts = [p.help for p in command.params if getattr(p, "help", None)]  # type: ignore[attr-defined]
    for text in texts:
        assert _letters(text) in shown, f"{name}: help {text!r} is not shown as written"
    assert "[]" not in out


def test_brackets_survive_in_the_help_that_has_them():
    assert "[[target]]" in _letters(run_cli("run", "--help")[1])
    assert "[timm]" in _letters(run_cli("models", "--help")[1])


def test_staircase_runs_on_openvino(tmp_path):
    pytest.importorskip("openvino")
    out = tmp_path / "s.png"
    code, _, err = run_cli("staircase", "--backend", "openvino", "--max-width", "2", "--rounds", "1", "--hw", "8",
                           "--in-channels", "4", "-o", str(out))
    assert code == 0, err
    assert json.loads(out.with_suffix(".json").read_text())["config"]["backend"] == "openvino"


def test_the_output_flag_is_spelled_one_way():
    """-o/--out on every command that writes (issue 25: --out, -o/--out, -o/--output, --out-dir before)."""
    spelled = {}
    for name, command in _commands().items():
        for p in command.params:  # type: ignore[attr-defined]
            if {"-o", "--out", "--output", "--out-dir"} & set(p.opts):
                spelled[name] = sorted(p.opts)
    assert {"run", "export", "calibrate", "fit", "search", "staircase", "profile-engines", "train"} <= set(spelled)
    assert all(opts == ["--out", "-o"] for opts in spelled.values()), spelled


@pytest.mark.parametrize("old", ["--output", "--out-dir"])
def test_old_output_spellings_still_work_unshown(old, tmp_path):
    from itcp_deploy.cli import _unalias

    assert _unalias(["fit", "p.json", old, "m.json"]) == ["fit", "p.json", "--out", "m.json"]
    assert _unalias([old + "=m.json"]) == ["--out=m.json"]
    assert _unalias(["x", "--", old]) == ["x", "--", old]
    code, out, err = run_cli("calibrate", "--data", "synthetic", "--num", "4", old, str(tmp_path / "c"), "--json")
    assert code == 0, err
    assert old not in run_cli("calibrate", "--help")[1]


def test_python_dash_m_runs_the_command():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "itcp_deploy", "check-latency"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "give an ENGINE or --run" in done.stderr, done.stderr
