"""The series query against real ClickHouse (chDB in-process): values, groupings, catch-up."""

from __future__ import annotations

from datetime import datetime, timedelta

import clickhouse_connect
import numpy as np
import pandas as pd
import pytest

from anomaly.config import params_from_dict
from anomaly.queries import fetch_series, series_sql

START = datetime(2026, 1, 5, 0, 0)


def customer_params(name: str = "acme", min_group_size: int = 5):
    return params_from_dict(
        {
            "dataset": {"kind": "nab", "path": "unused"},
            "customers": [
                {
                    "name": name,
                    "table": "ev",
                    "time_column": "ts",
                    "customer_column": "customer",
                    "dimensions": ["device", "browser", "device+browser"],
                    "metrics": {
                        "events": "count()",
                        "latency_avg": "avg(latency_ms)",
                        "latency_p50": "quantile(0.5)(latency_ms)",
                    },
                    "min_group_size": min_group_size,
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('q')}/db")
    client.command("CREATE DATABASE IF NOT EXISTS t")
    client.command(
        "CREATE TABLE t.ev (customer String, ts DateTime('UTC'), device String, browser String,"
        " latency_ms Float64) ENGINE = MergeTree ORDER BY (customer, ts)"
    )
    rng = np.random.default_rng(3)
    n = 6000
    frame = pd.DataFrame(
        {
            "customer": rng.choice(["acme", "other"], n),
            "ts": pd.Timestamp(START) + pd.to_timedelta(rng.integers(0, 600, n), unit="s"),
            "device": rng.choice(["mobile", "desktop", "it's; DROP TABLE ev --"], n),
            "browser": rng.choice(["chrome", "firefox", "tiny"], n, p=[0.5, 0.49, 0.01]),
            "latency_ms": rng.gamma(2.0, 50.0, n),
        }
    )
    client.insert_df("t.ev", frame)
    yield client, frame
    client.close()


def test_statement_carries_no_values_only_placeholders():
    sql = series_sql(customer_params().customers[0], "t")
    assert "{customer:String}" in sql and "{start:DateTime('UTC')}" in sql
    assert "acme" not in sql


def test_counts_and_averages_match_the_events(client):
    client, events = client
    customer = customer_params().customers[0]
    batch = fetch_series(client, customer, "t", START, START + timedelta(minutes=9))
    points = batch.points

    mine = events[events["customer"] == "acme"]
    assert batch.rows_scanned == len(mine)
    minute = mine["ts"].dt.floor("min")
    expected = mine.groupby([minute, "device"]).size()
    got = points[(points["grouping"] == "device") & (points["metric"] == "events")]
    got = got.set_index(["minute", "dimension_values"])["value"]
    for (m, device), count in expected.items():
        if count >= customer.min_group_size:
            assert got[(m, device)] == count

    avg = mine.groupby(minute)["latency_ms"].mean()
    all_avg = points[(points["grouping"] == "all") & (points["metric"] == "latency_avg")]
    np.testing.assert_allclose(all_avg.set_index("minute")["value"].sort_index(), avg.sort_index())


def test_combinations_are_joined_and_small_groups_dropped(client):
    client, _ = client
    customer = customer_params(min_group_size=20).customers[0]
    points = fetch_series(client, customer, "t", START, START + timedelta(minutes=9)).points
    combos = points.loc[points["grouping"] == "device+browser", "dimension_values"]
    assert combos.str.count(r"\|").eq(1).all()
    assert "it's; DROP TABLE ev --|chrome" in set(combos)
    assert (points["group_size"] >= 20).all()
    assert not (points["dimension_values"].str.endswith("|tiny")).any()


def test_catch_up_in_one_query_equals_minute_by_minute(client):
    client, _ = client
    customer = customer_params().customers[0]
    whole = fetch_series(client, customer, "t", START, START + timedelta(minutes=4)).points
    parts = pd.concat(
        [
            fetch_series(
                client, customer, "t", START + timedelta(minutes=i), START + timedelta(minutes=i)
            ).points  # fmt: skip
            for i in range(5)
        ]
    )
    key = ["minute", "series_key"]
    pd.testing.assert_frame_equal(
        whole.sort_values(key).reset_index(drop=True), parts.sort_values(key).reset_index(drop=True)
    )


def test_series_keys_are_stable_across_queries_and_distinct_per_series(client):
    client, _ = client
    customer = customer_params().customers[0]
    points = fetch_series(client, customer, "t", START, START + timedelta(minutes=9)).points
    per_series = points.groupby("series_key")[["metric", "grouping", "dimension_values"]].nunique()
    assert (per_series == 1).all().all()
    assert (
        points.groupby(["metric", "grouping", "dimension_values"])["series_key"]
        .nunique()
        .eq(1)
        .all()
    )


def test_a_customer_without_rows_gives_an_empty_frame(client):
    client, _ = client
    customer = customer_params(name="nobody").customers[0]
    batch = fetch_series(client, customer, "t", START, START + timedelta(minutes=9))
    assert batch.points.empty and batch.rows_scanned == 0


def test_columns_missing_from_the_table_are_named(client):
    from anomaly.config import check_columns
    from anomaly.errors import ConfigError

    client, _ = client
    good = customer_params().customers[0]
    check_columns(client, "t", (good,))

    missing_metric = params_from_dict(
        {
            "dataset": {"kind": "nab", "path": "unused"},
            "customers": [
                {"name": "acme", "table": "ev", "time_column": "ts",
                 "dimensions": ["device"], "metrics": {"bytes": "sum(bytes_sent)"}}
            ],
        }
    ).customers  # fmt: skip
    with pytest.raises(ConfigError, match="metrics names column 'bytes_sent'"):
        check_columns(client, "t", missing_metric)

    no_table = params_from_dict(
        {
            "dataset": {"kind": "nab", "path": "unused"},
            "customers": [{"name": "acme", "table": "nope", "time_column": "ts",
                           "metrics": {"n": "count()"}}],
        }
    ).customers  # fmt: skip
    with pytest.raises(ConfigError, match="table t.nope does not exist"):
        check_columns(client, "t", no_table)


def test_numeric_aggregates_over_text_columns_are_refused(client):
    from anomaly.config import check_columns
    from anomaly.errors import ConfigError

    client, _ = client
    text_sum = params_from_dict(
        {
            "dataset": {"kind": "nab", "path": "unused"},
            "customers": [{"name": "acme", "table": "ev", "time_column": "ts",
                           "metrics": {"n": "count(device)", "bad": "sum(device)"}}],
        }
    ).customers  # fmt: skip
    with pytest.raises(ConfigError, match="metric 'bad' applies sum to column 'device'"):
        check_columns(client, "t", text_sum)
