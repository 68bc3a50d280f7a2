"""What an engine costs when customers have nothing to do: Spark per tick, Ray per minute.

Run from the project root: ``python -m benchmarks.bench_engines --customers 1 8 32 --json f.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

# The anomaly package must be imported before ray: it keeps a local Ray on 127.0.0.1.
from anomaly.clock import MINUTE
from anomaly.config import Params, params_from_dict
from anomaly.dataset import CUSTOMER_COLUMN, EVENTS_TABLE, TIME_COLUMN, create_events_table
from anomaly.engines import EngineResult, make_plan
from anomaly.job import run_engine
from anomaly.pipeline import CustomerWorker
from anomaly.store import Store, read_progress
from anomaly.summary import lag_frame

DEFAULT_CUSTOMERS = (1, 8, 32)
FIRST_MINUTE = datetime(2026, 1, 5)
DATABASE = "anomaly"
# Simulated seconds a minute waits for late data, as in params/default.yaml.
DATA_DELAY_SECONDS = 5.0
MIB = 1024 * 1024
# The stage timings a task records in the progress table (seconds, per customer and tick).
TASK_STAGES = ("restore_s", "query_s", "series_s", "detect_s", "persist_s")


@dataclass(frozen=True)
class Bench:
    """Where and how to measure: the embedded ClickHouse, the replay and the parallelism."""

    config_url: str  # chdb:<dir>, as a params file names it
    url: str  # the endpoint serving that directory, which every process talks to
    client: Any
    minutes: int
    speed: float
    rounds: int
    cpus: int

    def params(self, count: int) -> Params:
        return idle_params(count, self.config_url, self.minutes, self.speed, DATA_DELAY_SECONDS)


def idle_params(count: int, url: str, minutes: int, speed: float, delay: float) -> Params:
    """``count`` customers c000, c001, ... on the demo events table, which holds no rows.

    Each has the demo's shape (two dimensions and their pair, a count and an average), so a
    tick runs the real series query, finds nothing, and persists progress and a checkpoint.
    """
    customers = [
        {
            "name": f"c{index:03d}",
            "table": EVENTS_TABLE,
            "time_column": TIME_COLUMN,
            "customer_column": CUSTOMER_COLUMN,
            "dimensions": ["device", "browser", "device+browser"],
            "metrics": {"events": "count()", "latency_avg": "avg(latency_ms)"},
            "min_group_size": 20,
        }
        for index in range(count)
    ]
    raw = {
        "clickhouse": {"database": DATABASE, "max_threads": 1},
        "run": {"minutes": minutes, "speed": speed, "data_delay_seconds": delay},
        "dataset": {"kind": "demo", "start": FIRST_MINUTE.isoformat(), "history_minutes": 0},
        "customers": customers,
    }
    # As an override, so that it wins over ANOMALY_CLICKHOUSE_URL: the benchmark's own folder.
    return params_from_dict(raw, {"clickhouse.url": url}, source="benchmarks.bench_engines")


def median_seconds(action: Callable[[], object], rounds: int) -> float:
    """Median wall time of ``rounds`` calls of ``action``, after one untimed call.

    The untimed call absorbs what happens once (imports, connections, JIT), which belongs to
    start-up, not to the recurring cost being measured.
    """
    action()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def quantiles(values: Sequence[float] | pd.Series) -> tuple[float, float]:
    """p50 and p95 of ``values``; NaN when there are none."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return math.nan, math.nan
    return float(np.quantile(array, 0.5)), float(np.quantile(array, 0.95))


# --- the idle replay, either engine ----------------------------------------------------------


def idle_replay(bench: Bench, params: Params, engine: str) -> tuple[EngineResult, pd.DataFrame]:
    """Replay ``params.run.minutes`` with no warm-up; return the engine's result and progress."""
    run_id = f"bench-{engine}-{len(params.customers)}-{uuid.uuid4().hex[:8]}"
    plan = make_plan(engine, FIRST_MINUTE, 0, params.run.minutes, params.run.speed,
                     params.run.data_delay_seconds, run_id)  # fmt: skip
    result = run_engine(params, bench.url, plan, engine, cpus=bench.cpus)
    return result, read_progress(bench.client, DATABASE, run_id)


