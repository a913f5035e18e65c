"""CLI commands of the training stage: ``train``, ``finetune`` and ``evaluate``.

Each builds a :class:`~itcp_deploy.train.TrainJob` (or calls :func:`~itcp_deploy.train.evaluate_model`);
both run under ``torchrun --nproc_per_node N --no-python itcp-deploy train ...`` as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from itcp_deploy.cli.app import app

_DATA_HELP = ("digits, synthetic, cifar10:DIR, cifar100:DIR, imagefolder:DIR, a CIFAR batch file, "
              "or a path (layout detected).")
_CONFIG_KEYS = ("epochs", "lr", "batch_size", "seed", "resume", "train_time_s", "max_steps_per_epoch",
                "device", "quiet")
Data = Annotated[str, typer.Option("--data", help=_DATA_HELP)]
Epochs = Annotated[int | None, typer.Option("--epochs", min=1, help="Epochs. (default 1)")]
Lr = Annotated[float | None, typer.Option("--lr", help="Peak cosine LR. (default 0.05; finetune 0.01)")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", min=1, help="Per process. (default 64)")]
Out = Annotated[Path, typer.Option("-o", "--out", help="Output directory (checkpoint.pt, model.pt, metrics.json).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue after the last finished epoch in --out.")]
Teacher = Annotated[str | None, typer.Option("--teacher", help="Distil from this model.")]
TeacherWeights = Annotated[str | None, typer.Option("--teacher-weights", help="The teacher's weights.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Seeds data order and augmentation. (default 0)")]
TrainTime = Annotated[float | None, typer.Option("--train-time-s", help="Stop after the epoch that spends it.")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps-per-epoch", min=1, help="Cut epochs short.")]
Workers = Annotated[int | None, typer.Option("--workers", min=0, help="DataLoader processes. (default 0)")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N. (default CUDA if present)")]
Download = Annotated[bool, typer.Option("--download", help="Download CIFAR into the --data directory first.")]
Trust = Annotated[bool, typer.Option("--trust-code", help="Allow model specs whose loading runs code.")]
Json = Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


@app.command("train")
def train_command(
    model: Annotated[str, typer.Argument(help="Model name or spec (see `itcp-deploy models`).")],
    data: Data, epochs: Epochs = None, lr: Lr = None, batch_size: BatchSize = None,
    out: Out = Path("runs/train"), resume: Resume = False, teacher: Teacher = None,
    teacher_weights: TeacherWeights = None, seed: Seed = None, train_time_s: TrainTime = None,
    max_steps_per_epoch: MaxSteps = None, workers: Workers = None, device: Device = None,
    download: Download = False, trust_code: Trust = False, json: Json = False, quiet: Quiet = False,
) -> None:
    """Train MODEL from scratch on --data (SGD, cosine schedule, optional distillation)."""
    _run_job(locals(), weights=None)


@app.command("finetune")
def finetune_command(
    model: Annotated[str, typer.Argument(help="Model name or spec (see `itcp-deploy models`).")],
    weights: Annotated[str, typer.Option("--weights", help="Starting weights (state dict or checkpoint).")],
    data: Data, epochs: Epochs = None, lr: Lr = None, batch_size: BatchSize = None,
    out: Out = Path("runs/finetune"), resume: Resume = False, teacher: Teacher = None,
    teacher_weights: TeacherWeights = None, seed: Seed = None, train_time_s: TrainTime = None,
    max_steps_per_epoch: MaxSteps = None, workers: Workers = None, device: Device = None,
    download: Download = False, trust_code: Trust = False, json: Json = False, quiet: Quiet = False,
) -> None:
    """Continue training MODEL from --weights on --data (default learning rate 0.01)."""
    options = locals()
    options["lr"] = 0.01 if lr is None else lr
    _run_job(options, weights=options.pop("weights"))


def _run_job(options: dict, weights: str | None) -> None:
    """Options of ``train``/``finetune`` -> :func:`~itcp_deploy.train.run_train_job`; prints the metrics."""
    from itcp_deploy.cli.common import console, emit_json
    from itcp_deploy.registry import drop_none
    from itcp_deploy.train import TrainConfig, TrainJob, run_train_job

    settings = {key: options[key] for key in _CONFIG_KEYS} | {"num_workers": options["workers"]}
    job = TrainJob(options["model"], options["data"], options["out"], weights=weights,
                   teacher=options["teacher"], teacher_weights=options["teacher_weights"],
                   trust_code=options["trust_code"], download=options["download"],
                   config=TrainConfig(**drop_none(settings)))
    metrics = run_train_job(job)
    if metrics["world_size"] > 1 and _rank() != 0:
        return
    if options["json"]:
        emit_json(metrics)
    else:
        test = metrics["test_accuracy"]
        console.print(f"{job.model}: {metrics['epochs_completed']} epoch(s), train accuracy "
                      f"{metrics['train_accuracy']:.2f}%, test accuracy "
                      f"{'n/a' if test is None else f'{test:.2f}%'}; wrote {job.out_dir}/model.pt")


@app.command("evaluate")
def evaluate_command(
    model: Annotated[str, typer.Argument(help="Model name or spec (see `itcp-deploy models`).")],
    data: Data,
    weights: Annotated[str | None, typer.Option("--weights", help="Weights to load.")] = None,
    split: Annotated[str, typer.Option("--split", help="train, test or val.")] = "test",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 256,
    max_samples: Annotated[int | None, typer.Option("--max-samples", min=1, help="Seeded subset.")] = None,
    trust_code: Trust = False,
    json: Json = False,
) -> None:
    """Top-1 accuracy of MODEL (with --weights) on a split of --data."""
    from itcp_deploy.cli.common import console, emit_json
    from itcp_deploy.errors import UsageError
    from itcp_deploy.train import evaluate_model

    result = evaluate_model(model, data, weights=weights, split=split, batch_size=batch_size,
                            max_samples=max_samples, trust_code=trust_code)
    if result["accuracy"] is None:
        raise UsageError(f"{model} outputs no (N, classes) logits, so it has no top-1 accuracy",
                         "evaluate a classifier; a detector's mAP: bench/detection_map.py")
    if json:
        emit_json(result)
    else:
        console.print(f"{model} on {result['data']}: accuracy {result['accuracy']:.2f}% "
                      f"({result['n']} images), loss {result['loss']:.4f}")


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0") or 0)
