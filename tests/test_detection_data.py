"""``--data detection``: the synthetic detection set through the CLI, scored with the detector's own training
loss (the path :func:`itcp_deploy.prune` takes given ``(images, [{"boxes", "labels"}, ...])`` batches), its
images at the engine's size, no top-1 for a detector, and one-line refusals for what cannot use boxes."""

from __future__ import annotations

import json

import pytest
import torch

from itcp_deploy.data import load_dataset, make_loader, parse_data_spec
from itcp_deploy.data.detection import NUM_CLASSES, DetectionOptions, detection_batches
from itcp_deploy.data.specs import at_size
from itcp_deploy.engines.build import EngineSpec
from itcp_deploy.errors import UsageError
from itcp_deploy.models import detection
from itcp_deploy.pipeline.config import DeployTarget, FinetuneRecipe, LatencyTarget, LoopSettings, RunConfig
from itcp_deploy.profiling.timing import TimingConfig
from itcp_deploy.pruning.importance import accumulate_gradients
from tests.conftest import run_cli
from tests.test_reliability import assert_user_error

SSD = "torchvision:ssdlite320_mobilenet_v3_large"
SIZE = 64  # the detector is built at this deploy size here (docs/detection.md runs it at 320)
SHAPE = f"1x3x{SIZE}x{SIZE}"


@pytest.fixture
def small_ssd(monkeypatch):
    """SSDLite built at SIZE: its transform resizes to its deploy size, 320 otherwise (minutes per engine)."""
    monkeypatch.setitem(detection.DEPLOY_SIZES, "ssdlite320_mobilenet_v3_large", SIZE)


def test_detection_spec_parses_and_loads_batches_of_boxes():
    assert parse_data_spec("detection").options == {}
    spec = parse_data_spec("detection:size=48,train=6,test=3,seed=2")
    assert (spec.kind, spec.options) == ("detection", {"size": 48, "train": 6, "test": 3, "seed": 2})
    assert DetectionOptions.from_dict({}) == DetectionOptions(size=320, train=64, test=32, seed=0)
    assert at_size("detection:train=6", 96) == "detection:train=6,size=96"
    assert at_size("detection:size=48", 96) == "detection:size=48" and at_size("synthetic", 96) == "synthetic"
    train, test = (load_dataset(str(spec), split) for split in ("train", "test"))
    assert (len(train), len(test), train.num_classes, train.input_size) == (6, 3, NUM_CLASSES, (3, 48, 48))
    images, targets = next(iter(make_loader(train, 4, shuffle=True)))
    assert images.shape == (4, 3, 48, 48) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert len(targets) == 4 and all({"boxes", "labels"} <= set(t) for t in targets)
    first_test, _ = test.dataset[0]  # the test split holds other images than the train split
    assert not any(torch.equal(first_test, train.dataset[i][0]) for i in range(len(train)))


@pytest.mark.parametrize(("data", "words"), [
    ("detection:colour=3", ["unknown detection dataset option", "'colour'", "size"]),
    ("detection:size=8", ["out of range", "size >= 16"]),
    ("detection:size", ["malformed dataset option", "detection:size=64"]),
    ("detection:train=0", ["out of range"]),
])
def test_bad_detection_options_are_one_line_errors(data, words):
    assert_user_error(run_cli("run", SSD, "--data", data, "--input-shape", SHAPE, "--speedup", "1.3",
                              "--epochs", "0", "-o", "unused"), *words)


@pytest.mark.parametrize("command", ["run", "profile-engines"])
def test_a_classifier_given_boxes_is_refused_in_one_line(command, tmp_path):
    assert_user_error(run_cli(command, "cifar_resnet20", "--data", "detection:train=4,test=2", "--input-shape",
                              "1x3x32x32", "--speedup", "1.3", "--epochs", "0", "-o", str(tmp_path / "out"),
                              "--cache", str(tmp_path / "engines")),
                      "holds boxes for a detector", "cifar_resnet20", "--data synthetic")
    assert not (tmp_path / "engines").exists()  # before any engine was built


def test_train_refuses_boxes_and_scores_refuse_them_for_a_model_without_its_own_loss(tmp_path):
    assert_user_error(run_cli("train", "cifar_resnet20", "--data", "detection:size=32,train=4,test=2", "-o",
                              str(tmp_path / "train")), "one class label per image", "--epochs 0")
    assert_user_error(run_cli("evaluate", "cifar_resnet20", "--data", "detection:size=32,train=4,test=2"),
                      "top-1 accuracy needs one class label per image")
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                     torch.nn.Linear(4, NUM_CLASSES))
    with pytest.raises(UsageError, match="targets are a list, not class labels"):  # search --data, prune()
        accumulate_gradients(classifier, detection_batches(1, batch_size=2, size=32), 1)