def lag_figures(progress: pd.DataFrame, prefix: str) -> dict[str, float]:
    """Lag p50/p95 over every replayed customer-minute, and how many minutes were persisted."""
    lags = lag_frame(progress)
    p50, p95 = quantiles(lags["lag_s"])
    first_ticks = lags[lags["tick_first_minute"] == lags["tick_first_minute"].min()]
    return {
        f"{prefix}_lag_p50_s": p50,
        f"{prefix}_lag_p95_s": p95,
        f"{prefix}_minutes": int(len(lags)),
        # Minutes taken in a tick of several: the engine was behind the clock.
        f"{prefix}_backlog_minutes": int((lags["tick_minutes"] > 1).sum()),
        # Customers whose first tick was such a backlog: their workers started late.
        f"{prefix}_late_first_ticks": int(
            first_ticks.loc[first_ticks["tick_minutes"] > 1, "customer"].nunique()
        ),
    }


# --- Ray -------------------------------------------------------------------------------------


def measure_ray(bench: Bench, count: int) -> dict[str, float]:
    """Ray with the run's actors: start-up, memory, a bare round trip, then an idle replay.

    The actors are the engine's own (:class:`CustomerActor`, which connects to ClickHouse and
    restores its detector); their ``pid`` method does nothing else, so a round of it is Ray's
    bare call-and-return cost for N actors.
    """
    import ray

    from anomaly.engines.ray_engine import actor_class, start_ray

    params = bench.params(count)
    started = time.perf_counter()
    start_ray(None, bench.cpus)
    init_s = time.perf_counter() - started
    try:
        Actor = actor_class()
        run_id = f"bench-ray-bare-{count}-{uuid.uuid4().hex[:8]}"
        actors = [Actor.remote(c, params, bench.url, run_id) for c in params.customers]
        pids = ray.get([a.pid.remote() for a in actors])
        actors_s = time.perf_counter() - started - init_s
        processes = [psutil.Process(pid) for pid in pids]
        memory = [p.memory_full_info() for p in processes]

        round_trip_s = median_seconds(
            lambda: ray.get([a.pid.remote() for a in actors]), bench.rounds
        )

        # The replay starts its own actors: let these go first, so they share nothing.
        for actor in actors:
            ray.kill(actor, no_restart=True)
        psutil.wait_procs(processes, timeout=30)

        # run_ray has every actor up before its clock starts, so lag is the steady cost.
        result, progress = idle_replay(bench, bench.params(count), "ray")
    finally:
        ray.shutdown()

    return {
        "ray_bare_round_trip_s": round_trip_s,
        **lag_figures(progress, "ray"),
        "ray_start_s": init_s + actors_s,
        "ray_init_s": init_s,
        "ray_actors_ready_s": actors_s,
        "ray_actor_rss_mib": statistics.fmean(m.rss / MIB for m in memory),
        "ray_actor_uss_mib": statistics.fmean(m.uss / MIB for m in memory),
        "ray_unfinished": len(result.unfinished),
    }


# --- Spark -----------------------------------------------------------------------------------


def no_op_task(load_pipeline: bool = False) -> Callable[[Any], Any]:
    """A task that reads its partition to the end and yields nothing.

    Reading to the end matters, as the engine's tasks do: a Python worker that leaves input
    unread is not reused, and every task would then pay for a new worker. Made in a function
    so that Spark ships the code itself, not a reference to this module.
    """

    def task(rows: Any) -> Any:
        if load_pipeline:
            import anomaly.pipeline  # noqa: F401
        for _ in rows:
            pass
        return iter(())

    return task


