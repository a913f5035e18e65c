"""The CPU's instruction set: detection, the device identity in cache keys, the INT8 choice, the channel block.

Everything is a pure function of a flag set, so fake flag sets stand for the CPUs this machine is not
(an AVX2-only EPYC, a Skylake without VNNI, an Arm server).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from itcp_deploy.engines import device
from itcp_deploy.engines.device import (
    CpuIsa,
    block_from_staircase,
    channel_block,
    cpu_identity,
    isa_channel_block,
    parse_cpu_flags,
)
from itcp_deploy.engines.int8 import ORT_FULL_RANGE, ORT_REDUCE_RANGE, TENSORRT, engine_int8_settings, int8_settings
from itcp_deploy.errors import InputFileError
from itcp_deploy.profiling.cache import CacheKey
from itcp_deploy.space import CandidateGrid

ROOT = Path(__file__).resolve().parents[1]
EPYC_AVX2 = CpuIsa("x86_64", frozenset({"avx2", "fma"}))  # Zen 2/3: the CI machine of issue 17
SKYLAKE = CpuIsa("x86_64", frozenset({"avx2", "fma", "avx512f", "avx512bw"}))  # AVX-512, no VNNI
EPYC_VNNI = CpuIsa("x86_64", frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}))  # Zen 4
ALDER_LAKE = CpuIsa("x86_64", frozenset({"avx2", "fma", "avx_vnni"}))
SAPPHIRE = CpuIsa("x86_64", frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8"}))
X86_UNKNOWN = CpuIsa("x86_64", frozenset())
GRAVITON = CpuIsa("aarch64", frozenset({"asimd", "asimddp", "i8mm"}))


def test_flags_parse_from_x86_and_arm_cpuinfo():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma bmi2 sha_ni\n\nflags : avx512f"
    assert parse_cpu_flags(x86) == {"avx2", "fma"}  # the first CPU's line; irrelevant flags dropped
    assert parse_cpu_flags("Features\t: fp asimd evtstrm asimddp sve\nCPU part : 0xd0c") == {"asimd", "asimddp", "sve"}
    assert parse_cpu_flags("") == frozenset() and X86_UNKNOWN.label() == "isa unknown"


def test_this_machine_has_an_identity_with_isa_and_cpu_count():
    name = device.device_name("cpu")
    isa = device.detect_isa()
    assert f"{device.logical_cpus()} logical CPUs" in name and isa.label() in name and isa.arch in name


def test_two_flag_sets_give_two_cache_keys():
    """Virtual machines name different CPUs alike: the ISA flags and CPU count keep their keys apart."""
    names = {cpu_identity("AMD EPYC", isa, 2) for isa in (EPYC_AVX2, EPYC_VNNI, SKYLAKE)}
    names.add(cpu_identity("AMD EPYC", EPYC_AVX2, 4))
    assert len(names) == 4
    key = CacheKey(kind="build", device="", backend="onnxruntime", backend_version="1.32.0", precision="int8",
                   input_shape=(1, 3, 32, 32), model_hash="abc")
    digests = {replace(key, device=n).digest() for n in names}
    digests |= {replace(key, device=n, quantization="u8s8-reduce-range").digest() for n in names}
    assert len(digests) == 8


@pytest.mark.parametrize(
    ("isa", "expected"),
    [(EPYC_AVX2, ORT_REDUCE_RANGE), (SKYLAKE, ORT_REDUCE_RANGE), (X86_UNKNOWN, ORT_REDUCE_RANGE),
     (EPYC_VNNI, ORT_FULL_RANGE), (ALDER_LAKE, ORT_FULL_RANGE), (SAPPHIRE, ORT_FULL_RANGE),
     (GRAVITON, ORT_FULL_RANGE)],
)
def test_int8_settings_follow_the_isa(isa, expected):
    assert int8_settings("onnxruntime", isa) == expected
    assert int8_settings("tensorrt", isa) == TENSORRT  # TensorRT keeps its own symmetric int8
    assert int8_settings("onnxruntime", isa, provider="tensorrt") == TENSORRT
    assert engine_int8_settings("onnxruntime", "fp32", isa=isa) is None


def test_int8_labels_are_distinct():
    labels = [s.label for s in (ORT_FULL_RANGE, ORT_REDUCE_RANGE, TENSORRT)]
    assert labels == ["u8s8", "u8s8-reduce-range", "s8s8-symmetric"]


def test_profile_identity_and_keys_follow_the_isa(monkeypatch):
    """What the profiler keys on: a fake AVX2 CPU and a fake VNNI CPU get different devices and int8 settings."""
    from itcp_deploy.profiling.identity import profile_identity
    from itcp_deploy.profiling.profiler import ProfileConfig

    config = ProfileConfig(precision="int8")
    identities = []
    for isa in (EPYC_AVX2, EPYC_VNNI):
        monkeypatch.setattr(device, "detect_isa", lambda isa=isa: isa)
        identities.append(profile_identity(config))
    avx2, vnni = identities
    assert (avx2["quantization"], vnni["quantization"]) == ("u8s8-reduce-range", "u8s8")
    assert "avx2 fma;" in avx2["device"] and "avx512_vnni" in vnni["device"]


def test_profile_of_another_isa_is_refused_and_schema1_is_read(tmp_path):
    from itcp_deploy.profiling.records import Profile
    from tests.test_profiler import tiny_setup

    _, space = tiny_setup()
    profile = Profile("tiny", (1, 3, 32, 32), "onnxruntime", "1.32.0", "int8", cpu_identity("EPYC", EPYC_VNNI, 2),
                      space, [], quantization="u8s8")
    data = {**profile.to_dict(), "schema": 1}
    del data["quantization"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = Profile.load(tmp_path / "old.json")  # schema 1: int8 on onnxruntime was always full-range u8s8
    assert old.identity() == profile.identity()
    needed = {**profile.identity(), "quantization": "u8s8-reduce-range"}
    with pytest.raises(InputFileError, match="quantization 'u8s8', this run needs 'u8s8-reduce-range'") as err:
        old.check_identity(needed, tmp_path / "old.json")
    assert "\n" not in str(err.value)
    with pytest.raises(InputFileError, match="device"):
        old.check_identity({**profile.identity(), "device": cpu_identity("EPYC", EPYC_AVX2, 2)}, "p.json")


def _staircase(block: int, levels_us: list[float], max_width: int, noise: float = 0.03) -> tuple:
    """Latency flat within each block of ``block`` widths, stepping to ``levels_us``, +-``noise`` jitter."""
    rng = np.random.default_rng(0)
    widths = np.arange(1, max_width + 1)
    steps = np.array([levels_us[(w - 1) // block] for w in widths])
    return widths, steps * (1 + noise * rng.standard_normal(len(widths)))


def test_block_from_staircase_reads_8_and_16():
    # issue 17's AVX2 figures: 1-8 ~120 us, 9-16 ~145, 17-24 ~170, 25-32 ~225, 33-40 ~305
    assert block_from_staircase(*_staircase(8, [120, 145, 170, 225, 305], 40)) == 8
    assert block_from_staircase(*_staircase(16, [95, 177, 256, 341], 64)) == 16
    assert block_from_staircase(*_staircase(16, [95, 177, 256, 341], 64, noise=0.0)) == 16
    smooth = np.arange(1, 65)
    assert block_from_staircase(smooth, 0.1 + 0.002 * smooth) is None  # MACs-like, no steps
    assert block_from_staircase(smooth, np.random.default_rng(1).normal(1.0, 0.02, 64)) is None  # noise only


@pytest.mark.parametrize("name", ["staircase_ort_cpu_avx512.json", "staircase_ort_cpu.json"])
def test_block_from_the_recorded_avx512_staircases(name):
    """Staircases measured with `itcp-deploy staircase` on the two AVX-512 machines of docs/benchmarks.md."""
    data = json.loads((ROOT / "docs" / name).read_text())
    points = [(p["width"], p["median_ms"]) for p in data["points"]]
    assert channel_block(points, EPYC_AVX2) == 16  # the measurement wins over the (fake) ISA


def test_channel_block_falls_back_to_the_isa():
    assert [isa_channel_block(i) for i in (EPYC_AVX2, SKYLAKE, EPYC_VNNI, X86_UNKNOWN)] == [8, 16, 16, 8]
    assert channel_block(None, EPYC_AVX2) == 8 and channel_block([(1, 1.0), (2, 1.0)], SKYLAKE) == 16
    assert channel_block(isa=GRAVITON) == 4


@pytest.mark.parametrize("block", [4, 8, 12, 16])
def test_candidate_grid_keeps_every_step_top(block):
    widths = CandidateGrid().aligned_to(block).candidates(160)
    assert set(range(block, 161, block)) <= set(widths)
    assert CandidateGrid().aligned_to(16) == CandidateGrid() == CandidateGrid().aligned_to(8)  # x86: unchanged
