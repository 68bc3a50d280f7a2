"""ClickHouse access for the whole project: connect by URL, and read or write our tables.

``chdb:<dir>`` starts (or reuses) the embedded endpoint over that chDB directory, then every
process talks HTTP to it exactly as to a real server; ``http(s)://host:port`` is a real server.
User and password come from CLICKHOUSE_USER and CLICKHOUSE_PASSWORD, never from code.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import clickhouse_connect
import pandas as pd
from clickhouse_connect.driver.exceptions import OperationalError

from anomaly.config import ClickHouseSettings, redact
from anomaly.errors import StoreError, first_line
from anomaly.records import Anomaly
from anomaly.schema import ensure_schema
from anomaly.sql import quote

log = logging.getLogger(__name__)

# While the server is down, the HTTP layers under clickhouse-connect log a WARNING on every
# failed attempt; Retrying logs one per customer per outage instead, carrying the same error.
for _noisy in ("urllib3.connectionpool", "clickhouse_connect.driver._backend.http_sync"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

CONNECT_ATTEMPTS = 4

# Backoff between retries of a call whose server could not be reached (wall seconds): doubles
# from the first to the longest, so a restarted server is noticed within the longest wait.
RETRY_FIRST_WAIT = 0.25
RETRY_LONGEST_WAIT = 4.0

T = TypeVar("T")


def connect(url: str, *, max_threads: int | None = None, attempts: int = CONNECT_ATTEMPTS) -> Any:
    """A clickhouse-connect client for an ``http(s)://`` URL, retrying with backoff.

    Parameters
    ----------
    url:
        ``http://127.0.0.1:8123`` and the like. A user and password in the URL are accepted
        but the environment (CLICKHOUSE_USER, CLICKHOUSE_PASSWORD) is the better place.
    max_threads:
        ClickHouse's per-query thread cap, sent with every query of this client.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StoreError(f"ClickHouse URL {redact(url)!r} must be http(s)://host:port")
    settings = {"max_threads": max_threads} if max_threads else {}
    options: dict[str, Any] = dict(
        host=parts.hostname,
        port=parts.port or (8443 if parts.scheme == "https" else 8123),
        secure=parts.scheme == "https",
        username=parts.username or os.environ.get("CLICKHOUSE_USER", "default"),
        password=parts.password or os.environ.get("CLICKHOUSE_PASSWORD", ""),
        # One HTTP session per query would serialise concurrent queries of a client.
        autogenerate_session_id=False,
        # The embedded endpoint does not speak compressed bodies; loopback needs none.
        compress=parts.hostname not in ("127.0.0.1", "localhost"),
        settings=settings,
        # A server that accepts but never answers must not hold a run for the driver's
        # default 5 minutes per attempt; no query of ours comes near this.
        connect_timeout=10,
        send_receive_timeout=60,
    )

    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return clickhouse_connect.get_client(**options)
        except Exception as err:  # noqa: BLE001 - the driver raises many kinds on connect
            if attempt == attempts:
                raise StoreError(
                    f"cannot reach ClickHouse at {redact(url)} after {attempts} attempts: "
                    f"{type(err).__name__}: {redact(str(err))}"
                ) from None
            log.warning(
                "ClickHouse at %s not reachable (%s); retrying", redact(url), redact(str(err))
            )
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


