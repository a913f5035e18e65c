"""The pipeline wing: the one place that knows every stage (``itcp-deploy run``, ``demo``, ``compare``,
``check-latency``, ``search``)."""

from itcp_deploy.pipeline.stages import Log, RunConfig, run, summary_rows

__all__ = ["Log", "RunConfig", "run", "summary_rows"]
