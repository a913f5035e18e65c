"""Pruning: channel groups (Torch-Pruning dependency graph), channel importance, group scores, applying a
width plan, MACs, and saving/loading pruned models as data.

Attributes load lazily so importing :mod:`itcp_deploy.pruning` does not import torch:

- :func:`build_space` (``space_builder``), :func:`build_space_from_spec`
- :func:`apply_widths`, :func:`channel_importance` (``apply``); registry ``IMPORTANCE`` (``importance``)
- :func:`group_scores`, registry ``SCORES`` (``scores``, ``sensitivity``); :class:`ScoreSettings` (``score_base``)
- :func:`count_macs_params` (``counting``)
- :func:`save_pruned`, :func:`load_pruned` (``persist``)
"""

from __future__ import annotations

from itcp_deploy.lazy import lazy_exports

_EXPORTS = {
    "build_space": "space_builder",
    "build_space_from_spec": "space_builder",
    "apply_widths": "apply",
    "channel_importance": "apply",
    "pruned_layer_widths": "apply",
    "IMPORTANCE": "importance",
    "group_scores": "scores",
    "ScoreSettings": "score_base",
    "SCORES": "scores",
    "count_macs_params": "counting",
    "save_pruned": "persist",
    "load_pruned": "persist",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