class Retrying:
    """Runs one customer's ClickHouse calls, retrying with backoff while the server is down.

    Only failures to reach the server (refused or broken connections, timeouts: the driver's
    OperationalError) are retried; a statement the server refuses fails at once. An outage
    logs one WARNING for the customer when it starts and one INFO line when the server answers
    again; a call still failing after ``budget_seconds`` raises StoreError. Every write of the
    pipeline replaces its row when repeated, so retrying a call that did reach the server
    before the connection broke is harmless.
    """

    def __init__(self, customer: str, budget_seconds: float, sleep: Callable[[float], None]
                 = time.sleep):  # fmt: skip
        self.customer = customer
        self.budget_seconds = budget_seconds
        self.outages = 0
        self._sleep = sleep

    def __call__(self, what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call(*args, **kwargs)``; ``what`` names the step in messages."""
        failed_at: float | None = None
        wait = RETRY_FIRST_WAIT
        while True:
            try:
                result = call(*args, **kwargs)
            except OperationalError as err:
                now = time.monotonic()
                if failed_at is None:
                    failed_at = now
                    self.outages += 1
                    log.warning("customer %s: ClickHouse unreachable during %s (%s); retrying "
                                "for up to %.0f s", self.customer, what,
                                redact(first_line(err)), self.budget_seconds)  # fmt: skip
                if now - failed_at + wait > self.budget_seconds:
                    raise StoreError(
                        f"customer {self.customer!r}: ClickHouse unreachable for "
                        f"{now - failed_at:.0f} s during {what}: {redact(first_line(err))}"
                    ) from None
                self._sleep(wait)
                wait = min(wait * 2, RETRY_LONGEST_WAIT)
                continue
            if failed_at is not None:
                log.info("customer %s: ClickHouse answers again after %.1f s (%s)",
                         self.customer, time.monotonic() - failed_at, what)  # fmt: skip
            return result


class Store:
    """The driver's handle on ClickHouse: starts the embedded endpoint when the URL asks.

    Use as a context manager; on exit it stops the endpoint only if it started it (one that a
    JupyterLab session or another run left serving is reused and left running).
    """

    def __init__(self, settings: ClickHouseSettings):
        self.settings = settings
        self.url: str = settings.url
        self._endpoint: Any = None

    def __enter__(self) -> Store:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        if self.settings.embedded:
            from anomaly.endpoint import ensure_endpoint

            self.url, self._endpoint = ensure_endpoint(self.settings.data_dir)
        client = self.client()
        ensure_schema(client, self.settings.database)
        client.close()

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None

    def client(self) -> Any:
        return connect(self.url, max_threads=self.settings.max_threads)

    @property
    def endpoint_pid(self) -> int | None:
        """The process id of the embedded endpoint this store started (None otherwise)."""
        return self._endpoint.pid if self._endpoint is not None else None


# --- writing ------------------------------------------------------------------------------


def write_anomalies(
    client: Any,
    database: str,
    run_id: str,
    engine: str,
    anomalies: Iterable[Anomaly],
    persisted_at: float,
) -> int:
    """Insert anomaly versions; the version is the minute the record describes, so an ended
    anomaly replaces its open version and writing either again is harmless."""
    rows = [a.as_row() for a in anomalies]
    if not rows:
        return 0
    frame = pd.DataFrame(rows)
    latest = pd.to_datetime(frame["end_minute"]).fillna(pd.to_datetime(frame["detected_minute"]))
    frame["version"] = (latest.astype("int64") // 10**9).astype("uint64")
    frame["run_id"] = run_id
    frame["engine"] = engine
    frame["persisted_at"] = pd.Timestamp(persisted_at, unit="s")
    client.insert_df(f"{quote(database)}.`anomalies`", frame)
    return len(frame)


def write_progress(client: Any, database: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        client.insert_df(f"{quote(database)}.`progress`", pd.DataFrame(rows))


def save_state(
    client: Any, database: str, run_id: str, customer: str, minute: datetime, kind: str,
    series_count: int, blob: bytes,
) -> None:  # fmt: skip
    """Checkpoint a customer's detector after ``minute``; the newest checkpoint wins."""
    client.insert(
        f"{quote(database)}.`detector_state`",
        [[run_id, customer, minute, kind, series_count, blob]],
        column_names=[
            "run_id",
            "customer",
            "checkpoint_minute",
            "detector",
            "series_count",
            "state",
        ],  # fmt: skip
    )


def load_state(
    client: Any, database: str, run_id: str, customer: str
) -> tuple[datetime, str, bytes] | None:
    """The newest checkpoint of a customer's detector in a run, or None."""
    result = client.query(
        "SELECT checkpoint_minute, detector, state FROM {db:Identifier}.detector_state FINAL "
        "WHERE run_id = {run:String} AND customer = {customer:String}",
        parameters={"db": database, "run": run_id, "customer": customer},
        column_formats={"state": "bytes"},
    ).result_rows
    if not result:
        return None
    minute, kind, blob = result[0]
    return minute.replace(tzinfo=None), kind, blob


# --- reading ------------------------------------------------------------------------------


def read_anomalies(client: Any, database: str, run_id: str) -> pd.DataFrame:
    return _read(client, database, "anomalies", "run_id = {run:String}", {"run": run_id},
                 "customer, metric, grouping, dimension_values, start_minute")  # fmt: skip


def read_root_causes(
    client: Any, database: str, run_id: str, customer: str, since: datetime
) -> dict[tuple[str, str, str, str, datetime], str]:
    """The stored rankings of a customer's anomalies that started at ``since`` or later, by
    :attr:`anomaly.records.Anomaly.key`; anomalies without one are left out."""
    rows = client.query(
        "SELECT metric, grouping, dimension_values, start_minute, root_cause "
        "FROM {db:Identifier}.anomalies FINAL WHERE run_id = {run:String} "
        "AND customer = {customer:String} AND start_minute >= {since:DateTime('UTC')} "
        "AND root_cause != ''",
        parameters={"db": database, "run": run_id, "customer": customer, "since": since},
    ).result_rows
    return {
        (customer, metric, grouping, values, start.replace(tzinfo=None)): text
        for metric, grouping, values, start, text in rows
    }


def read_progress(client: Any, database: str, run_id: str) -> pd.DataFrame:
    return _read(client, database, "progress", "run_id = {run:String}", {"run": run_id},
                 "customer, minute")  # fmt: skip


def read_labels(client: Any, database: str, dataset: str) -> pd.DataFrame:
    return _read(client, database, "labels", "dataset = {dataset:String}", {"dataset": dataset},
                 "customer, start_minute")  # fmt: skip


def _read(
    client: Any, database: str, table: str, where: str, parameters: dict[str, Any], order: str
) -> pd.DataFrame:
    # where and order are fixed text from this module's callers, never input.
    statement = f"SELECT * FROM {{db:Identifier}}.{{table:Identifier}} FINAL WHERE {where}"  # noqa: S608
    frame = client.query_df(
        f"{statement} ORDER BY {order}",
        parameters={"db": database, "table": table, **parameters},
    )
    if frame.columns.empty:  # an empty result carries no columns: take the table's
        names = client.query(
            "SELECT name FROM system.columns WHERE database = {db:String} "
            "AND table = {table:String} ORDER BY position",
            parameters={"db": database, "table": table},
        ).result_rows
        frame = pd.DataFrame(columns=[name for (name,) in names])
    for column in frame.columns:
        if getattr(frame[column].dtype, "tz", None) is not None:
            frame[column] = frame[column].dt.tz_convert("UTC").dt.tz_localize(None)
    return frame
