"""Untrusted files: nothing in a model, weights, checkpoint or data file runs code unless --trust-code says so.

The payload is harmless: unpickling it runs ``os.system("touch <tmp_path>/marker")``. Every command that takes a
model refuses a pickled model without ``--trust-code`` (exit 2, names the flag, says why); weights and training
checkpoints are always read with ``weights_only=True``, so a malicious one is refused even with ``--trust-code``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.test_reliability import assert_user_error, macs_perf_model

SHAPE = "1x3x32x32"


class _Payload:
    """Unpickling calls ``os.system(command)``: what an attacker's model file would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "marker"


@pytest.fixture
def evil(tmp_path, marker) -> Path:
    """A pickle (the format of ``torch.save(model)``) whose loading creates ``marker``."""
    path = tmp_path / "evil_model.pt"
    with open(path, "wb") as f:
        pickle.dump(_Payload(f"touch {marker}"), f)
    return path


@pytest.fixture
def evil_torch(tmp_path, marker) -> Path:
    """The same payload inside a real ``torch.save`` zip archive."""
    import torch

    path = tmp_path / "evil_torch.pth"
    torch.save({"state_dict": _Payload(f"touch {marker}")}, path)
    return path


@pytest.fixture
def perf_model_file(tmp_path) -> Path:
    from itcp_deploy.models import create_model
    from itcp_deploy.pruning import build_space

    space = build_space(create_model("cifar_resnet20").eval(), (1, 3, 32, 32), model_spec="cifar_resnet20")
    path = tmp_path / "perf_model.json"
    macs_perf_model(space, path)
    return path


def _model_commands(model: str, tmp: Path, perf_model: Path | None) -> dict[str, tuple[str, ...]]:
    """Every command that takes a MODEL spec, with otherwise valid arguments."""
    return {
        "export": ("export", model, "--input-shape", SHAPE, "--out", str(tmp / "a.onnx")),
        "groups": ("groups", model, "--input-shape", SHAPE),
        "evaluate": ("evaluate", model, "--data", "digits", "--max-samples", "8"),
        "profile-engines": ("profile-engines", model, "--input-shape", SHAPE, "--cache", str(tmp / "c"),
                            "--max-builds", "3", "--holdout", "1"),
        "train": ("train", model, "--data", "digits", "--out", str(tmp / "t"), "--max-steps-per-epoch", "1",
                  "--quiet"),
        "finetune": ("finetune", model, "--weights", str(tmp / "unused.pt"), "--data", "digits", "--out",
                     str(tmp / "f"), "--quiet"),
        "search": ("search", model, "--perf-model", str(perf_model), "-o", str(tmp / "w.json"), "--speedup", "2",
                   "--criterion", "l1-fraction"),
        "pareto": ("pareto", model, "--perf-model", str(perf_model), "-o", str(tmp / "p.png"),
                   "--criterion", "l1-fraction"),
        "run": ("run", model, "--data", "digits", "--input-shape", SHAPE, "--speedup", "2", "-o", str(tmp / "r"),
                "--cache", str(tmp / "c")),
    }


MODEL_COMMANDS = ["export", "groups", "evaluate", "profile-engines", "train", "finetune", "search", "pareto", "run"]


@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize("which", ["pickle", "torch.save"])
def test_pickled_model_is_refused_without_trust_code(command, which, tmp_path, marker, evil, evil_torch,
                                                     perf_model_file):
    model = evil if which == "pickle" else evil_torch
    args = _model_commands(str(model), tmp_path, perf_model_file)[command]
    last = assert_user_error(run_cli(*args), "--trust-code", "executes code")
    assert str(model) in last
    assert not marker.exists(), "the pickle ran"


def test_trust_code_really_unpickles(tmp_path, marker, evil):
    """What the flag means: with --trust-code the file is unpickled (here it is not a model: one-line error)."""
    assert_user_error(run_cli("export", str(evil), "--input-shape", SHAPE, "--out", str(tmp_path / "a.onnx"),
                              "--trust-code"), "not a torch.nn.Module")
    assert marker.exists()


