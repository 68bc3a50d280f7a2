"""Detection quality of a detector kind, offline: the NAB score of a NAB-format folder, and
recall, precision and delay on the demo dataset's injected anomalies.

NAB readings are fed at their own timestamps (5 minutes apart), each file moved by whole days so
that all files of a folder start on the same day and run side by side through one detector, as
the folder's customer would; time of day is kept, so a daily season is a day. Settings counted
in minutes of points (warm-up, calm) therefore count readings here.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly.config import DetectorSettings, Params
from anomaly.dataset import load_demo, start_minute
from anomaly.detector import make_detector
from anomaly.nab import NAB_GROUPING, NAB_METRIC, NAB_START, read_nab
from anomaly.queries import fetch_series
from anomaly.records import ALL_GROUPING, GROUPING_SEPARATOR, POINT_COLUMNS, VALUE_SEPARATOR
from anomaly.scoring import CorpusScore, score_series
from anomaly.summary import GRACE, match_labels

log = logging.getLogger(__name__)

_DAY = np.timedelta64(1, "D")
_MINUTE = np.timedelta64(1, "m")


# --- NAB ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NabSeries:
    """One NAB file ready for a detector: its points on the clock, and how to map back to rows.

    ``minutes`` holds the clock minute of each reading (row) of the file, ``windows`` the
    labelled windows as inclusive row ranges. Readings that repeat a timestamp are not fed
    (the detector takes one point a series and minute); they still count as rows.
    """

    customer: str
    name: str
    key: int
    minutes: np.ndarray
    values: np.ndarray
    windows: tuple[tuple[int, int], ...]

    @property
    def rows(self) -> int:
        return len(self.minutes)

    def points(self) -> pd.DataFrame:
        """The points frame of this file's series (the first reading of a repeated minute)."""
        fed = np.concatenate([[True], self.minutes[1:] != self.minutes[:-1]])
        count = int(fed.sum())
        frame = pd.DataFrame(
            {
                "minute": self.minutes[fed].astype("datetime64[ns]"),
                "grouping": NAB_GROUPING,
                "dimension_values": self.name,
                "metric": NAB_METRIC,
                "value": self.values[fed],
                "group_size": np.ones(count, np.uint64),
                "series_key": np.full(count, self.key, np.uint64),
            }
        )
        return frame[list(POINT_COLUMNS)]

    def rows_of(self, minutes: list[datetime]) -> list[int]:
        """The row of the first reading at each of ``minutes``."""
        at = np.array(minutes, dtype="datetime64[ns]").astype(self.minutes.dtype)
        return [int(i) for i in np.searchsorted(self.minutes, at, side="left")]


def nab_series(path: str | Path) -> list[NabSeries]:
    """Every file of a NAB-format folder as a :class:`NabSeries` (see the module docstring).

    Raises DatasetError (from :func:`anomaly.nab.read_nab`) naming what is missing or malformed.
    """
    readings, windows = read_nab(path)
    first_day = np.datetime64(NAB_START, "D")
    out = []
    for (customer, name), frame in readings.groupby(["customer", "series"], sort=True):
        stamps = frame["timestamp"].to_numpy().astype("datetime64[m]")
        shift = first_day - stamps[0].astype("datetime64[D]")
        mine = windows[(windows["customer"] == customer) & (windows["series"] == name)]
        rows = [
            (_reading_index(w.start_minute), _reading_index(w.end_minute))
            for w in mine.itertuples()
        ]
        out.append(
            NabSeries(
                customer=str(customer),
                name=str(name),
                key=_series_key(NAB_METRIC, NAB_GROUPING, str(name)),
                minutes=stamps + shift.astype("timedelta64[m]"),
                values=frame["value"].to_numpy(dtype=np.float64),
                windows=tuple(sorted(rows)),
            )
        )
    repeated = sum(s.rows - len(np.unique(s.minutes)) for s in out)
    if repeated:
        log.info("NAB %s: %d readings repeat their file's previous timestamp, not fed", path,
                 repeated)  # fmt: skip
    return out


def score_nab(series: list[NabSeries], settings: DetectorSettings) -> CorpusScore:
    """Run one detector per NAB folder over its files and score each file's alerts.

    An alert is an anomaly's opening (its ``detected_minute``), one per anomaly however long
    it stays open.
    """
    scores = []
    by_customer: dict[str, list[NabSeries]] = {}
    for item in series:
        by_customer.setdefault(item.customer, []).append(item)
    for customer, files in by_customer.items():
        detector = make_detector(customer, settings)
        points = pd.concat([f.points() for f in files], ignore_index=True)
        opened: dict[str, list[datetime]] = {}
        for anomaly in detector.process(points):
            if anomaly.end_minute is None:
                opened.setdefault(anomaly.dimension_values, []).append(anomaly.detected_minute)
        for item in files:
            detections = item.rows_of(opened.get(item.name, []))
            name = f"{item.customer}/{item.name}"
            scores.append(score_series(item.rows, item.windows, detections, series=name))
    return CorpusScore(tuple(scores))


