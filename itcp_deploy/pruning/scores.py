"""Group scores: the accuracy value of each candidate width of each group (registry ``SCORES``).

The solver maximises the sum of group scores under a latency budget, so a score is one value per candidate
width, non-decreasing in width (enforced by a running max from small to large width) and in units comparable
across groups (higher = better accuracy expected). Every score is 0 at full width except ``l1-fraction``.

- ``taylor`` (default): ``score(w) = -(sum of the taylor importance of the channels pruned at width w)``, the
  first-order Taylor estimate of the loss increase when the group alone is cut to ``w`` (as in HALP); the
  channels pruned are the least important ones, as :func:`~itcp_deploy.pruning.apply_widths` with
  ``importance="taylor"`` removes them. Loss units. Cost: ``gradient_batches`` forward+backward passes of
  ``loader`` (4 by default), seconds on CPU for CIFAR models.
- ``sensitivity``: measured; see :mod:`itcp_deploy.pruning.sensitivity`. Loss units. Cost: one BN
  recalibration and one evaluation per (group, width < full): 250 evaluations for ResNet-56.
- ``l1-fraction``: share of the group's L1 weight norm kept (1 at full width). Free; not comparable across
  groups in loss units, a baseline only.
- ``magnitude``: ``-(L1 norm of the removed channels' coupled weights)``, as a share of all groups' L1 norm.
  Data-free; what ``taylor`` falls back to where the model has no classification output
  (:mod:`~itcp_deploy.pruning.output_kind`).
- ``width``: ``-(fraction of the group's channels removed)``: every channel of every group worth the same.
  Free; the uniform baseline.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np
from torch import nn

from itcp_deploy.errors import UsageError
from itcp_deploy.pruning.apply import channel_importance, conv_multiple, keep_indices
from itcp_deploy.pruning.importance import Batch, LossFn
from itcp_deploy.pruning.score_base import ScoreInputs, ScoreSettings, monotone
from itcp_deploy.registry import Registry
from itcp_deploy.space import PruningSpace

ScoreFn = Callable[[nn.Module, PruningSpace, ScoreInputs], dict[str, np.ndarray]]
SCORES: Registry[ScoreFn] = Registry("group score")
TIE_BREAK = 1e-6


def _from_importance(model: nn.Module, space: PruningSpace, imp: dict[str, np.ndarray],
                     value: Callable[[np.ndarray, np.ndarray], float]) -> dict[str, np.ndarray]:
    """Score each candidate from the importance of the channels it keeps: ``value(imp, kept_indices)``."""
    out = {}
    for g in space.prunable:
        multiple = conv_multiple(model, g)
        v = imp[g.name]
        out[g.name] = monotone(value(v, keep_indices(v, w, multiple)) for w in g.candidates)
    return out


@SCORES.register("taylor")
def taylor_scores(model: nn.Module, space: PruningSpace, inputs: ScoreInputs) -> dict[str, np.ndarray]:
    if inputs.loader is None:
        raise UsageError("the taylor score needs training data for gradients", "pass a loader (--data)")
    imp = inputs.importance
    if imp is None:
        imp = channel_importance(model, space, "taylor", loader=inputs.loader,
                                 num_batches=inputs.settings.gradient_batches, loss_fn=inputs.loss_fn)
    return _from_importance(model, space, imp, lambda v, keep: -(float(v.sum()) - float(v[keep].sum())))


@SCORES.register("l1-fraction")
def l1_fraction_scores(model: nn.Module, space: PruningSpace, inputs: ScoreInputs) -> dict[str, np.ndarray]:
    imp = channel_importance(model, space, "l1")
    return _from_importance(model, space, imp,
                            lambda v, keep: float(v[keep].sum()) / max(float(v.sum()), 1e-30))


@SCORES.register("magnitude")
def magnitude_scores(model: nn.Module, space: PruningSpace, inputs: ScoreInputs) -> dict[str, np.ndarray]:
    """Data-free: ``-(L1 norm of the removed channels' coupled weights)`` / the L1 norm of every group."""
    imp = channel_importance(model, space, "l1")
    total = max(sum(float(v.sum()) for v in imp.values()), 1e-30)
    return _from_importance(model, space, imp, lambda v, keep: -(float(v.sum()) - float(v[keep].sum())) / total)


@SCORES.register("width")
def width_scores(model: nn.Module, space: PruningSpace, inputs: ScoreInputs) -> dict[str, np.ndarray]:
    return {g.name: monotone(-(g.full_width - w) / g.full_width for w in g.candidates)
            for g in space.prunable}


@SCORES.register("sensitivity")
def _sensitivity(model: nn.Module, space: PruningSpace, inputs: ScoreInputs) -> dict[str, np.ndarray]:
    from itcp_deploy.pruning.sensitivity import sensitivity_scores

    return sensitivity_scores(model, space, inputs)


def group_scores(model: nn.Module, space: PruningSpace, score: str = "taylor", *,
                 loader: Iterable[Batch] | None = None, calib_loader: Iterable[Batch] | None = None,
                 cache_path: str | os.PathLike[str] | None = None,
                 settings: ScoreSettings | None = None, loss_fn: LossFn | None = None,
                 importance: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """One score per candidate width of every prunable group (see the module docstring for each score).

    Args:
        model: The trained, unpruned network (left untouched).
        space: Its pruning space.
        score: A name in ``SCORES``. Defaults to ``taylor``.
        loader: Training ``(images, labels)`` batches (taylor gradients, sensitivity BN recalibration).
        calib_loader: Held-out batches whose loss ``sensitivity`` measures.
        cache_path: JSON file caching ``sensitivity`` results (resumable per group).
        settings: Batch/image counts and channel choice. Defaults to ``ScoreSettings()``.
        loss_fn: ``loss_fn(outputs, targets)`` behind the taylor gradients. Defaults to cross-entropy.
        importance: ``taylor``'s per-channel importance (:func:`channel_importance`), when the caller has it.

    Returns:
        Group name -> float64 array aligned with ``space.group(name).candidates``, non-decreasing.
    """
    fn = SCORES.get(score)
    return break_ties(space, fn(model, space, ScoreInputs(loader=loader, calib_loader=calib_loader,
                                                         cache_path=cache_path, settings=settings or ScoreSettings(),
                                                         loss_fn=loss_fn, importance=importance)))


def break_ties(space: PruningSpace, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Make every score strictly increasing in width by a tiny width term (``TIE_BREAK`` x the largest score
    magnitude x the share of channels removed; 0 at full width).

    Without it, equal scores leave the solver indifferent between widths: a randomly initialised network
    whose residual branches end in a zero-initialised BatchNorm (timm's default) has zero gradients there, so
    its taylor scores are all 0 and the DP may return the narrowest plan far under the budget. With it, ties
    go to the plan that keeps more channels, and no real difference in scores is overturned.
    """
    scale = max((float(np.abs(v).max()) for v in scores.values() if len(v)), default=0.0) or 1.0
    out = {}
    for name, values in scores.items():
        g = space.group(name)
        share_removed = (g.full_width - np.asarray(g.candidates, dtype=np.float64)) / g.full_width
        out[name] = np.asarray(values, dtype=np.float64) - TIE_BREAK * scale * share_removed
    return out
