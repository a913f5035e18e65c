"""Models: the zoo by name (CIFAR ResNets, CIFAR VGG-16-BN, torchvision), safe checkpoint loading."""

from __future__ import annotations

from itcp_deploy.models.cifar_resnet import FixedShortcutConv, OptionAShortcut, convert_option_a
from itcp_deploy.models.loading import load_weights
from itcp_deploy.models.registry import create_model, list_models, register_model

__all__ = [
    "FixedShortcutConv",
    "OptionAShortcut",
    "convert_option_a",
    "create_model",
    "list_models",
    "load_weights",
    "register_model",
]