WEIGHT_COMMANDS = {
    "export": lambda w, t: ("export", "cifar_resnet20", "--input-shape", SHAPE, "--out", str(t / "a.onnx"),
                            "--weights", str(w)),
    "groups": lambda w, t: ("groups", "cifar_resnet20", "--input-shape", SHAPE, "--weights", str(w)),
    "evaluate": lambda w, t: ("evaluate", "cifar_resnet20", "--data", "digits", "--weights", str(w)),
    "finetune": lambda w, t: ("finetune", "cifar_resnet20", "--weights", str(w), "--data", "digits", "--out",
                              str(t / "f"), "--quiet"),
    "train --teacher-weights": lambda w, t: ("train", "cifar_resnet20", "--data", "digits", "--teacher",
                                             "cifar_resnet20", "--teacher-weights", str(w), "--out", str(t / "t"),
                                             "--quiet"),
    "profile-engines": lambda w, t: ("profile-engines", "cifar_resnet20", "--input-shape", SHAPE, "--weights",
                                     str(w), "--cache", str(t / "c"), "--max-builds", "3", "--holdout", "1"),
}


@pytest.mark.parametrize("command", sorted(WEIGHT_COMMANDS))
@pytest.mark.parametrize("trust", [False, True])
def test_malicious_weights_are_refused_even_with_trust_code(command, trust, tmp_path, marker, evil_torch):
    """--weights is always loaded with weights_only=True: --trust-code only concerns MODEL specs."""
    args = WEIGHT_COMMANDS[command](evil_torch, tmp_path) + (("--trust-code",) if trust else ())
    assert_user_error(run_cli(*args), "safe load refuses", "state_dict")
    assert not marker.exists(), "the checkpoint ran code"


def test_malicious_plain_pickle_weights_are_refused(tmp_path, marker, evil):
    assert_user_error(run_cli("export", "cifar_resnet20", "--input-shape", SHAPE, "--out", str(tmp_path / "a.onnx"),
                              "--weights", str(evil), "--trust-code"), str(evil))
    assert not marker.exists()


def test_malicious_training_checkpoint_on_resume(tmp_path, marker):
    import torch

    out = tmp_path / "run"
    out.mkdir()
    torch.save({"format_version": 1, "model": _Payload(f"touch {marker}")}, out / "checkpoint.pt")
    assert_user_error(run_cli("train", "cifar_resnet20", "--data", "digits", "--out", str(out), "--resume",
                              "--max-steps-per-epoch", "1", "--quiet", "--trust-code"), "checkpoint")
    assert not marker.exists()


def test_malicious_pruned_state_dict(tmp_path, marker):
    import torch

    from itcp_deploy.errors import InputFileError
    from itcp_deploy.plan import PruningPlan
    from itcp_deploy.pruning import load_pruned

    torch.save({"conv1.weight": _Payload(f"touch {marker}")}, tmp_path / "pruned.pt")
    PruningPlan("cifar_resnet20", (1, 3, 32, 32), {}).save(tmp_path / "widths.json")
    with pytest.raises(InputFileError, match="not a readable state_dict"):
        load_pruned(tmp_path / "pruned.pt", tmp_path / "widths.json", trust_code=True)
    assert not marker.exists()


def test_malicious_cifar_batch_file(tmp_path, marker):
    """CIFAR's python batches are pickles: read with an allow-list unpickler, never plain pickle."""
    batch_dir = tmp_path / "cifar-10-batches-py"
    batch_dir.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(batch_dir / name, "wb") as f:
            pickle.dump({"data": _Payload(f"touch {marker}"), "labels": [0]}, f)
    assert_user_error(run_cli("evaluate", "cifar_resnet20", "--data", f"cifar10:{batch_dir}", "--trust-code"),
                      "test_batch")
    assert not marker.exists()


def test_factory_spec_needs_trust_code(tmp_path, marker, monkeypatch):
    """``package.module:factory`` imports (runs) the module: refused without the flag, run with it."""
    (tmp_path / "evil_factory.py").write_text(
        "import pathlib, torch\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "def build(num_classes=10):\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1),\n"
        "                               torch.nn.Flatten(), torch.nn.Linear(8, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ("export", "evil_factory:build", "--input-shape", SHAPE, "--out", str(tmp_path / "a.onnx"))
    assert_user_error(run_cli(*args), "--trust-code", "evil_factory")
    assert not marker.exists()
    code, _, err = run_cli(*args, "--trust-code")
    assert code == 0, err
    assert marker.exists() and (tmp_path / "a.onnx").exists()
