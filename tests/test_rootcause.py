"""Root cause of coarse anomalies: ranking of finer slices, its storage, and its glue."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime, timedelta

import clickhouse_connect
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from anomaly.config import DetectorSettings, params_from_dict
from anomaly.detector import SeedDetector
from anomaly.explore import anomaly_near, root_cause_table
from anomaly.plots import root_cause_ranking
from anomaly.records import (
    POINT_COLUMNS,
    SHARE,
    WEIGHTED_SHARE,
    Anomaly,
    Contribution,
    causes_from_json,
    causes_to_json,
)
from anomaly.rootcause import coarse_groupings, detect_and_explain, explain, keep_causes
from anomaly.schema import ensure_schema
from anomaly.sql import parse_aggregate
from anomaly.store import read_anomalies, write_anomalies

MINUTE = datetime(2026, 1, 5, 12, 0)
COUNT = parse_aggregate("count()")
AVG = parse_aggregate("avg(latency_ms)")

# (grouping, dimension_values, value, expected, group_size) of one minute of one metric.
Slice = tuple[str, str, float, float, int]


def key_of(grouping: str, values: str, metric: str = "events") -> int:
    """A stable 64-bit series key, as ClickHouse's cityHash64 gives one."""
    digest = hashlib.blake2b(f"{metric}/{grouping}/{values}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def frame(slices: list[Slice], metric: str = "events", minute: datetime = MINUTE) -> pd.DataFrame:
    """A POINT_COLUMNS frame of one minute."""
    return pd.DataFrame(
        {
            "minute": np.array([minute] * len(slices), dtype="datetime64[ns]"),
            "grouping": [s[0] for s in slices],
            "dimension_values": [s[1] for s in slices],
            "metric": [metric] * len(slices),
            "value": np.array([s[2] for s in slices], dtype=np.float64),
            "group_size": np.array([s[4] for s in slices], dtype=np.uint64),
            "series_key": np.array([key_of(s[0], s[1], metric) for s in slices], np.uint64),
        }
    )[list(POINT_COLUMNS)]


def expectations(slices: list[Slice], metric: str = "events") -> pd.Series:
    keys = np.array([key_of(s[0], s[1], metric) for s in slices], np.uint64)
    return pd.Series([s[3] for s in slices], index=keys)


def anomaly_of(slices: list[Slice], grouping: str, values: str, metric: str = "events"):
    (row,) = [s for s in slices if s[:2] == (grouping, values)]
    return Anomaly(
        customer="acme", metric=metric, grouping=grouping, dimension_values=values,
        start_minute=MINUTE, end_minute=None, detected_minute=MINUTE, value=row[2],
        expected=row[3], band_low=row[3] - 1, band_high=row[3] + 1, peak_score=9.0,
        severity="major",
    )  # fmt: skip


# Every slice moved up; mobile moved most, and within it chrome. Values add up in each grouping,
# and so do expectations.
SPIKE: list[Slice] = [
    ("all", "", 1000.0, 600.0, 1000),
    ("device", "mobile", 700.0, 350.0, 700),
    ("device", "desktop", 300.0, 250.0, 300),
    ("browser", "chrome", 650.0, 330.0, 650),
    ("browser", "safari", 350.0, 270.0, 350),
    ("device+browser", "mobile|chrome", 500.0, 200.0, 500),
    ("device+browser", "mobile|safari", 200.0, 150.0, 200),
    ("device+browser", "desktop|chrome", 150.0, 130.0, 150),
    ("device+browser", "desktop|safari", 150.0, 120.0, 150),
]


def test_additive_shares_of_each_grouping_sum_to_one_when_every_child_is_there():
    causes = explain(anomaly_of(SPIKE, "all", ""), frame(SPIKE), expectations(SPIKE), COUNT, 99)

    assert len(causes) == 8 and {c.measure for c in causes} == {SHARE}
    by_grouping: dict[str, float] = {}
    for cause in causes:
        by_grouping[cause.grouping] = by_grouping.get(cause.grouping, 0.0) + cause.contribution
    assert by_grouping == pytest.approx({"device": 1.0, "browser": 1.0, "device+browser": 1.0})
    assert (causes[0].grouping, causes[0].dimension_values) == ("device", "mobile")
    assert causes[0].contribution == pytest.approx(350 / 400)
    assert (causes[0].value, causes[0].expected) == (700.0, 350.0)
    shares = [c.contribution for c in causes]
    assert shares == sorted(shares, reverse=True)


def test_top_keeps_the_largest_contributions():
    causes = explain(anomaly_of(SPIKE, "all", ""), frame(SPIKE), expectations(SPIKE), COUNT, 3)
    assert [(c.grouping, c.dimension_values) for c in causes] == [
        ("device", "mobile"),
        ("browser", "chrome"),
        ("device+browser", "mobile|chrome"),
    ]


def test_children_of_a_slice_are_finer_groupings_with_its_values():
    anomaly = anomaly_of(SPIKE, "device", "mobile")
    causes = explain(anomaly, frame(SPIKE), expectations(SPIKE), COUNT, 99)
    assert [c.dimension_values for c in causes] == ["mobile|chrome", "mobile|safari"]
    assert sum(c.contribution for c in causes) == pytest.approx(1.0)

    # The shared dimension is matched by name, wherever it sits in the combination.
    anomaly = anomaly_of(SPIKE, "browser", "safari")
    causes = explain(anomaly, frame(SPIKE), expectations(SPIKE), COUNT, 99)
    assert [c.dimension_values for c in causes] == ["mobile|safari", "desktop|safari"]


def test_rows_of_other_metrics_and_minutes_are_not_children():
    other_metric = frame(SPIKE, metric="revenue")
    later = frame([("device", "mobile", 9e9, 1.0, 10)], minute=MINUTE + timedelta(minutes=1))
    points = pd.concat([frame(SPIKE), other_metric, later], ignore_index=True)
    expected = pd.concat([expectations(SPIKE), expectations(SPIKE, "revenue")])

    causes = explain(anomaly_of(SPIKE, "all", ""), points, expected, COUNT, 99)
    assert len(causes) == 8 and causes[0].value == 700.0


def test_no_finer_slice_gives_no_ranking():
    finest = anomaly_of(SPIKE, "device+browser", "mobile|chrome")
    assert explain(finest, frame(SPIKE), expectations(SPIKE), COUNT) == []
    alone = [("all", "", 1000.0, 600.0, 1000)]
    assert explain(anomaly_of(alone, "all", ""), frame(alone), expectations(alone), COUNT) == []


def test_children_against_the_change_or_without_expectation_are_left_out():
    slices: list[Slice] = [
        ("all", "", 1000.0, 800.0, 1000),
        ("device", "mobile", 700.0, 400.0, 700),
        ("device", "desktop", 250.0, 400.0, 250),  # fell while the total rose
        ("device", "tablet", 50.0, np.nan, 50),  # the detector has not learned it yet
    ]
    causes = explain(anomaly_of(slices, "all", ""), frame(slices), expectations(slices), COUNT)
    assert [(c.dimension_values, c.contribution) for c in causes] == [("mobile", 1.5)]


def test_a_drop_ranks_the_slice_that_fell():
    slices: list[Slice] = [
        ("all", "", 400.0, 1000.0, 400),
        ("country", "US", 60.0, 600.0, 60),
        ("country", "DE", 340.0, 400.0, 340),
    ]
    causes = explain(anomaly_of(slices, "all", ""), frame(slices), expectations(slices), COUNT)
    assert [c.dimension_values for c in causes] == ["US", "DE"]
    assert causes[0].contribution == pytest.approx(0.9)


def test_non_additive_metric_ranks_by_deviation_weighted_by_event_share():
    slices: list[Slice] = [
        ("all", "", 132.7, 100.0, 1000),  # the events' average of the slices below
        ("device", "mobile", 125.0, 100.0, 900),  # most events, moderate rise
        ("device", "tablet", 300.0, 100.0, 30),  # few events, far off
        ("device", "desktop", 160.0, 100.0, 70),
    ]
    causes = explain(anomaly_of(slices, "all", ""), frame(slices), expectations(slices), AVG)
    assert [c.dimension_values for c in causes] == ["mobile", "tablet", "desktop"]
    assert {c.measure for c in causes} == {WEIGHTED_SHARE}
    assert causes[0].contribution == pytest.approx(0.9 * 25 / 32.7)
    # For an average over unchanged slice sizes the weighted shares add up to the change.
    assert sum(c.contribution for c in causes) == pytest.approx(1.0)


def test_equal_contributions_rank_the_coarser_slice_first():
    slices: list[Slice] = [
        ("all", "", 200.0, 100.0, 200),
        ("device+browser", "mobile|chrome", 150.0, 50.0, 150),
        ("device", "mobile", 150.0, 50.0, 150),
        ("browser", "chrome", 150.0, 50.0, 150),
    ]
    causes = explain(anomaly_of(slices, "all", ""), frame(slices), expectations(slices), COUNT)
    assert [c.grouping for c in causes] == ["browser", "device", "device+browser"]


def test_expectations_may_be_a_plain_mapping():
    plain = {int(k): float(v) for k, v in expectations(SPIKE).items()}
    causes = explain(anomaly_of(SPIKE, "all", ""), frame(SPIKE), plain, COUNT, 1)
    assert causes[0].dimension_values == "mobile"


def test_ranking_round_trips_through_compact_json():
    causes = explain(anomaly_of(SPIKE, "all", ""), frame(SPIKE), expectations(SPIKE), COUNT, 2)
    text = causes_to_json(causes)
    assert " " not in text and text.startswith('[{"grouping":"device"')
    assert causes_from_json(text) == tuple(causes)
    assert causes_to_json([]) == "" and causes_from_json("") == ()

    third = Contribution("device", "x", 1 / 3, 2 / 3, 0.123456789, SHARE)
    assert causes_from_json(causes_to_json([third]))[0].contribution == 0.123457


def test_coarse_groupings_are_those_with_finer_ones():
    params = customer_params(["device", "browser", "device+browser", "country"])
    assert coarse_groupings(params.customers[0]) == {"all", "device", "browser"}
    assert coarse_groupings(customer_params([]).customers[0]) == set()


# --- the glue: detector minute by minute ----------------------------------------------------

SETTINGS = DetectorSettings(warmup_minutes=30, calm_minutes=3, decay=0.98)
START = datetime(2026, 1, 5)
DEVICES = {"mobile": 60.0, "desktop": 100.0, "tablet": 40.0}


def customer_params(dimensions: list[str]):
    return params_from_dict(
        {
            "dataset": {"kind": "nab", "path": "unused"},
            "customers": [
                {
                    "name": "acme",
                    "table": "ev",
                    "time_column": "ts",
                    "dimensions": dimensions,
                    "metrics": {"events": "count()"},
                    "min_group_size": 1,
                }
            ],
        }
    )


def device_minutes(minutes: int, spike: range) -> pd.DataFrame:
    """Events per minute of three devices and their total; mobile x4 during ``spike``."""
    slices = []
    for m in range(minutes):
        minute = START + timedelta(minutes=m)
        values = {d: base + (1 if (m + len(d)) % 2 else -1) for d, base in DEVICES.items()}
        if m in spike:
            values["mobile"] *= 4
        rows: list[Slice] = [("device", d, v, 0.0, int(v)) for d, v in values.items()]
        total = sum(values.values())
        slices.append(frame([("all", "", total, 0.0, int(total)), *rows], minute=minute))
    return pd.concat(slices, ignore_index=True)


def test_glue_ranks_the_spiking_slice_first_and_the_end_keeps_the_ranking():
    customer = customer_params(["device"]).customers[0]
    detector = SeedDetector("acme", SETTINGS)
    updates = detect_and_explain(detector, device_minutes(60, range(40, 45)), customer, 5)

    totals = [a for a in updates if a.grouping == "all"]
    assert [a.end_minute is None for a in totals] == [True, False]
    opened, ended = totals
    assert opened.root_cause[0].dimension_values == "mobile"
    assert opened.root_cause[0].contribution == pytest.approx(1.0, abs=0.05)
    assert ended.root_cause == opened.root_cause
    # The finest slices have nothing finer to explain them.
    assert all(a.root_cause == () for a in updates if a.grouping == "device")


def test_glue_gives_the_same_rankings_however_minutes_are_batched():
    customer = customer_params(["device"]).customers[0]
    points = device_minutes(60, range(40, 45))
    whole = detect_and_explain(SeedDetector("acme", SETTINGS), points, customer, 5)

    by_minute = SeedDetector("acme", SETTINGS)
    pieces = []
    for _, group in points.groupby("minute"):
        pieces.extend(detect_and_explain(by_minute, group, customer, 5))
    assert any(a.root_cause for a in whole)
    assert [a for a in pieces if a.end_minute is None] == [a for a in whole if a.end_minute is None]
    # An end in a later call than its opening gets its ranking from the store (keep_causes).
    assert [replace(a, root_cause=()) for a in pieces] == [replace(a, root_cause=()) for a in whole]


def test_glue_takes_expectations_before_the_minute_is_learned():
    customer = customer_params(["device"]).customers[0]
    points = device_minutes(60, range(40, 45))
    detector = SeedDetector("acme", SETTINGS)
    detect_and_explain(detector, points[points["minute"] < START + timedelta(minutes=40)],
                       customer, 5)  # fmt: skip
    keys = points.loc[points["grouping"] == "device", "series_key"].unique()
    before = dict(zip(keys, detector.expected(keys), strict=True))

    rest = points[points["minute"] >= START + timedelta(minutes=40)]
    (opened,) = [a for a in detect_and_explain(detector, rest, customer, 5) if a.grouping == "all"
                 and a.end_minute is None]  # fmt: skip
    assert opened.root_cause[0].dimension_values == "mobile"
    for cause in opened.root_cause:
        key = key_of("device", cause.dimension_values)
        assert cause.expected == before[key]


def test_top_zero_turns_the_ranking_off():
    customer = customer_params(["device"]).customers[0]
    updates = detect_and_explain(
        SeedDetector("acme", SETTINGS), device_minutes(60, range(40, 45)), customer, 0
    )
    assert updates and all(a.root_cause == () for a in updates)


# --- storage ---------------------------------------------------------------------------------

OLD_ANOMALIES = """
    run_id String, engine LowCardinality(String), customer LowCardinality(String),
    metric LowCardinality(String), grouping LowCardinality(String), dimension_values String,
    start_minute DateTime('UTC'), end_minute Nullable(DateTime('UTC')),
    detected_minute DateTime('UTC'), value Float64, expected Float64, band_low Float64,
    band_high Float64, peak_score Float64, severity LowCardinality(String),
    persisted_at DateTime64(6, 'UTC'), version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (run_id, customer, metric, grouping, dimension_values, start_minute)"""


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    made = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('rc')}/db")
    yield made
    made.close()