def bare_job(sc: Any, count: int, task: Callable[[Any], Any] | None = None) -> None:
    """A job shaped as the engine's tick (one partition per customer) whose tasks do nothing."""
    customers = sc.parallelize([(i, None) for i in range(count)], count)
    customers.partitionBy(count, lambda i: i).mapPartitions(task or no_op_task()).collect()


def one_stage_job(sc: Any, count: int) -> None:
    """The bare job without ``partitionBy``: one stage, not two, so the shuffle's share shows."""
    sc.parallelize([(i, None) for i in range(count)], count).mapPartitions(no_op_task()).collect()


def measure_spark(bench: Bench, count: int) -> dict[str, float]:
    """Spark on local[cpus]: start-up, the bare job per tick, then an idle replay.

    The session made here is the one ``run_spark`` picks up (``getOrCreate``), warm, and stops
    at its end; the JVM itself is launched once per process, before the first customer count.
    """
    from anomaly.engines.spark_engine import spark_session

    started = time.perf_counter()
    session = spark_session(None, bench.cpus)
    try:
        session_s = time.perf_counter() - started
        sc = session.sparkContext
        # The first job also loads the pipeline into each Python worker, as an actor does.
        bare_job(sc, count, no_op_task(load_pipeline=True))
        first_job_s = time.perf_counter() - started - session_s

        bare_s = median_seconds(lambda: bare_job(sc, count), bench.rounds)
        one_stage_s = median_seconds(lambda: one_stage_job(sc, count), bench.rounds)

        result, progress = idle_replay(bench, bench.params(count), "spark")
    finally:
        session.stop()

    ticks = [t["seconds"] for t in result.details["ticks"]]
    tick_p50, tick_p95 = quantiles(ticks)
    return {
        "spark_bare_job_s": bare_s,
        "spark_one_stage_job_s": one_stage_s,
        **lag_figures(progress, "spark"),
        "spark_tick_p50_s": tick_p50,
        "spark_tick_p95_s": tick_p95,
        "spark_ticks": len(ticks),
        "spark_task_work_per_tick_s": task_work_per_tick(progress),
        "spark_start_s": session_s + first_job_s,
        "spark_session_s": session_s,
        "spark_first_job_s": first_job_s,
    }


def task_work_per_tick(progress: pd.DataFrame) -> float:
    """Median over ticks of the stage seconds all customers' tasks recorded in that tick.

    What is recorded: restore, query, series, detect and the anomaly write. Not recorded: the
    progress and checkpoint inserts that follow, and the task's own start and end.
    """
    replay = progress[progress["phase"] == "replay"]
    per_task = replay.drop_duplicates(["customer", "tick_first_minute"])
    work = per_task[list(TASK_STAGES)].sum(axis=1).groupby(per_task["tick_first_minute"]).sum()
    return float(work.median()) if len(work) else math.nan


def launch_spark_jvm(cpus: int) -> float:
    """Start and stop one session, so that every customer count finds the JVM running."""
    from anomaly.engines.spark_engine import spark_session

    started = time.perf_counter()
    session = spark_session(None, cpus)
    session.stop()
    return time.perf_counter() - started


def stop_spark_jvm() -> None:
    """Stop the JVM PySpark launched for this process, if any.

    PySpark keeps its gateway JVM until the Python process exits; a benchmark called from a
    longer-lived process (a test) should not leave it behind. The JVM exits when its stdin
    closes; the class attributes are reset so that a later session launches a new one.
    """
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None:
        return
    process = getattr(gateway, "proc", None)
    gateway.shutdown()
    if process is not None:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except Exception:  # noqa: BLE001 - any failure to exit in time ends in a kill
            process.kill()
    SparkContext._gateway = None
    SparkContext._jvm = None


