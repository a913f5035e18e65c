"""Every ``itcp-deploy ...`` command line shown in README.md and docs/*.md parses with the CLI's own parser.

A documented command that stops existing (a renamed flag, a dropped option) fails here, without running it:
issue 25 found ``staircase --backend`` documented but gone. Placeholders (``COMMAND``, ``...``) are skipped.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_SHELL = ("", "bash", "sh", "shell", "console", "yaml", "yml", "dockerfile")
_INLINE = re.compile(r"`(itcp-deploy [^`]+)`")


def _blocks(text: str) -> tuple[list[str], str]:
    """(the shell-like fenced blocks, the prose around every fenced block)."""
    shell, prose, current, lang = [], [], None, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current, lang = [], line.strip()[3:].strip().lower()
            else:
                if lang in _SHELL:
                    shell.append("\n".join(current))
                current = None
        elif current is None:
            prose.append(line)
        else:
            current.append(line)
    return shell, "\n".join(prose)


def _unfold(block: str) -> str:
    """One line per command: comment markers dropped (a commented command is still documented), shell
    continuations and YAML folded scalars (``run: >``) joined."""
    lines, folding = [], None
    for raw in block.splitlines():
        line = raw.strip()[1:] if raw.strip().startswith("#") else raw
        indent = len(line) - len(line.lstrip())
        if folding is not None and indent > folding and line.strip():
            lines[-1] += " " + line.strip()
            continue
        folding = indent if line.rstrip().endswith(": >") else None
        lines.append(line.rstrip().removesuffix(">") if folding is not None else line)
    return "\n".join(lines).replace("\\\n", " ")


def _fenced_commands(text: str) -> list[str]:
    """Commands in fenced blocks, trailing comments and pipes cut; ``docker run IMAGE ARGS`` counts as the CLI."""
    found = []
    for block in _blocks(text)[0]:
        for line in _unfold(block).splitlines():
            line = line.split(" #", 1)[0].strip().replace("-m itcp_deploy ", "itcp-deploy ")  # python -m itcp_deploy
            if "itcp-deploy " in line and "docker build" not in line:
                found.append(line[line.index("itcp-deploy "):].split(" && ")[0].split(" | ")[0].split(" > ")[0])
    return found


def _inline_commands(text: str) -> list[str]:
    prose = _blocks(text)[1]
    return [" ".join(m.split()) for m in _INLINE.findall(prose)]


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) pairs, placeholders left out: an upper-case word or an ellipsis stands for the user's own."""
    pairs = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for command in _fenced_commands(text) + _inline_commands(text):
            words = shlex.split(command)[1:]
            if any(w == "..." or w.endswith("...") or re.fullmatch(r"[A-Z][A-Z_]+", w) for w in words):
                continue
            pairs.append((path.name, command))
    return pairs


def _parse(words: list[str]) -> None:
    from itcp_deploy.cli.app import app

    group = typer.main.get_command(app)
    root = group.make_context("itcp-deploy", list(words), resilient_parsing=True)
    command = words[next((i for i, w in enumerate(words) if not w.startswith("-")), len(words)):]  # after -v
    name, cmd, rest = group.resolve_command(root, command)
    assert cmd is not None, f"no command {words[0]!r}"
    if not rest:  # a command named in prose (`itcp-deploy fit`): it exists
        return
    with cmd.make_context(name, list(rest), parent=root):
        pass


def test_docs_show_commands():
    assert len(documented_commands()) >= 20


@pytest.mark.parametrize(("doc", "command"), documented_commands())
def test_documented_command_parses(doc, command):
    words = shlex.split(command)[1:]
    try:
        _parse(words)
    except Exception as e:  # typer >= 0.29 bundles its own click: match its exceptions by class name
        kinds = {c.__name__ for c in type(e).__mro__}
        if "UsageError" in kinds:
            pytest.fail(f"{doc}: `{command}` does not parse: {e.format_message()}")  # type: ignore[attr-defined]
        if "Exit" not in kinds:  # --help, --version exit early: that parsed
            raise
