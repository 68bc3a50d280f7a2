"""Per-customer summary of a run, read back from ClickHouse: minutes, anomalies, labels, lag.

Lag of a customer at a minute = persisted_at - processable_at, in wall seconds.
A label is caught when an anomaly of the same series overlaps its window (plus a grace period
after it, since a detector can only see an anomaly once it has happened).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from anomaly.store import read_anomalies, read_labels, read_progress

SERIES = ["customer", "metric", "grouping", "dimension_values"]
GRACE = timedelta(minutes=5)


def lag_frame(progress: pd.DataFrame) -> pd.DataFrame:
    """Replayed customer-minutes with their lag (seconds)."""
    replay = progress[progress["phase"] == "replay"].copy()
    replay["lag_s"] = (replay["persisted_at"] - replay["processable_at"]).dt.total_seconds()
    return replay


def match_labels(
    anomalies: pd.DataFrame, labels: pd.DataFrame, first: datetime, last: datetime
) -> pd.DataFrame:
    """Labels whose window overlaps ``first`` .. ``last``, each marked caught or not.

    Adds ``caught`` (bool) and ``delay_minutes`` (detected minute minus label start, for the
    first matching anomaly).
    """
    labels = labels[(labels["end_minute"] >= first) & (labels["start_minute"] <= last)].copy()
    labels["caught"] = False
    labels["delay_minutes"] = np.nan
    if labels.empty or anomalies.empty:
        return labels

    merged = labels.reset_index().merge(anomalies, on=SERIES, suffixes=("", "_a"))
    end = merged["end_minute_a"].fillna(pd.Timestamp(last))
    overlap = (merged["start_minute_a"] <= merged["end_minute"] + GRACE) & (
        end >= merged["start_minute"]
    )
    hits = merged[overlap]
    if not hits.empty:
        delay = (hits["detected_minute"] - hits["start_minute"]).dt.total_seconds() / 60
        first_delay = delay.groupby(hits["index"]).min()
        labels.loc[first_delay.index, "caught"] = True
        labels.loc[first_delay.index, "delay_minutes"] = first_delay.to_numpy()
    return labels


def explained_by_labels(anomalies: pd.DataFrame, labels: pd.DataFrame) -> pd.Series:
    """True for anomalies that overlap a labelled window of the same customer in any series.

    An injected change in one slice also moves the coarser groupings that contain it (a spike
    in mobile traffic raises the customer's total), so those anomalies are not false alarms.
    """
    explained = pd.Series(False, index=anomalies.index)
    for label in labels.itertuples():
        end = anomalies["end_minute"].fillna(anomalies["detected_minute"])
        explained |= (
            (anomalies["customer"] == label.customer)
            & (anomalies["start_minute"] <= label.end_minute + GRACE)
            & (end >= label.start_minute)
        )
    return explained


def customer_summary(
    client: Any, database: str, run_id: str, dataset: str, first: datetime, last: datetime,
    customers: list[str],
) -> pd.DataFrame:  # fmt: skip
    """One row per customer: minutes processed, anomalies, labels caught and missed, anomalies
    outside every labelled window (false alarms), and lag p50/p95 in seconds."""
    progress = read_progress(client, database, run_id)
    anomalies = read_anomalies(client, database, run_id)
    labels = match_labels(anomalies, read_labels(client, database, dataset), first, last)
    lags = lag_frame(progress)

    in_replay = anomalies[
        (anomalies["detected_minute"] >= first) & (anomalies["detected_minute"] <= last)
    ] if not anomalies.empty else anomalies  # fmt: skip
    explained = explained_by_labels(in_replay, labels)
    rows = []
    for name in customers:
        lag = lags.loc[lags["customer"] == name, "lag_s"]
        mine = labels[labels["customer"] == name]
        rows.append(
            {
                "customer": name,
                "minutes": int(len(lag)),
                "anomalies": int((in_replay["customer"] == name).sum()) if len(in_replay) else 0,
                "labels": int(len(mine)),
                "caught": int(mine["caught"].sum()),
                "missed": int((~mine["caught"]).sum()),
                "false_alarms": int(((in_replay["customer"] == name) & ~explained).sum())
                if len(in_replay)
                else 0,
                "lag_p50_s": float(lag.quantile(0.5)) if len(lag) else float("nan"),
                "lag_p95_s": float(lag.quantile(0.95)) if len(lag) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame) -> str:
    """A plain Markdown table (no extra dependency)."""

    def cell(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *body])