def test_a_table_made_before_the_ranking_gets_the_column_and_keeps_its_rows(client):
    client.command("CREATE DATABASE IF NOT EXISTS old")
    client.command(f"CREATE TABLE old.anomalies ({OLD_ANOMALIES}")
    row = anomaly_of(SPIKE, "all", "").as_row()
    del row["root_cause"]
    row.update(run_id="r0", engine="ray", persisted_at=pd.Timestamp(MINUTE), version=1)
    client.insert_df("old.anomalies", pd.DataFrame([row]))

    ensure_schema(client, "old")
    ensure_schema(client, "old")  # again: nothing to add

    stored = read_anomalies(client, "old", "r0")
    assert list(stored["root_cause"]) == [""]
    assert list(stored.columns).count("root_cause") == 1


def test_ranking_is_stored_read_back_and_kept_by_the_ended_version(client):
    ensure_schema(client, "rc")
    customer = customer_params(["device", "browser", "device+browser"]).customers[0]
    opened = anomaly_of(SPIKE, "all", "")
    opened = replace(opened, root_cause=tuple(
        explain(opened, frame(SPIKE), expectations(SPIKE), COUNT, 3)
    ))  # fmt: skip
    write_anomalies(client, "rc", "r1", "ray", [opened], 0.0)

    stored = read_anomalies(client, "rc", "r1")
    assert causes_from_json(stored["root_cause"].iloc[0]) == opened.root_cause

    # The end comes from a detector that no longer knows the ranking: it is read back.
    ended = replace(opened, end_minute=MINUTE + timedelta(minutes=4), root_cause=())
    finest = replace(ended, grouping="device+browser", dimension_values="mobile|chrome")
    kept = keep_causes(client, "rc", "r1", customer, [ended, finest])
    assert kept[0].root_cause == opened.root_cause and kept[1].root_cause == ()
    write_anomalies(client, "rc", "r1", "ray", kept[:1], 1.0)

    stored = read_anomalies(client, "rc", "r1")
    assert len(stored) == 1 and stored["end_minute"].notna().all()
    assert causes_from_json(stored["root_cause"].iloc[0]) == opened.root_cause
    assert keep_causes(client, "rc", "other-run", customer, [ended])[0].root_cause == ()


