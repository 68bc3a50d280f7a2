"""The most customers an engine keeps without lag at a given speed: a search over N.

Each probe replays a light demo dataset of N customers (the idle customers' shape of
``bench_engines``, now with events) through the engine as ``main.py`` runs it, and judges the
lag. Part of ``python -m benchmarks``.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from anomaly.config import Params
from anomaly.experiment import CpuSampler
from anomaly.job import run_job
from anomaly.store import read_progress
from anomaly.summary import lag_frame
from benchmarks.bench_engines import (
    DATA_DELAY_SECONDS,
    MIB,
    idle_params,
    quantiles,
    task_work_per_tick,
)

# A machine this busy on average during a lagging probe is called CPU-bound (percent).
CPU_BOUND_PERCENT = 85.0
# A Spark tick whose time is at least this share overhead (not the customers' recorded work
# spread over the slots) is called scheduling-bound.
SCHEDULING_SHARE = 0.5


@dataclass(frozen=True)
class Limits:
    """When a probe counts as keeping up, and when the search stops before lagging."""

    p95_limit_s: float  # p95 lag of all replayed customer-minutes must be below this
    growth_limit_s: float  # the per-minute p95 lag may grow by less than this over the run
    budget_s: float  # no probe starts that is expected to end past this (per engine)
    memory_fraction: float  # no probe starts expected to need more of the available memory


def light_params(
    count: int, url: str, minutes: int, speed: float, events_per_minute: int, history: int
) -> Params:
    """``count`` customers of the idle shape, each with events (``events_per_minute`` times its
    demo volume factor) and ``history`` minutes processed before the clock starts."""
    params = idle_params(count, url, minutes, speed, DATA_DELAY_SECONDS)
    dataset = dataclasses.replace(
        params.dataset, events_per_minute=events_per_minute, history_minutes=history
    )
    return dataclasses.replace(params, dataset=dataset)


def lag_verdict(lags: pd.DataFrame, expected: int, limits: Limits) -> dict[str, Any]:
    """Did the engine keep up? p95 lag under the limit, not growing, every minute persisted.

    Growth is the median of the per-minute p95 lag (over customers) in the last third of the
    replayed minutes minus the same in the first third: an engine that falls behind the clock
    lags more with every minute, one that keeps up does not.
    """
    p50, p95 = quantiles(lags["lag_s"])
    per_minute = lags.groupby("minute")["lag_s"].quantile(0.95).sort_index()
    third = max(len(per_minute) // 3, 1)
    growth = (
        float(per_minute.iloc[-third:].median() - per_minute.iloc[:third].median())
        if len(per_minute)
        else math.nan
    )
    complete = len(lags) == expected
    return {
        "lag_p50_s": p50,
        "lag_p95_s": p95,
        "lag_growth_s": growth,
        "minutes_persisted": int(len(lags)),
        "minutes_expected": expected,
        "kept_up": bool(complete and p95 < limits.p95_limit_s and growth < limits.growth_limit_s),
    }


@dataclass(frozen=True)
class ProbeSetup:
    """Where probes run: the ClickHouse they read back from, its endpoint's process (whose CPU
    is sampled), the engines' parallelism and a folder for the runs' summaries."""

    client: Any
    endpoint_pid: int | None
    cpus: int
    reports: Path


def probe(engine: str, params: Params, setup: ProbeSetup, limits: Limits) -> dict[str, Any]:
    """One replay of ``params`` on ``engine``; its lag verdict, CPU, memory and Spark ticks.

    CPU figures cover the replay only (from the first minute's processable time to the last
    persist), not the workers' start-up: the machine's use in percent of all cores, and the
    ClickHouse endpoint's in cores (where this run started it).
    """
    count = len(params.customers)
    memory = psutil.virtual_memory()
    before = memory.used
    started = time.perf_counter()
    pids = [setup.endpoint_pid] if setup.endpoint_pid is not None else []
    with CpuSampler(interval=0.5, pids=pids) as sampler:
        outcome = run_job(params, engine, cpus=setup.cpus, reports=setup.reports, progress=True,
                          run_id=f"capacity-{engine}-{count}-{uuid.uuid4().hex[:6]}")  # fmt: skip
    wall_s = time.perf_counter() - started
    _wait_for_actors(outcome.engine.details.get("actors", []))

    progress = read_progress(setup.client, params.clickhouse.database, outcome.plan.run_id)
    lags = lag_frame(progress)
    window = (lags["processable_at"].min().timestamp(), lags["persisted_at"].max().timestamp())
    row: dict[str, Any] = {
        "engine": engine,
        "customers": count,
        **lag_verdict(lags, count * params.run.minutes, limits),
        "cpu_percent": sampler.mean_between(*window),
        "endpoint_cores": sampler.mean_between(*window, processes=True) / 100 if pids else None,
        "memory_per_customer_mib": max(sampler.peak_memory - before, 0) / count / MIB,
        "memory_available_mib": memory.available / MIB,
        "wall_s": wall_s,
    }
    ticks = [t["seconds"] for t in outcome.engine.details.get("ticks", [])]
    if ticks:
        row["tick_p50_s"] = float(np.median(ticks))
        row["task_work_per_tick_s"] = task_work_per_tick(progress)
    return row


def search(
    engine: str, counts: Sequence[int], make_params: Callable[[int], Params],
    setup: ProbeSetup, limits: Limits, say: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Probe ``counts`` in increasing order until one lags or a cap stops the search.

    When the first count already lags, halve it until a count keeps up (or 1 lags too), so the
    answer is never just "fewer than the first". Before each probe the search predicts its
    wall time and memory from the previous probe (in proportion to N) and stops at a cap.
    """
    started = time.perf_counter()
    probes: list[dict[str, Any]] = []
    queue = sorted(set(counts))
    stop, descending = "end of the list", False
    while queue:
        count = queue.pop(0)
        if probes:
            capped = _cap(probes[-1], count, time.perf_counter() - started, limits)
            if capped is not None:
                stop = capped
                break
        row = probe(engine, make_params(count), setup, limits)
        probes.append(row)
        say(
            f"engines: {engine} with {count} customers "
            f"{'kept up' if row['kept_up'] else 'lagged'}: lag p50 {row['lag_p50_s']:.2f} s, "
            f"p95 {row['lag_p95_s']:.2f} s, growth {row['lag_growth_s']:+.2f} s, CPU "
            f"{row['cpu_percent']:.0f} %, {row['wall_s']:.0f} s"
        )
        if row["kept_up"] == descending:
            stop = "lag"
            if descending or len(probes) > 1 or count == 1:
                break
            # The first count lagged: look below it.
            queue, descending = _halves(count), True

    kept = [p["customers"] for p in probes if p["kept_up"]]
    best = max(kept, default=0)
    return {
        "engine": engine,
        "most_customers": best,
        "stopped_by": stop,
        "limit": _limit(stop, probes, setup.cpus, limits),
        "probes": probes,
        "wall_s": time.perf_counter() - started,
    }


