"""CLI commands of the profiling stage."""

from __future__ import annotations

from itcp_deploy.cli.app import app  # noqa: F401
