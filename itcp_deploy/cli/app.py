"""The typer application object shared by the command modules, and the options every command takes."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="itcp-deploy",
    help="Prune a trained CNN to the most accurate model that meets a measured latency SLA, "
    "and deliver it as an engine (ONNX Runtime model or TensorRT plan).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help is plain text: "[[target]]" and "[timm]" are literal, not Rich markup
)


class ConsoleHandler(logging.Handler):
    """The ``itcp_deploy`` logger's records on the CLI's stderr console, printed as plain text (never Rich
    markup), so they interleave with the progress bars: info dimmed, warnings prefixed ``warning:``."""

    def emit(self, record: logging.LogRecord) -> None:
        from rich.text import Text

        from itcp_deploy.cli.common import console

        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            console.print(Text(f"warning: {message}", style="yellow"), soft_wrap=True)
        else:
            console.print(Text(message, style="dim"), soft_wrap=True)


def configure_logging(verbose: bool) -> None:
    """Route the package's messages (logger ``itcp_deploy``) to the console once: INFO, DEBUG with ``-v``."""
    logger = logging.getLogger("itcp_deploy")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, ConsoleHandler)] + [ConsoleHandler()]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    logger.disabled = False  # a library's logging.config call may have disabled every existing logger


def _version(value: bool) -> None:
    if value:
        from itcp_deploy import __version__

        typer.echo(f"itcp-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for user errors."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also print each closed-loop round's detail."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """itcp-deploy: inference-time-constrained pruning (ITCP)."""
    configure_logging(verbose)
