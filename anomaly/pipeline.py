"""One customer's work for a range of minutes: query, build series, detect, persist.

Both engines run exactly this; they differ only in who calls it and when. A Ray actor keeps
one :class:`CustomerWorker` alive for the whole run; a Spark task builds one per tick and
restores the detector from its last checkpoint in ClickHouse.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import psutil

from anomaly.clock import MINUTE, Clock, minute_range, processable_at
from anomaly.config import CustomerConfig, Params
from anomaly.detector import make_detector
from anomaly.faults import trip
from anomaly.queries import query_series, to_points
from anomaly.rootcause import detect_and_explain, keep_causes
from anomaly.store import (
    Retrying,
    connect,
    load_state,
    save_state,
    write_anomalies,
    write_progress,
)

log = logging.getLogger(__name__)


# How a worker process (a Ray actor, a Spark Python worker) logs: WARNING and above, naming
# the level and logger like the driver does, so a user sees which customer a problem concerns.
WORKER_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def configure_worker_logging() -> None:
    """Log WARNING and above to stderr in a worker process (no-op if already configured)."""
    logging.basicConfig(level=logging.WARNING, format=WORKER_LOG_FORMAT)


@dataclass(frozen=True)
class TickReport:
    """What one tick of one customer did and how long each stage took (seconds)."""

    customer: str
    first_minute: datetime
    last_minute: datetime
    minutes: int
    rows_scanned: int
    series_count: int
    points: int
    anomaly_updates: int
    restore_s: float
    query_s: float
    series_s: float
    detect_s: float
    persist_s: float
    started_at: float
    persisted_at: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CustomerWorker:
    """Holds one customer's ClickHouse client and detector, and processes minute ranges."""

    def __init__(self, customer: CustomerConfig, params: Params, url: str, run_id: str,
                 engine: str, client: Any = None):  # fmt: skip
        self.customer = customer
        self.params = params
        self.run_id = run_id
        self.engine = engine
        self.database = params.clickhouse.database
        self._own_client = client is None
        self.client = client or connect(url, max_threads=params.clickhouse.max_threads)
        # The customer's own detector settings where its params entry has them.
        self.settings = params.detector_for(customer)
        self.detector = make_detector(customer.name, self.settings)
        self.retrying = Retrying(customer.name, params.run.retry_seconds)
        self.untracked_series = 0
        self._cap_warned = False
        self.last_minute: datetime | None = None
        self._last_checkpoint: datetime | None = None
        self._checkpoint_s = 0.0
        self._process = psutil.Process()
        self._process.cpu_percent()

    def restore(self) -> datetime | None:
        """Load the newest checkpoint of this customer in this run; return its minute."""
        saved = self.retrying("restore", load_state, self.client, self.database, self.run_id,
                              self.customer.name)  # fmt: skip
        if saved is None:
            return None
        minute, kind, blob = saved
        detector_class = type(self.detector)
        self.detector = detector_class.from_bytes(self.customer.name, self.settings, blob)
        self.last_minute = self._last_checkpoint = minute
        log.debug("customer %s restored %s state at %s", self.customer.name, kind, minute)
        return minute

    def process(
        self, first: datetime, last: datetime, *, phase: str, clock: Clock | None = None,
        restore_s: float = 0.0,
    ) -> TickReport:  # fmt: skip
        """Process minutes ``first`` .. ``last`` (inclusive) in one query, and persist.

        The minutes must follow the last one processed: an engine never skips or repeats one.
        """
        if self.last_minute is not None and first != self.last_minute + MINUTE:
            raise ValueError(
                f"customer {self.customer.name!r}: minute {first} does not follow the last "
                f"processed minute {self.last_minute}"
            )
        started = time.time()

        frame = self.retrying("query", query_series, self.client, self.customer, self.database,
                              first, last)  # fmt: skip
        if phase == "replay" and self.customer.name == self.params.run.wait_customer:
            minutes = int((last - first) / MINUTE) + 1
            time.sleep(self.params.run.wait_seconds_per_minute * minutes)
        queried = time.time()

        batch = to_points(frame, self.customer, first, last)
        points = self._within_cap(batch.points, first)
        built = time.time()

        updates = detect_and_explain(
            self.detector, points, self.customer, self.params.root_cause.top
        )
        detected = time.time()
        trip(self.customer.name, first, last)

        # Anomalies, then progress, then the checkpoint: a crash anywhere re-processes the tick
        # from the previous checkpoint, and re-writing anomalies or progress is harmless.
        updates = self.retrying("root cause read", keep_causes, self.client, self.database,
                                self.run_id, self.customer, updates)  # fmt: skip
        self.retrying("anomaly write", write_anomalies, self.client, self.database, self.run_id,
                      self.engine, updates, detected)  # fmt: skip
        persisted_at = time.time()
        stages = (restore_s, queried - started, built - queried, detected - built,
                  persisted_at - detected)  # fmt: skip
        self._write_progress(batch.rows_scanned, len(points), updates, first, last, phase,
                             clock, started, persisted_at, stages)  # fmt: skip
        self._checkpoint(last)
        self.last_minute = last

        return TickReport(
            customer=self.customer.name,
            first_minute=first,
            last_minute=last,
            minutes=batch.minutes,
            rows_scanned=batch.rows_scanned,
            series_count=self.detector.series_count,
            points=len(points),
            anomaly_updates=len(updates),
            restore_s=restore_s,
            query_s=queried - started,
            series_s=built - queried,
            detect_s=detected - built,
            persist_s=persisted_at - detected,
            started_at=started,
            persisted_at=persisted_at,
        )

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def _checkpoint(self, last: datetime) -> None:
        every = self.params.run.checkpoint_every_minutes * MINUTE
        if self._last_checkpoint is not None and last - self._last_checkpoint < every:
            self._checkpoint_s = 0.0
            return
        started = time.time()
        self.retrying(
            "checkpoint", save_state, self.client, self.database, self.run_id,
            self.customer.name, last, self.settings.kind, self.detector.series_count,
            self.detector.to_bytes(),
        )  # fmt: skip
        self._last_checkpoint = last
        self._checkpoint_s = time.time() - started

    def _write_progress(
        self, rows_scanned: int, points: int, updates: list[Any], first: datetime,
        last: datetime, phase: str, clock: Clock | None, started: float, persisted_at: float,
        stages: tuple[float, float, float, float, float],
    ) -> None:  # fmt: skip
        minutes = minute_range(first, last)
        opened: dict[datetime, int] = {}
        for anomaly in updates:
            if anomaly.end_minute is None:
                opened[anomaly.detected_minute] = opened.get(anomaly.detected_minute, 0) + 1
        delay = self.params.run.data_delay_seconds
        cpu = self._process.cpu_percent()
        restore_s, query_s, series_s, detect_s, persist_s = stages
        rows = [
            {
                "run_id": self.run_id,
                "engine": self.engine,
                "customer": self.customer.name,
                "minute": minute,
                "phase": phase,
                "tick_first_minute": first,
                "tick_minutes": len(minutes),
                "processable_at": _ts(
                    processable_at(clock, minute, delay) if clock is not None else started
                ),
                "started_at": _ts(started),
                "persisted_at": _ts(persisted_at),
                "rows_scanned": rows_scanned,
                "series_count": self.detector.series_count,
                "points": points,
                "anomalies_opened": opened.get(minute, 0),
                "restore_s": restore_s,
                "query_s": query_s,
                "series_s": series_s,
                "detect_s": detect_s,
                "persist_s": persist_s,
                "checkpoint_s": self._checkpoint_s,
                "cpu_percent": cpu,
            }
            for minute in minutes
        ]
        self.retrying("progress write", write_progress, self.client, self.database, rows)

    def _within_cap(self, points: pd.DataFrame, first: datetime) -> pd.DataFrame:
        """``points`` without those of new series beyond the customer's ``max_series``.

        Known series always keep their points. New series are admitted while there is room,
        those with the most events first (then by key, so every engine admits the same ones
        for the same ticks); the others' points are dropped, ``untracked_series`` counts them
        in the latest tick, and the first time a customer overflows a WARNING says so.
        """
        cap, tracked = self.customer.max_series, self.detector.series_count
        if tracked + len(points) <= cap:
            return points  # cannot overflow: the common case costs nothing

        keys = points["series_key"].to_numpy()
        known = np.isin(keys, self.detector.series_keys)
        new = points.loc[~known, ["series_key", "group_size"]]
        sizes = new.groupby("series_key")["group_size"].max().reset_index()
        room = max(cap - tracked, 0)
        if len(sizes) <= room:
            return points

        sizes = sizes.sort_values(["group_size", "series_key"], ascending=[False, True])
        admitted = sizes["series_key"].to_numpy()[:room]
        dropped = len(sizes) - room
        if not self._cap_warned:
            self._cap_warned = True
            log.warning("customer %s: more series than max_series=%d at minute %s; %d new "
                        "series are not tracked (raise max_series or drop a dimension)",
                        self.customer.name, cap, first, dropped)  # fmt: skip
        self.untracked_series = dropped
        return points[known | np.isin(keys, admitted)].reset_index(drop=True)


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)
