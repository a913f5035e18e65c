"""itcp-deploy: inference-time-constrained pruning of CNNs to a measured latency SLA.

The package reads as the pipeline: ``models`` -> ``data`` -> ``pruning`` -> ``engines`` -> ``profiling``
-> ``perfmodel`` -> ``search`` -> ``train`` -> ``pipeline``; ``target`` (the latency SLA) is plain data any
layer may use. Heavy modules load lazily so that
``import itcp_deploy`` and ``itcp-deploy --help`` stay fast and work without optional extras.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("itcp-deploy")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"


def run(*args, **kwargs):
    """The whole ITCP pipeline; see :func:`itcp_deploy.pipeline.driver.run`."""
    from itcp_deploy.pipeline.driver import run as _run

    return _run(*args, **kwargs)


__all__ = ["__version__", "run"]
