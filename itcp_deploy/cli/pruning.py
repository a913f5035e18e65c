"""CLI commands of the pruning stage: ``groups`` (show a model's channel groups and candidate widths)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from itcp_deploy.cli.app import app

IgnoreLayersOpt = Annotated[list[str] | None, typer.Option(
    "--ignore-layers", help="Glob of layers (or modules) whose output channels keep their width, e.g. a "
    "detection head; repeatable.")]


@app.command("groups")
def groups(
    model: Annotated[str, typer.Argument(help="Zoo name, torchvision:NAME, timm:NAME, model file or module:factory.")],
    input_shape: Annotated[str, typer.Option("--input-shape", help="NxCxHxW, e.g. 1x3x32x32.")],
    weights: Annotated[Path | None, typer.Option("--weights", help="Checkpoint to load.")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", help="Classifier outputs.")] = None,
    trust_code: Annotated[bool, typer.Option("--trust-code", help="Allow pickles and factories.")] = False,
    grid_small: Annotated[int, typer.Option("--grid-small", min=1, help="Width step up to 64 channels.")] = 4,
    grid_large: Annotated[int, typer.Option("--grid-large", min=1, help="Width step above 64 channels.")] = 8,
    min_width: Annotated[int, typer.Option("--min-width", min=1, help="Smallest candidate width.")] = 4,
    ignore_layers: IgnoreLayersOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the pruning space as JSON.")] = False,
) -> None:
    """Show the channel groups Torch-Pruning finds, their candidate widths and the layers each sets."""
    from rich.table import Table

    from itcp_deploy.cli.common import console, emit_json
    from itcp_deploy.cli.shapes import parse_input_shape
    from itcp_deploy.pruning import build_space_from_spec
    from itcp_deploy.space import CandidateGrid

    grid = CandidateGrid(step_small=grid_small, step_large=grid_large, min_width=min_width)
    space = build_space_from_spec(model, parse_input_shape(input_shape), num_classes=num_classes,
                                  weights=str(weights) if weights else None, trust_code=trust_code, grid=grid,
                                  ignore_layers=tuple(ignore_layers or ()))
    if json_out:
        emit_json(space.to_dict())
        return
    table = Table(title=f"{model}: {len(space.prunable)} prunable groups, {len(space.layers)} layers")
    for column in ("group", "full width", "candidates", "layers it sets"):
        table.add_column(column)
    for g in space.groups:
        cands = "fixed" if g.fixed else f"{len(g.candidates)}: {g.candidates[0]}..{g.candidates[-1]}"
        cands += ", or 0 (block removal)" if g.removable else ""
        sets = ", ".join(g.layers_out[:4]) + (f" (+{len(g.layers_out) - 4})" if len(g.layers_out) > 4 else "")
        table.add_row(g.name, str(g.full_width), cands, sets)
    console.print(table)
