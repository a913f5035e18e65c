"""Property: random corrupt JSON never gives a traceback (issue 14).

Hypothesis mutates a valid profile (fed to ``fit``), a valid perf model (fed to ``search``) and a torch
engine's ``meta.json`` (fed to ``check-latency``): a leaf replaced by any JSON value (NaN, inf, negative, huge,
text, lists, objects, null), a key deleted, the text truncated, or random bytes. Every case must end in exit 2
with one ``error: ... Fix: ...`` line, or in a correct result (exit 0 with the file written, or the gate's verdict).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import run_cli
from tests.test_reliability import assert_user_error, macs_perf_model

LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -1.0, 0.0, 1e308, -1e-300]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
)
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                          max_size=3), max_leaves=6)
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _paths(doc, prefix=()):
    """Every (path, value) in a JSON document, containers included."""
    yield prefix, doc
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield from _paths(value, (*prefix, key))


def _replace(doc, path, value):
    if not path:
        return value
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replace(doc[path[0]], path[1:], value)
    return copy


def _delete(doc, path):
    if len(path) == 1:
        copy = dict(doc) if isinstance(doc, dict) else list(doc)
        del copy[path[0]]
        return copy
    return _replace(doc, path[:1], _delete(doc[path[0]], path[1:]))


@st.composite
def corrupt(draw, doc) -> bytes:
    """The bytes of a corrupted copy of ``doc``."""
    kind = draw(st.sampled_from(["replace", "replace", "replace", "delete", "truncate", "bytes"]))
    paths = [p for p, _ in _paths(doc)]
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "truncate":
        text = json.dumps(doc).encode()
        return text[: draw(st.integers(0, len(text) - 1))]
    path = paths[draw(st.integers(0, len(paths) - 1))]
    if kind == "delete" and path:
        return json.dumps(_delete(doc, path)).encode()
    return json.dumps(_replace(doc, path, draw(VALUES))).encode()


def _check(result: tuple[int, str, str], ok_codes: tuple[int, ...] = (0,)) -> int:
    code, _, err = result
    assert "Traceback" not in err, err
    if code not in ok_codes:
        assert_user_error(result)
    return code


def _pick(doc: dict, keep_engines: int) -> dict:
    """A smaller document (fewer engines), so that a mutation lands on a field of interest more often."""
    return {**doc, "engines": doc["engines"][:keep_engines]} if "engines" in doc else doc


@pytest.fixture(scope="module")
def good_profile() -> dict:
    from tests.synthetic_spaces import resnet_space, synthetic_profile

    return _pick(synthetic_profile(resnet_space(1), n_design=12, n_holdout=4, seed=3).to_dict(), 17)


@pytest.fixture(scope="module")
def good_perf_model(tmp_path_factory) -> dict:
    from itcp_deploy.models import create_model
    from itcp_deploy.pruning import build_space

    space = build_space(create_model("cifar_resnet20").eval(), (1, 3, 32, 32), model_spec="cifar_resnet20")
    return macs_perf_model(space).to_dict()


@pytest.fixture(scope="module")
def torch_engine(tmp_path_factory) -> Path:
    import torch

    from itcp_deploy.engines import EngineOptions, get_backend

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    out = tmp_path_factory.mktemp("torch") / "engine"
    return get_backend("torch").builder(net, out, EngineOptions(), (1, 3, 8, 8))()


@SETTINGS
@given(data=st.data())
def test_fit_on_corrupt_profile(data, tmp_path, good_profile):
    profile, out = tmp_path / "profile.json", tmp_path / "pm.json"
    out.unlink(missing_ok=True)
    profile.write_bytes(data.draw(corrupt(good_profile)))
    code = _check(run_cli("fit", str(profile), "-o", str(out), "--force"))
    if code == 0:  # accepted: then the perf model it wrote loads and predicts finite latencies
        from itcp_deploy.perfmodel import PerfModel

        assert math.isfinite(PerfModel.load(out).dense_ms())


@SETTINGS
@given(data=st.data())
def test_search_on_corrupt_perf_model(data, tmp_path, good_perf_model):
    perf_model, out = tmp_path / "pm.json", tmp_path / "widths.json"
    out.unlink(missing_ok=True)
    perf_model.write_bytes(data.draw(corrupt(good_perf_model)))
    code = _check(run_cli("search", "cifar_resnet20", "--perf-model", str(perf_model), "--criterion",
                          "l1-fraction", "--speedup", "1.5", "-o", str(out), "--json"))
    if code == 0:  # a plan: within its budget
        plan = json.loads(out.read_text())
        assert plan["predicted_ms"] <= plan["budget_ms"] * (1 + 1e-9)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_check_latency_on_corrupt_engine_metadata(data, tmp_path, torch_engine):
    engine = tmp_path / "engine"
    shutil.rmtree(engine, ignore_errors=True)
    shutil.copytree(torch_engine, engine)
    meta = json.loads((engine / "meta.json").read_text())
    (engine / "meta.json").write_bytes(data.draw(corrupt(meta)))
    code = _check(run_cli("check-latency", str(engine), "--backend", "torch", "--sla-ms", "1000", "--json"),
                  ok_codes=(0, 1))
    if code in (0, 1):  # measured: the metadata still named the program's real input
        assert json.loads((engine / "meta.json").read_text())["input_shape"] == [1, 3, 8, 8]
