"""One series, read back from ClickHouse: its points, the detector's band, its anomalies, and
the ranking of finer slices that explains an anomaly of a coarse grouping."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from anomaly.config import Params
from anomaly.detector import SeedDetector, floored_std
from anomaly.errors import ConfigError, DatasetError
from anomaly.queries import fetch_series
from anomaly.records import Contribution, causes_from_json
from anomaly.store import read_anomalies


def series_band(
    client: Any, params: Params, customer: str, metric: str, grouping: str,
    dimension_values: str, first: datetime, last: datetime,
) -> pd.DataFrame:  # fmt: skip
    """The series' value per minute with the band the detector scored it against.

    Replays the series alone through a fresh detector with the run's settings (the detector
    is deterministic and a series' state depends only on its own points), recording the mean
    and band before each point. Only the seed detector's band is drawn: a customer whose
    settings pick another kind raises ConfigError.
    """
    config = params.customer(customer)
    settings = params.detector_for(config)
    if settings.kind != SeedDetector.kind:
        raise ConfigError(
            f"customer {customer!r} uses the {settings.kind!r} detector; series_band draws "
            f"only the {SeedDetector.kind!r} detector's band"
        )
    points = fetch_series(client, config, params.clickhouse.database, first, last).points
    mine = points[
        (points["metric"] == metric)
        & (points["grouping"] == grouping)
        & (points["dimension_values"] == dimension_values)
    ].sort_values("minute")

    detector = SeedDetector(customer, settings)
    rows = []
    for _, point in mine.iterrows():  # one series: a row per minute is fine here
        state = detector.state
        if detector.series_count:
            mean, var = state.mean[:1], state.var[:1]
            sd = floored_std(mean, var, settings)
            expected = float(mean[0])
            low = expected - settings.band_sigmas * float(sd[0])
            high = expected + settings.band_sigmas * float(sd[0])
            warm = int(state.count[0]) >= settings.warmup_minutes
        else:
            expected, low, high, warm = np.nan, np.nan, np.nan, False
        rows.append({"minute": point["minute"], "value": point["value"],
                     "group_size": point["group_size"], "expected": expected,
                     "band_low": low if warm else np.nan,
                     "band_high": high if warm else np.nan})  # fmt: skip
        detector.process(mine[mine["minute"] == point["minute"]])
    return pd.DataFrame(rows)


def series_anomalies(
    client: Any, params: Params, run_id: str, customer: str, metric: str, grouping: str,
    dimension_values: str,
) -> pd.DataFrame:  # fmt: skip
    """The anomalies a run persisted for one series."""
    frame = read_anomalies(client, params.clickhouse.database, run_id)
    if frame.empty:
        return frame
    return frame[
        (frame["customer"] == customer)
        & (frame["metric"] == metric)
        & (frame["grouping"] == grouping)
        & (frame["dimension_values"] == dimension_values)
    ]


def anomaly_near(anomalies: pd.DataFrame, minute: datetime | None) -> pd.Series | None:
    """The anomaly (a row of :func:`series_anomalies`) closest in time to ``minute``: one open
    then if any, else the one whose span is nearest; the first one when ``minute`` is None."""
    if anomalies.empty:
        return None
    ordered = anomalies.sort_values("start_minute")
    if minute is None:
        return ordered.iloc[0]
    at = pd.Timestamp(minute)
    ends = ordered["end_minute"].fillna(pd.Timestamp.max)
    before = (ordered["start_minute"] - at).dt.total_seconds().clip(lower=0)
    after = (at - ends).dt.total_seconds().clip(lower=0)
    distance = (before + after).to_numpy()
    return ordered.iloc[int(distance.argmin())]


CAUSE_COLUMNS = ["rank", *(name for name in Contribution.__dataclass_fields__)]


def root_cause_table(anomaly: pd.Series | None) -> pd.DataFrame:
    """An anomaly's stored ranking as a table, best first (empty when it has none)."""
    causes = causes_from_json(anomaly["root_cause"]) if anomaly is not None else ()
    table = pd.DataFrame([asdict(c) for c in causes], columns=CAUSE_COLUMNS[1:])
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


@dataclass(frozen=True)
class RunSpan:
    """The minutes a persisted run covered, read back from its progress rows."""

    run_id: str
    engine: str
    warmup_first: datetime | None
    replay_first: datetime
    replay_last: datetime


def latest_run(client: Any, params: Params, run_id: str | None = None) -> RunSpan | None:
    """The span of ``run_id``, or of the newest run in the progress table; None if none."""
    frame = client.query_df(
        "SELECT run_id, any(engine) AS engine, "
        "minIf(minute, phase = 'warmup') AS warmup_first, "
        "countIf(phase = 'warmup') AS warmup_minutes, "
        "minIf(minute, phase = 'replay') AS replay_first, "
        "maxIf(minute, phase = 'replay') AS replay_last, max(persisted_at) AS newest "
        "FROM {db:Identifier}.progress FINAL "
        "WHERE {run:String} = '' OR run_id = {run:String} "
        "GROUP BY run_id HAVING countIf(phase = 'replay') > 0 ORDER BY newest DESC LIMIT 1",
        parameters={"db": params.clickhouse.database, "run": run_id or ""},
    )
    if frame.empty:
        if run_id:
            raise DatasetError(f"run {run_id!r} has no replayed minutes in ClickHouse")
        return None
    row = frame.iloc[0]

    def naive(value: Any) -> datetime:
        stamp = pd.Timestamp(value)
        return (stamp.tz_convert("UTC").tz_localize(None) if stamp.tz else stamp).to_pydatetime()

    return RunSpan(
        run_id=str(row["run_id"]),
        engine=str(row["engine"]),
        warmup_first=naive(row["warmup_first"]) if row["warmup_minutes"] else None,
        replay_first=naive(row["replay_first"]),
        replay_last=naive(row["replay_last"]),
    )


def series_catalogue(
    client: Any, params: Params, customer: str, first: datetime, last: datetime
) -> pd.DataFrame:
    """Per grouping and metric: how many series (dimension values) a customer has."""
    config = params.customer(customer)
    points = fetch_series(client, config, params.clickhouse.database, first, last).points
    return (
        points.groupby(["grouping", "metric"])
        .agg(series=("dimension_values", "nunique"), example=("dimension_values", "first"))
        .reset_index()
    )
