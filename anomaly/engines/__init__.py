"""The two engines that drive :class:`anomaly.pipeline.CustomerWorker`: Ray and Spark.

Both take a :class:`RunPlan` (a warm-up range replayed before the clock starts, then the
replayed minutes on a simulated clock) and leave their results in ClickHouse's progress,
anomalies and detector_state tables, so one analysis reads either.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from anomaly.clock import MINUTE, SimulatedClock
from anomaly.errors import EngineError

# Seconds between the clock's creation and its start, so every worker sees minute one arrive.
CLOCK_LEAD_SECONDS = 1.0


def check_reachable(address: str, what: str, timeout: float = 5.0) -> None:
    """Raise EngineError naming ``address`` unless a TCP connection to its host:port opens.

    Ray and Spark retry a wrong cluster address for minutes before failing with pages of
    traces; one connection attempt says at once which address is wrong.
    """
    host, _, port = address.rpartition("/")[2].rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"{what} {address!r} must end in host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise EngineError(f"{what} {address!r} does not answer: {err.strerror or err}") from None


@dataclass(frozen=True)
class RunPlan:
    """Which minutes a run covers. Warm-up minutes are processed before the clock starts."""

    run_id: str
    engine: str
    warmup_first: datetime | None
    warmup_last: datetime | None
    replay_first: datetime
    replay_last: datetime
    speed: float
    delay_seconds: float

    @property
    def replay_minutes(self) -> int:
        return int((self.replay_last - self.replay_first) / MINUTE) + 1

    def clock(self) -> SimulatedClock:
        """A clock showing ``replay_first`` a moment from now, running at ``speed``."""
        return SimulatedClock(self.replay_first, time.time() + CLOCK_LEAD_SECONDS, self.speed)

    def replay_wall_seconds(self) -> float:
        """Wall seconds until the last replayed minute becomes processable."""
        span = (self.replay_last + MINUTE - self.replay_first).total_seconds()
        return CLOCK_LEAD_SECONDS + (span + self.delay_seconds) / self.speed


def make_plan(
    engine: str, first_minute: datetime, history_minutes: int, minutes: int, speed: float,
    delay_seconds: float, run_id: str | None = None,
) -> RunPlan:  # fmt: skip
    """Plan a run over a dataset starting at ``first_minute``: history, then replay."""
    replay_first = first_minute + timedelta(minutes=history_minutes)
    warmup = (first_minute, replay_first - MINUTE) if history_minutes > 0 else (None, None)
    return RunPlan(
        run_id=run_id or f"{engine}-{uuid.uuid4().hex[:10]}",
        engine=engine,
        warmup_first=warmup[0],
        warmup_last=warmup[1],
        replay_first=replay_first,
        replay_last=replay_first + timedelta(minutes=minutes - 1),
        speed=speed,
        delay_seconds=delay_seconds,
    )


@dataclass
class EngineResult:
    """What the driver saw: wall times and any customer that did not finish."""

    run_id: str
    engine: str
    warmup_seconds: float
    replay_seconds: float
    unfinished: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
