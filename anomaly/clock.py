"""Clocks that say what time it is: real for production, simulated for replays.

A minute is processable once it is complete and the data delay has passed:
``now >= minute + 1 minute + delay``. Clocks are small frozen dataclasses so they travel
to Ray actors and Spark tasks unchanged, and every process reads the same time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MINUTE = timedelta(minutes=1)


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


@dataclass(frozen=True)
class SimulatedClock:
    """Simulated time that starts at ``sim_start`` at wall time ``wall_start``.

    ``speed`` is simulated seconds per wall second (60 replays a minute per second).
    Times are naive datetimes in UTC.
    """

    sim_start: datetime
    wall_start: float
    speed: float

    def now(self) -> datetime:
        return self.at_wall(time.time())

    def at_wall(self, wall: float) -> datetime:
        return self.sim_start + timedelta(seconds=(wall - self.wall_start) * self.speed)

    def wall_at(self, moment: datetime) -> float:
        """The wall time (epoch seconds) at which the simulated clock shows ``moment``."""
        return self.wall_start + (moment - self.sim_start).total_seconds() / self.speed


@dataclass(frozen=True)
class RealClock:
    """Wall time, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC).replace(tzinfo=None)

    def wall_at(self, moment: datetime) -> float:
        return moment.replace(tzinfo=UTC).timestamp()


Clock = SimulatedClock | RealClock


def latest_processable(clock: Clock, delay_seconds: float) -> datetime:
    """The newest minute that is complete, ``delay_seconds`` after its end."""
    return floor_minute(clock.now() - timedelta(seconds=delay_seconds)) - MINUTE


def processable_at(clock: Clock, minute: datetime, delay_seconds: float) -> float:
    """Wall time at which ``minute`` became (or becomes) processable."""
    return clock.wall_at(minute + MINUTE + timedelta(seconds=delay_seconds))


def minute_range(first: datetime, last: datetime) -> list[datetime]:
    """Every minute from ``first`` to ``last``, both included."""
    count = int((last - first) / MINUTE) + 1
    return [first + i * MINUTE for i in range(max(count, 0))]


def follow_clock(
    clock: Clock,
    first: datetime,
    last: datetime,
    delay_seconds: float,
    process: Callable[[datetime, datetime], object],
    max_sleep: float = 0.5,
) -> int:
    """Call ``process(from, to)`` for ``first`` .. ``last`` as the minutes become processable.

    Each call covers every minute processable by then (a backlog in one call), in order,
    never skipping or repeating one. Returns the number of calls (ticks).
    """
    ticks = 0
    next_minute = first
    while next_minute <= last:
        ready = latest_processable(clock, delay_seconds)
        if ready < next_minute:
            wait = processable_at(clock, next_minute, delay_seconds) - time.time()
            time.sleep(min(max(wait, 0.001), max_sleep))
            continue
        upto = min(ready, last)
        process(next_minute, upto)
        next_minute = upto + MINUTE
        ticks += 1
    return ticks
