"""Training loop, checkpoints/resume, distillation, evaluation, BN recalibration and the train CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from itcp_deploy.data import load_dataset, make_loader
from itcp_deploy.errors import InputFileError, UsageError
from itcp_deploy.train import TrainConfig, evaluate, kd_loss, recalibrate_bn, train
from itcp_deploy.train.schedule import WarmupCosine
from tests.conftest import run_cli

SYNTH = "synthetic:classes=4,size=16,train=256,test=128,seed=1"


def tiny_cnn(classes: int = 4, width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )


@pytest.fixture(scope="module")
def synth() -> tuple:
    return load_dataset(SYNTH, "train"), load_dataset(SYNTH, "test")


def quick(tmp: Path | None = None, **changes) -> TrainConfig:
    settings = {"epochs": 2, "lr": 0.05, "batch_size": 32, "quiet": True, "checkpoint_dir": tmp, **changes}
    return TrainConfig(**settings)


def test_training_learns_and_writes_outputs(synth, tmp_path: Path) -> None:
    model = tiny_cnn()
    before = evaluate(model, make_loader(synth[1], 64, shuffle=False))["accuracy"]
    metrics = train(model, *synth, quick(tmp_path, epochs=3))
    assert metrics["epochs_completed"] == 3 and len(metrics["history"]) == 3
    assert metrics["test_accuracy"] > max(60.0, before + 20), metrics
    assert not model.training
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert torch.equal(weights["8.weight"], model.state_dict()["8.weight"])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert saved["config"]["epochs"] == 3


def test_resume_continues_exactly(synth, tmp_path: Path) -> None:
    straight = tiny_cnn()
    train(straight, synth[0], None, quick(tmp_path / "a", epochs=2))
    resumed = tiny_cnn()
    first = train(resumed, synth[0], None, quick(tmp_path / "b", epochs=2, train_time_s=1e-9))
    assert first["stopped_early"] and first["epochs_completed"] == 1
    again = tiny_cnn()  # a fresh process would rebuild the model; resume restores everything else
    second = train(again, synth[0], None, quick(tmp_path / "b", epochs=2, resume=True))
    assert second["resumed_from_epoch"] == 1 and second["epochs_completed"] == 2
    for key, value in straight.state_dict().items():
        assert torch.allclose(value, again.state_dict()[key], atol=1e-6), key


def test_resume_into_another_models_checkpoint_is_an_input_error(synth, tmp_path: Path) -> None:
    train(tiny_cnn(), synth[0], None, quick(tmp_path, epochs=1, max_steps_per_epoch=1))
    with pytest.raises(InputFileError, match="different model"):
        train(tiny_cnn(width=6), synth[0], None, quick(tmp_path, epochs=2, resume=True))
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(InputFileError, match="corrupt"):
        train(tiny_cnn(), synth[0], None, quick(tmp_path, epochs=2, resume=True))


def test_max_steps_and_lr_schedule(synth) -> None:
    metrics = train(tiny_cnn(), synth[0], None, quick(epochs=2, max_steps_per_epoch=3, precise_bn_batches=0))
    assert [h["train_samples"] for h in metrics["history"]] == [96, 96]
    assert metrics["history"][0]["lr"] == 0.05 > metrics["history"][1]["lr"]  # one warm-up step, then cosine
    schedule = WarmupCosine(total_steps=100, steps_per_epoch=50)
    factors = [schedule(step) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == factors[10] == 1.0
    assert factors[55] == pytest.approx(0.5) and factors[99] < 0.001
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))


def test_kd_loss_formula() -> None:
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    t = 3.0
    p_teacher = torch.softmax(teacher / t, dim=1)
    manual = (p_teacher * (p_teacher.log() - torch.log_softmax(student / t, dim=1))).sum(1).mean() * t * t
    assert kd_loss(student, teacher, t).item() == pytest.approx(manual.item(), rel=1e-5)
    assert kd_loss(student, student, t).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_pulls_the_student_towards_the_teacher(synth) -> None:
    teacher = tiny_cnn()
    train(teacher, synth[0], None, quick(epochs=2))
    student = tiny_cnn(width=4)
    images = torch.stack([synth[1].dataset[i][0] for i in range(64)])

    def gap() -> float:
        with torch.no_grad():
            return kd_loss(student.eval()(images), teacher.eval()(images), 4.0).item()

    before = gap()
    weights = [p.detach().clone() for p in teacher.parameters()]
    teacher.zero_grad(set_to_none=True)  # its own training left gradients
    metrics = train(student, synth[0], None, quick(epochs=2, teacher=teacher, kd_alpha=1.0))
    assert gap() < 0.5 * before
    assert metrics["config"]["teacher"] == "Sequential"
    # the teacher is left as it was: unchanged, no gradients, and its flags kept (a model pruned from it later
    # copies them, and must still train)
    assert all(torch.equal(a, p) and p.grad is None for a, p in zip(weights, teacher.parameters(), strict=True))
    assert all(p.requires_grad for p in teacher.parameters())


def test_evaluate_counts_exactly() -> None:
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot((x[:, 0, 0, 0] > 0).long(), 2).float()

    images = torch.tensor([1.0, -1.0, 1.0, 1.0]).view(4, 1, 1, 1)
    labels = torch.tensor([1, 0, 0, 1])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=3)
    result = evaluate(Fixed(), loader)
    assert result["n"] == 4 and result["accuracy"] == pytest.approx(75.0)


def test_recalibrate_bn_gives_exact_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2, momentum=0.3))
    nn.init.ones_(model[0].weight)
    model[1].running_mean.fill_(100.0)
    data = torch.arange(32.0).view(8, 1, 2, 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, torch.zeros(8)), batch_size=2)
    recalibrate_bn(model, loader, num_batches=4)
    assert model[1].running_mean.tolist() == pytest.approx([data.mean().item()] * 2)
    assert model[1].momentum == 0.3 and not model.training
    assert model[1].num_batches_tracked.item() == 4


def test_config_validation() -> None:
    with pytest.raises(UsageError, match="kd_alpha"):
        TrainConfig(kd_alpha=2.0)
    with pytest.raises(UsageError, match="epochs"):
        TrainConfig(epochs=0)


def test_too_small_training_set_is_a_clear_error() -> None:
    info = load_dataset("synthetic:train=4,test=4,size=8")
    with pytest.raises(InputFileError, match="fewer than one batch"):
        train(tiny_cnn(10), info, None, quick(batch_size=8))


def test_cli_train_finetune_evaluate(tmp_path: Path) -> None:
    data = "synthetic:classes=4,size=16,train=64,test=32"
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        "train",
        "cifar_resnet20",
        "--data",
        data,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-steps-per-epoch",
        "2",
        "--out",
        str(out),
        "--json",
        "--quiet",
    )
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["epochs_completed"] == 1 and metrics["history"][0]["train_samples"] == 32
    assert {p.name for p in out.iterdir()} >= {"checkpoint.pt", "model.pt", "metrics.json", "job.json"}
    assert json.loads((out / "job.json").read_text())["model"] == "cifar_resnet20"
    code, stdout, err = run_cli(
        "finetune",
        "cifar_resnet20",
        "--weights",
        str(out / "model.pt"),
        "--data",
        data,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-steps-per-epoch",
        "1",
        "--out",
        str(tmp_path / "ft"),
        "--json",
        "--quiet",
    )
    assert code == 0, err
    assert json.loads(stdout)["config"]["lr"] == 0.01
    code, stdout, err = run_cli(
        "evaluate", "cifar_resnet20", "--weights", str(tmp_path / "ft" / "model.pt"), "--data", data, "--json"
    )
    assert code == 0, err
    assert json.loads(stdout)["n"] == 32


def test_cli_teacher_weights_without_teacher(tmp_path: Path) -> None:
    code, _, err = run_cli(
        "train", "cifar_resnet20", "--data", "synthetic", "--teacher-weights", "x.pt", "--out", str(tmp_path)
    )
    assert code == 2 and "without --teacher" in err


@pytest.mark.slow
def test_digits_one_epoch_from_the_cli_beats_chance(tmp_path: Path) -> None:
    code, stdout, err = run_cli(
        "train",
        "cifar_resnet20",
        "--data",
        "digits",
        "--epochs",
        "1",
        "--out",
        str(tmp_path),
        "--json",
        "--quiet",
    )
    assert code == 0, err
    assert json.loads(stdout)["test_accuracy"] > 40.0


@pytest.mark.slow
@pytest.mark.parametrize(("depth", "published"), [(20, 91.6), (56, 92.7)])
def test_published_weights_on_exact_cifar_subset(shared_dir: Path, depth: int, published: float) -> None:
    weights = next((shared_dir / "weights" / "cifar10-resnet").glob(f"resnet{depth}-*.th"))
    code, stdout, err = run_cli(
        "evaluate",
        f"cifar_resnet{depth}",
        "--weights",
        str(weights),
        "--data",
        str(shared_dir / "data" / "cifar10-exact-test-1017"),
        "--json",
    )
    assert code == 0, err
    result = json.loads(stdout)
    assert result["n"] == 1017 and abs(result["accuracy"] - published) < 1.0
