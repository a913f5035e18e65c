"""Block removal (width 0 for a residual branch's inner group), end to end on a tiny residual CNN: which groups
may be removed, the pruned model and its ONNX export (no conv of a removed branch left, ONNX Runtime parity),
the perf model's zero cost, and the solvers choosing removal exactly when it buys more score per millisecond."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from itcp_deploy.errors import UsageError
from itcp_deploy.perfmodel.model import PerfModel, on_space
from itcp_deploy.pruning import apply_widths, build_space, channel_importance
from itcp_deploy.pruning.compensate import compensate, kept_channels
from itcp_deploy.pruning.removal import RemovedConv
from itcp_deploy.pruning.tp_peer import group_widths
from itcp_deploy.search.dp import solve
from itcp_deploy.search.problem import problem_from
from itcp_deploy.search.vector import solve_targets
from itcp_deploy.space import PruningSpace
from itcp_deploy.train import recalibrate_bn

SHAPE = (1, 3, 16, 16)


class Block(nn.Module):
    """A BasicBlock: two 3x3 convs added to the identity, or to a 1x1 shortcut conv when it downsamples."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class Gate(nn.Module):
    """A multiplicative branch (squeeze-excitation style): zeroing it would not leave an identity path."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 1)
        self.conv2 = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(F.relu(self.conv1(x))))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.block1, self.block2 = Block(8, 8), Block(8, 8)
        self.gate = Gate(8)
        self.down = Block(8, 16, stride=2)
        self.plain = nn.Conv2d(16, 16, 3, 1, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gate(self.block2(self.block1(F.relu(self.bn(self.stem(x))))))
        x = F.relu(self.plain(self.down(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _batches(seed: int, n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, *SHAPE[1:], generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, PruningSpace]:
    torch.manual_seed(0)
    model = TinyResNet()
    recalibrate_bn(model, _batches(1), num_batches=3)
    return model.eval(), build_space(model, SHAPE, model_spec="tiny")


def test_only_residual_branches_are_removable(tiny):
    """The inner group of each residual block (identity or conv shortcut) is removable; the stem's stream, the
    multiplicative gate's inner group and a plain conv's group are not. Width 0 is a candidate only after
    with_removal(), and a space round-trips through its dict with it."""
    _, space = tiny
    assert {g.name for g in space.groups if g.removable} == {"block1.conv1", "block2.conv1", "down.conv1"}
    assert all(g.candidates[0] > 0 for g in space.groups)
    removal = space.with_removal()
    assert removal.group("block2.conv1").candidates[0] == 0 and removal.group("gate.conv1").candidates[0] > 0
    assert PruningSpace.from_dict(removal.to_dict()) == removal
    assert removal.with_removal(False) == space
    with pytest.raises(UsageError, match="not a candidate"):
        space.complete({"block2.conv1": 0})


def test_removed_blocks_export_without_their_convs_and_match_onnxruntime(tiny, tmp_path):
    """Prune with two blocks removed (one with a conv shortcut): the removed branch outputs a constant (its BN
    shift), the plan's widths read back as 0, the ONNX graph has 4 convs fewer than the dense one, and ONNX
    Runtime matches PyTorch."""
    from itcp_deploy.engines.export import export_onnx

    model, space = tiny
    widths = {"block2.conv1": 0, "down.conv1": 0, "block1.conv1": 4}
    pruned = apply_widths(model, space.with_removal(), widths, importance="l1")
    recalibrate_bn(pruned, _batches(2), num_batches=3)
    pruned.eval()
    assert isinstance(pruned.block2.conv2, RemovedConv) and isinstance(pruned.down.conv1, RemovedConv)
    assert {k: group_widths(pruned, space)[k] for k in widths} == widths
    x = torch.randn(4, *SHAPE[1:])
    with torch.no_grad():
        inside = pruned.block1(F.relu(pruned.bn(pruned.stem(x))))
        constant = pruned.block2.bn2(torch.zeros(1, 8, 1, 1))
        torch.testing.assert_close(pruned.block2(inside), F.relu(inside + constant))

    convs = {}
    for name, m in (("dense", model), ("pruned", pruned)):
        path = export_onnx(m, SHAPE, tmp_path / f"{name}.onnx")
        convs[name] = Counter(n.op_type for n in onnx.load(str(path)).graph.node)["Conv"]
    assert convs["pruned"] == convs["dense"] - 4
    session = ort.InferenceSession(str(tmp_path / "pruned.onnx"))
    one = x[:1].numpy()
    got = session.run(None, {session.get_inputs()[0].name: one})[0]
    with torch.no_grad():
        want = pruned(x[:1]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_compensation_skips_removed_layers_and_refits_the_rest(tiny):
    """Compensation with a removed block refits the layers after it, never the removed ones."""
    model, space = tiny
    removal = space.with_removal()
    widths = {"block2.conv1": 0}
    imp = channel_importance(model, removal, "l1")
    pruned = apply_widths(model, removal, widths, importance=imp)
    refit = compensate(pruned, model, removal, kept_channels(model, removal, widths, imp), _batches(3))
    assert "down.conv1" in refit and not {"block2.conv1", "block2.conv2"} & set(refit)


def _perf(space: PruningSpace) -> PerfModel:
    """Latency = a fixed cost per conv (ONNX Runtime keeps ~40% of a 3x3 conv's time at 1 channel) + MACs."""
    tables = {}
    for layer in space.layers:
        cin, cout = space.group(layer.in_group).candidates, space.group(layer.out_group).candidates
        tables[layer.name] = np.array([[0.4 + layer.macs(a, b) / 1e5 for b in cout] for a in cin])
    return PerfModel(space, tables, 0.1)


def _scores(space: PruningSpace, removal_cost: float) -> dict[str, np.ndarray]:
    """-(share of channels removed); a removed block costs ``removal_cost``."""
    return {g.name: np.array([-removal_cost if w == 0 else -(g.full_width - w) / g.full_width
                              for w in g.candidates]) for g in space.prunable}


def test_perf_model_gives_removed_layers_zero_latency(tiny):
    _, space = tiny
    perf = _perf(space)
    removal = on_space(perf, space.with_removal())
    narrow = {g.name: g.candidates[0] for g in space.prunable}
    assert removal.predict_ms(narrow) == pytest.approx(perf.predict_ms(narrow))
    assert all(removal.layer_table(n)[0, :].sum() == 0.0 for n in ("block2.conv2", "down.conv2"))
    removed = removal.predict_ms({**narrow, "block2.conv1": 0})
    block2 = perf.layer_table("block2.conv1")[0, 0] + perf.layer_table("block2.conv2")[0, 0]
    assert perf.predict_ms(narrow) - removed == pytest.approx(block2)
    assert on_space(removal, space).predict_ms(narrow) == pytest.approx(perf.predict_ms(narrow))


def test_what_a_removed_branch_leaves_costs_its_blocks_output_elements(tiny, tmp_path):
    """ONNX Runtime keeps a removed branch's add and activation (no longer fused into its conv2): the reader's
    cell costs ``removal_ms_per_element`` per element of its output; the writer's stays 0, and so does every
    cell at the default 0. The probes measure it (:func:`removal_left`), and it survives save and load."""
    from itcp_deploy.pipeline.probe import removal_left
    from itcp_deploy.profiling.records import EngineMeasurement
    from itcp_deploy.profiling.timing import LatencyStats

    _, space = tiny
    removal, k = space.with_removal(), 1e-6
    perf = on_space(replace(_perf(space), removal_ms_per_element=k), removal)
    narrow = {g.name: g.candidates[0] for g in space.prunable}
    plan = {**narrow, "block2.conv1": 0}
    conv2 = next(layer for layer in space.layers if layer.name == "block2.conv2")
    w = removal.complete(plan)[conv2.out_group]
    left = k * SHAPE[0] * w * conv2.out_hw[0] * conv2.out_hw[1]
    zero = on_space(_perf(space), removal)
    assert perf.predict_ms(plan) - zero.predict_ms(plan) == pytest.approx(left)
    assert perf.layer_table("block2.conv1")[:, 0].sum() == 0.0  # the writer is gone
    perf.save(tmp_path / "pm.json")
    assert PerfModel.load(tmp_path / "pm.json").removal_ms_per_element == k

    def engine(widths, ms, layer_ms):
        stats = LatencyStats.from_samples([ms] * 5)
        return EngineMeasurement(engine_id="x", widths=widths, role="plan", latency=stats, layer_ms=layer_ms)

    full = removal.complete(plan)
    built = engine({**full, "block2.conv1": narrow["block2.conv1"]}, 1.0, {"block2.conv1": 0.1, "block2.conv2": 0.2})
    measured = removal_left(removal, full, [built, engine(full, 0.75, {})])
    assert measured == pytest.approx(0.05 / (w * conv2.out_hw[0] * conv2.out_hw[1]))  # 0.75 - (1.0 - 0.3)
    assert removal_left(removal, full, [built, engine(full, 0.6, {})]) == 0.0  # never negative


@pytest.mark.parametrize("removal_cost, removes", [(0.3, True), (5.0, False)])
def test_solvers_remove_a_block_exactly_when_it_is_worth_it(tiny, removal_cost, removes):
    """At a budget that thinning alone barely meets, the DP (and the 1-target vector DP) removes a block when
    removal loses less score than the thinning it replaces, and keeps every block when removal costs more;
    the plan always meets the budget."""
    _, space = tiny
    removal = space.with_removal()
    perf = on_space(_perf(space), removal)
    problem = problem_from(removal, perf, _scores(removal, removal_cost))
    thin = {g.name: g.candidates[1] if g.candidates[0] == 0 else g.candidates[0] for g in removal.prunable}
    budget = perf.predict_ms(thin) * 1.02
    for widths in (solve(problem, budget).widths, solve_targets([problem], [budget], ["t"]).widths):
        assert perf.predict_ms(widths) <= budget + 1e-9
        assert (min(widths[g.name] for g in removal.prunable if g.removable) == 0) is removes


def test_a_saved_pruned_model_with_removed_blocks_loads_back(tmp_path):
    """save_pruned / load_pruned rebuild the removed blocks from the plan (what `run`'s final stage does)."""
    from itcp_deploy.models import create_model
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.pruning import load_pruned, save_pruned

    torch.manual_seed(1)
    model = create_model("cifar_resnet20").eval()
    space = build_space(model, (1, 3, 32, 32), model_spec="cifar_resnet20").with_removal()
    widths = {"layer1.1.conv1": 0, "layer3.0.conv1": 0, "layer2.2.conv1": 16}
    pruned = apply_widths(model, space, widths, importance="l1").eval()
    plan = PruningPlan(model="cifar_resnet20", input_shape=(1, 3, 32, 32), widths=space.complete(widths))
    save_pruned(tmp_path / "pruned.pt", pruned, plan)
    loaded = load_pruned(tmp_path / "pruned.pt", plan).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x))


