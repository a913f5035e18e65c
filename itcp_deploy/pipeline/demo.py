"""The offline demo (``itcp-deploy demo``): train a CIFAR ResNet-20 on scikit-learn's bundled digits for about a
minute, then run the whole pipeline with an SLA of 60% of the dense model's measured latency on ONNX Runtime
CPU. Needs no network and no GPU; finishes in a few minutes on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from itcp_deploy.engines.build import EngineSpec
from itcp_deploy.paths import check_output_dir
from itcp_deploy.pipeline.config import DeployTarget, FinetuneRecipe, ProfileSettings, RunConfig
from itcp_deploy.pipeline.driver import run
from itcp_deploy.pipeline.report import RunReport
from itcp_deploy.pipeline.stages import Log, Progress
from itcp_deploy.target import LatencyTarget

MODEL = "cifar_resnet20"
DATA = "digits"


@dataclass(frozen=True)
class DemoConfig:
    """``sla_fraction``: the SLA as a fraction of the dense engine's measured latency. ``margin``: the safety
    margin below it. CI re-measures the demo's engine against this very SLA on a shared 2-core runner, where one
    gate measured 0.600 against 0.6 an engine the demo had shipped under it (CI on 22209a5; earlier gates on
    that runner 0.578-0.581), so the demo keeps 5% in reserve rather than the default 3%."""

    out_dir: str = "demo-out"
    train_seconds: float = 60.0
    sla_fraction: float = 0.6
    margin: float = 0.05
    finetune_epochs: int = 2
    cache_dir: str = "engines"
    seed: int = 0
    quiet: bool = False


def train_dense(config: DemoConfig) -> Path:
    """Train the dense model once (resumes an interrupted training; skips a finished one)."""
    from itcp_deploy.data import load_dataset
    from itcp_deploy.models import create_model
    from itcp_deploy.train import TrainConfig, train

    out = Path(config.out_dir) / "dense"
    weights = out / "model.pt"
    if (out / "metrics.json").exists() and weights.exists():
        return weights
    model = create_model(MODEL, num_classes=10)
    tc = TrainConfig(epochs=30, lr=0.1, batch_size=64, seed=config.seed, checkpoint_dir=out, resume=True,
                     train_time_s=config.train_seconds, quiet=config.quiet, device="cpu")
    train(model, load_dataset(DATA, "train"), load_dataset(DATA, "test"), tc)
    return weights


def demo(config: DemoConfig | None = None, log: Log | None = None, progress: Progress | None = None) -> RunReport:
    """Train, then prune to ``sla_fraction`` of the dense latency; returns the run's report."""
    config = config or DemoConfig()
    check_output_dir("--out", config.out_dir)  # before a minute of training, not after it
    weights = train_dense(config)
    target = DeployTarget.named(EngineSpec(), (1, 3, 32, 32), LatencyTarget(speedup=1.0 / config.sla_fraction,
                                                                                   margin=config.margin))
    rc = RunConfig(model=MODEL, data=DATA, out_dir=str(Path(config.out_dir) / "run"), targets=(target,),
                   weights=str(weights), num_classes=10,
                   recipe=FinetuneRecipe(epochs=config.finetune_epochs, lr=0.02, train_subset=None),
                   profile=ProfileSettings(cache_dir=config.cache_dir, max_builds=28, holdout=10),
                   seed=config.seed, quiet=config.quiet)
    return run(rc, log=log, progress=progress)
