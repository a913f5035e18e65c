"""Issue 23: `--ignore-layers`, `--no-compensate` and `--no-block-removal` reach their stages through every entry
point (`run`, `profile-engines --sla-ms`, `itcp_deploy.prune()`). They used to be dropped on the one-target path
(`prune_spec` rebuilt the config without them): `run --ignore-layers layer3.0.conv1` cut that group anyway, and a
block was removed under `--no-block-removal`.

Each entry point runs the whole pipeline once (epochs 0; the engine cache is shared, so only the first run
profiles), then the outputs are checked for each option's effect: the ignored layer keeps its width in the pruned
model, the report says compensation is off and no layer was refit, and the search had no width 0 to choose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

DATA = "synthetic:train=256,test=128"
IGNORED = "layer3.0.conv1"  # 64 channels; without the option the run cut it (48 of 64 on main)
OPTIONS = ("--ignore-layers", IGNORED, "--no-compensate", "--no-block-removal")
COMMON = ("--input-shape", "1x3x32x32", "--data", DATA, "--speedup", "1.6", "--epochs", "0", "--max-builds", "12",
          "--json")


def _prune_objects(out: Path, cache: Path):
    """``itcp_deploy.prune`` on the objects the CLI would make from the same specs."""
    import itcp_deploy
    from itcp_deploy.data import load_dataset, make_loader
    from itcp_deploy.models import create_model
    from itcp_deploy.pipeline.config import ProfileSettings

    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10).eval()
    loader = make_loader(load_dataset(DATA, "train", augment=False), 64, shuffle=True, seed=0)
    profile = ProfileSettings(cache_dir=str(cache), max_builds=12)
    options = itcp_deploy.PruneOptions(name="cifar_resnet20", ignore_layers=(IGNORED,), compensate=False,
                                       block_removal=False, profile=profile)
    itcp_deploy.prune(model, torch.zeros(1, 3, 32, 32), speedup=1.6, score_loader=loader, out_dir=out,
                      options=options)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module", params=["run", "profile-engines", "prune"])
def out(request, cache, tmp_path_factory) -> Path:
    """The output folder of one entry point's run with the three options."""
    out = tmp_path_factory.mktemp(request.param) / "out"
    if request.param == "prune":
        _prune_objects(out, cache)
    else:
        code, _, err = run_cli(request.param, "cifar_resnet20", *COMMON, *OPTIONS, "--cache", str(cache),
                               "-o", str(out))
        assert code in (0, 1), err  # 1: the final engine missed the SLA (noise); the options are what is checked
    return out


def test_ignored_layer_keeps_its_width(out):
    pruned = torch.load(out / "pruned.pt", map_location="cpu", weights_only=True)
    assert pruned[f"{IGNORED}.weight"].shape[0] == 64
    assert any(w.shape[0] < 64 for k, w in pruned.items() if k.startswith("layer3.") and k.endswith("conv1.weight"))
    report = json.loads((out / "report.json").read_text())
    assert IGNORED not in report["widths"] and report["ignore_layers"] == [IGNORED]


def test_report_says_compensation_is_off(out):
    report = json.loads((out / "report.json").read_text())
    assert report["compensate"] is False and report["compensated_layers"] == []
    assert "Compensation off" in (out / "report.md").read_text()


def test_no_block_is_removed_or_even_offered(out):
    report = json.loads((out / "report.json").read_text())
    assert report["block_removal"] is False and all(w > 0 for w in report["widths"].values())
    space = json.loads((out / "perf_model.json").read_text())["space"]
    assert all(0 not in g["candidates"] for g in space["groups"])  # the search had no width 0 to choose
