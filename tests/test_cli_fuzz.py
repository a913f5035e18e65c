"""Fuzz the command line: random option values never end in a traceback, only exit 0, 1 or 2.

Every example keeps one required input invalid (a missing, directory or garbage file, an unknown model, bad
data), so no example starts real training, profiling or export work; the other options draw from valid and
invalid values alike (shapes, numbers incl. NaN/inf/negative, text, missing paths, directories).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import run_cli

FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "a_dir").mkdir()
    (root / "garbage.pt").write_bytes(b"\x00garbage" * 20)
    (root / "garbage.json").write_text('{"truncated": ')
    (root / "empty.json").write_text("")
    return {"root": root, "missing": root / "missing.pt", "dir": root / "a_dir", "garbage": root / "garbage.pt",
            "json": root / "garbage.json", "empty": root / "empty.json"}


def _numbers() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(-5, 100).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["nan", "inf", "-inf", "0", "-0", "1e308", "abc", "", " ", "1,5", "0x10"]),
    )


def _shapes() -> st.SearchStrategy[str]:
    dims = st.integers(-2, 40).map(str)
    return st.one_of(
        st.lists(dims, min_size=1, max_size=6).map("x".join),
        st.sampled_from(["1x3x32x32", "1x3x8x8", "abc", "", "1x3x32x32x", "NxCxHxW"]),
        st.text(max_size=12),
    )


def _bad_files(files: dict[str, Path], *names: str) -> st.SearchStrategy[str]:
    return st.sampled_from([str(files[n]) for n in names])


def _options(pairs: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[list[str]]:
    """Any subset of the options, each with a drawn value, in a drawn order."""
    return st.lists(st.sampled_from(sorted(pairs)), unique=True, max_size=len(pairs)).flatmap(
        lambda names: st.tuples(*[pairs[n].map(lambda v, n=n: [n, v]) for n in names]).map(
            lambda items: [x for item in items for x in item]))


def _paths(files: dict[str, Path]) -> st.SearchStrategy[str]:
    return st.one_of(_bad_files(files, "missing", "dir", "garbage", "json", "empty"),
                     st.sampled_from([str(files["root"] / "out" / "x.onnx"), str(files["root"] / "o.json")]))


def _check(args: list[str]) -> None:
    code, _, err = run_cli(*args)
    assert code in (0, 1, 2), (args, code, err)
    assert "Traceback" not in err, (args, err)
    if code == 2:
        assert err.strip().splitlines()[-1].startswith("error: "), (args, err)


def _command_strategy(command: str, files: dict[str, Path]) -> st.SearchStrategy[list[str]]:
    bad_model = st.one_of(_bad_files(files, "missing", "dir", "garbage"),
                          st.sampled_from(["no_such_model", "torchvision:nope", "pkg.mod:fn", "", "-"]))
    bad_json = _bad_files(files, "missing", "dir", "json", "empty")
    bad_data = st.one_of(_bad_files(files, "missing", "garbage"),
                         st.sampled_from(["cifar10:/nope", "imagefolder:" + str(files["dir"]), "nope:x", ""]))
    common = {"--weights": _paths(files), "--num-classes": _numbers(), "--trust-code": st.just("--json")}
    shaped = {"--input-shape": _shapes(), **common}
    trainish = {"--data": bad_data, "--epochs": _numbers(), "--lr": _numbers(), "--batch-size": _numbers(),
                "--seed": _numbers(), "--train-time-s": _numbers(), "--max-steps-per-epoch": _numbers(),
                "--out": _paths(files), "--device": st.sampled_from(["cpu", "cuda:7", "tpu", ""])}
    table: dict[str, tuple[list[st.SearchStrategy[str]], dict[str, st.SearchStrategy[str]]]] = {
        "export": ([bad_model], {**shaped, "--out": _paths(files), "--opset": _numbers()}),
        "groups": ([bad_model], {**shaped, "--grid-small": _numbers(), "--grid-large": _numbers(),
                                 "--min-width": _numbers()}),
        "evaluate": (["cifar_resnet20"], {**common, "--data": bad_data, "--batch-size": _numbers(),
                                          "--max-samples": _numbers(), "--split": st.text(max_size=6)}),
        "train": (["cifar_resnet20"], trainish),
        "finetune": (["cifar_resnet20"], {**trainish, "--weights": _paths(files)}),
        "calibrate": ([], {"--data": bad_data, "--num": _numbers(), "--seed": _numbers(),
                           "--input-shape": _shapes(), "--out-dir": _paths(files)}),
        "profile-engines": ([bad_model], {**shaped, "--backend": st.sampled_from(["onnxruntime", "torch", "x"]),
                                          "--precision": st.sampled_from(["fp32", "fp16", "int8", "fp8"]),
                                          "--max-builds": _numbers(), "--holdout": _numbers(),
                                          "--threads": _numbers(), "--rounds": _numbers(),
                                          "--runs-per-round": _numbers(), "--shard": st.text(max_size=5),
                                          "--cache": _paths(files), "--calib": _paths(files)}),
        "fit": ([bad_json], {"-o": _paths(files), "--method": st.sampled_from(["table", "flops", "x"])}),
        "search": (["cifar_resnet20"], {"--perf-model": bad_json, "-o": _paths(files), "--sla-ms": _numbers(),
                                        "--speedup": _numbers(), "--bins": _numbers(),
                                        "--criterion": st.sampled_from(["taylor", "l1-fraction", "x"]),
                                        "--method": st.sampled_from(["itcp", "uniform", "x"])}),
        "pareto": (["cifar_resnet20"], {"--perf-model": bad_json, "-o": _paths(files), "--points": _numbers(),
                                        "--methods": st.text(max_size=10)}),
        "run": (["cifar_resnet20"], {"--data": bad_data, "--input-shape": _shapes(), "-o": _paths(files),
                                     "--sla-ms": _numbers(), "--speedup": _numbers(), "--epochs": _numbers(),
                                     "--percentile": _numbers(), "--threads": _numbers(),
                                     "--backend": st.sampled_from(["onnxruntime", "x"]),
                                     "--cache": _paths(files)}),
        "check-latency": ([_bad_files(files, "missing", "dir", "garbage")],
                          {"--sla-ms": _numbers(), "--max-ratio": _numbers(), "--percentile": _numbers(),
                           "--reference": _paths(files), "--threads": _numbers(),
                           "--backend": st.sampled_from(["onnxruntime", "torch", "x"])}),
    }
    positional, options = table[command]
    pos = st.tuples(*[p if isinstance(p, st.SearchStrategy) else st.just(p) for p in positional])
    required = {k: v for k, v in options.items() if k in ("--data", "--perf-model")}
    return st.tuples(pos, _options(options)).map(
        lambda t: [command, *t[0], *t[1]]).flatmap(
        lambda args: _force(args, required))


def _force(args: list[str], required: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[list[str]]:
    """Append the invalid required input (bad --data / --perf-model) when the drawn options lack it."""
    missing = [k for k in required if k not in args]
    if not missing:
        return st.just(args)
    return st.tuples(*[required[k].map(lambda v, k=k: [k, v]) for k in missing]).map(
        lambda items: args + [x for item in items for x in item])


COMMANDS = ["export", "groups", "evaluate", "train", "finetune", "calibrate", "profile-engines", "fit", "search",
            "pareto", "run", "check-latency"]


@pytest.mark.parametrize("command", COMMANDS)
def test_fuzz_command_never_tracebacks(command, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    @FUZZ
    @given(args=_command_strategy(command, files))
    def fuzz(args: list[str]) -> None:
        _check(args)

    fuzz()


@FUZZ
@given(args=st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["--help", "--json", "-o", "--", "-"])),
                     max_size=4).filter(lambda a: not a or a[0] not in HEAVY_WITH_DEFAULTS))
def test_fuzz_top_level_never_tracebacks(args):
    _check(args)


HEAVY_WITH_DEFAULTS = {"demo", "staircase"}  # run real work with no arguments at all: not fuzzed
