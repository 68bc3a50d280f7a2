"""One series, read back from ClickHouse: its points, the detector's band, its anomalies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from anomaly.config import Params
from anomaly.detector import SeedDetector, floored_std
from anomaly.queries import fetch_series
from anomaly.store import read_anomalies


def series_band(
    client: Any, params: Params, customer: str, metric: str, grouping: str,
    dimension_values: str, first: datetime, last: datetime,
) -> pd.DataFrame:  # fmt: skip
    """The series' value per minute with the band the detector scored it against.

    Replays the series alone through a fresh detector with the run's settings (the detector
    is deterministic and a series' state depends only on its own points), recording the mean
    and band before each point.
    """
    config = params.customer(customer)
    points = fetch_series(client, config, params.clickhouse.database, first, last).points
    mine = points[
        (points["metric"] == metric)
        & (points["grouping"] == grouping)
        & (points["dimension_values"] == dimension_values)
    ].sort_values("minute")

    detector = SeedDetector(customer, params.detector)
    rows = []
    for _, point in mine.iterrows():  # one series: a row per minute is fine here
        state = detector.state
        if detector.series_count:
            mean, var = state.mean[:1], state.var[:1]
            sd = floored_std(mean, var, params.detector)
            expected = float(mean[0])
            low = expected - params.detector.band_sigmas * float(sd[0])
            high = expected + params.detector.band_sigmas * float(sd[0])
            warm = int(state.count[0]) >= params.detector.warmup_minutes
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