@contextmanager
def engine_session(engine: str, cpus: int) -> Iterator[None]:
    """One local Ray for every run inside, started here and shut down on the way out (Ray).

    ``run_ray`` leaves a Ray it did not start running, so runs inside share one start-up.
    Spark needs nothing: its JVM stays up between sessions (see :func:`stop_spark_jvm`).
    """
    if engine != "ray":
        yield
        return

    import ray

    from anomaly.engines.ray_engine import start_ray

    start_ray(None, cpus)
    try:
        yield
    finally:
        ray.shutdown()


# --- a customer's idle tick, without an engine -------------------------------------------------


def direct_idle_tick(bench: Bench) -> float:
    """Median seconds of one idle customer's tick run in this process, as a Spark task runs it.

    A new :class:`CustomerWorker` restores the last checkpoint, queries one minute, finds
    nothing, and persists progress and a checkpoint: the floor under every engine's tick.
    """
    params = bench.params(1)
    customer = params.customers[0]
    run_id = f"bench-direct-{uuid.uuid4().hex[:8]}"
    minutes = iter(FIRST_MINUTE + i * MINUTE for i in range(bench.rounds + 1))

    def tick() -> None:
        worker = CustomerWorker(customer, params, bench.url, run_id, "direct", bench.client)
        worker.restore()
        minute = next(minutes)
        worker.process(minute, minute, phase="direct")

    return median_seconds(tick, bench.rounds)


