"""Bad and awkward data through the real pipeline (chDB, the series query, the detector, the
store): an empty table, NULL/NaN/infinite values, minutes without rows, late rows, and more
series than a customer's cap. Each either works as documented or fails naming the value."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import clickhouse_connect
import numpy as np
import pandas as pd
import pytest

from anomaly.config import params_from_dict
from anomaly.pipeline import CustomerWorker
from anomaly.queries import query_series
from anomaly.schema import ensure_schema
from anomaly.store import read_anomalies, read_progress

START = datetime(2026, 1, 5, 0, 0)
DB = "bad"


def params(table: str, max_series: int = 100_000, dimensions: tuple[str, ...] = ("device",),
           min_group_size: int = 5):  # fmt: skip
    return params_from_dict(
        {
            "clickhouse": {"database": DB},
            "dataset": {"kind": "nab", "path": "unused"},
            "detector": {"warmup_minutes": 20, "decay": 0.95},
            "customers": [
                {
                    "name": "acme",
                    "table": table,
                    "time_column": "ts",
                    "customer_column": "customer",
                    "dimensions": list(dimensions),
                    "metrics": {"events": "count()", "total": "sum(x)", "mean": "avg(x)"},
                    "min_group_size": min_group_size,
                    "max_series": max_series,
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('bad')}/db")
    ensure_schema(client, DB)
    yield client
    client.close()


def make_table(client, name: str) -> None:
    client.command(f"DROP TABLE IF EXISTS {DB}.{name}")
    client.command(
        f"CREATE TABLE {DB}.{name} (customer String, ts DateTime('UTC'), device String, "
        "user String, x Nullable(Float64)) ENGINE = MergeTree ORDER BY ts"
    )


def events(minutes: range, per_minute: int = 40, seed: int = 1, **columns) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for m in minutes:
        n = per_minute
        frames.append(
            pd.DataFrame(
                {
                    "customer": "acme",
                    "ts": pd.Timestamp(START + timedelta(minutes=m))
                    + pd.to_timedelta(rng.integers(0, 60, n), unit="s"),
                    "device": rng.choice(["mobile", "desktop"], n),
                    "user": [f"u{m}-{i}" for i in range(n)],
                    "x": rng.normal(100.0, 5.0, n),
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    for name, value in columns.items():
        frame[name] = value
    return frame


def minute(m: int) -> datetime:
    return START + timedelta(minutes=m)


def worker(client, table: str, run_id: str, **options) -> CustomerWorker:
    p = params(table, **options)
    return CustomerWorker(p.customers[0], p, "unused", run_id, engine="test", client=client)


def process_each_minute(w: CustomerWorker, minutes: range) -> None:
    for m in minutes:
        w.process(minute(m), minute(m), phase="replay")


def test_an_empty_table_gives_minutes_with_no_points_and_no_error(client):
    make_table(client, "empty")
    w = worker(client, "empty", "empty-run")
    process_each_minute(w, range(0, 5))

    progress = read_progress(client, DB, "empty-run")
    assert list(progress["minute"]) == [minute(m) for m in range(5)]
    assert (progress["points"] == 0).all() and (progress["rows_scanned"] == 0).all()
    assert read_anomalies(client, DB, "empty-run").empty
    assert w.detector.series_count == 0


def test_null_nan_and_infinite_values_are_skipped_not_learned_nor_flagged(client):
    make_table(client, "dirty")
    client.insert_df(f"{DB}.dirty", events(range(0, 30)))
    client.insert_df(f"{DB}.dirty", events(range(34, 40)))
    # Minute 30: every value NULL; 31: NaN; 32: +inf; 33: -inf (one row each among good ones).
    client.insert_df(f"{DB}.dirty", events(range(30, 31), x=None))
    for m, value in ((31, "nan"), (32, "inf"), (33, "-inf")):
        frame = events(range(m, m + 1), seed=m)
        client.insert_df(f"{DB}.dirty", frame.iloc[1:])
        # As SQL: a NaN sent from pandas would arrive as NULL.
        client.command(
            f"INSERT INTO {DB}.dirty SELECT 'acme', {{ts:DateTime}}, 'mobile', 'odd', {value}",
            parameters={"ts": frame["ts"].iloc[0].to_pydatetime()},
        )

    dirty = worker(client, "dirty", "dirty-run")
    process_each_minute(dirty, range(0, 40))

    assert read_anomalies(client, DB, "dirty-run").empty
    assert np.all(np.isfinite(dirty.detector.state.mean))
    assert np.all(np.isfinite(dirty.detector.state.var))
    # The whole customer's count() took every minute; its sum and avg skipped the four bad
    # minutes: ClickHouse gives NULL for an all-NULL group, NaN or inf when a value is one.
    counts = dict(zip(dirty.detector.series_keys.tolist(), dirty.detector.state.count.tolist(),
                      strict=True))  # fmt: skip
    frame = query_series(client, dirty.customer, DB, minute(0), minute(0))
    whole = frame[frame["grouping"] == "all"]
    seen = {metric: counts[int(key)] for metric, key in zip(whole["metric"], whole["series_key"],
                                                            strict=True)}  # fmt: skip
    assert seen == {"events": 40, "total": 36, "mean": 36}
    assert len(read_progress(client, DB, "dirty-run")) == 40


def test_minutes_without_rows_are_processed_with_no_points(client):
    make_table(client, "gaps")
    client.insert_df(f"{DB}.gaps", events(range(0, 10)))
    client.insert_df(f"{DB}.gaps", events(range(15, 20)))
    w = worker(client, "gaps", "gaps-run")
    process_each_minute(w, range(0, 20))

    progress = read_progress(client, DB, "gaps-run").set_index("minute")
    assert len(progress) == 20
    gap = [minute(m) for m in range(10, 15)]
    assert (progress.loc[gap, "points"] == 0).all()
    assert (progress.drop(index=gap)["points"] > 0).all()
    assert read_anomalies(client, DB, "gaps-run").empty


def test_rows_arriving_for_a_processed_minute_are_not_reprocessed(client):
    make_table(client, "late")
    client.insert_df(f"{DB}.late", events(range(0, 30)))
    w = worker(client, "late", "late-run")
    process_each_minute(w, range(0, 25))
    before = w.detector.to_bytes()
    scanned = read_progress(client, DB, "late-run").set_index("minute")["rows_scanned"]

    # A burst that would be a huge spike, but for minute 20, which is already done.
    client.insert_df(f"{DB}.late", events(range(20, 21), per_minute=4000, seed=9))
    process_each_minute(w, range(25, 30))

    after = read_progress(client, DB, "late-run").set_index("minute")["rows_scanned"]
    assert after.loc[minute(20)] == scanned.loc[minute(20)]
    assert read_anomalies(client, DB, "late-run").empty
    assert w.detector.to_bytes() != before  # the later minutes did go on


def test_series_beyond_the_cap_are_not_tracked_and_warned_once(client, caplog):
    make_table(client, "wide")
    # A dimension with a new value per event: unbounded series without a cap.
    client.insert_df(f"{DB}.wide", events(range(0, 6), per_minute=200))
    p = params("wide", max_series=50, dimensions=("device", "user"), min_group_size=1)
    w = CustomerWorker(p.customers[0], p, "unused", "wide-run", engine="test", client=client)
    with caplog.at_level(logging.WARNING, logger="anomaly.pipeline"):
        process_each_minute(w, range(0, 6))

    assert w.detector.series_count == 50
    assert w.untracked_series > 0
    warnings = [r.getMessage() for r in caplog.records if "max_series=50" in r.getMessage()]
    assert len(warnings) == 1 and "acme" in warnings[0]
    assert (read_progress(client, DB, "wide-run")["series_count"] <= 50).all()

    # The busiest series are the ones kept: the whole customer's and each device's.
    frame = query_series(client, p.customers[0], DB, minute(0), minute(0))
    busy = frame.loc[frame["grouping"].isin(["all", "device"]), "series_key"].to_numpy()
    assert len(busy) == 9 and np.isin(busy.astype(np.uint64), w.detector.series_keys).all()