def _halves(count: int) -> list[int]:
    halves = []
    while count > 1:
        count //= 2
        halves.append(count)
    return halves


def _cap(last: dict[str, Any], count: int, elapsed: float, limits: Limits) -> str | None:
    """``time cap`` or ``memory cap`` when the next probe is predicted to pass one, else None."""
    scale = count / last["customers"]
    if elapsed + last["wall_s"] * scale > limits.budget_s:
        return "time cap"
    needed = last["memory_per_customer_mib"] * MIB * count
    if needed > limits.memory_fraction * psutil.virtual_memory().available:
        return "memory cap"
    return None


def _limit(stop: str, probes: list[dict[str, Any]], cpus: int, limits: Limits) -> str:
    """What held the engine back, in a sentence, from the probe that lagged or the cap."""
    lagged = [p for p in probes if not p["kept_up"]]
    if stop == "lag" and lagged:
        worst = max(lagged, key=lambda p: p["customers"])
        n = worst["customers"]
        if "tick_p50_s" in worst:
            work = worst["task_work_per_tick_s"] / cpus
            overhead = worst["tick_p50_s"] - work
            if overhead >= SCHEDULING_SHARE * worst["tick_p50_s"]:
                return (
                    f"per-tick scheduling: at {n} customers a tick took "
                    f"{worst['tick_p50_s']:.2f} s (median), of which the customers' recorded "
                    f"work spread over {cpus} slots "
                    f"is {work:.2f} s; the rest is the Spark job itself"
                )
        endpoint = (
            f"; the ClickHouse endpoint alone used {worst['endpoint_cores']:.2f} of {cpus} cores"
            if worst.get("endpoint_cores") is not None
            else ""
        )
        memory = (
            f"; memory was not the limit: {n} customers added "
            f"{worst['memory_per_customer_mib'] * n / 1024:.1f} GiB, with "
            f"{worst['memory_available_mib'] / 1024:.1f} GiB available before"
        )
        if worst["cpu_percent"] >= CPU_BOUND_PERCENT:
            return (
                f"CPU: the machine was {worst['cpu_percent']:.0f} % busy during the replay at "
                f"{n} customers{endpoint}{memory}"
            )
        return (
            f"lag at {n} customers with the machine {worst['cpu_percent']:.0f} % busy{endpoint}: "
            "neither CPU-bound nor scheduling-bound by these measures"
        )
    last = probes[-1] if probes else None
    if stop == "memory cap" and last is not None:
        return (
            f"memory: {last['memory_per_customer_mib']:.0f} MiB per customer would take more "
            f"than {limits.memory_fraction:.0%} of the available memory at the next count"
        )
    if stop == "time cap":
        return f"the search's time cap ({limits.budget_s:.0f} s); a lower bound"
    return "none reached: every count tried kept up; a lower bound"


def _wait_for_actors(actors: list[dict[str, Any]], timeout: float = 30.0) -> None:
    """Wait until a Ray run's actor processes have exited, so the next probe starts clean."""
    processes = []
    for actor in actors:
        try:
            processes.append(psutil.Process(actor["pid"]))
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(processes, timeout=timeout)
