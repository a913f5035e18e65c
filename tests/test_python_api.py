"""The Python API (issue 18): the two examples of docs/python_api.md run exactly as written, then checked
(SLA met as measured, the module's widths are the plan's, engine parity); the boundary checks give one line;
the CLI's `run` and `prune()` hand their configs to the same driver function."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import itcp_deploy
from itcp_deploy.errors import UsageError
from itcp_deploy.plan import PruningPlan
from itcp_deploy.target import LatencyTarget
from tests.conftest import run_cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "python_api.md"


def doc_example(heading: str) -> str:
    """The first ```python block after ``heading`` in docs/python_api.md."""
    text = DOC.read_text()
    after = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def _run_example(heading: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(tmp)
    namespace: dict = {"__name__": "doc_example"}
    exec(compile(doc_example(heading), f"{DOC.name}:{heading}", "exec"), namespace)  # noqa: S102
    return namespace


def _module_widths(model: nn.Module, widths: dict[str, int]) -> dict[str, int]:
    """The kept width of each group in ``model``: its root layer's output channels."""
    out = {}
    for name in widths:
        layer = model.get_submodule(name)
        out[name] = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    return out


@pytest.fixture(scope="module")
def example1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api1")
    with pytest.MonkeyPatch.context() as mp:
        return tmp, _run_example("## Example 1", tmp, mp)


@pytest.mark.parametrize("heading", ["## Example 1", "## Example 2"])
def test_documented_example_meets_the_sla_with_the_planned_widths(heading, example1, tmp_path, monkeypatch):
    tmp, ns = example1 if heading == "## Example 1" else (tmp_path, _run_example(heading, tmp_path, monkeypatch))
    tmp = tmp.resolve()
    result = ns["result"]  # the example itself asserted met_sla and ONNX Runtime parity
    out = tmp / "itcp-out" / ("mobilenet" if heading == "## Example 1" else "segmenter")
    plan = PruningPlan.load(out / "widths.json")
    assert result.met_sla and result.measured_ms <= result.sla_ms
    assert result.widths == plan.widths and any(w < ns["model"].get_submodule(g).out_channels
                                                for g, w in plan.widths.items())
    assert _module_widths(result.model, plan.widths) == plan.widths
    report = json.loads((out / "report.json").read_text())
    assert report["met_sla"] and report["widths"] == plan.widths
    assert result.engine_path.is_file() and result.engine_path.parent == out


def test_finetune_returning_a_non_module_or_other_widths_is_one_line(example1):
    tmp, ns = example1
    out = tmp / "itcp-out" / "mobilenet"
    state = json.loads((out / "state.json").read_text())
    for stage in ("finetune", "final"):  # the structure is chosen; only finetuning runs again
        state["stages"].pop(stage)
    (out / "state.json").write_text(json.dumps(state))

    def repruned(model: nn.Module) -> nn.Module:
        return ns["model"]  # the dense model: other widths

    for finetune, problem in ((lambda m: None, "finetune returned a NoneType, not an nn.Module"),
                              (repruned, "finetune changed the widths of")):
        with pytest.raises(UsageError, match=problem) as err:
            itcp_deploy.prune(ns["model"], torch.randn(1, 3, 32, 32), speedup=1.3, score_loader=ns["loader"],
                              finetune=finetune, out_dir=out, options=ns["QUICK"])
        assert "\n" not in str(err.value)


class _TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize(("model", "example", "loader", "problem"), [
    (_TwoConvs().train(), torch.randn(1, 3, 8, 8), [], "training mode, has BatchNorm and example_input has batch 1"),
    (_TwoConvs().eval(), torch.randn(1, 5, 8, 8), [], r"cannot take example_input of shape \(1, 5, 8, 8\)"),
    (_TwoConvs().eval(), torch.randn(3, 8, 8), [], "must be a 4-D NCHW tensor"),
    ("resnet", torch.randn(1, 3, 8, 8), [], "model is a str, not a torch.nn.Module"),
    (_TwoConvs().eval(), torch.randn(1, 3, 8, 8), [torch.randn(2, 3, 8, 8)], "batch 0 is a Tensor, not"),
    (_TwoConvs().eval(), torch.randn(1, 3, 8, 8), [{"x": 1}], "batch 0 is a dict, not"),
    (_TwoConvs().eval(), torch.randn(1, 3, 8, 8), [(torch.randn(2, 3, 8, 8), 1, 2)], "batch 0 is a tuple of 3"),
])
def test_bad_objects_are_one_line_errors(tmp_path, model, example, loader, problem):
    with pytest.raises(UsageError, match=problem) as err:
        itcp_deploy.prune(model, example, sla_ms=1.0, score_loader=loader, out_dir=tmp_path / "o")
    assert "\n" not in str(err.value) and "Fix:" in str(err.value)


def _stop_at_stages(monkeypatch) -> tuple[list, type]:
    """Patch the driver's one stage runner to record what it was given and stop."""
    from itcp_deploy.pipeline import driver

    class Stop(Exception):
        pass

    seen = []

    def fake_stages(config, inputs, log=None, progress=None, **kw):
        seen.append((config, inputs))
        raise Stop

    monkeypatch.setattr(driver, "run_stages", fake_stages)
    return seen, Stop


def test_cli_run_and_prune_call_the_same_driver_function(monkeypatch, tmp_path):
    """`itcp-deploy run` makes its specs into the objects `itcp_deploy.prune` takes, and both hand a RunConfig
    (every option of the issue-23 bug included) to the same function, `pipeline.driver.run_stages`."""
    seen, Stop = _stop_at_stages(monkeypatch)
    with pytest.raises(Stop):
        run_cli("run", "cifar_resnet20", "--input-shape", "1x3x32x32", "--data", "synthetic:train=64,test=32",
                "-o", str(tmp_path / "o"), "--speedup", "2", "--epochs", "1", "--ignore-layers", "layer3.0.conv1",
                "--no-compensate", "--no-block-removal", "--json")
    (cli_config, inputs), = seen
    assert isinstance(inputs.model, nn.Module) and callable(inputs.finetune)
    x, y = next(iter(inputs.score_loader))
    assert isinstance(x, torch.Tensor) and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64
    options = itcp_deploy.PruneOptions(name="cifar_resnet20", ignore_layers=("layer3.0.conv1",), compensate=False,
                                       block_removal=False)
    with pytest.raises(Stop):
        itcp_deploy.prune(inputs.model, torch.zeros(1, 3, 32, 32), speedup=2.0, score_loader=[(x, y)],
                          out_dir=tmp_path / "p", options=options)
    prune_config = seen[1][0]
    for field in ("targets", "ignore_layers", "compensate", "block_removal", "method", "criterion", "importance"):
        assert getattr(prune_config, field) == getattr(cli_config, field), field
    assert cli_config.ignore_layers == ("layer3.0.conv1",) and not cli_config.compensate
    assert not cli_config.block_removal and cli_config.targets[0].latency == LatencyTarget(speedup=2.0)


def test_prune_takes_several_targets(monkeypatch, tmp_path):
    """``targets=``: one config with every target (their own engines, shapes and SLAs), for the same stages."""
    from itcp_deploy.engines.build import EngineSpec

    seen, Stop = _stop_at_stages(monkeypatch)
    targets = [itcp_deploy.DeployTarget("a", EngineSpec(), (1, 3, 8, 8), LatencyTarget(speedup=1.5)),
               itcp_deploy.DeployTarget("b", EngineSpec(), (4, 3, 8, 8), LatencyTarget(sla_ms=2.0))]
    loader = [(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))]
    with pytest.raises(Stop):
        itcp_deploy.prune(_TwoConvs().eval(), torch.randn(1, 3, 8, 8), targets=targets, score_loader=loader,
                          out_dir=tmp_path / "o")
    assert seen[0][0].targets == tuple(targets)
    with pytest.raises(UsageError, match="not both"):
        itcp_deploy.prune(_TwoConvs().eval(), torch.randn(1, 3, 8, 8), sla_ms=1.0, targets=targets,
                          score_loader=loader, out_dir=tmp_path / "o")


def test_plan_apply_build_engine_staged(example1, tmp_path):
    """Staged use on example 1's folder: plan resumes its finished stages; apply prunes in place to the plan's
    widths; build_engine builds and measures against the dense engine."""
    tmp, ns = example1
    out = tmp / "itcp-out" / "mobilenet"
    model = ns["model"]
    chosen = itcp_deploy.plan(model, torch.randn(1, 3, 32, 32), LatencyTarget(speedup=1.3), score_loader=ns["loader"],
                              out_dir=out, options=ns["QUICK"])
    assert chosen.widths == PruningPlan.load(out / "widths.json").widths and chosen.pareto
    copy = __import__("copy").deepcopy(model)
    assert itcp_deploy.apply(copy, chosen, score_loader=ns["loader"]) is copy
    assert _module_widths(copy, chosen.widths) == chosen.widths
    engine = itcp_deploy.build_engine(copy.eval(), torch.randn(1, 3, 32, 32), out_dir=tmp_path, name="staged",
                                      reference=out / "engines" / "dense")
    assert engine.engine_path.is_file() and engine.median_ms > 0 and 0 < engine.ratio_to_reference


def test_a_one_pass_generator_is_read_once_and_kept():
    from itcp_deploy.pipeline.sources import ModelInputs

    generator = ((torch.randn(2, 3, 8, 8), torch.tensor([0, 1])) for _ in range(3))
    inputs = ModelInputs(_TwoConvs().eval(), generator)
    first = inputs.batches(5)
    assert len(first) == 3 and inputs.batches(2) == first[:2] and inputs.batches(8) == first


class _Reached(Exception):
    """Raised where the run would start its stages: every check before them passed."""


def test_a_finetune_callable_needs_no_classification_loss(monkeypatch, tmp_path):
    """The built-in recipe trains with cross-entropy, so a model without logits is refused it in one line; the
    user's own finetune callable (a detector's loop with its own loss) is not refused."""
    from itcp_deploy.pipeline import driver

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    loader = [(torch.randn(2, 3, 8, 8), torch.zeros(2, 4, 8, 8))]
    with pytest.raises(UsageError, match="cannot be finetuned with cross-entropy"):
        itcp_deploy.prune(model, torch.randn(1, 3, 8, 8), speedup=1.3, score_loader=loader, epochs=1,
                          out_dir=tmp_path / "builtin")

    def reached(*args: object, **kwargs: object) -> None:
        raise _Reached

    monkeypatch.setattr(driver, "RunContext", reached)
    with pytest.raises(_Reached):
        itcp_deploy.prune(model, torch.randn(1, 3, 8, 8), speedup=1.3, score_loader=loader,
                          finetune=lambda m: m, out_dir=tmp_path / "own")
