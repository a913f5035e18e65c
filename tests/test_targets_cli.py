"""Parsing several deployment targets: `--target key=value,...` and `--targets FILE.toml`, and bad input."""

from __future__ import annotations

import pytest

from itcp_deploy.cli.targets import parse_targets, run_targets
from itcp_deploy.engines import EngineOptions
from itcp_deploy.engines.build import EngineSpec
from itcp_deploy.errors import InputFileError, UsageError
from itcp_deploy.target import LatencyTarget
from tests.conftest import run_cli

EDGE = "name=edge,backend=onnxruntime,precision=fp32,shape=1x3x32x32,threads=1,percentile=50,speedup=1.67"
SERVER = "name=server,backend=openvino,shape=8x3x32x32,threads=2,percentile=99,sla_ms=10"
TOML = """
[[target]]
name = "edge"
backend = "onnxruntime"
precision = "fp32"
shape = "1x3x32x32"
threads = 1
percentile = 50
speedup = 1.67

[[target]]
name = "server"
backend = "openvino"
shape = "8x3x32x32"
threads = 2
percentile = 99
sla_ms = 10
"""


def test_two_targets_from_options():
    edge, server = parse_targets([EDGE, SERVER], None, None)
    assert edge.engine == EngineSpec("onnxruntime", "fp32", EngineOptions(threads=1))
    assert edge.input_shape == (1, 3, 32, 32) and edge.latency == LatencyTarget(speedup=1.67, percentile=50)
    assert server.engine == EngineSpec("openvino", "fp32", EngineOptions(threads=2))
    assert server.input_shape == (8, 3, 32, 32) and server.latency == LatencyTarget(sla_ms=10.0, percentile=99)


def test_toml_file_gives_the_same_targets(tmp_path):
    path = tmp_path / "targets.toml"
    path.write_text(TOML)
    assert parse_targets(None, path, None) == parse_targets([EDGE, SERVER], None, None)


def test_defaults_and_the_run_input_shape():
    (t,) = parse_targets(["speedup=2"], None, (4, 3, 32, 32))
    assert t.input_shape == (4, 3, 32, 32) and t.engine == EngineSpec() and t.latency.percentile == 50
    assert t.name == "onnxruntime-b4-1t-1"


def test_one_target_is_a_list_of_one():
    """A single --target is a run's one target, like the target the plain options describe."""
    (target,) = run_targets(["backend=openvino,shape=2x3x32x32,threads=2,percentile=90,sla_ms=3"], None, None,
                            (None, None, 50, None), EngineSpec(), "digits")
    assert (target.input_shape, target.latency, target.engine) == (
        (2, 3, 32, 32), LatencyTarget(sla_ms=3.0, percentile=90), EngineSpec("openvino", options=EngineOptions(2)))
    engine = EngineSpec("openvino", options=EngineOptions(2))
    (plain,) = run_targets(None, None, "2x3x32x32", ("3", None, 90, None), engine, "digits")
    assert (plain.input_shape, plain.latency, plain.engine) == (target.input_shape, target.latency, target.engine)


@pytest.mark.parametrize(("spec", "words"), [
    ("thread=1,speedup=2", ["unknown key 'thread'", "threads"]),
    ("threads=1", ["exactly one of sla_ms and speedup"]),
    ("sla_ms=1,speedup=2", ["exactly one of sla_ms and speedup"]),
    ("shape=1x3x32,speedup=2", ["shape='1x3x32'", "NxCxHxW"]),
    ("threads=0,speedup=2", ["threads=", "not allowed"]),
    ("threads=two,speedup=2", ["threads='two'", "whole number"]),
    ("percentile=95,speedup=2", ["percentile=", "50, 90, 99"]),
    ("speedup=-1", ["speedup", "> 0"]),
    ("sla_ms=fast", ["sla_ms", "number"]),
    ("backend=tflite,speedup=2", ["tflite"]),
    ("speedup", ["'speedup' is not key=value"]),
    ("speedup=2,speedup=3", ["'speedup' given twice"]),
    ("speedup=2,margin=0.5", ["safety margin", "[0, 0.5)", "margin="]),
    ("speedup=2,margin=wide", ["margin", "number"]),
    ("name=a b,speedup=2", ["target name 'a b'"]),
])
def test_bad_target_is_one_line_naming_the_key(spec, words):
    with pytest.raises(UsageError) as e:
        parse_targets([spec], None, (1, 3, 32, 32))
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)


def test_targets_must_share_one_model():
    with pytest.raises(UsageError, match="both named 'a'"):
        parse_targets(["name=a,speedup=2", "name=a,speedup=3"], None, (1, 3, 32, 32))
    with pytest.raises(UsageError, match="only the batch"):
        parse_targets(["shape=1x3x32x32,speedup=2", "shape=1x3x64x64,speedup=2"], None, None)
    with pytest.raises(UsageError, match="no input shape"):
        parse_targets(["speedup=2"], None, None)


@pytest.mark.parametrize(("text", "words"), [
    ("[[target]\nspeedup = 2", "not valid TOML"),
    ("speedup = 2", "no [[target]] tables"),
    ("[[target]]\nspeedup = 2\nthread = 1", "unknown key 'thread'"),
])
def test_bad_targets_file(tmp_path, text, words):
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises((UsageError, InputFileError)) as e:
        parse_targets(None, path, (1, 3, 32, 32))
    assert words in str(e.value) and str(path) in str(e.value)


