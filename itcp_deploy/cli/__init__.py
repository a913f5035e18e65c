"""The ``itcp-deploy`` command line: a thin typer shell over the Python API.

Each stage's commands live in their own module (``cli/foundation.py``, ``cli/pruning.py``, ...) and import
heavy packages inside the command bodies, so ``itcp-deploy --help`` works on a CPU box without extras.
User mistakes (:class:`~itcp_deploy.errors.ItcpError`) print one line and exit non-zero; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import os
import sys

from itcp_deploy.cli import models, pipeline, profiling, pruning, search, train  # noqa: F401  (registers commands)
from itcp_deploy.cli.app import app


def _click_types() -> tuple[type[BaseException], type[BaseException]]:
    """(ClickException, Abort): typer >= 0.29 bundles its own click, older typer uses the click package."""
    import typer

    try:
        from typer._click import ClickException
    except ImportError:
        from click import ClickException
    return ClickException, typer.Abort


# Spellings of the output flag before it became one (-o/--out everywhere): still accepted, never shown.
_OLD_OUT = ("--output", "--out-dir")


def _unalias(args: list[str]) -> list[str]:
    """Old output-flag spellings as ``--out`` (before a ``--`` that ends the options)."""
    end = args.index("--") if "--" in args else len(args)
    new = []
    for i, a in enumerate(args):
        name, eq, value = a.partition("=")
        new.append("--out" + eq + value if i < end and name in _OLD_OUT else a)
    return new


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code instead of raising ``SystemExit``.

    SIGTERM is handled like Ctrl-C (both raise ``KeyboardInterrupt``): the same cleanup runs, the same
    resumable state stays, and the exit code is 128 + the signal number.
    """
    from itcp_deploy.atomic_io import interrupt_exit_code, sigterm_as_interrupt
    from itcp_deploy.errors import ItcpError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("ITCP_DEBUG", "") not in ("", "0")
    args = _unalias([a for a in args if a != "--debug"])
    click_error, abort = _click_types()
    try:
        with sigterm_as_interrupt():
            code = app(args=args, prog_name="itcp-deploy", standalone_mode=False)
    except ItcpError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except (KeyboardInterrupt, abort):
        code = 130
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except click_error as exc:  # usage errors (bad option values, unknown commands)
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `itcp-deploy` (or group): its help, not an error
            print(exc.ctx.get_help())  # type: ignore[attr-defined]
            return 0
        if debug:
            raise
        message = exc.format_message().rstrip(".")
        print(f"error: {message}. Fix: see `itcp-deploy COMMAND --help`", file=sys.stderr)
        return 2
    if code == 130:  # typer returns Ctrl-C as 130 in non-standalone mode; SIGTERM arrives the same way
        code = interrupt_exit_code()
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
