"""itcp-deploy: inference-time-constrained pruning of CNNs to a measured latency SLA.

The package reads as the pipeline: ``models`` -> ``data`` -> ``pruning`` -> ``engines`` -> ``profiling``
-> ``perfmodel`` -> ``search`` -> ``train`` -> ``pipeline``; ``target`` (the latency SLA) is plain data any
layer may use; ``api`` (:func:`prune`, :func:`plan`, :func:`apply`, :func:`build_engine`) sits on top, for
users who hold the model object. Heavy modules load lazily so that ``import itcp_deploy`` and
``itcp-deploy --help`` stay fast and work without optional extras.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("itcp-deploy")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from itcp_deploy.api import (
        DeployTarget,
        EngineResult,
        Plan,
        PruneOptions,
        PruneResult,
        apply,
        build_engine,
        load,
        plan,
        prune,
    )
else:
    # ``itcp_deploy.plan`` is also the widths-file module (pure data, stdlib only). Importing it here, before
    # the function is bound, keeps the name the function: Python sets a package attribute only when it first
    # loads the submodule.
    import itcp_deploy.plan  # noqa: F401
    from itcp_deploy.lazy import lazy_exports

    def plan(*args: Any, **kwargs: Any) -> Any:
        """The widths that meet a latency target; see :func:`itcp_deploy.api.plan`."""
        from itcp_deploy.api import plan as _plan

        return _plan(*args, **kwargs)

    __getattr__ = lazy_exports(__name__, {name: "api" for name in (
        "DeployTarget", "EngineResult", "Plan", "PruneOptions", "PruneResult", "apply", "build_engine", "load",
        "prune")})


def run(*args: Any, **kwargs: Any) -> Any:
    """The whole ITCP pipeline from spec strings; see :func:`itcp_deploy.pipeline.driver.run`."""
    from itcp_deploy.pipeline.driver import run as _run

    return _run(*args, **kwargs)


__all__ = ["DeployTarget", "EngineResult", "Plan", "PruneOptions", "PruneResult", "__version__", "apply",
           "build_engine", "load", "plan", "prune", "run"]
