"""Spec strings as one way to make a run's objects: ``itcp-deploy run MODEL --data DATA`` loads the model and
the data splits and wraps the CLI's finetuning recipe (its train split, augmented, with checkpoints and resume)
as a ``finetune(model) -> model`` callable, then runs exactly what :func:`itcp_deploy.prune` runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from itcp_deploy.errors import UsageError
from itcp_deploy.pipeline.config import RunConfig
from itcp_deploy.pipeline.run_dir import RunFolder
from itcp_deploy.pipeline.sources import ModelInputs

if TYPE_CHECKING:
    from itcp_deploy.data import DatasetInfo


@dataclass
class Inputs:
    """The dense model and the data every stage reads: the train split with and without augmentation
    (``plain``: scores, BatchNorm statistics) and the test split."""

    model: nn.Module
    train: DatasetInfo
    plain: DatasetInfo
    test: DatasetInfo

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, *self.train.input_size)

    def loader(self, batch_size: int, *, train: bool, seed: int = 0, max_samples: int | None = None):
        """A loader over ``plain`` (shuffled, seeded) or ``test`` (in order)."""
        from itcp_deploy.data import make_loader

        info = self.plain if train else self.test
        return make_loader(info, batch_size, shuffle=train, seed=seed, max_samples=max_samples)


@dataclass(frozen=True)
class ModelSource:
    """Where the dense model comes from: a model spec, its weights, the data spec."""

    model: str
    data: str
    weights: str | None = None
    num_classes: int | None = None
    trust_code: bool = False


def load_inputs(source: ModelSource, seed: int = 0) -> Inputs:
    """Load the data splits once and create the dense model (in eval mode)."""
    import torch

    from itcp_deploy.data import load_dataset
    from itcp_deploy.models import create_model
    from itcp_deploy.models.registry import random_weights_note

    if note := random_weights_note(source.model, source.weights):
        logging.getLogger("itcp_deploy").warning(note)
    torch.manual_seed(seed)
    train = load_dataset(source.data, "train")
    plain = load_dataset(source.data, "train", augment=False)
    test = load_dataset(source.data, "test")
    model = create_model(source.model, num_classes=source.num_classes or train.num_classes,
                         weights=source.weights, trust_code=source.trust_code).eval()
    _check_task(model, train, source)
    return Inputs(model, train, plain, test)


def _check_task(model: nn.Module, data: DatasetInfo, source: ModelSource) -> None:
    """Boxes are for a model that computes its own detection loss from them (a torchvision detector)."""
    from itcp_deploy.pruning.importance import computes_own_loss

    if data.task == "detection" and not computes_own_loss(model):
        raise UsageError(f"--data {source.data} holds boxes for a detector, but {source.model} computes no "
                         "detection loss from them", "use classification data (e.g. --data synthetic) for it, "
                         "or a torchvision detector (e.g. torchvision:ssdlite320_mobilenet_v3_large)")


@dataclass(frozen=True)
class SpecRecipe:
    """The CLI's finetuning: ``epochs`` of :func:`itcp_deploy.train.train` on the augmented train split."""

    epochs: int
    lr: float
    batch_size: int
    checkpoint_dir: Path
    distill: bool = False
    train_time_s: float | None = None
    quiet: bool = False


def spec_inputs(source: ModelSource, recipe: SpecRecipe, seed: int = 0) -> ModelInputs:
    """The model; a seeded, shuffled loader over the un-augmented train split (scores, kept channels,
    BatchNorm); the test split (accuracy); a finetune that runs the CLI recipe."""
    from itcp_deploy.data import make_loader

    loaded = load_inputs(source, seed)
    if recipe.epochs > 0:  # refused now, not after the profile: the recipe trains with class labels
        loaded.train.require_labels(f"--epochs {recipe.epochs} (the built-in finetuning, cross-entropy)")
    score = make_loader(loaded.plain, recipe.batch_size, shuffle=True, seed=seed)
    test = make_loader(loaded.test, recipe.batch_size, shuffle=False)

    def finetune(model: nn.Module) -> nn.Module:
        from itcp_deploy.train import TrainConfig, train

        if recipe.epochs > 0:
            tc = TrainConfig(epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size, seed=seed,
                             teacher=loaded.model if recipe.distill else None,
                             checkpoint_dir=recipe.checkpoint_dir, resume=True, train_time_s=recipe.train_time_s,
                             quiet=recipe.quiet, device="cpu")
            train(model, loaded.train, None, tc)
        return model.cpu().eval()

    return ModelInputs(loaded.model, score, None, finetune if recipe.epochs > 0 else None, test)


def config_inputs(config: RunConfig) -> ModelInputs:
    """The objects ``config``'s spec strings name, finetuned by its recipe (``itcp-deploy run``)."""
    r = config.recipe
    recipe = SpecRecipe(r.epochs, r.lr, r.batch_size, RunFolder(config.out_dir).finetune, r.distill,
                        r.train_time_s, config.quiet)
    source = ModelSource(config.model, _data_at_engine_size(config), config.weights, config.num_classes,
                         config.trust_code)
    return spec_inputs(source, recipe, config.seed)


def _data_at_engine_size(config: RunConfig) -> str:
    """``config.data``; a detection set without ``size=`` at the engine's (square) input size."""
    from itcp_deploy.data.specs import at_size

    height, width = config.input_shape[2:]
    return at_size(config.data, height) if height == width else config.data
