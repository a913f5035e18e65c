"""Determinism: the same model, inputs and seed give the same scores, the same widths.json, the same perf model
and the same pruned weights, call after call (and process after process for the CLI's files).

The profile's plan design is covered by ``tests/test_profiler.py::test_design_covers_every_candidate_and_roles``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tests.test_reliability import macs_perf_model


@pytest.fixture(scope="module")
def resnet():
    from itcp_deploy.models import create_model
    from itcp_deploy.pruning import build_space

    torch.manual_seed(0)
    model = create_model("cifar_resnet20").eval()
    return model, build_space(model, (1, 3, 32, 32), model_spec="cifar_resnet20")


def _loader(seed: int = 0):
    from itcp_deploy.data import load_dataset, make_loader

    return make_loader(load_dataset("digits", "train", augment=False), 16, shuffle=True, seed=seed,
                       max_samples=64)


def _plan(space) -> dict[str, int]:
    """A mixed plan: every group at its second-smallest candidate or full width, alternating."""
    return {g.name: (g.candidates[1] if i % 2 else g.full_width) for i, g in enumerate(space.prunable)}


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].shape == sb[key].shape and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("importance", ["l1", "taylor"])
def test_apply_widths_twice_gives_identical_weights(resnet, importance):
    from itcp_deploy.pruning import apply_widths

    model, space = resnet
    loader = _loader() if importance == "taylor" else None
    first = apply_widths(model, space, _plan(space), importance=importance, loader=loader)
    second = apply_widths(model, space, _plan(space), importance=importance,
                          loader=_loader() if loader is not None else None)
    _assert_same_state(first, second)
    assert sum(p.numel() for p in first.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("criterion", ["l1-fraction", "taylor"])
def test_group_scores_twice_give_identical_arrays(resnet, criterion):
    from itcp_deploy.pruning import group_scores

    model, space = resnet
    loader = (lambda: _loader()) if criterion == "taylor" else (lambda: None)
    first = group_scores(model, space, criterion, loader=loader())
    second = group_scores(model, space, criterion, loader=loader())
    assert sorted(first) == sorted(second) == sorted(g.name for g in space.prunable)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_search_writes_identical_widths_json(tmp_path, resnet):
    """Same weights file, same perf model: byte-identical plans. (Without --weights each call scores a fresh
    random initialisation, so plans differ: that is the input changing, not the search.)"""
    model, space = resnet
    macs_perf_model(space, tmp_path / "pm.json")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    outputs = []
    for i in range(2):
        out = tmp_path / f"widths{i}.json"
        code, _, err = run_cli("search", "cifar_resnet20", "--perf-model", str(tmp_path / "pm.json"), "-o", str(out),
                               "--speedup", "2", "--criterion", "l1-fraction", "--weights", str(tmp_path / "w.pt"))
        assert code == 0, err
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_dp_solve_is_deterministic(resnet):
    from itcp_deploy.search.baselines import SearchInputs, run_method

    model, space = resnet
    from itcp_deploy.pruning import group_scores

    inputs = SearchInputs(space, macs_perf_model(space), group_scores(model, space, "l1-fraction", loader=None),
                          None)
    budget = inputs.perf_model.dense_ms() / 2
    first, second = run_method("itcp", inputs, budget), run_method("itcp", inputs, budget)
    assert first.widths == second.widths and first.cost == second.cost and first.score == second.score


def test_fit_is_deterministic():
    from itcp_deploy.perfmodel.fit import fit
    from tests.synthetic_spaces import resnet_space, synthetic_profile

    profile = synthetic_profile(resnet_space(1), n_design=20, n_holdout=5)
    first, second = fit(profile, force=True).to_dict(), fit(profile, force=True).to_dict()
    assert first == second


def test_pruned_model_saved_and_loaded_is_identical(tmp_path, resnet):
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.pruning import apply_widths, load_pruned, save_pruned

    model, space = resnet
    plan = PruningPlan("cifar_resnet20", (1, 3, 32, 32), _plan(space))
    pruned = apply_widths(model, space, plan.widths).eval()
    save_pruned(tmp_path / "pruned.pt", pruned, plan)
    loaded = load_pruned(tmp_path / "pruned.pt", tmp_path / "widths.json").eval()
    _assert_same_state(pruned, loaded)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(pruned(x), loaded(x))
