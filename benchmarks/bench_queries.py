"""What the series query costs: the pipeline's customer-minute against ClickHouse's bare GROUP BY
of the same rows, and a backlog of k minutes in one query against k one-minute queries.

Part of ``python -m benchmarks``; every figure here comes from one ClickHouse, one client and
one loaded dataset, the timed calls taking turns.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from anomaly.config import CustomerConfig, Params
from anomaly.dataset import load_demo
from anomaly.queries import MINUTE, SeriesBatch, query_series, to_points
from anomaly.sql import quote
from anomaly.store import Store


def bare_sql(customer: CustomerConfig, database: str) -> str:
    """The series query's aggregation and nothing more: one scan, ``GROUPING SETS`` over every
    configured grouping, every metric and the group size, per minute.

    Left out on purpose, as what the pipeline adds to turn groups into series: the grouping
    and value labels, the minimum group size, the ``ARRAY JOIN`` into one row per series point,
    the series key and the ordering. Placeholders as in :func:`anomaly.queries.series_sql`.
    """
    time_column = quote(customer.time_column)
    sets = ", ".join(
        "(" + ", ".join(["minute", *(quote(c) for c in grouping)]) + ")"
        for grouping in customer.groupings
    )
    columns = [
        f"toStartOfMinute({time_column}) AS minute",
        *(quote(c) for c in customer.dimension_columns),
        "count() AS group_size",
        *(f"{a.to_sql()} AS {quote('m_' + name)}" for name, a in customer.metrics.items()),
    ]
    where = [
        f"{time_column} >= {{start:DateTime('UTC')}}",
        f"{time_column} < {{end:DateTime('UTC')}}",
    ]
    if customer.customer_column:
        where.insert(0, f"{quote(customer.customer_column)} = {{customer:String}}")

    # Every name below passed anomaly.sql.identifier; every value is a bound placeholder.
    return f"""
SELECT {", ".join(columns)}
FROM {quote(database)}.{quote(customer.table)}
WHERE {" AND ".join(where)}
GROUP BY GROUPING SETS ({sets})"""  # noqa: S608


def interleaved_medians(
    actions: dict[str, Callable[[int], object]], rounds: int
) -> dict[str, float]:
    """Median wall seconds of each action over ``rounds`` rounds in which the actions take turns.

    Round i calls every action with i, one after the other, so a slow spell of a shared machine
    falls on all of them alike. One untimed round goes first (connections, the first parse).
    """
    times: dict[str, list[float]] = {name: [] for name in actions}
    for round_index in range(-1, rounds):
        for name, action in actions.items():
            started = time.perf_counter()
            action(max(round_index, 0))
            if round_index >= 0:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def measure_customer(
    client: Any,
    params: Params,
    customer: CustomerConfig,
    first_minute: datetime,
    minutes: int,
    repeats: int,
    catch_up: Sequence[int],
    catch_up_repeats: int,
) -> dict[str, Any]:
    """One customer: a minute through the pipeline, the series query alone and the bare
    GROUP BY; then each backlog of k minutes.

    Round i of the one-minute figures uses minute i of the loaded range (wrapping), the same
    minute for all; round i of a backlog starts at minute i (wrapping within the range).
    """
    database = params.clickhouse.database
    bare = bare_sql(customer, database)

    def pipeline(first: datetime, last: datetime) -> SeriesBatch:
        frame = query_series(client, customer, database, first, last)
        return to_points(frame, customer, first, last)

    def minute(index: int) -> datetime:
        return first_minute + (index % minutes) * MINUTE

    def bare_query(index: int) -> None:
        bound: dict[str, Any] = {"start": minute(index), "end": minute(index) + MINUTE}
        if customer.customer_column:
            bound["customer"] = customer.name
        client.query_df(bare, parameters=bound)

    # The series query alone as well, which splits the pipeline's extra time between the
    # statement's reshaping (labels, ARRAY JOIN, key, order) and to_points in pandas.
    one = interleaved_medians(
        {
            "pipeline": lambda i: pipeline(minute(i), minute(i)),
            "query": lambda i: query_series(client, customer, database, minute(i), minute(i)),
            "bare": bare_query,
        },
        repeats,
    )
    batch = pipeline(minute(0), minute(0))
    row: dict[str, Any] = {
        "customer": customer.name,
        "rows_per_minute": batch.rows_scanned,
        "points_per_minute": len(batch.points),
        "pipeline_s": one["pipeline"],
        "series_query_s": one["query"],
        "bare_s": one["bare"],
        "pipeline_over_bare": one["pipeline"] / one["bare"],
        "catch_up": [],
    }

    for k in catch_up:
        span = minutes - k + 1

        def backlog(index: int, k: int = k, span: int = span) -> None:
            start = first_minute + (index % span) * MINUTE
            pipeline(start, start + (k - 1) * MINUTE)

        def singles(index: int, k: int = k, span: int = span) -> None:
            start = first_minute + (index % span) * MINUTE
            for step in range(k):
                pipeline(start + step * MINUTE, start + step * MINUTE)

        got = interleaved_medians({"one": backlog, "single": singles}, catch_up_repeats)
        row["catch_up"].append(
            {
                "k": k,
                "one_query_s": got["one"],
                "single_queries_s": got["single"],
                "one_over_single": got["one"] / got["single"],
            }
        )
    return row


def measure(
    params: Params,
    minutes: int,
    customers: dict[str, str],
    repeats: int,
    catch_up: Sequence[int],
    catch_up_repeats: int,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Load ``params``' demo dataset (``minutes`` of it) and measure each customer.

    Parameters
    ----------
    customers:
        role -> customer name, e.g. ``{"normal": "bankly", "heavy": "shopfront"}``.
    say:
        Where a line per finished customer goes.
    """
    with Store(params.clickhouse) as store:
        client = store.client()
        load = load_demo(client, params, minutes, progress=False)
        figures: dict[str, Any] = {
            "clickhouse_version": client.server_version,
            "loaded_rows": load.rows,
            "minutes": minutes,
            "max_threads": params.clickhouse.max_threads,
            "repeats": repeats,
            "catch_up_repeats": catch_up_repeats,
            "customers": [],
        }
        for role, name in customers.items():
            row = measure_customer(
                client,
                params,
                params.customer(name),
                load.first_minute,
                minutes,
                repeats,
                catch_up,
                catch_up_repeats,
            )
            row["role"] = role
            figures["customers"].append(row)
            catch = ", ".join(f"k={c['k']} {c['one_over_single']:.2f}" for c in row["catch_up"])
            say(
                f"query: {role} customer {name} ({row['rows_per_minute']} rows a minute): "
                f"pipeline {row['pipeline_s'] * 1e3:.1f} ms, bare GROUP BY "
                f"{row['bare_s'] * 1e3:.1f} ms, ratio {row['pipeline_over_bare']:.2f}; "
                f"one query / k single: {catch}"
            )
        client.close()
    return figures
