"""``train``: SGD with warm-up + cosine per step, optional distillation, checkpoints and exact resume."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from itcp_deploy.atomic_io import write_json
from itcp_deploy.data.info import DatasetInfo
from itcp_deploy.data.loaders import make_loader
from itcp_deploy.errors import InputFileError, UsageError
from itcp_deploy.train import checkpoint as ckpt
from itcp_deploy.train.bn import recalibrate_bn
from itcp_deploy.train.config import TrainConfig
from itcp_deploy.train.distill import TrainLoss
from itcp_deploy.train.distributed import (
    DistContext,
    barrier,
    init_distributed,
    resolve_device,
    sum_across_ranks,
)
from itcp_deploy.train.evaluation import evaluate
from itcp_deploy.train.progress import EpochProgress
from itcp_deploy.train.schedule import make_scheduler, stretch


def train(
    model: torch.nn.Module,
    train_info: DatasetInfo,
    test_info: DatasetInfo | None = None,
    config: TrainConfig | None = None,
) -> dict[str, Any]:
    """Train (or finetune: pass a pretrained or pruned model) ``model`` in place and return metrics.

    Under ``torchrun`` every rank calls this; data is sharded, gradients averaged, metrics summed over
    ranks, and only rank 0 writes ``checkpoint.pt`` (each epoch), ``model.pt`` (state dict) and
    ``metrics.json`` into ``config.checkpoint_dir``. The model stays on the training device, in eval mode.

    Returns:
        ``{"epochs_completed", "stopped_early", "train_loss", "train_accuracy", "test_accuracy",
        "test_loss", "history": [per-epoch dicts], "wall_s", "world_size", "resumed_from_epoch",
        "config"}`` (``test_*`` are ``None`` without ``test_info``).

    Raises:
        UsageError: a detection set (boxes, not one class label per image).
        InputFileError: ``resume`` with a corrupt checkpoint or one written for another model, or a
            training set smaller than one batch.
    """
    train_info.require_labels("the built-in training (cross-entropy)")
    session = _Session.create(model, train_info, config or TrainConfig())
    cfg, ctx = session.config, session.ctx
    start_epoch, history, elapsed_before_s = session.resume_or_seed()
    started = time.perf_counter()
    stopped_early = False
    with EpochProgress(enabled=not cfg.quiet and ctx.is_main) as progress:
        for epoch in range(start_epoch, cfg.epochs):
            record = session.run_epoch(train_info, epoch, progress)
            last = epoch + 1 == cfg.epochs or session.out_of_time(time.perf_counter() - started)
            if last and cfg.precise_bn_batches > 0:
                session.precise_bn(train_info, epoch)
            if test_info is not None:
                loader = make_loader(test_info, cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
                test = evaluate(model, loader, device=session.device)
                record.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
                progress.note(f"epoch {epoch + 1}: test accuracy {test['accuracy']:.2f}%")
            history.append(record)
            session.save(history, start_epoch, elapsed_before_s + time.perf_counter() - started)
            if last:
                stopped_early = epoch + 1 < cfg.epochs
                break
    model.eval()
    summary = _summary(history, session, start_epoch, elapsed_before_s + time.perf_counter() - started)
    summary["stopped_early"] = stopped_early
    if ctx.is_main and session.out_dir is not None:
        write_json(session.out_dir / ckpt.METRICS_NAME, summary)
    return summary


@dataclass
class _Session:
    """The objects one training run threads through its epochs."""

    model: torch.nn.Module
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loss_fn: TrainLoss
    config: TrainConfig
    ctx: DistContext
    device: torch.device
    steps_per_epoch: int

    @classmethod
    def create(cls, model: torch.nn.Module, train_info: DatasetInfo, config: TrainConfig) -> _Session:
        device = resolve_device(config.device)
        ctx = init_distributed(device)
        model.to(device)
        if config.teacher is not None:
            config.teacher.to(device)
        net = model
        if ctx.distributed:
            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        steps = _steps_per_epoch(train_info, config, ctx)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay, nesterov=config.momentum > 0)
        scheduler = make_scheduler(optimizer, config.epochs * steps, steps)
        loss_fn = TrainLoss(config.teacher, config.kd_alpha, config.kd_temperature)
        return cls(model, net, optimizer, scheduler, loss_fn, config, ctx, device, steps)

    @property
    def out_dir(self) -> Path | None:
        return Path(self.config.checkpoint_dir) if self.config.checkpoint_dir is not None else None

    def resume_or_seed(self) -> tuple[int, list[dict[str, Any]], float]:
        """``(first epoch to run, history so far, wall seconds so far)``; restores state on resume."""
        path = self.out_dir / ckpt.CHECKPOINT_NAME if self.out_dir is not None else None
        if not (self.config.resume and path is not None and path.exists()):
            torch.manual_seed(self.config.seed + self.ctx.rank)
            return 0, [], 0.0
        state = ckpt.load_checkpoint(path)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise InputFileError(f"checkpoint {path} was written for a different model "
                                 f"({str(err).splitlines()[0]})",
                                 "use another --out directory or train without --resume") from err
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        stretch(self.scheduler, self.config.epochs * self.steps_per_epoch, self.steps_per_epoch)
        ckpt.restore_rng(state["rng"])
        return int(state["epoch"]), list(state["history"]), float(state["elapsed_s"])

    def run_epoch(self, train_info: DatasetInfo, epoch: int, progress: EpochProgress) -> dict[str, Any]:
        """One pass of at most ``steps_per_epoch`` batches; returns train metrics over all ranks."""
        cfg = self.config
        loader = make_loader(train_info, cfg.batch_size, shuffle=True, seed=cfg.seed * 100_003 + epoch,
                             num_workers=cfg.num_workers, drop_last=True)
        self.net.train()
        progress.start_epoch(f"epoch {epoch + 1}/{cfg.epochs}", self.steps_per_epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        loss_sum = correct = count = 0.0
        started = time.perf_counter()
        for step, (images, labels) in enumerate(loader):
            if step >= self.steps_per_epoch:
                break
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            logits = self.net(images)
            loss = self.loss_fn(logits, images, labels)
            if not torch.isfinite(loss.detach()):
                raise UsageError(f"training diverged: loss {float(loss.detach())} at epoch {epoch + 1} "
                                 f"step {step}",
                                 f"lower --lr (now {cfg.lr:g})")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_value = float(loss.detach())
            loss_sum += loss_value * labels.numel()
            correct += float((logits.detach().argmax(dim=1) == labels).sum())
            count += labels.numel()
            progress.step(loss_value)
        loss_sum, correct, count = sum_across_ranks([loss_sum, correct, count], self.device)
        n = max(count, 1)
        return {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / n, "train_accuracy": 100 * correct / n,
                "train_samples": int(count), "epoch_s": time.perf_counter() - started}

    def precise_bn(self, train_info: DatasetInfo, epoch: int) -> None:
        """BatchNorm statistics averaged over training batches under the final weights (PreciseBN).

        Training uses batch statistics, so this changes nothing but evaluation, where short runs' running
        averages (a few dozen momentum updates) would otherwise lag far behind the weights.
        """
        cfg = self.config
        loader = make_loader(train_info, cfg.batch_size, shuffle=True, seed=cfg.seed * 100_003 + epoch + 7,
                             num_workers=cfg.num_workers, drop_last=True)
        recalibrate_bn(self.model, loader, num_batches=min(cfg.precise_bn_batches, self.steps_per_epoch))

    def save(self, history: list[dict[str, Any]], start_epoch: int, elapsed_s: float) -> None:
        """Rank 0 writes checkpoint, weights and metrics after an epoch; the others wait for it."""
        out_dir = self.out_dir
        if self.ctx.is_main and out_dir is not None:
            ckpt.save_checkpoint(out_dir / ckpt.CHECKPOINT_NAME, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": history[-1]["epoch"],
                "rng": ckpt.capture_rng(), "history": history, "elapsed_s": elapsed_s,
                "config": self.config.to_dict(),
            })
            ckpt.save_state_dict(out_dir / ckpt.MODEL_NAME, self.model)
            summary = _summary(history, self, start_epoch, elapsed_s)
            write_json(out_dir / ckpt.METRICS_NAME, summary)
        barrier()

    def out_of_time(self, elapsed_s: float) -> bool:
        """Whether the training time ran out; ranks agree (any rank out of time stops all)."""
        limit_s = self.config.train_time_s
        if limit_s is None:
            return False
        return sum_across_ranks([float(elapsed_s >= limit_s)], self.device)[0] > 0


def _steps_per_epoch(train_info: DatasetInfo, config: TrainConfig, ctx: DistContext) -> int:
    per_rank = math.ceil(len(train_info.dataset) / ctx.world_size)
    steps = per_rank // config.batch_size
    if steps < 1:
        raise InputFileError(f"training set {train_info.name} has {len(train_info.dataset)} samples, fewer "
                             f"than one batch of {config.batch_size} per process",
                             "lower --batch-size or use more data")
    return min(steps, config.max_steps_per_epoch or steps)


def _summary(history: list[dict], session: _Session, start_epoch: int, wall_s: float) -> dict[str, Any]:
    last = history[-1] if history else {}
    return {
        "epochs_completed": last.get("epoch", start_epoch),
        "stopped_early": False,
        "train_loss": last.get("train_loss"),
        "train_accuracy": last.get("train_accuracy"),
        "test_accuracy": last.get("test_accuracy"),
        "test_loss": last.get("test_loss"),
        "history": history,
        "wall_s": wall_s,
        "world_size": session.ctx.world_size,
        "resumed_from_epoch": start_epoch,
        "config": session.config.to_dict(),
    }