# --- report ----------------------------------------------------------------------------------


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def markdown(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with (key, header) ``columns``; floats to 3 decimals."""

    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = [
        "| " + " | ".join(header for _, header in columns) + " |",
        "|" + "|".join("---:" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(row[key]) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


MAIN_COLUMNS = [
    ("customers", "N"),
    ("spark_bare_job_s", "spark bare job s"),
    ("spark_lag_p50_s", "spark idle lag p50 s"),
    ("spark_lag_p95_s", "spark idle lag p95 s"),
    ("ray_bare_round_trip_s", "ray bare round trip s"),
    ("ray_lag_p50_s", "ray idle lag p50 s"),
    ("ray_lag_p95_s", "ray idle lag p95 s"),
    ("lag_p50_ratio", "spark/ray lag p50"),
]
DETAIL_COLUMNS = [
    ("customers", "N"),
    ("spark_tick_p50_s", "spark tick p50 s"),
    ("spark_tick_p95_s", "spark tick p95 s"),
    ("spark_one_stage_job_s", "spark one-stage job s"),
    ("spark_task_work_per_tick_s", "recorded task work per tick s"),
    ("spark_start_s", "spark start s"),
    ("ray_start_s", "ray start s"),
    ("ray_actor_rss_mib", "ray actor RSS MiB"),
    ("ray_actor_uss_mib", "ray actor USS MiB"),
]


def report(figures: dict[str, Any]) -> str:
    """The printed report: the comparison table, then start-up, memory and the tick's parts."""
    rows = figures["rows"]
    machine = figures["machine"]
    settings = figures["settings"]
    lines = [
        f"machine: {machine['cores']} cores; Ray num_cpus={settings['cpus']}, Spark "
        f"local[{settings['cpus']}]; idle replay {settings['minutes']} minutes at "
        f"{settings['speed']:g}x, bare figures the median of {settings['rounds']}; "
        f"1-minute load average {machine['load_before']:.1f} before, "
        f"{machine['load_after']:.1f} after",
        "",
        markdown(rows, MAIN_COLUMNS),
        "",
        "Ray's bare round trip is the cost of asking every actor something and waiting for all",
        "answers. Ray's model never does that per minute (each actor runs its own loop), so",
        "Ray's idle lag, not the round trip, is the figure to set against Spark's.",
        "",
        markdown(rows, DETAIL_COLUMNS),
        "",
        f"Spark JVM launch with the first session: {figures['spark_jvm_s']:.3f} s (once per "
        "process, not in 'spark start').",
        f"One idle customer tick run directly in the driver (restore, query, progress, "
        f"checkpoint): {figures['direct_tick_s']:.3f} s.",
    ]
    slots = settings["cpus"]
    for row in rows:
        waves = math.ceil(row["customers"] / slots)
        estimate = row["spark_bare_job_s"] + waves * figures["direct_tick_s"]
        lines.append(
            f"N={row['customers']}: spark tick p50 {row['spark_tick_p50_s']:.3f} s ~ bare job "
            f"{row['spark_bare_job_s']:.3f} s + {waves} wave(s) of {slots} direct ticks = "
            f"{estimate:.3f} s"
        )
        expected = row["customers"] * settings["minutes"]
        for engine in ("spark", "ray"):
            if row[f"{engine}_minutes"] != expected:
                lines.append(
                    f"  note: {engine} persisted {row[f'{engine}_minutes']} of {expected} "
                    "customer-minutes"
                )
            if row[f"{engine}_backlog_minutes"]:
                lines.append(
                    f"  note: {engine} took {row[f'{engine}_backlog_minutes']} of {expected} "
                    "customer-minutes in ticks of several (it fell behind the clock); its lag "
                    "includes that wait"
                )
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_engines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--customers",
        type=int,
        nargs="+",
        default=list(DEFAULT_CUSTOMERS),
        help="customer counts N to measure (default: 1 8 32)",
    )
    parser.add_argument(
        "--minutes",
        type=int,
        default=10,
        help="simulated minutes of each idle replay (default: 10)",
    )
    parser.add_argument(
        "--speed", type=float, default=60.0, help="simulated seconds per wall second (default: 60)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="timed bare jobs / round trips per N, after one warm-up",
    )
    parser.add_argument(
        "--cpus",
        type=int,
        default=2,
        help="Ray CPUs and Spark task slots, as the engines (default: 2)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if min(args.customers) < 1 or args.minutes < 1 or args.speed <= 0 or args.rounds < 1:
        parser.error("customers, minutes and rounds must be >= 1 and speed > 0")
    return args


def measure(
    customers: Sequence[int], minutes: int, speed: float, rounds: int, cpus: int,
    keep_jvm: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Measure every customer count on both engines, in a ClickHouse of a temporary folder.

    Returns the figures: ``rows`` (one per customer count), the direct idle tick, the JVM's
    launch, the settings and the machine's load average around the measurement. The JVM is
    launched here (so no JVM may be running yet) and stopped at the end unless ``keep_jvm``.
    """
    figures: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "load_before": os.getloadavg()[0]},
        "settings": {"cpus": cpus, "minutes": minutes, "speed": speed, "rounds": rounds},
        "rows": [],
    }
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench-engines-") as folder:
        config_url = f"chdb:{Path(folder) / 'clickhouse'}"
        try:
            with Store(idle_params(1, config_url, 1, 1.0, 0.0).clickhouse) as store:
                client = store.client()
                create_events_table(client, DATABASE)
                bench = Bench(config_url, store.url, client, minutes, speed, rounds, cpus)
                figures["direct_tick_s"] = direct_idle_tick(bench)
                figures["spark_jvm_s"] = launch_spark_jvm(cpus)

                for count in customers:
                    print(f"measuring {count} customers ...", flush=True)
                    row: dict[str, Any] = {"customers": count}
                    row.update(measure_ray(bench, count))
                    row.update(measure_spark(bench, count))
                    row["lag_p50_ratio"] = ratio(row["spark_lag_p50_s"], row["ray_lag_p50_s"])
                    figures["rows"].append(row)
                client.close()
        finally:
            if not keep_jvm:
                stop_spark_jvm()

    figures["wall_s"] = time.perf_counter() - started
    figures["machine"]["load_after"] = os.getloadavg()[0]
    return figures


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure every customer count on both engines; print the report and return the figures."""
    args = parse_args(argv)
    figures = measure(args.customers, args.minutes, args.speed, args.rounds, args.cpus)
    print(report(figures))
    print(f"\nwall time {figures['wall_s']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        print(f"figures written to {args.json}")
    return figures


if __name__ == "__main__":
    main()
