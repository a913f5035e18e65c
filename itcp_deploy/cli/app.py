"""The typer application object shared by the command modules."""

from __future__ import annotations

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


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for user errors."),
) -> None:
    """itcp-deploy: inference-time-constrained pruning (ITCP)."""