def _reading_index(minute: Any) -> int:
    """anomaly.nab places reading i at NAB_START + i minutes."""
    return int((np.datetime64(minute, "m") - np.datetime64(NAB_START, "m")) // _MINUTE)


def _series_key(metric: str, grouping: str, dimension_values: str) -> int:
    """A stable 64-bit key for a series built here (the series query hashes in ClickHouse)."""
    text = "\x00".join((metric, grouping, dimension_values)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


# --- demo --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSeries:
    """The demo dataset's series points per customer, its labels and its replayed minutes."""

    points: dict[str, pd.DataFrame]
    labels: pd.DataFrame
    replay_first: datetime
    last: datetime


@dataclass(frozen=True)
class DemoQuality:
    """How a detector did on the demo dataset's replayed minutes.

    ``recall``: share of detectable labels caught (an anomaly of the label's series overlaps
    its window, see :func:`anomaly.summary.match_labels`). ``precision``: share of anomalies
    opened in the replay that a label explains: they open on a slice that shares events with
    the label's slice (same customer; every dimension both slices group by has the same value,
    so a parent, a child or a crossing slice), on any metric, while the label's window lasts
    (plus the summary's grace minutes); the injected change moves every such slice.
    ``strict_precision`` counts only the label's own slice, its parents and its children (no
    crossing slice such as ``browser=edge`` for a ``device=mobile`` label).
    ``median_delay``: median minutes from a caught label's start to its series' first alert.
    """

    labels: int
    caught: int
    alerts: int
    explained: int
    strictly_explained: int
    recall: float
    precision: float
    strict_precision: float
    median_delay: float
    missed: tuple[str, ...]
    unexplained: tuple[str, ...]


def demo_series(params: Params, client: Any, minutes: int | None = None) -> DemoSeries:
    """Load the demo dataset through ``client`` and run the series query for every customer.

    The points are those the pipeline builds: one query per customer over the history and
    the replayed minutes (``run.minutes`` unless given).
    """
    minutes = minutes or params.run.minutes
    load_demo(client, params, minutes, progress=False)
    first = start_minute(params.dataset)
    replay_first = first + timedelta(minutes=params.dataset.history_minutes)
    last = replay_first + timedelta(minutes=minutes - 1)
    database = params.clickhouse.database
    points = {
        customer.name: fetch_series(client, customer, database, first, last).points
        for customer in params.customers
    }
    labels = client.query_df(
        "SELECT customer, metric, grouping, dimension_values, kind, start_minute, end_minute, "
        "detectable FROM {db:Identifier}.labels FINAL WHERE dataset = 'demo'",
        parameters={"db": database},
    )
    for column in ("start_minute", "end_minute"):
        labels[column] = pd.to_datetime(labels[column]).dt.tz_localize(None)
    return DemoSeries(points, labels, replay_first, last)


def demo_quality(params: Params, demo: DemoSeries, kind: str) -> DemoQuality:
    """Run detector ``kind`` (each customer's settings otherwise) over the demo series."""
    latest: dict[tuple[Any, ...], Any] = {}
    for customer in params.customers:
        settings = replace(params.detector_for(customer), kind=kind)
        detector = make_detector(customer.name, settings)
        for anomaly in detector.process(demo.points[customer.name]):
            latest[anomaly.key] = anomaly  # an ended version replaces the opened one
    anomalies = pd.DataFrame([a.as_row() for a in latest.values()])
    if not anomalies.empty:
        anomalies = anomalies[anomalies["detected_minute"] >= demo.replay_first]

    detectable = demo.labels[demo.labels["detectable"] == 1]
    matched = match_labels(anomalies, detectable, demo.replay_first, demo.last)
    explained = explained_by_slices(anomalies, demo.labels)
    strictly = explained_by_slices(anomalies, demo.labels, lineage_only=True)
    caught = int(matched["caught"].sum())
    delays = matched.loc[matched["caught"], "delay_minutes"]
    return DemoQuality(
        labels=len(matched),
        caught=caught,
        alerts=len(anomalies),
        explained=int(explained.sum()),
        strictly_explained=int(strictly.sum()),
        recall=caught / len(matched) if len(matched) else math.nan,
        precision=float(explained.mean()) if len(anomalies) else math.nan,
        strict_precision=float(strictly.mean()) if len(anomalies) else math.nan,
        median_delay=float(delays.median()) if len(delays) else math.nan,
        missed=tuple(_describe(row) for row in matched[~matched["caught"]].itertuples()),
        unexplained=tuple(_describe(row) for row in anomalies[~explained].itertuples()),
    )


def slices_overlap(
    grouping: str, values: str, other_grouping: str, other_values: str, lineage_only: bool = False
) -> bool:
    """Whether two slices share events: every dimension both group by has the same value.

    With ``lineage_only`` one slice must also group by a subset of the other's dimensions (a
    parent, a child or the same slice).
    """
    mine = _slice(grouping, values)
    theirs = _slice(other_grouping, other_values)
    if lineage_only and not (mine.keys() <= theirs.keys() or theirs.keys() <= mine.keys()):
        return False
    return all(mine[column] == theirs[column] for column in mine.keys() & theirs.keys())


def explained_by_slices(
    anomalies: pd.DataFrame, labels: pd.DataFrame, lineage_only: bool = False
) -> pd.Series:
    """True for anomalies a label explains (see :class:`DemoQuality`)."""
    explained = pd.Series(False, index=anomalies.index)
    if anomalies.empty:
        return explained
    end = pd.to_datetime(anomalies["end_minute"]).fillna(anomalies["detected_minute"])
    for label in labels.itertuples():
        during = (
            (anomalies["customer"] == label.customer)
            & (anomalies["start_minute"] <= label.end_minute + GRACE)
            & (end >= label.start_minute)
        )
        for i in np.flatnonzero(during.to_numpy()):
            row = anomalies.iloc[i]
            if slices_overlap(
                row["grouping"], row["dimension_values"], label.grouping, label.dimension_values,
                lineage_only,
            ):  # fmt: skip
                explained.iloc[i] = True
    return explained


def _slice(grouping: str, values: str) -> dict[str, str]:
    if grouping == ALL_GROUPING:
        return {}
    columns = grouping.split(GROUPING_SEPARATOR)
    return dict(zip(columns, values.split(VALUE_SEPARATOR), strict=False))


def _describe(row: Any) -> str:
    return f"{row.customer} {row.metric} {row.grouping}={row.dimension_values!r} {row.start_minute}"
