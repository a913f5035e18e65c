"""The model zoo by name, and :func:`create_model`, which also accepts torchvision names, files and factories.

Specs, in the order they are tried:

- a zoo name (``cifar_resnet56``, ``cifar_vgg16_bn``, or one added with :func:`register_model`);
- ``torchvision:NAME`` or ``timm:NAME`` (randomly initialised, never downloaded; timm is an optional extra);
- a path to a whole pickled model (``torch.save(model)``), needs ``trust_code=True``;
- ``package.module:factory``, needs ``trust_code=True``.

The built-in zoo is registered here, in one place, not as an import side effect of the model modules.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

from torch import nn

from itcp_deploy.errors import InputFileError, UnknownNameError, UsageError
from itcp_deploy.models.cifar_resnet import CIFAR_RESNET_DEPTHS, cifar_resnet
from itcp_deploy.models.loading import load_factory, load_pickled_model, load_weights
from itcp_deploy.models.timm_models import PREFIX as TIMM_PREFIX
from itcp_deploy.models.timm_models import timm_model, timm_names
from itcp_deploy.models.torchvision_models import PREFIX as TORCHVISION_PREFIX
from itcp_deploy.models.torchvision_models import torchvision_model, torchvision_names
from itcp_deploy.models.vgg import cifar_vgg16_bn
from itcp_deploy.registry import Registry, drop_none

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_MODEL_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".th", ".bin")

for _depth in CIFAR_RESNET_DEPTHS:
    MODELS.add(f"cifar_resnet{_depth}", partial(cifar_resnet, _depth))
MODELS.add("cifar_vgg16_bn", cifar_vgg16_bn)

# Prefixed sources of other libraries' models: prefix -> (build by name, list the names).
SOURCES: dict[str, tuple[Callable[..., nn.Module], Callable[[], list[str]]]] = {
    TORCHVISION_PREFIX: (torchvision_model, torchvision_names),
    TIMM_PREFIX: (timm_model, timm_names),
}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a factory ``f(*, num_classes=..., **kwargs) -> nn.Module`` to the zoo."""
    return MODELS.register(name)


def list_models(*, include_torchvision: bool = False, include_timm: bool = False) -> list[str]:
    """Zoo names, sorted; with ``include_torchvision`` / ``include_timm`` also every ``torchvision:NAME`` /
    ``timm:NAME`` (the latter needs the ``[timm]`` extra)."""
    names = MODELS.names()
    for prefix, wanted in ((TORCHVISION_PREFIX, include_torchvision), (TIMM_PREFIX, include_timm)):
        if wanted:
            names += [prefix + n for n in SOURCES[prefix][1]()]
    return names


def _looks_like_path(spec: str) -> bool:
    return Path(spec).exists() or "/" in spec or "\\" in spec or spec.lower().endswith(_MODEL_SUFFIXES)


def _output_width(model: nn.Module) -> int | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _build(spec: str, num_classes: int | None, trust_code: bool, factory_kwargs: dict) -> nn.Module:
    kwargs = drop_none({"num_classes": num_classes, **factory_kwargs})
    if spec in MODELS:
        return MODELS.get(spec)(**kwargs)
    for prefix, (factory, _names) in SOURCES.items():
        if spec.startswith(prefix):
            return factory(spec[len(prefix):], **kwargs)
    if _looks_like_path(spec):
        model = load_pickled_model(spec, trust_code=trust_code)
        width = _output_width(model)
        if num_classes is not None and width is not None and width != num_classes:
            raise InputFileError(f"pickled model {spec} outputs {width} classes, not {num_classes}",
                                 f"drop --num-classes or pass --num-classes {width}")
        return model
    if _FACTORY.match(spec):
        return load_factory(spec, trust_code=trust_code, **kwargs)
    raise UnknownNameError(MODELS.unknown_message(spec),
                           f"use one of: {', '.join(MODELS.names())}, torchvision:NAME, timm:NAME, a model file "
                           "or package.module:factory")


def random_weights_note(spec: str, weights: str | Path | None) -> str | None:
    """One line when ``spec`` names a built-in model (zoo, torchvision, timm) and no checkpoint: it is built
    randomly initialised (nothing is downloaded), so scores computed on it are noise."""
    builtin = spec in MODELS or any(spec.startswith(prefix) for prefix in SOURCES)
    if weights is not None or not builtin:
        return None
    return (f"{spec} has random weights (no --weights): its channel scores are noise and its accuracy means "
            "nothing; pass --weights CHECKPOINT to prune a trained model")


def create_model(spec: str, *, num_classes: int | None = None, weights: str | Path | None = None,
                 trust_code: bool = False, **factory_kwargs) -> nn.Module:
    """Build a model from a spec (see the module docstring), optionally loading a checkpoint.

    CIFAR ResNets come back with option-A shortcuts already converted to fixed 1x1 convs (prunable);
    pass ``convert=False`` for the paper's parameter-free form. The model is in training mode, on CPU.

    Args:
        spec: zoo name, ``torchvision:NAME``, ``timm:NAME``, path to a pickled model, or ``package.module:factory``.
        num_classes: classifier outputs. Defaults to the factory's default (10 for cifar_*, 1000 for
            torchvision and timm).
        weights: checkpoint to load safely: a state_dict, ``{"state_dict": ...}`` or ``{"model": ...}``.
        trust_code: allow specs whose loading executes code (pickled models, factories).
        **factory_kwargs: extra keyword arguments for the factory; ``None`` values are dropped.

    Raises:
        UnknownNameError: unknown zoo, torchvision or timm name.
        MissingDependencyError: a ``timm:`` spec without timm installed.
        UntrustedCodeError: a pickle or factory spec without ``trust_code``.
        InputFileError: missing, corrupt or mismatching model or weights file.
        UsageError: ``num_classes`` < 1.
    """
    if num_classes is not None and num_classes < 1:
        raise UsageError(f"--num-classes must be >= 1, got {num_classes}", "pass e.g. --num-classes 10")
    model = _build(spec, num_classes, trust_code, factory_kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model
