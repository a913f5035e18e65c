"""Names checked before any work starts: a misspelt ``--method`` used to fail after minutes of profiling.

Each registry raises one line naming the valid names and the closest match (``Registry.get``).
"""

from __future__ import annotations


def check_engine(backend: str, precision: str) -> None:
    """``backend`` is registered and ``precision`` is one the converters know (neither is imported heavily)."""
    from itcp_deploy.engines import get_backend
    from itcp_deploy.engines.precision import check_precision

    get_backend(backend)
    check_precision(precision)


def check_search(method: str, criterion: str | None = None, importance: str | None = None) -> None:
    """The search method (a DP/baseline method, or Torch-Pruning's own pruner), the group score and the channel
    importance criterion exist."""
    from itcp_deploy.pruning.importance import IMPORTANCE
    from itcp_deploy.pruning.scores import SCORES
    from itcp_deploy.pruning.tp_peer import PEER_METHODS
    from itcp_deploy.registry import unknown_name
    from itcp_deploy.search.baselines import SEARCH_METHODS

    if method not in SEARCH_METHODS and method not in PEER_METHODS:
        raise unknown_name(SEARCH_METHODS.kind, method, SEARCH_METHODS.names() + list(PEER_METHODS))
    if criterion is not None:
        SCORES.get(criterion)
    if importance is not None:
        IMPORTANCE.get(importance)
