"""Latency, defined once: warm-up, then timed runs in rounds, summarised as :class:`LatencyStats`.

CPU engines are timed with ``time.perf_counter`` around each call; GPU engines with CUDA events recorded
around each call on the current stream (the runner's ``run_once`` only enqueues work, e.g. a CUDA-graph
replay), read after a synchronisation at the end of each round. Thread counts are fixed by the runners
(onnxruntime ``intra_op_num_threads``, ``torch.set_num_threads``), never left to the library default.

Interleaving: :func:`measure_interleaved` visits every engine once per round, in a fresh shuffled order each
round, so slow drift on a shared machine (another process starting, thermal throttling) spreads over all
engines instead of biasing whichever was measured last. The median of each round is kept: their spread is
the noise floor (:func:`noise_pct`). Preemption they cannot undo: a measurement on a machine whose load average
exceeds its cores logs one warning (:func:`busy_note`), at most every ten minutes.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from itcp_deploy.engines.base import Runner
from itcp_deploy.profiling.records import LatencyStats

MIN_RUNS = 5  # a time-bounded round still takes this many runs
BUSY_NOTE_EVERY_S = 600.0  # one warning per busy spell, not one per measurement
_last_busy_note = -BUSY_NOTE_EVERY_S


def busy_note() -> str | None:
    """One line when more threads are runnable than this process may use cores (the 1-minute load average above
    them): then a run longer than a fraction of the scheduler's time slice gains a whole slice in most runs, a
    step the noise floor cannot show (docs/reliability.md, "Measuring on a busy machine"). None when quiet."""
    if not hasattr(os, "getloadavg"):
        return None
    load = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load <= cores:
        return None
    return (f"the machine is busy while measuring (load average {load:.1f} on {cores} cores): latencies may include "
            "time slices lost to other processes. Fix: measure when the load is below the core count, with "
            "engine threads (--threads) at most the cores left free")


def _warn_if_busy() -> None:
    global _last_busy_note
    now = time.monotonic()
    if now - _last_busy_note < BUSY_NOTE_EVERY_S:
        return
    note = busy_note()
    if note is not None:
        _last_busy_note = now
        logging.getLogger("itcp_deploy").warning(note)


@dataclass(frozen=True)
class TimingConfig:
    """How many runs make one measurement. Defaults to 10 rounds x 60 runs after 20 warm-up runs (600 timed
    runs per engine: about a second for a CIFAR ResNet-20 on one core).

    ``max_round_s``: an engine's round (and its warm-up) ends once it has lasted that long and has
    :data:`MIN_RUNS` runs, as trtexec's ``--duration`` bounds its runs by time. A detector at 512 that takes a
    second a run on a CPU core is then measured in minutes rather than hours; at 60 runs a round the bound
    binds only above 33 ms a run, and for a slow engine a few runs a round still give a round median."""

    warmup: int = 20
    rounds: int = 10
    runs_per_round: int = 60
    seed: int = 0
    max_round_s: float = 2.0

    @property
    def runs(self) -> int:
        return self.rounds * self.runs_per_round


@dataclass
class Interleaved:
    """What :func:`measure_interleaved` returns: per engine, its stats, per-round medians and raw samples."""

    stats: list[LatencyStats]
    round_medians_ms: list[list[float]]
    samples_ms: list[list[list[float]]] = field(default_factory=list)  # engine -> round -> samples


def runs_within(runs: int, latency_ms: float, seconds: float) -> int:
    """``runs``, or fewer (at least :data:`MIN_RUNS`) where they would take longer than ``seconds`` at
    ``latency_ms`` a run: the time bound of a round for work that is counted before it starts."""
    if not latency_ms > 0:
        return runs
    return min(runs, max(MIN_RUNS, math.ceil(seconds * 1000.0 / latency_ms)))


def time_calls(
    run_once: Callable[[], object], runs: int, clock: str = "cpu", sync: Callable[[], None] | None = None,
    max_s: float = math.inf,
) -> list[float]:
    """Time ``runs`` consecutive calls, or fewer (at least :data:`MIN_RUNS`) once they have taken ``max_s``
    seconds (CPU clock; CUDA events are read only at the end); returns one latency in ms per call."""
    if clock == "cuda":
        import torch

        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)
        ]
        for start, end in events:
            start.record()
            run_once()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in events]
    samples: list[float] = []
    started = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        run_once()
        if sync is not None:
            sync()
        samples.append((time.perf_counter() - t0) * 1000.0)
        if len(samples) >= MIN_RUNS and time.perf_counter() - started >= max_s:
            break
    return samples


def measure(
    runner: Runner, feeds: Mapping[str, np.ndarray] | None = None, config: TimingConfig | None = None
) -> LatencyStats:
    """Latency of one active runner: warm-up, then ``config.runs`` timed runs."""
    return measure_interleaved([runner], [feeds] if feeds is not None else None, config).stats[0]


def measure_interleaved(
    runners: Sequence[Runner],
    feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
    config: TimingConfig | None = None,
) -> Interleaved:
    """Measure several active runners in interleaved rounds (see the module docstring).

    Args:
        runners: active runners (inside their ``with``).
        feeds: one input dict per runner; defaults to each runner's seeded random inputs.
        config: warm-up, rounds, runs per round, shuffle seed. Defaults to :class:`TimingConfig`.

    Returns:
        :class:`Interleaved`, in the order of ``runners``.
    """
    config = config or TimingConfig()
    _warn_if_busy()
    feeds = list(feeds) if feeds is not None else [r.random_feeds() for r in runners]
    calls = [r.prepare(f) for r, f in zip(runners, feeds, strict=True)]
    for runner, call in zip(runners, calls, strict=True):
        time_calls(call, config.warmup, runner.clock, runner.synchronize, config.max_round_s)
    rng = random.Random(config.seed)
    samples: list[list[list[float]]] = [[] for _ in runners]
    order = list(range(len(runners)))
    for _ in range(config.rounds):
        rng.shuffle(order)
        for i in order:
            samples[i].append(
                time_calls(calls[i], config.runs_per_round, runners[i].clock, runners[i].synchronize,
                           config.max_round_s)
            )
    return summarize(samples)


def summarize(samples_ms: Sequence[Sequence[Sequence[float]]]) -> Interleaved:
    """Stats and round medians from raw samples (engine -> round -> samples), e.g. as stored in the cache."""
    stats = [LatencyStats.from_samples([s for rnd in eng for s in rnd]) for eng in samples_ms]
    medians = [[float(np.median(rnd)) for rnd in eng] for eng in samples_ms]
    return Interleaved(
        stats=stats, round_medians_ms=medians, samples_ms=[[list(r) for r in e] for e in samples_ms]
    )


def noise_pct(round_medians_ms: Sequence[Sequence[float]]) -> float:
    """Noise floor in percent: how much re-measuring an engine changes its median latency.

    Each engine's rounds are split in two interleaved halves (odd and even rounds); the noise floor is the mean
    over engines of |median(half A) - median(half B)| / median(all) / sqrt(2): two half-length measurements
    differ by sqrt(2) times more than two full-length ones would. It is the difference to expect between two
    independent measurements of the same engine, the yardstick a latency model's error is judged against.
    (The spread of the per-round medians says how noisy one short round is, not how reproducible the median
    is.) NaN when no engine has at least two rounds.
    """
    diffs = [
        abs(np.median(m[0::2]) - np.median(m[1::2])) / np.median(m) * 100.0 / np.sqrt(2.0)
        for m in round_medians_ms
        if len(m) >= 2 and np.median(m) > 0
    ]
    return float(np.mean(diffs)) if diffs else float("nan")


def session_noise_pct(session_medians_ms: Sequence[float]) -> float:
    """How much an engine's median moves between sessions, in percent: the standard deviation of one engine's
    medians measured in separate sessions (each its own allocation of the weights), over their mean.

    A deployed engine is a new session, so this is re-measurement too, and the split-half noise floor cannot see
    it: AlexNet's dense engine at 224, eight sessions measured interleaved, moved 2.0% between sessions against
    1.2% within one (its 9216x4096 classifier reads 151 MB of weights per run), VGG-11-BN's 2.3% against 1.7%,
    ResNet-18's 0.4% against 0.5% (``bench/session_noise.py``). NaN with fewer than two sessions."""
    m = np.asarray(session_medians_ms, dtype=float)
    return float(np.std(m, ddof=1) / np.mean(m) * 100.0) if len(m) >= 2 and np.mean(m) > 0 else float("nan")


def round_ratios(
    rounds_a_ms: Sequence[Sequence[float]], rounds_b_ms: Sequence[Sequence[float]], percentile: int = 50
) -> np.ndarray:
    """Per-round latency ratio a / b at ``percentile`` of two engines measured interleaved.

    Both engines saw the same machine state in each round, so drift cancels in the ratio; gates and comparisons
    take the median of these.
    """
    return np.array([np.percentile(a, percentile) / np.percentile(b, percentile)
                     for a, b in zip(rounds_a_ms, rounds_b_ms, strict=True)])