def test_cli_refuses_bad_targets_with_one_line(tmp_path):
    base = ("run", "cifar_resnet20", "--data", "synthetic:train=64,test=32", "-o", str(tmp_path / "o"))
    for extra, words in [
        (("--target", "thread=1,speedup=2", "--input-shape", "1x3x32x32"), "unknown key 'thread'"),
        (("--target", EDGE, "--speedup", "2"), "put the SLA in each --target"),
        (("--targets", str(tmp_path / "missing.toml")), "does not exist"),
        (("--speedup", "0"), "--speedup"),
    ]:
        code, _, err = run_cli(*base, *extra)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert words in err, err
    assert not (tmp_path / "o").exists()


def test_run_without_input_shape_takes_batch_1_at_the_datas_image_size(tmp_path, monkeypatch):
    """Issue 25's command `run cifar_resnet20 --data digits --precision int8 --speedup 1.3 --epochs 0` names no
    shape: the data's images give it (said in one line), --input-shape still chooses."""
    import itcp_deploy.cli.output as output

    seen = []
    monkeypatch.setattr(output, "deliver", lambda config, json_out: seen.append(config))
    base = ("run", "cifar_resnet20", "--data", "digits", "-o", str(tmp_path / "o"), "--speedup", "1.3")
    code, _, err = run_cli(*base)
    assert code == 0 and "input shape 1x3x32x32: batch 1 at the size of --data's images" in err, err
    assert seen[-1].targets[0].input_shape == (1, 3, 32, 32)
    run_cli(*base, "--input-shape", "2x3x32x32")
    assert seen[-1].targets[0].input_shape == (2, 3, 32, 32)


def test_check_latency_needs_an_engine_or_a_run(tmp_path):
    code, _, err = run_cli("check-latency")
    assert code == 2 and "give an ENGINE or --run" in err
    (tmp_path / "report.json").write_text('{"model": "x"}')
    code, _, err = run_cli("check-latency", "--run", str(tmp_path))
    assert code == 2 and "lists no targets" in err and len(err.strip().splitlines()) == 1


def test_cli_run_with_two_targets_hands_them_to_the_pipeline(tmp_path, monkeypatch):
    """The CLI layer only: `run --target A --target B` becomes a RunConfig with both targets (the pipeline
    itself runs in tests/test_vector_run.py)."""
    import itcp_deploy.cli.output as output

    seen = []
    monkeypatch.setattr(output, "deliver", lambda config, json_out: seen.append(config))
    code, _, err = run_cli("run", "cifar_resnet20", "--data", "synthetic", "-o", str(tmp_path / "o"),
                           "--target", EDGE, "--target", SERVER, "--epochs", "0")
    assert code == 0, err
    (config,) = seen
    assert [t.name for t in config.targets] == ["edge", "server"]
    assert config.input_shape == (1, 3, 32, 32)  # the shape the shared stages use: the first target's
    seen.clear()
    run_cli("run", "cifar_resnet20", "--data", "synthetic", "-o", str(tmp_path / "o"), "--target", EDGE)
    assert [t.latency for t in seen[0].targets] == [LatencyTarget(speedup=1.67)]


def test_the_margin_reaches_every_entry_points_target(monkeypatch, tmp_path):
    """--margin (run, profile-engines --sla-ms), margin= (--target) and PruneOptions.margin move the aim the
    closed loop measures against: (1 - margin) x the SLA."""
    import torch

    import itcp_deploy.api as api
    import itcp_deploy.pipeline.driver as driver
    from bench.small_residual import SmallResidual
    from itcp_deploy import PruneOptions

    class Stop(Exception):
        pass

    aims = []

    def fake_stages(config, inputs, log=None, progress=None, **kw):
        aims.append([t.latency.target_ms(1.0) for t in config.targets])
        raise Stop

    monkeypatch.setattr(driver, "run_stages", fake_stages)
    common = ("cifar_resnet20", "--input-shape", "1x3x32x32", "--data", "synthetic:train=64,test=32", "--epochs", "0")
    for args in (("run", *common, "--speedup", "2", "--margin", "0.1"),
                 ("profile-engines", *common, "--speedup", "2", "--margin", "0.1"),
                 ("run", *common, "--target", "speedup=2,margin=0.1", "--target", "speedup=4")):
        with pytest.raises(Stop):
            run_cli(*args, "-o", str(tmp_path / "o"))
    with pytest.raises(Stop):
        api.prune(SmallResidual().eval(), torch.randn(1, 3, 32, 32), speedup=2.0, out_dir=tmp_path / "api",
                  score_loader=[(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))], options=PruneOptions(margin=0.1))
    assert aims == [[pytest.approx(0.45)]] * 2 + [[pytest.approx(0.45), pytest.approx(0.25 * 0.97)]] + [
        [pytest.approx(0.45)]]


def test_margin_and_target_together_is_one_line():
    from tests.test_reliability import assert_user_error

    assert_user_error(run_cli("run", "cifar_resnet20", "--data", "digits", "-o", "x", "--target", "speedup=2",
                              "--margin", "0.1"), "put margin= in each --target")