# --- the notebook's helpers ------------------------------------------------------------------


def stored(*spans: tuple[int, int | None], causes: str = "") -> pd.DataFrame:
    """Rows as read_anomalies gives them, one per (start, end) in minutes after MINUTE."""
    at = [MINUTE + timedelta(minutes=s) for s, _ in spans]
    ends = [None if e is None else MINUTE + timedelta(minutes=e) for _, e in spans]
    return pd.DataFrame(
        {
            "start_minute": pd.to_datetime(at),
            "end_minute": pd.to_datetime(ends),
            "root_cause": [causes] * len(spans),
        }
    )


def test_anomaly_near_a_minute_is_the_one_open_then_or_the_nearest():
    rows = stored((0, 5), (30, 40), (60, None))
    assert anomaly_near(rows, None)["start_minute"] == MINUTE
    assert anomaly_near(rows, MINUTE + timedelta(minutes=35))["start_minute"] == rows.iloc[1, 0]
    assert anomaly_near(rows, MINUTE + timedelta(minutes=27))["start_minute"] == rows.iloc[1, 0]
    assert anomaly_near(rows, MINUTE + timedelta(minutes=999))["start_minute"] == rows.iloc[2, 0]
    assert anomaly_near(rows.iloc[:0], MINUTE) is None


def test_root_cause_table_lists_the_ranking_in_order():
    causes = explain(anomaly_of(SPIKE, "all", ""), frame(SPIKE), expectations(SPIKE), COUNT, 3)
    table = root_cause_table(stored((0, 5), causes=causes_to_json(causes)).iloc[0])
    assert list(table["rank"]) == [1, 2, 3]
    assert list(table["dimension_values"]) == ["mobile", "chrome", "mobile|chrome"]
    assert root_cause_table(None).empty and "contribution" in root_cause_table(None).columns

    figure = root_cause_ranking(table, "why")
    ax = figure.axes[0]
    assert ax.get_title() == "why" and "share" in ax.get_xlabel() and ax.get_ylabel()
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "device = mobile"
    plt.close(figure)
