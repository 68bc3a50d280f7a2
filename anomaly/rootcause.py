"""Root cause of an anomaly at a coarse grouping: which finer slices of the same metric explain
its change, ranked by their contribution to it, found once when the anomaly opens.

A slice is a child of an anomaly when its grouping holds every dimension of the anomaly's
grouping and more, with the same values on the shared ones: for ``all`` every slice, for
``device = mobile`` the ``device+browser`` slices whose device is mobile.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from anomaly.config import CustomerConfig, grouping_name
from anomaly.detector import StreamingDetector
from anomaly.records import (
    ALL_GROUPING,
    GROUPING_SEPARATOR,
    SHARE,
    VALUE_SEPARATOR,
    WEIGHTED_SHARE,
    Anomaly,
    Contribution,
    causes_from_json,
)
from anomaly.sql import Aggregate
from anomaly.store import read_root_causes

log = logging.getLogger(__name__)

# Aggregates whose value over a group is the sum of their values over any partition of it.
ADDITIVE_FUNCTIONS = frozenset({"count", "sum"})


def is_additive(aggregate: Aggregate) -> bool:
    """Whether a metric adds up over slices (count, sum), so shares of a change are exact."""
    return aggregate.function in ADDITIVE_FUNCTIONS


def explain(
    anomaly: Anomaly,
    points: pd.DataFrame,
    expected_by_key: pd.Series | Mapping[int, float],
    aggregate: Aggregate,
    top: int = 5,
) -> list[Contribution]:
    """Rank the children of ``anomaly`` by their contribution to its change.

    Parameters
    ----------
    anomaly:
        The anomaly to explain; its ``value`` and ``expected`` are the parent's change.
    points:
        Series points (:data:`anomaly.records.POINT_COLUMNS`) of the minute the anomaly was
        detected; rows of other minutes and other metrics are ignored.
    expected_by_key:
        Each series' expected value at that minute, by ``series_key``; a child missing here
        or NaN is left out (the detector knows nothing of it yet).
    aggregate:
        The metric's aggregate, which decides the measure.
    top:
        How many children to keep.

    Returns
    -------
    list[Contribution]
        At most ``top`` children, largest contribution first; only children that moved the
        way the parent did (contribution > 0). Ties go to the coarser slice, then by name.
        Empty when the grouping has no finer slices at that minute.

    Notes
    -----
    For count and sum (measure ``share``) a child's contribution is ``(value - expected) /
    (parent value - parent expected)``: when every child of one grouping is present and the
    expectations add up like the values, that grouping's contributions sum to 1. Slices of
    different groupings overlap (``device = mobile`` holds ``mobile|chrome``), so the whole
    ranking does not sum to 1; a slice that contains the cause scores as much as the cause.

    Other aggregates do not add up. Their measure, ``weighted_share``, is the same ratio
    times the child's share of the parent's events (``group_size`` over the parent's): for an
    average that is the child's part of the change when the slices' sizes hold still, for a
    quantile, minimum or maximum only a score that ranks a large slice that moved far above a
    small one. A parent without its own row at that minute then has no ranking.

    A child that has no point at that minute (it fell under the minimum group size or has no
    events) is not ranked, so a slice that vanished is missed; ranking the detector's known
    series that went missing, valued at 0 for count and sum, would catch it.
    """
    if top <= 0 or len(points) == 0:
        return []
    parent_dev = anomaly.value - anomaly.expected
    if not np.isfinite(parent_dev) or parent_dev == 0:
        return []

    rows = points[points["metric"].to_numpy() == anomaly.metric]
    if "minute" in rows.columns:
        rows = rows[rows["minute"].to_numpy() == np.datetime64(anomaly.detected_minute, "ns")]
    children = rows[_is_child(rows, anomaly.grouping, anomaly.dimension_values)]
    if children.empty:
        return []

    keys = children["series_key"].to_numpy(dtype=np.uint64)
    expected = _expected_of(expected_by_key, keys)
    values = children["value"].to_numpy(dtype=np.float64)
    contribution = (values - expected) / parent_dev
    measure = SHARE
    if not is_additive(aggregate):
        parent = rows[
            (rows["grouping"].to_numpy() == anomaly.grouping)
            & (rows["dimension_values"].to_numpy() == anomaly.dimension_values)
        ]
        if len(parent) != 1 or not float(parent["group_size"].iloc[0]) > 0:
            return []
        weight = children["group_size"].to_numpy(dtype=np.float64)
        weight /= float(parent["group_size"].iloc[0])
        contribution *= weight
        measure = WEIGHTED_SHARE

    keep = np.isfinite(contribution) & (contribution > 0)
    ranked = pd.DataFrame(
        {
            "grouping": children["grouping"].to_numpy()[keep],
            "dimension_values": children["dimension_values"].to_numpy()[keep],
            "value": values[keep],
            "expected": expected[keep],
            "contribution": contribution[keep],
        }
    )
    ranked["depth"] = ranked["grouping"].map(lambda g: len(_dimensions(g)))
    ranked = ranked.sort_values(
        ["contribution", "depth", "grouping", "dimension_values"],
        ascending=[False, True, True, True],
        kind="stable",
    ).head(top)
    return [
        Contribution(
            grouping=str(row.grouping),
            dimension_values=str(row.dimension_values),
            value=float(row.value),
            expected=float(row.expected),
            contribution=float(row.contribution),
            measure=measure,
        )
        for row in ranked.itertuples(index=False)
    ]


def coarse_groupings(customer: CustomerConfig) -> frozenset[str]:
    """The customer's groupings that have finer ones (whose anomalies can be explained)."""
    dims = [frozenset(g) for g in customer.groupings]
    return frozenset(
        grouping_name(g) for g, mine in zip(customer.groupings, dims, strict=True)
        if any(mine < other for other in dims)
    )  # fmt: skip


def detect_and_explain(
    detector: StreamingDetector[Any], points: pd.DataFrame, customer: CustomerConfig, top: int
) -> list[Anomaly]:
    """Feed ``points`` to ``detector`` a minute at a time and rank each opened anomaly's causes.

    Returns what ``detector.process(points)`` would, with ``root_cause`` set on every anomaly
    of a coarse grouping that opens here, and on its end when that is in ``points`` too (an
    anomaly that opened earlier gets its ranking back with :func:`keep_causes`).

    Expectations are taken before each minute's update: the mean the detector held for the
    minute, the same one the opening anomaly reports as its ``expected``. After the update an
    in-band child's mean has already moved towards its value (by ``1 - decay`` of the gap, or
    all of it on a first point), while an outside-band child's has not, which would mix two
    definitions in one ranking. Taking them a minute at a time makes the ranking the same
    however many minutes a tick covers, so every engine stores the same one.
    """
    coarse = coarse_groupings(customer)
    if top <= 0 or not coarse or len(points) == 0:
        return detector.process(points)

    records: list[Anomaly] = []
    ranked: dict[tuple[str, str, str, str, datetime], tuple[Contribution, ...]] = {}
    for minute_points in _by_minute(points):
        keys = minute_points["series_key"].to_numpy(dtype=np.uint64)
        expected = pd.Series(detector.expected(keys), index=keys)
        for anomaly in detector.process(minute_points):
            if anomaly.grouping in coarse:
                if anomaly.end_minute is None:
                    causes = explain(anomaly, minute_points, expected,
                                     customer.metrics[anomaly.metric], top)  # fmt: skip
                    ranked[anomaly.key] = tuple(causes)
                    log.debug("customer %s: %s %s %r opened, %d slices ranked", detector.customer,
                              anomaly.metric, anomaly.grouping, anomaly.dimension_values,
                              len(causes))  # fmt: skip
                anomaly = replace(anomaly, root_cause=ranked.get(anomaly.key, ()))
            records.append(anomaly)
    return records


def keep_causes(
    client: Any, database: str, run_id: str, customer: CustomerConfig, updates: list[Anomaly]
) -> list[Anomaly]:
    """Give ended anomalies of coarse groupings the ranking stored when they opened.

    The version written when an anomaly ends replaces the one written when it opened, so it
    must carry the ranking too; an engine that rebuilds its worker every tick has only
    ClickHouse to remember it. Reads only when such an anomaly ended in ``updates``.
    """
    coarse = coarse_groupings(customer)
    missing = [
        a for a in updates if a.end_minute is not None and not a.root_cause and a.grouping in coarse
    ]
    if not missing:
        return updates
    since = min(a.start_minute for a in missing)
    stored = read_root_causes(client, database, run_id, customer.name, since)
    lacking = {id(a) for a in missing}
    return [
        replace(a, root_cause=causes_from_json(stored.get(a.key))) if id(a) in lacking else a
        for a in updates
    ]


# --- helpers -------------------------------------------------------------------------------


def _dimensions(grouping: str) -> tuple[str, ...]:
    return () if grouping == ALL_GROUPING else tuple(grouping.split(GROUPING_SEPARATOR))


def _is_child(rows: pd.DataFrame, grouping: str, dimension_values: str) -> np.ndarray:
    """Which rows are slices finer than (grouping, dimension_values) and inside it."""
    mine = _dimensions(grouping)
    child = np.zeros(len(rows), dtype=bool)
    parts = dimension_values.split(VALUE_SEPARATOR) if mine else []
    if len(parts) != len(mine):  # a value holding the separator itself cannot be matched
        return child

    groupings = rows["grouping"].to_numpy()
    for name in pd.unique(groupings):
        theirs = _dimensions(str(name))
        if not set(mine) < set(theirs):
            continue
        at = np.flatnonzero(groupings == name)
        values = rows["dimension_values"].iloc[at].astype(str)
        inside = (values.str.count(re.escape(VALUE_SEPARATOR)) == len(theirs) - 1).to_numpy()
        if mine and inside.any():
            split = values.str.split(VALUE_SEPARATOR, expand=True, regex=False)
            for dimension, value in zip(mine, parts, strict=True):
                inside &= (split[theirs.index(dimension)] == value).to_numpy()
        child[at] = inside
    return child


def _expected_of(expected_by_key: pd.Series | Mapping[int, float], keys: np.ndarray) -> np.ndarray:
    if isinstance(expected_by_key, pd.Series):
        series = expected_by_key
    else:
        series = pd.Series(
            np.fromiter(expected_by_key.values(), np.float64, len(expected_by_key)),
            index=np.fromiter(expected_by_key.keys(), np.uint64, len(expected_by_key)),
        )
    return series.reindex(keys).to_numpy(dtype=np.float64, na_value=np.nan)


def _by_minute(points: pd.DataFrame) -> list[pd.DataFrame]:
    """The rows of each minute, oldest first (the frame itself when it holds one minute)."""
    minutes = points["minute"].to_numpy()
    if (minutes == minutes[0]).all():
        return [points]
    return [group for _, group in points.groupby("minute", sort=True)]
