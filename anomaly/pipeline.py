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

import psutil

from anomaly.clock import MINUTE, Clock, minute_range, processable_at
from anomaly.config import CustomerConfig, Params
from anomaly.detector import make_detector
from anomaly.queries import query_series, to_points
from anomaly.store import connect, load_state, save_state, write_anomalies, write_progress

log = logging.getLogger(__name__)


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
        self.last_minute: datetime | None = None
        self._last_checkpoint: datetime | None = None
        self._checkpoint_s = 0.0
        self._process = psutil.Process()
        self._process.cpu_percent()

    def restore(self) -> datetime | None:
        """Load the newest checkpoint of this customer in this run; return its minute."""
        saved = load_state(self.client, self.database, self.run_id, self.customer.name)
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

        frame = query_series(self.client, self.customer, self.database, first, last)
        if phase == "replay" and self.customer.name == self.params.run.wait_customer:
            minutes = int((last - first) / MINUTE) + 1
            time.sleep(self.params.run.wait_seconds_per_minute * minutes)
        queried = time.time()

        batch = to_points(frame, self.customer, first, last)
        points = batch.points
        built = time.time()

        updates = self.detector.process(points)
        detected = time.time()

        # Anomalies, then progress, then the checkpoint: a crash anywhere re-processes the tick
        # from the previous checkpoint, and re-writing anomalies or progress is harmless.
        write_anomalies(self.client, self.database, self.run_id, self.engine, updates, detected)
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
        save_state(
            self.client, self.database, self.run_id, self.customer.name, last,
            self.settings.kind, self.detector.series_count, self.detector.to_bytes(),
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
        write_progress(self.client, self.database, rows)


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)
