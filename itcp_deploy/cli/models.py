"""CLI commands of the models stage: ``export`` (model -> verified ONNX) and ``models`` (list the zoo)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from itcp_deploy.cli.app import app


@app.command("export")
def export(
    model: Annotated[str, typer.Argument(help="Zoo name, torchvision:NAME, timm:NAME, model file or module:factory.")],
    input_shape: Annotated[str, typer.Option("--input-shape", help="NxCxHxW, e.g. 1x3x32x32.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output .onnx path.")],
    weights: Annotated[Path | None, typer.Option("--weights", help="Checkpoint to load.")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", help="Classifier outputs.")] = None,
    trust_code: Annotated[bool, typer.Option("--trust-code", help="Allow pickles and factories.")] = False,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 17,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Export a model to ONNX (BN folded), checked against PyTorch with ONNX Runtime."""
    from itcp_deploy.cli.common import console, emit_json
    from itcp_deploy.cli.shapes import parse_input_shape
    from itcp_deploy.engines.export import export_model

    shape = parse_input_shape(input_shape)
    result = export_model(model, shape, out, num_classes=num_classes, weights=weights, trust_code=trust_code,
                          opset=opset)
    if json_out:
        emit_json({"onnx": str(result.path), "model": model, "input_shape": list(result.input_shape),
                   "opset": opset, "max_rel_err": result.max_rel_err})
    else:
        console.print(f"wrote {result.path} (ONNX Runtime parity: relative error {result.max_rel_err:.1e})")


@app.command("models")
def models(
    torchvision: Annotated[bool, typer.Option("--torchvision", help="Also list torchvision:NAME.")] = False,
    timm: Annotated[bool, typer.Option("--timm", help="Also list timm:NAME (needs the [timm] extra).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the names as JSON on stdout.")] = False,
) -> None:
    """List the model zoo (any torchvision classifier works as torchvision:NAME, any timm model as timm:NAME)."""
    from itcp_deploy.cli.common import console, emit_json
    from itcp_deploy.models import list_models

    names = list_models(include_torchvision=torchvision, include_timm=timm)
    if json_out:
        emit_json(names)
        return
    for name in names:
        console.print(name)
    if not (torchvision or timm):
        console.print("torchvision:NAME (see --torchvision), timm:NAME (see --timm), a model file, "
                      "or package.module:factory")
