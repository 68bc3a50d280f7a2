"""Spark engine: each tick is one job whose partitions are customers; a tick ends when its
slowest customer ends, and the next tick starts after it.

Why an RDD loop and not Structured Streaming: the source is ClickHouse queried per customer
with our own GROUP BY, which Structured Streaming has no source for, and the seed's model is
stage-synchronised micro-batches. A driver loop of jobs over a customer-partitioned RDD is
that model with nothing added: the tasks query, build series, detect and persist themselves;
the driver only decides which minutes the tick covers. Detector state lives in ClickHouse's
detector_state table: each task restores its customer's checkpoint and writes a new one.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from anomaly.clock import MINUTE, Clock, latest_processable, processable_at
from anomaly.config import Params
from anomaly.engines import EngineResult, RunPlan
from anomaly.errors import EngineError

log = logging.getLogger(__name__)

# Attempts per task in local mode (Spark's local default is 1: no retry at all).
TASK_ATTEMPTS = 4


def spark_session(master: str | None, slots: int) -> Any:
    """A SparkSession on 127.0.0.1 (local[slots]) or on ``master``, UI off."""
    from anomaly.java import ensure_java

    ensure_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.appName("realtime-anomaly-detector")
        .master(master or f"local[{slots},{TASK_ATTEMPTS}]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.python.worker.reuse", "true")
        .config("spark.task.maxFailures", str(TASK_ATTEMPTS))
    )
    if master is None:
        builder = builder.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


# Clients cached per Python worker process (Spark reuses workers across tasks), as a pool
# per executor would be: reconnecting costs three round trips on every task otherwise.
_CLIENTS: dict[tuple[str, int], Any] = {}


def _customer_tick(
    index: int, params: Params, url: str, run_id: str, first: datetime, last: datetime,
    phase: str, clock: Clock | None,
) -> dict[str, Any] | None:  # fmt: skip
    """Run in a Spark task: restore the customer's detector, process the minutes, persist."""
    from anomaly.pipeline import CustomerWorker
    from anomaly.store import connect

    customer = params.customers[index]
    key = (url, params.clickhouse.max_threads)
    if key not in _CLIENTS:
        _CLIENTS[key] = connect(url, max_threads=params.clickhouse.max_threads)

    started = time.time()
    worker = CustomerWorker(customer, params, url, run_id, engine="spark", client=_CLIENTS[key])
    done = worker.restore()
    restore_s = time.time() - started
    if done is not None and done >= last:
        return None  # a retried task whose work was already persisted
    start = first if done is None or done < first else done + MINUTE
    return worker.process(start, last, phase=phase, clock=clock, restore_s=restore_s).as_dict()


def _tick(sc: Any, params: Params, url: str, run_id: str, first: datetime, last: datetime,
          phase: str, clock: Clock | None) -> list[dict[str, Any]]:  # fmt: skip
    """One synchronised tick: a job with one partition per customer."""
    count = len(params.customers)

    def task(rows: Iterator[tuple[int, None]]) -> Iterator[dict[str, Any]]:
        for index, _ in rows:
            report = _customer_tick(index, params, url, run_id, first, last, phase, clock)
            if report is not None:
                yield report

    customers = sc.parallelize([(i, None) for i in range(count)], count)
    return customers.partitionBy(count, lambda i: i).mapPartitions(task).collect()


def run_spark(
    params: Params,
    url: str,
    plan: RunPlan,
    *,
    master: str | None = None,
    slots: int = 2,
    on_progress: Callable[[int], None] | None = None,
    count_done: Callable[[], int] | None = None,
) -> EngineResult:
    """Run ``plan`` as a loop of Spark jobs, one tick after another, until the last minute."""
    session = spark_session(master, slots)
    sc = session.sparkContext
    ticks: list[dict[str, Any]] = []
    try:
        warm_started = time.time()
        if plan.warmup_first is not None and plan.warmup_last is not None:
            log.info("warming up %d customers on %s .. %s", len(params.customers),
                     plan.warmup_first, plan.warmup_last)  # fmt: skip
            _tick(sc, params, url, plan.run_id, plan.warmup_first, plan.warmup_last, "warmup",
                  None)  # fmt: skip
        warmup_seconds = time.time() - warm_started

        clock = plan.clock()
        replay_started = time.time()
        next_minute = plan.replay_first
        while next_minute <= plan.replay_last:
            ready = latest_processable(clock, plan.delay_seconds)
            if ready < next_minute:
                wait = processable_at(clock, next_minute, plan.delay_seconds) - time.time()
                time.sleep(min(max(wait, 0.001), 0.5))
                continue
            upto = min(ready, plan.replay_last)
            tick_started = time.time()
            reports = _tick(sc, params, url, plan.run_id, next_minute, upto, "replay", clock)
            ticks.append({"first": next_minute, "last": upto, "seconds": time.time() - tick_started,
                          "customers": len(reports)})  # fmt: skip
            next_minute = upto + MINUTE
            if on_progress and count_done:
                on_progress(count_done())
        replay_seconds = time.time() - replay_started
    except Exception as err:
        if type(err).__module__.startswith(("py4j", "pyspark")):
            raise EngineError(f"Spark run {plan.run_id} failed: {_first_line(err)}") from err
        raise
    finally:
        session.stop()

    return EngineResult(plan.run_id, "spark", warmup_seconds, replay_seconds, [],
                        {"ticks": ticks})  # fmt: skip


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
