"""Series updates per second of the seed detector: bare numpy update, full process, plain Python.

Run from the project root: ``python -m benchmarks.bench_detector --series 200000 --minutes 50``.
"""

from __future__ import annotations

import os

# One core: numpy's thread pools must be sized before numpy is imported.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from dataclasses import replace  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from anomaly.config import DetectorSettings  # noqa: E402
from anomaly.detector import STD_EPSILON, SeedDetector, update_arrays  # noqa: E402
from anomaly.records import POINT_COLUMNS  # noqa: E402

START = np.datetime64("2026-01-05T00:00", "ns")
MINUTE_NS = 60 * 10**9
METRICS = np.array(["events", "revenue", "latency_avg", "latency_p95"], dtype=object)
GROUPINGS = np.array(["device", "browser", "device+browser", "country"], dtype=object)


class Workload:
    """Synthetic series of one customer: levels with 1 % noise and a few spikes."""

    def __init__(self, series: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.rng = np.random.default_rng(seed + 1)  # row orders only
        self.series = series
        self.keys = np.unique(rng.integers(0, 2**64, int(series * 1.01) + 16, dtype=np.uint64))
        self.keys = rng.permutation(self.keys)[:series]
        self.level = rng.lognormal(5.0, 1.0, series)
        self.metric = METRICS[np.arange(series) % len(METRICS)]
        self.grouping = GROUPINGS[(np.arange(series) // len(METRICS)) % len(GROUPINGS)]
        self.dimension_values = np.array([f"v{i // 16}|x{i % 7}" for i in range(series)], object)
        self.spiked = rng.choice(series, max(series // 1000, 1), replace=False)

    def values(self, minute: int) -> np.ndarray:
        noise = np.random.default_rng((self.seed, minute)).normal(0.0, 0.01, self.series)
        values = self.level * (1.0 + noise)
        if 20 <= minute < 24:
            values[self.spiked] *= 1.5
        return values

    def frame(self, minute: int, values: np.ndarray, order: np.ndarray) -> pd.DataFrame:
        """The minute's points as a series query returns them: rows in ``order``."""
        frame = pd.DataFrame(
            {
                "minute": np.full(len(order), START + np.timedelta64(minute, "m")),
                "grouping": self.grouping[order],
                "dimension_values": self.dimension_values[order],
                "metric": self.metric[order],
                "value": values[order],
                "group_size": np.full(len(order), 100, np.uint64),
                "series_key": self.keys[order],
            }
        )
        return frame[list(POINT_COLUMNS)]


def run_process(
    workload: Workload, settings: DetectorSettings, minutes: int, shuffle_each_minute: bool
) -> tuple[SeedDetector, float, float, int]:
    """Feed every minute through ``process``; time the first minute and the rest apart."""
    detector = SeedDetector("bench", settings)
    order = workload.rng.permutation(workload.series)
    first_s = steady_s = 0.0
    anomalies = 0
    for minute in range(minutes):
        if shuffle_each_minute:
            order = workload.rng.permutation(workload.series)
        frame = workload.frame(minute, workload.values(minute), order)
        started = time.perf_counter()
        anomalies += len(detector.process(frame))
        elapsed = time.perf_counter() - started
        if minute == 0:
            first_s = elapsed
        else:
            steady_s += elapsed
    return detector, first_s, steady_s, anomalies


def run_bare(
    workload: Workload, settings: DetectorSettings, minutes: int
) -> tuple[float, SeedDetector]:
    """The same minutes through ``update_arrays`` alone, on values already in state order."""
    detector = SeedDetector("bench", settings)
    detector.process(workload.frame(0, workload.values(0), np.arange(workload.series)))
    state = detector.state
    to_state = pd.Index(detector.series_keys).get_indexer(workload.keys)
    elapsed = 0.0
    for minute in range(1, minutes):
        aligned = np.empty(workload.series)
        aligned[to_state] = workload.values(minute)
        started = time.perf_counter()
        update_arrays(state, aligned, int(START.view(np.int64)) + minute * MINUTE_NS, settings)
        elapsed += time.perf_counter() - started
    return elapsed, detector


def run_python(workload: Workload, settings: DetectorSettings, minutes: int) -> float:
    """A plain Python loop, one dict lookup and one scalar update a row; returns seconds."""
    alpha, decay, k = 1.0 - settings.decay, settings.decay, settings.band_sigmas
    warm, frac, tolerance = max(settings.warmup_minutes, 1), settings.min_std_fraction, 10.0
    states: dict[int, list[float]] = {}
    keys = workload.keys.tolist()
    elapsed = 0.0
    for minute in range(minutes):
        order = workload.rng.permutation(workload.series)
        values = workload.values(minute)
        rows = list(zip([keys[i] for i in order], values[order].tolist(), strict=True))
        started = time.perf_counter()
        for key, x in rows:
            s = states.get(key)
            if s is None:
                states[key] = [1, x, 0.0, 0.0]  # count, mean, var, excess
                continue
            sd = max(math.sqrt(s[2]), abs(s[1]) * frac, STD_EPSILON)
            diff = x - s[1]
            score = abs(diff / sd)
            s[0] += 1
            if s[0] > warm and score > k:
                s[3] += score - k
                if s[3] > tolerance:
                    s[3] = 0.0
                continue
            s[3] = 0.0
            incr = diff * alpha
            s[2] = decay * (s[2] + diff * incr)
            s[1] += incr
        elapsed += time.perf_counter() - started
    return elapsed


def memory_of(workload: Workload, settings: DetectorSettings) -> int:
    """Bytes the detector holds (arrays, index, strings) after its first minute, by tracemalloc."""
    frame = workload.frame(0, workload.values(0), np.arange(workload.series))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    detector = SeedDetector("bench", settings)
    detector.process(frame)
    detector.process(workload.frame(1, workload.values(1), np.arange(workload.series)))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held


def measure(
    series: int, minutes: int, python_series: int, python_minutes: int, warmup: int, seed: int
) -> dict[str, Any]:
    """Every figure of this benchmark for one synthetic customer; rates in series-updates/s.

    The first minute (every series new) is timed apart from the rest, which is the steady
    state a running detector lives in. Memory is per 1000 series, in KiB.
    """
    settings = replace(DetectorSettings(), warmup_minutes=warmup)
    updates = series * (minutes - 1)

    shuffled, first_s, shuffled_s, anomalies = run_process(
        Workload(series, seed), settings, minutes, shuffle_each_minute=True
    )
    bare_s, bare = run_bare(Workload(series, seed), settings, minutes)
    same = all(
        np.array_equal(getattr(shuffled.state, name), array)
        for name, array in bare.state.arrays().items()
    )
    repeated, _, repeated_s, _ = run_process(
        Workload(series, seed), settings, minutes, shuffle_each_minute=False
    )
    python_s = run_python(Workload(python_series, seed), settings, python_minutes)

    # Memory: the per-series arrays, everything the detector holds, and its checkpoint.
    per_k = 1000 / series / 1024
    arrays = shuffled.state.nbytes + shuffled.series_count * (8 + 12)
    held = memory_of(Workload(series, seed), settings)
    started = time.perf_counter()
    blob = shuffled.to_bytes()
    save_s = time.perf_counter() - started
    started = time.perf_counter()
    SeedDetector.from_bytes("bench", settings, blob)
    load_s = time.perf_counter() - started

    return {
        "series": series,
        "minutes": minutes,
        "bare_updates_per_s": updates / bare_s,
        "process_updates_per_s": updates / repeated_s,
        "process_ratio": bare_s / repeated_s,
        "shuffled_updates_per_s": updates / shuffled_s,
        "shuffled_ratio": bare_s / shuffled_s,
        "first_minute_updates_per_s": series / first_s,
        "python_series": python_series,
        "python_updates_per_s": python_series * python_minutes / python_s,
        "anomaly_records": anomalies,
        "same_state": same,
        "arrays_kib_per_1000_series": arrays * per_k,
        "held_kib_per_1000_series": held * per_k,
        "checkpoint_kib_per_1000_series": len(blob) * per_k,
        "checkpoint_save_ms": save_s * 1e3,
        "checkpoint_load_ms": load_s * 1e3,
    }


def report(figures: dict[str, Any]) -> str:
    """The printed report: one line per rate, then memory and the checkpoint's cost."""

    def rate(key: str) -> str:
        return f"{figures[key] / 1e6:7.2f} M series-updates/s"

    lines = [
        f"seed detector, {figures['series']} series x {figures['minutes']} minutes, one core",
        f"  numpy {np.__version__}, pandas {pd.__version__}; first minute timed apart",
    ]
    rows = [
        ("(a) bare update_arrays", rate("bare_updates_per_s"), ""),
        ("(b) process, rows reshuffled", rate("shuffled_updates_per_s"),
         f"(b)/(a) = {figures['shuffled_ratio']:.2f}"),
        ("    process, same row order", rate("process_updates_per_s"),
         f"ratio   = {figures['process_ratio']:.2f}"),
        ("    first minute (new series)", rate("first_minute_updates_per_s"), ""),
        (f"    plain Python, {figures['python_series']} series", rate("python_updates_per_s"), ""),
    ]  # fmt: skip
    lines += [f"{label:<34}{figure}   {note}" for label, figure, note in rows]
    lines += [
        f"anomaly records {figures['anomaly_records']}; bare and full paths reach the same "
        f"state: {figures['same_state']}",
        f"memory per 1000 series: arrays {figures['arrays_kib_per_1000_series']:.1f} KiB, all "
        f"held {figures['held_kib_per_1000_series']:.1f} KiB, checkpoint "
        f"{figures['checkpoint_kib_per_1000_series']:.1f} KiB",
        f"checkpoint: to_bytes {figures['checkpoint_save_ms']:.1f} ms, from_bytes "
        f"{figures['checkpoint_load_ms']:.1f} ms",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=200_000, help="series of the customer")
    parser.add_argument("--minutes", type=int, default=50, help="minutes to process")
    parser.add_argument("--python-series", type=int, default=20_000, help="plain Python slice")
    parser.add_argument("--python-minutes", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10, help="warm-up minutes of the detector")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    figures = measure(args.series, args.minutes, args.python_series, args.python_minutes,
                      args.warmup, args.seed)  # fmt: skip
    print(report(figures))


if __name__ == "__main__":
    main()