def test_builtin_finetuning_on_boxes_is_refused_before_the_profile(small_ssd, tmp_path):
    last = assert_user_error(run_cli("run", SSD, "--data", "detection:train=4,test=2", "--input-shape", SHAPE,
                                     "--speedup", "1.3", "--epochs", "1", "-o", str(tmp_path / "out"),
                                     "--cache", str(tmp_path / "engines")),
                             "--epochs 1", "one class label per image", "--epochs 0", "finetune=")
    assert "holds detection boxes" in last
    assert not (tmp_path / "engines").exists()  # refused before any engine was built


def test_detection_data_reaches_the_detectors_own_loss(small_ssd, monkeypatch, tmp_path):
    """``run``'s spec path up to the scores (profile and fit skipped: they only time engines): the score batches
    are the detection set's images at the engine's size with their boxes, the groups are scored by the
    detector's own training loss (``taylor``, no data-free fallback), top-1 is none, and BatchNorm is
    re-estimated on those images."""
    from itcp_deploy.pipeline import driver
    from itcp_deploy.pipeline.from_specs import config_inputs
    from itcp_deploy.pipeline.stages import channel_importance_of, one_shot
    from itcp_deploy.pruning import importance
    from itcp_deploy.train import bn

    losses, bn_images = [], []
    own_loss, recalibrate = importance.batch_loss, bn.recalibrate_bn

    def loss_spy(model, x, y, loss_fn):
        losses.append((tuple(x.shape), y))
        return own_loss(model, x, y, loss_fn)

    def bn_spy(model, batches, num_batches):
        bn_images.extend(tuple(x.shape) for x, _ in batches)
        return recalibrate(model, batches, num_batches)

    monkeypatch.setattr(importance, "batch_loss", loss_spy)
    monkeypatch.setattr("itcp_deploy.train.recalibrate_bn", bn_spy)
    monkeypatch.setattr(driver, "STAGES", [(n, (lambda ctx: {}) if n in ("profile", "fit") else f)
                                           for n, f in driver.STAGES])
    quick = TimingConfig(warmup=2, rounds=2, runs_per_round=5)
    target = DeployTarget.named(EngineSpec(), (1, 3, SIZE, SIZE), LatencyTarget(speedup=1.3))
    config = RunConfig(model=SSD, data="detection:train=4,test=2", out_dir=str(tmp_path / "out"), targets=(target,),
                       recipe=FinetuneRecipe(epochs=0, batch_size=2, train_subset=None, bn_batches=2),
                       loop=LoopSettings(timing=quick, final_timing=quick), score_samples=4, quiet=True)
    ctx = driver.run_stages(config, config_inputs(config), until="scores")

    scores = json.loads((tmp_path / "out" / "state.json").read_text())["stages"]["scores"]
    assert scores["criterion"] == "taylor" and scores["note"] is None, scores
    assert losses and all(shape[1:] == (3, SIZE, SIZE) and isinstance(y, list) and "boxes" in y[0]
                          for shape, y in losses)
    assert ctx.state.done("dense")["accuracy"] is None  # detections: no top-1
    one_shot(ctx, {g.name: g.candidates[len(g.candidates) // 2] for g in ctx.space.prunable},
             channel_importance_of(ctx))
    assert bn_images and all(shape[1:] == (3, SIZE, SIZE) for shape in bn_images)


@pytest.mark.slow
def test_run_prunes_a_detector_on_detection_data_end_to_end(small_ssd, tmp_path):
    """The documented command at a tiny size (SSDLite at 64, 8 engines): 84 s at load 4-5 on 2 cores."""
    out = tmp_path / "out"
    code, _, err = run_cli("run", SSD, "--data", "detection:train=16,test=8", "--input-shape", SHAPE,
                           "--speedup", "1.1", "--epochs", "0", "--max-builds", "8", "--cache",
                           str(tmp_path / "engines"), "-o", str(out), "--json")
    assert code in (0, 1), err  # 1: the SLA missed on a loaded machine; the report is written either way
    report = json.loads((out / "report.json").read_text())
    assert report["criterion"] == "taylor" and not report["notes"], report["notes"]
    assert report["accuracy_dense"] is None and report["accuracy_final"] is None
    # NMS makes its engine's work depend on its values: the rounds built the one-shot model, and the
    # finetuning stage took the accepted round's instead of running the recipe again
    loop = json.loads((out / "state.json").read_text())["stages"]["loop"]
    assert loop["shipped_refit"] is not None and (out / "loop_pruned.pt").is_file()
