"""Ray engine: one actor per customer, each on its own loop; nobody waits for anybody.

Each actor owns a :class:`CustomerWorker`, reads the shared simulated clock, takes every
complete minute in order (a backlog in one query), persists, and stops after the last
minute. The driver only starts actors, shows progress and collects what they report.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from anomaly.clock import MINUTE, Clock, follow_clock
from anomaly.config import CustomerConfig, Params
from anomaly.engines import EngineResult, RunPlan, check_reachable
from anomaly.errors import EngineError, worker_cause
from anomaly.pipeline import CustomerWorker, configure_worker_logging

log = logging.getLogger(__name__)

# Longest an idle actor sleeps before looking at the clock again (wall seconds).
MAX_IDLE_SLEEP = 0.5


class CustomerActor:
    """A customer's realtime loop, living in its own Ray worker process.

    Declared as a Ray actor in :func:`actor_class`. Ray restarts the process if it dies; the
    constructor then restores the detector from its newest checkpoint, and ``run`` (retried by
    Ray) continues at the first unprocessed minute.
    """

    def __init__(self, customer: CustomerConfig, params: Params, url: str, run_id: str):
        configure_worker_logging()
        self.worker = CustomerWorker(customer, params, url, run_id, engine="ray")
        self.worker.restore()

    def warm_up(self, first: datetime, last: datetime) -> dict[str, Any] | None:
        """Process the history before the clock starts, in one query."""
        done = self.worker.last_minute
        if done is not None and done >= last:
            return None
        start = first if done is None else done + MINUTE
        return self.worker.process(start, last, phase="warmup").as_dict()

    def run(self, clock: Clock, first: datetime, last: datetime, delay: float) -> dict[str, Any]:
        """Process ``first`` .. ``last`` as each minute becomes processable; then return."""
        done = self.worker.last_minute
        start = first if done is None or done < first else done + MINUTE

        def tick(since: datetime, upto: datetime) -> None:
            self.worker.process(since, upto, phase="replay", clock=clock)

        ticks = follow_clock(clock, start, last, delay, tick, max_sleep=MAX_IDLE_SLEEP)
        return {"customer": self.worker.customer.name, "ticks": ticks, "pid": os.getpid()}

    def pid(self) -> int:
        return os.getpid()


def actor_class(max_restarts: int = 3) -> Any:
    """The Ray actor class: no CPU reserved (each is a process the OS schedules), restartable."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=max_restarts, max_task_retries=max_restarts)(
        CustomerActor
    )


def start_ray(address: str | None, num_cpus: int) -> bool:
    """Join ``address`` or start a local Ray on 127.0.0.1; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        if address != "auto":
            check_reachable(address, "Ray address")
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
                 runtime_env={"py_modules": [_package_dir()]})  # fmt: skip
        return True
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level=logging.WARNING, log_to_driver=True)  # fmt: skip
    address = ray.util.get_node_ip_address()
    if address != "127.0.0.1":
        ray.shutdown()
        raise EngineError(
            f"local Ray came up on {address}, not 127.0.0.1: ray was imported before the "
            "anomaly package; set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before importing ray"
        )
    return True


def run_ray(
    params: Params,
    url: str,
    plan: RunPlan,
    *,
    address: str | None = None,
    num_cpus: int = 2,
    on_progress: Callable[[int], None] | None = None,
    count_done: Callable[[], int] | None = None,
) -> EngineResult:
    """Run ``plan`` with one actor per customer and wait until every actor has finished.

    Parameters
    ----------
    on_progress, count_done:
        The driver's progress display: ``count_done()`` returns how many replayed
        customer-minutes are persisted, ``on_progress(n)`` shows it.
    """
    import ray

    started_ray = start_ray(address, num_cpus)
    actors: list[Any] = []
    try:
        Actor = actor_class()
        actors = [Actor.remote(c, params, url, plan.run_id) for c in params.customers]

        warm_started = time.time()
        ray.get([a.pid.remote() for a in actors])  # every actor up before any clock starts
        if plan.warmup_first is not None:
            log.info("warming up %d customers on %s .. %s", len(actors), plan.warmup_first,
                     plan.warmup_last)  # fmt: skip
            ray.get([a.warm_up.remote(plan.warmup_first, plan.warmup_last) for a in actors])
        warmup_seconds = time.time() - warm_started

        clock = plan.clock()
        replay_started = time.time()
        log.info("replaying %d minutes at %.0fx on %d actors", plan.replay_minutes, plan.speed,
                 len(actors))  # fmt: skip
        pending = [
            a.run.remote(clock, plan.replay_first, plan.replay_last, plan.delay_seconds)
            for a in actors
        ]
        results = _wait(pending, plan, on_progress, count_done)
        replay_seconds = time.time() - replay_started
    except ray.exceptions.RayError as err:
        raise EngineError(f"Ray run {plan.run_id} failed: {worker_cause(err)}") from err
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started_ray:
            ray.shutdown()

    finished = {r["customer"] for r in results}
    unfinished = [c.name for c in params.customers if c.name not in finished]
    return EngineResult(plan.run_id, "ray", warmup_seconds, replay_seconds, unfinished,
                        {"actors": results})  # fmt: skip


def _wait(
    pending: list[Any],
    plan: RunPlan,
    on_progress: Callable[[int], None] | None,
    count_done: Callable[[], int] | None,
) -> list[dict[str, Any]]:
    """Wait for every actor's run, showing progress; give up well after the planned end."""
    import ray

    deadline = time.time() + 3 * plan.replay_wall_seconds() + 120
    results: list[dict[str, Any]] = []
    while pending and time.time() < deadline:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        results.extend(ray.get(ready))
        if on_progress and count_done:
            on_progress(count_done())
    if pending:
        log.warning("%d customers had not finished by the deadline; stopping them", len(pending))
    return results


def _package_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