def test_cli_groups_shows_which_groups_can_be_removed():
    import json

    from tests.conftest import run_cli

    code, out, err = run_cli("groups", "cifar_resnet20", "--input-shape", "1x3x32x32", "--json")
    assert code == 0, err
    removable = {g["name"] for g in json.loads(out)["groups"] if g["removable"]}
    assert removable == {f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)}


def test_a_mixed_probe_builds_a_plan_with_a_removed_branch(tiny, tmp_path):
    """The probes build the plan as the loop does (ResNet-56 at 2x and 4x, mixed: the build asked for INT8 on a
    removed block's second conv, which writes the stage's INT8 group, and the run failed): a mixed plan's INT8
    layers leave out the removed branch's, in the profiler's builds too."""
    from itcp_deploy.profiling.profiler import measure_plans
    from tests.test_profile_mixed import _calib
    from tests.test_profiler import fast_config

    model, space = tiny
    removal = space.with_removal()
    plan = {**{g.name: g.candidates[0] for g in space.prunable}, "block2.conv1": 0}
    stage = next(g.name for g in space.prunable if g.name not in {"block1.conv1", "block2.conv1", "down.conv1"}
                 and "block2.conv2" in {la.name for la in space.layers if la.out_group == g.name})
    engines = measure_plans(model, removal, [plan], fast_config(tmp_path, precision="mixed", calib=_calib(tmp_path)),
                            int8_groups=[(stage,)])
    assert len(engines) == 1 and engines[0].widths["block2.conv1"] == 0 and engines[0].int8_groups == (stage,)


def test_the_torch_backend_times_a_plan_with_a_removed_branch(tiny, tmp_path):
    """The torch backend times layers one by one: a removed branch's convs (0 channels) ran as layers and the
    run failed in its probe (``weight of size [0, 16, 3, 3]``, CI on b36e696); they take 0 ms."""
    from itcp_deploy.profiling.profiler import measure_plans
    from tests.test_profiler import fast_config

    model, space = tiny
    plan = {**{g.name: g.candidates[0] for g in space.prunable}, "block2.conv1": 0}
    (engine,) = measure_plans(model, space.with_removal(), [plan], fast_config(tmp_path, backend="torch"))
    removed = [la.name for la in space.layers if "block2.conv1" in (la.in_group, la.out_group)]
    assert removed and all(engine.layer_ms[name] == 0.0 for name in removed)
    assert all(ms > 0 for name, ms in engine.layer_ms.items() if name not in removed)
