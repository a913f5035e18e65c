"""Groups the model's own code cannot run pruned: they keep their width.

Torch-Pruning changes layers and parameters, not Python code. A forward that builds a shape from a width it
stored at construction (torchvision's ViT reshapes the patch embedding to ``(n, self.hidden_dim, -1)``) fails
once that width is pruned, although the trace saw an ordinary group. :func:`keep_unrunnable` prunes every
prunable group at once on a copy (to its middle candidate) and runs it; if that fails, it halves the groups
down to the ones that break the forward and fixes those (the rest stay prunable), saying so once as a
warning. Costs one pruned copy and one forward when the model runs; at most ``MAX_RUNS`` more when not.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch
from torch import nn

from itcp_deploy.errors import ItcpError, is_out_of_memory
from itcp_deploy.pruning.apply import apply_widths
from itcp_deploy.space import ChannelGroup, PruningSpace

MAX_RUNS = 12  # pruned forwards the search for breaking groups may spend (each one traces the network)


def _runs(model: nn.Module, space: PruningSpace, groups: list[ChannelGroup]) -> bool:
    widths = {g.name: g.candidates[(len(g.candidates) - 1) // 2] for g in groups}
    try:
        pruned = apply_widths(model, space, widths).eval()
        with torch.no_grad():
            pruned(torch.zeros(space.input_shape))
    except Exception as err:  # any error of the model's own forward: the group cannot be pruned as traced
        if is_out_of_memory(err):  # not the model's code: fixing groups would hide it (0 groups, no reason)
            raise ItcpError(f"{space.model}: ran out of memory running a pruned copy to check its forward",
                            "free memory (a smaller model or input) or raise the process's memory limit") from None
        return False
    return True


def _breaking(model: nn.Module, space: PruningSpace, groups: list[ChannelGroup]) -> list[ChannelGroup]:
    """The groups whose pruning breaks the forward, by halving sets that fail (``groups`` fails as a whole).

    A set whose halves both run (only the combination fails), and every set still open after ``MAX_RUNS``
    pruned forwards, counts as breaking as a whole: fixing a group too many costs pruning room, never a
    wrong model, and each run is a trace of the whole network (15 s for MaxViT at 224 on one core)."""
    open_sets, bad, runs = [groups], [], 0
    while open_sets:
        current = open_sets.pop(0)
        if len(current) == 1 or runs + 2 > MAX_RUNS:
            bad += current
            continue
        half = len(current) // 2
        failing = [part for part in (current[:half], current[half:]) if not _runs(model, space, part)]
        runs += 2
        if failing:
            open_sets += failing
        else:
            bad += current
    return bad


def keep_unrunnable(model: nn.Module, space: PruningSpace) -> PruningSpace:
    """``space`` with the groups that the model's forward cannot run pruned made fixed (see the module doc)."""
    prunable = list(space.prunable)
    if not prunable or _runs(model, space, prunable):
        return space
    bad = {g.name for g in _breaking(model, space, prunable)}
    rest = [g for g in prunable if g.name not in bad]
    if rest and not _runs(model, space, rest):
        bad |= {g.name for g in rest}
    names = sorted(bad)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    warnings.warn(f"{space.model}: {len(bad)} group(s) keep their width because the model's forward fails "
                  f"with them pruned (a width its code stores, e.g. in a reshape): {shown}", stacklevel=2)
    groups = tuple(replace(g, candidates=(g.full_width,), fixed=True, removable=False) if g.name in bad else g
                   for g in space.groups)
    return replace(space, groups=groups)
