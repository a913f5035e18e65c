"""CLI commands of the models stage (export)."""

from __future__ import annotations

from itcp_deploy.cli.app import app  # noqa: F401
