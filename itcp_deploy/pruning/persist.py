"""Save and load pruned models as data: a state_dict plus ``widths.json``, never pickled code.

Loading rebuilds the architecture from the plan: ``create_model(plan.model)`` -> :func:`build_space` ->
:func:`apply_widths` (only the shapes matter; the state_dict then overwrites every weight) ->
``load_state_dict`` from ``torch.load(..., weights_only=True)``. The loaded model gives exactly the saved
model's outputs.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from itcp_deploy.atomic_io import atomic_write
from itcp_deploy.errors import InputFileError
from itcp_deploy.plan import PruningPlan
from itcp_deploy.space import OUTPUT_GROUP, CandidateGrid

PLAN_FILE = "widths.json"
# Every width is a candidate, so a plan made with any grid rebuilds.
ANY_WIDTH = CandidateGrid(step_small=1, step_large=1, small_max=1, min_width=1)


def save_pruned(path: str | os.PathLike[str], model: nn.Module, plan: PruningPlan, *,
                plan_path: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """Write ``model``'s state_dict to ``path`` (atomically) and ``plan`` to ``plan_path``.

    Args:
        path: The ``.pt`` file.
        model: The pruned model (``apply_widths(...)`` of ``plan``, possibly finetuned).
        plan: The plan it was pruned with.
        plan_path: Where the plan goes. Defaults to ``widths.json`` beside ``path``.

    Returns:
        ``(state_dict path, plan path)``.
    """
    full = model.state_dict()
    state = OrderedDict((k, v.detach().cpu()) for k, v in full.items())
    state._metadata = getattr(full, "_metadata", None)  # module versions: MNASNet refuses a load without them
    pt = atomic_write(path, lambda f: torch.save(state, f))
    plan_file = Path(plan_path) if plan_path is not None else pt.parent / PLAN_FILE
    plan.save(plan_file)
    return pt, plan_file


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputFileError(f"pruned model {path} does not exist", "check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for corrupt or unsafe files
        raise InputFileError(f"pruned model {path} is not a readable state_dict ({type(err).__name__})",
                             "write it with save_pruned (itcp-deploy prune)") from None
    if not isinstance(state, dict):
        raise InputFileError(f"pruned model {path} is not a state_dict", "write it with save_pruned")
    return state


def load_pruned(state_dict_path: str | os.PathLike[str],
                plan_or_path: PruningPlan | str | os.PathLike[str], *, weights: str | None = None,
                trust_code: bool = False, base: nn.Module | None = None) -> nn.Module:
    """Rebuild a pruned model from its plan and load its state_dict.

    Args:
        state_dict_path: The ``.pt`` written by :func:`save_pruned`.
        plan_or_path: The plan, or its ``widths.json``.
        weights: Base-model checkpoint passed to ``create_model`` (only needed if the architecture needs it).
        trust_code: Allow plan models whose loading executes code (pickled models, factories).
        base: The dense architecture to cut (any module, e.g. the one given to ``prune()``), instead of
            ``create_model(plan.model)``: a plan of a user's own module names no model the zoo can build.
            Left untouched.

    Returns:
        The pruned model with the saved weights, in training mode like ``create_model``.

    Raises:
        InputFileError: Missing/corrupt files, or weights that do not fit the plan's shapes.
    """
    from itcp_deploy.models import create_model
    from itcp_deploy.models.loading import load_state_dict_checked
    from itcp_deploy.pruning.apply import apply_widths
    from itcp_deploy.pruning.space_builder import build_space

    plan = plan_or_path if isinstance(plan_or_path, PruningPlan) else PruningPlan.load(plan_or_path)
    path = Path(state_dict_path)
    state = _read_state(path)
    num_classes = plan.widths.get(OUTPUT_GROUP)
    given = base is not None
    if base is None:
        base = create_model(plan.model, num_classes=num_classes, weights=weights, trust_code=trust_code)
    space = build_space(base, plan.input_shape, model_spec=plan.model, grid=ANY_WIDTH)
    if num_classes is None and not given:  # plans may omit fixed groups: read the class count from the saved classifier
        head = f"{space.group(OUTPUT_GROUP).layers_out[0]}.weight"
        if head in state and state[head].shape[0] != space.group(OUTPUT_GROUP).full_width:
            base = create_model(plan.model, num_classes=int(state[head].shape[0]), weights=weights,
                                trust_code=trust_code)
            space = build_space(base, plan.input_shape, model_spec=plan.model, grid=ANY_WIDTH)
    pruned = apply_widths(base, space.with_removal(), {k: v for k, v in plan.widths.items() if k != OUTPUT_GROUP})
    return load_state_dict_checked(pruned, state, str(path))
