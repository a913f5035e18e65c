"""CLI commands of the training stage (train, finetune, evaluate)."""

from __future__ import annotations

from itcp_deploy.cli.app import app  # noqa: F401
