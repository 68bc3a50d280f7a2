"""Records that cross module boundaries: anomalies and the tidy series-point frame."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

# Columns of the tidy frame a series query returns and the detector consumes, in order.
# One row is one point of one series: a (metric, grouping, dimension values) at a minute.
POINT_COLUMNS = (
    "minute",  # datetime64[ns] (UTC, naive), start of the minute
    "grouping",  # str: "all", a dimension name, or a combination such as "device+browser"
    "dimension_values",  # str: the group's values joined by "|" ("" for "all")
    "metric",  # str: the configured metric name
    "value",  # float64: the aggregate's value
    "group_size",  # uint64: events in the group at that minute
    "series_key",  # uint64: hash of (metric, grouping, dimension_values), computed in ClickHouse
)

# The grouping over a customer's whole traffic, with no dimension.
ALL_GROUPING = "all"
# Separator of dimension values inside `dimension_values` and of names inside a grouping.
VALUE_SEPARATOR = "|"
GROUPING_SEPARATOR = "+"


@dataclass(frozen=True)
class Anomaly:
    """One anomaly of one series, as persisted (a later version replaces an earlier one).

    ``end_minute`` is None while the anomaly is open. ``value`` is the observation that
    opened it, ``expected`` the series mean then, and the band is mean +- k standard
    deviations. ``peak_score`` is the largest distance from the mean, in standard
    deviations, seen while the anomaly was open.
    """

    customer: str
    metric: str
    grouping: str
    dimension_values: str
    start_minute: datetime
    end_minute: datetime | None
    detected_minute: datetime
    value: float
    expected: float
    band_low: float
    band_high: float
    peak_score: float
    severity: str

    @property
    def key(self) -> tuple[str, str, str, str, datetime]:
        return (self.customer, self.metric, self.grouping, self.dimension_values, self.start_minute)

    def as_row(self) -> dict[str, Any]:
        return asdict(self)
