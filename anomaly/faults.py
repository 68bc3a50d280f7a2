"""Faults injected on purpose, to show that a run survives them: a customer's worker is killed
or fails in the middle of a tick, once, at a chosen minute.

A fault is armed by the ANOMALY_FAULT environment variable (JSON), which worker processes of
both engines inherit; without it :func:`trip` costs one dictionary lookup per tick. The fault
fires once across every process and retry: its marker file is created atomically when it fires,
and a marker that exists disarms it.

    ANOMALY_FAULT='{"action": "kill", "customer": "shopfront",
                    "minute": "2026-01-05 08:35:00", "marker": "/tmp/fault-fired"}'

``kill`` sends SIGKILL to the worker's own process (a crash: nothing is cleaned up);
``fail`` raises :class:`InjectedFault` (a task error, which Spark retries).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from datetime import datetime

from anomaly.errors import AnomalyError, ConfigError

FAULT_ENV = "ANOMALY_FAULT"
ACTIONS = ("kill", "fail")


class InjectedFault(AnomalyError):
    """The failure a ``fail`` fault raises."""


@dataclass(frozen=True)
class Fault:
    """Where and how a fault fires: in ``customer``'s tick covering ``minute``."""

    action: str
    customer: str
    minute: datetime
    marker: str

    def to_env(self) -> str:
        minute = self.minute.isoformat(sep=" ")
        fields = {"action": self.action, "customer": self.customer, "minute": minute}
        return json.dumps({**fields, "marker": self.marker})


def parse_fault(text: str) -> Fault:
    """The fault described by ``text`` (the JSON of ANOMALY_FAULT); a clear error if malformed."""
    try:
        raw = json.loads(text)
        fault = Fault(raw["action"], raw["customer"], datetime.fromisoformat(raw["minute"]),
                      raw["marker"])  # fmt: skip
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{FAULT_ENV} {text!r} must be JSON with action, customer, minute and marker: {err}"
        ) from None
    if fault.action not in ACTIONS:
        raise ConfigError(f"{FAULT_ENV} action {fault.action!r} is not known; allowed: kill, fail")
    return fault


_parsed: dict[str, Fault] = {}


def trip(customer: str, first: datetime, last: datetime) -> None:
    """Fire the armed fault if it names ``customer`` and a minute in ``first`` .. ``last``."""
    text = os.environ.get(FAULT_ENV)
    if not text:
        return
    if text not in _parsed:
        _parsed[text] = parse_fault(text)
    fault = _parsed[text]
    if fault.customer != customer or not first <= fault.minute <= last:
        return
    try:
        os.close(os.open(fault.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return  # fired already, in this process or another

    if fault.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault: customer {customer!r} failed at minute {fault.minute}")
