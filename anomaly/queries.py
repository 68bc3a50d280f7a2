"""The per-customer series query: one GROUP BY over every configured grouping, per minute.

The statement is built only from validated identifiers (anomaly.sql); the customer, the
minute range and the minimum group size are bound parameters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from anomaly.config import CustomerConfig, grouping_name
from anomaly.records import POINT_COLUMNS, VALUE_SEPARATOR
from anomaly.sql import identifier, quote

log = logging.getLogger(__name__)

MINUTE = timedelta(minutes=1)


def series_sql(customer: CustomerConfig, database: str) -> str:
    """The series statement for ``customer``, with placeholders for values.

    Placeholders: ``{customer:String}`` (only when the table has a customer column),
    ``{start:DateTime('UTC')}`` (first minute, inclusive), ``{end:DateTime('UTC')}`` (exclusive)
    and ``{min_size:UInt64}``.

    All groupings come from one scan with ``GROUPING SETS``; ClickHouse's ``grouping()``
    tells which set a row belongs to (a bit is 1 where a column is *not* grouped). The inner
    query yields one row per (minute, group) with every metric; ``ARRAY JOIN`` turns it into
    one row per series point, and ``cityHash64`` gives each series a stable key. The
    whole-customer group is kept below the minimum size so rows scanned can be counted; the
    caller drops it.
    """
    table = f"{quote(database)}.{quote(customer.table)}"
    time_column = quote(customer.time_column)
    dims = customer.dimension_columns
    all_mask = (1 << len(dims)) - 1

    names, values = [], []
    for grouping in customer.groupings:
        mask = sum(1 << (len(dims) - 1 - i) for i, d in enumerate(dims) if d not in grouping)
        names.append(f"set_mask = {mask}, '{grouping_name(grouping)}'")
        parts = [f"toString({quote(c)})" for c in grouping]
        joined = f", '{VALUE_SEPARATOR}', ".join(parts) if parts else "''"
        value = f"concat({joined})" if len(parts) > 1 else joined
        values.append(f"set_mask = {mask}, {value}")

    if dims:
        set_mask = f"grouping({', '.join(quote(d) for d in dims)})"
        sets = ", ".join(
            "(" + ", ".join(["minute", *(quote(c) for c in grouping)]) + ")"
            for grouping in customer.groupings
        )
        group_by = f"GROUPING SETS ({sets})"
    else:
        set_mask, group_by = "0", "minute"

    metric_columns = ",\n            ".join(
        f"toFloat64({aggregate.to_sql()}) AS {quote('m_' + name)}"
        for name, aggregate in customer.metrics.items()
    )
    metric_array = ", ".join(
        f"('{identifier(name, 'metric')}', {quote('m_' + name)})" for name in customer.metrics
    )
    where = [
        f"{time_column} >= {{start:DateTime('UTC')}}",
        f"{time_column} < {{end:DateTime('UTC')}}",
    ]
    if customer.customer_column:
        where.insert(0, f"{quote(customer.customer_column)} = {{customer:String}}")

    # Every name below passed anomaly.sql.identifier; every value is a bound placeholder.
    return f"""
SELECT minute, grouping, dimension_values, group_size, point.1 AS metric, point.2 AS value,
       cityHash64(metric, grouping, dimension_values) AS series_key, set_mask = {all_mask} AS is_all
FROM (
    SELECT
        toStartOfMinute({time_column}) AS minute,
        {set_mask} AS set_mask,
        multiIf({", ".join(names)}, '?') AS grouping,
        multiIf({", ".join(values)}, '?') AS dimension_values,
        count() AS group_size,
        {metric_columns}
    FROM {table}
    WHERE {" AND ".join(where)}
    GROUP BY {group_by}
    HAVING group_size >= {{min_size:UInt64}} OR set_mask = {all_mask}
)
ARRAY JOIN [{metric_array}] AS point
ORDER BY minute, series_key"""  # noqa: S608


@dataclass(frozen=True)
class SeriesBatch:
    """Series points of one customer for a range of minutes, and what it cost to get them."""

    points: pd.DataFrame
    rows_scanned: int
    minutes: int


def fetch_series(
    client: Any,
    customer: CustomerConfig,
    database: str,
    first_minute: datetime,
    last_minute: datetime,
    settings: dict[str, Any] | None = None,
) -> SeriesBatch:
    """Run the series query for ``first_minute`` .. ``last_minute`` (inclusive).

    Returns the tidy POINT_COLUMNS frame (groups under the minimum size removed) and the number
    of events the query aggregated.
    """
    frame = query_series(client, customer, database, first_minute, last_minute, settings)
    return to_points(frame, customer, first_minute, last_minute)


def query_series(
    client: Any,
    customer: CustomerConfig,
    database: str,
    first_minute: datetime,
    last_minute: datetime,
    settings: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """The series query's raw frame, one row per series point (see :func:`series_sql`)."""
    parameters: dict[str, Any] = {
        "start": first_minute,
        "end": last_minute + MINUTE,
        "min_size": customer.min_group_size,
    }
    if customer.customer_column:
        parameters["customer"] = customer.name
    return client.query_df(
        series_sql(customer, database), parameters=parameters, settings=settings or {}
    )


def to_points(
    frame: pd.DataFrame, customer: CustomerConfig, first_minute: datetime, last_minute: datetime
) -> SeriesBatch:
    """Turn the query's frame into the detector's tidy frame and count rows scanned."""
    minutes = int((last_minute - first_minute) / MINUTE) + 1
    if frame.empty:
        empty = pd.DataFrame({c: pd.Series(dtype=_DTYPES[c]) for c in POINT_COLUMNS})
        return SeriesBatch(empty, 0, minutes)

    is_all = frame["is_all"].to_numpy(dtype=bool)
    first_metric = frame["metric"].to_numpy() == next(iter(customer.metrics))
    rows_scanned = int(frame["group_size"].to_numpy()[is_all & first_metric].sum())

    keep = ~is_all | (frame["group_size"].to_numpy() >= customer.min_group_size)
    points = frame.loc[keep, list(POINT_COLUMNS)].reset_index(drop=True)
    points["minute"] = _naive_utc(points["minute"])
    points["group_size"] = points["group_size"].astype(np.uint64)
    points["series_key"] = points["series_key"].astype(np.uint64)
    return SeriesBatch(points, rows_scanned, minutes)


_DTYPES = {
    "minute": "datetime64[ns]",
    "grouping": object,
    "dimension_values": object,
    "metric": object,
    "value": np.float64,
    "group_size": np.uint64,
    "series_key": np.uint64,
}


def _naive_utc(column: pd.Series) -> pd.Series:
    if getattr(column.dtype, "tz", None) is not None:
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    return column.astype("datetime64[ns]")
