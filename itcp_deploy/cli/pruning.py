"""CLI commands of the pruning stage."""

from __future__ import annotations

from itcp_deploy.cli.app import app  # noqa: F401
