"""The pipeline wing: the only package that knows every stage.

- :mod:`~itcp_deploy.pipeline.config`: :class:`RunConfig` (always a list of deployment targets) and its settings
- :mod:`~itcp_deploy.pipeline.driver`: :func:`run` (``itcp-deploy run``) and ``run_stages``, the one function
  ``run``, ``profile-engines --sla-ms`` and :func:`itcp_deploy.prune` call; the report
- :mod:`~itcp_deploy.pipeline.stages`: the stages, each over every target
- :mod:`~itcp_deploy.pipeline.strategies`: each method's search (closed loop, or a peer's measured bisection)
- :mod:`~itcp_deploy.pipeline.closed_loop`: search -> build -> measure -> correct, for one target or several
- :mod:`~itcp_deploy.pipeline.probe`: the search's own plans profiled and the perf model refitted before the loop
- :mod:`~itcp_deploy.pipeline.meter`: one target's measuring (dense latency, a candidate interleaved, the verdict)
- :mod:`~itcp_deploy.pipeline.run_dir`: the run folder's file names (per target too) and ``state.json``
- :mod:`~itcp_deploy.pipeline.planning` (``search``, ``pareto``), :mod:`~itcp_deploy.pipeline.gate`
  (``check-latency``), :mod:`~itcp_deploy.pipeline.demo`, :mod:`~itcp_deploy.pipeline.report`

The comparison of ITCP against the baselines is a benchmark, not a command: ``bench/comparison/``.

Names load lazily, so importing one module of the wing does not import the others.
"""

from __future__ import annotations

from itcp_deploy.lazy import lazy_exports

_EXPORTS = {
    "RunConfig": "config",
    "DeployTarget": "config",
    "FinetuneRecipe": "config",
    "ProfileSettings": "config",
    "LoopSettings": "config",
    "run": "driver",
    "summary_rows": "driver",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
