"""Performance model: per-layer latency tables over (input, output) width, calibrated to whole networks.

Pure data and numpy (no torch, no backends), so the search can use it anywhere.
"""

from itcp_deploy.perfmodel.fit import FIT_METHODS, fit
from itcp_deploy.perfmodel.model import FitReport, PerfModel

__all__ = ["FIT_METHODS", "FitReport", "PerfModel", "fit"]
