"""Records that cross module boundaries: anomalies and the tidy series-point frame."""

from __future__ import annotations

import json
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


# How a root-cause ranking measures a slice's part in its parent's change (anomaly.rootcause).
SHARE = "share"  # count, sum: (value - expected) / (parent value - parent expected)
WEIGHTED_SHARE = "weighted_share"  # other aggregates: the same, times the slice's event share


@dataclass(frozen=True)
class Contribution:
    """One slice in the root-cause ranking of a coarser anomaly of the same metric.

    ``contribution`` is the slice's part in the parent's change, measured as ``measure`` says:
    for count and sum the exact share of the parent's deviation from its expected value; for
    other aggregates a weighted share that ranks slices but need not add up to 1.
    """

    grouping: str
    dimension_values: str
    value: float
    expected: float
    contribution: float
    measure: str


@dataclass(frozen=True)
class Anomaly:
    """One anomaly of one series, as persisted (a later version replaces an earlier one).

    ``end_minute`` is None while the anomaly is open. ``value`` is the observation that
    opened it, ``expected`` the series mean then, and the band is mean +- k standard
    deviations. ``peak_score`` is the largest distance from the mean, in standard
    deviations, seen while the anomaly was open. ``root_cause`` ranks the finer slices that
    explain the change, best first, as found when the anomaly opened (empty when the grouping
    has no finer slices); the version written when the anomaly ends keeps it.
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
    root_cause: tuple[Contribution, ...] = ()

    @property
    def key(self) -> tuple[str, str, str, str, datetime]:
        return (self.customer, self.metric, self.grouping, self.dimension_values, self.start_minute)

    def as_row(self) -> dict[str, Any]:
        """The record as a table row, the ranking as compact JSON (:func:`causes_to_json`)."""
        row = asdict(self)
        row["root_cause"] = causes_to_json(self.root_cause)
        return row


# Significant digits kept for numbers in a stored ranking: enough to read, short to store.
CAUSE_DIGITS = 6


def causes_to_json(causes: tuple[Contribution, ...] | list[Contribution]) -> str:
    """A ranking as compact JSON, a list of objects in rank order; ``""`` for no ranking.

    Numbers must be finite (a ranking holds only slices with a known expected value).
    """
    if not causes:
        return ""
    rows = [
        {
            "grouping": c.grouping,
            "dimension_values": c.dimension_values,
            "value": float(f"{c.value:.{CAUSE_DIGITS}g}"),
            "expected": float(f"{c.expected:.{CAUSE_DIGITS}g}"),
            "contribution": float(f"{c.contribution:.{CAUSE_DIGITS}g}"),
            "measure": c.measure,
        }
        for c in causes
    ]
    return json.dumps(rows, separators=(",", ":"), allow_nan=False)


def causes_from_json(text: str | None) -> tuple[Contribution, ...]:
    """The ranking :func:`causes_to_json` wrote; ``""`` or None give no ranking."""
    if not text:
        return ()
    return tuple(Contribution(**row) for row in json.loads(text))
