"""NAB-format input: readings and windows on minutes, clear errors, idempotent loading."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import clickhouse_connect
import pandas as pd
import pytest

from anomaly.errors import DatasetError
from anomaly.nab import NAB_START, customer_name, load_nab, nab_customers, read_nab

SHARED_NAB = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab"

FIVE = timedelta(minutes=5)
T0 = datetime(2015, 3, 1, 12, 0)


def write_csv(path: Path, values: list[float], start: datetime = T0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["timestamp,value"]
    lines += [f"{start + i * FIVE:%Y-%m-%d %H:%M:%S},{v}" for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")


def stamp(at: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S}.000000"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two folders, three files, windows for two of them and one for a file that is absent."""
    root = tmp_path / "nab"
    write_csv(root / "data" / "alpha" / "a_one.csv", [float(i) for i in range(10)])
    write_csv(root / "data" / "alpha" / "a_two.csv", [5.0] * 6, start=T0 + 100 * FIVE)
    write_csv(root / "data" / "beta-2" / "b_one.csv", [1.5, 2.5, 3.5, 4.5])
    two = timedelta(minutes=2)
    windows = {
        # Starts between readings 2 and 3, ends between readings 6 and 7: minutes 3..6.
        "alpha/a_one.csv": [[stamp(T0 + 2 * FIVE + two), stamp(T0 + 6 * FIVE + two)]],
        "alpha/a_two.csv": [],
        # Starts before the first reading and ends exactly at reading 1: minutes 0..1.
        "beta-2/b_one.csv": [[stamp(T0 - FIVE), stamp(T0 + FIVE)]],
        "gamma/elsewhere.csv": [[stamp(T0), stamp(T0 + FIVE)]],
    }
    (root / "windows.json").write_text(json.dumps(windows))
    return root


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("chdb_nab")
    return clickhouse_connect.get_client(dsn=f"chdb://{path}/db")


def minute(i: int) -> pd.Timestamp:
    return pd.Timestamp(NAB_START + timedelta(minutes=i))


# --- reading -----------------------------------------------------------------------------------


def test_each_reading_lands_on_its_own_minute_from_the_epoch(folder: Path) -> None:
    readings, _ = read_nab(folder)
    assert list(readings.columns) == ["customer", "series", "minute", "value", "timestamp"]
    assert set(readings["customer"]) == {"alpha", "beta_2"}

    a_one = readings[readings["series"] == "a_one"]
    assert list(a_one["minute"]) == [minute(i) for i in range(10)]
    assert list(a_one["value"]) == [float(i) for i in range(10)]
    assert list(a_one["timestamp"]) == [pd.Timestamp(T0 + i * FIVE) for i in range(10)]

    # A file that starts later in its own time still starts at the epoch: customers and series
    # run side by side.
    a_two = readings[readings["series"] == "a_two"]
    assert a_two["minute"].iloc[0] == minute(0) and len(a_two) == 6
    assert not readings.duplicated(["series", "minute"]).any()


def test_windows_map_to_the_readings_inside_them(folder: Path) -> None:
    _, windows = read_nab(folder)
    by_series = windows.set_index("series")
    assert set(by_series.index) == {"a_one", "b_one"}
    assert by_series.loc["a_one", "customer"] == "alpha"
    assert (by_series.loc["a_one", "start_minute"], by_series.loc["a_one", "end_minute"]) == (
        minute(3),
        minute(6),
    )
    assert (by_series.loc["b_one", "start_minute"], by_series.loc["b_one", "end_minute"]) == (
        minute(0),
        minute(1),
    )
    assert by_series.loc["b_one", "customer"] == "beta_2"


def test_a_window_without_readings_is_dropped(folder: Path) -> None:
    windows = json.loads((folder / "windows.json").read_text())
    windows["alpha/a_two.csv"] = [[stamp(T0), stamp(T0 + 3 * FIVE)]]  # before its first reading
    (folder / "windows.json").write_text(json.dumps(windows))
    _, mapped = read_nab(folder)
    assert "a_two" not in set(mapped["series"])


def test_customer_configs_have_one_series_grouping_and_the_value_metric(folder: Path) -> None:
    customers = nab_customers(folder)
    assert [c.name for c in customers] == ["alpha", "beta_2"]
    for customer in customers:
        assert customer.table == "nab_events"
        assert (customer.time_column, customer.customer_column) == ("ts", "customer")
        assert customer.groupings == (("series",),)
        assert customer.metrics["value"].to_sql() == "avg(`value`)"
        assert customer.min_group_size == 1


def test_folder_names_become_identifiers() -> None:
    assert customer_name("realAWSCloudwatch") == "realAWSCloudwatch"
    assert customer_name("my-data.v2") == "my_data_v2"
    assert customer_name("2024") == "_2024"


# --- errors ------------------------------------------------------------------------------------


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="nowhere"):
        read_nab(missing)
    with pytest.raises(DatasetError, match="nowhere"):
        nab_customers(missing)


def test_a_folder_without_data_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="data/"):
        read_nab(tmp_path)
    (tmp_path / "data" / "empty").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no <folder>/<file>.csv"):
        read_nab(tmp_path)


def test_a_missing_windows_file_is_named(folder: Path) -> None:
    (folder / "windows.json").unlink()
    with pytest.raises(DatasetError, match=r"windows\.json.*does not exist"):
        read_nab(folder)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not readable JSON"),
        ("[1, 2]", "must map"),
        ('{"alpha/a_one.csv": [["2015-03-01"]]}', "not a \\[start, end\\] pair"),
        ('{"alpha/a_one.csv": [["2015-03-02", "2015-03-01"]]}', "ending before it starts"),
    ],
)
def test_a_malformed_windows_file_is_named(folder: Path, text: str, message: str) -> None:
    (folder / "windows.json").write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_nab(folder)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,value\n2015-03-01 12:00:00,1\n", "lacks column\\(s\\) timestamp"),
        ("timestamp,value\n2015-03-01 12:00:00,1\n2015-03-01 12:05:00,abc\n", "line 3: value"),
        ("timestamp,value\nyesterday,1\n", "line 2: timestamp 'yesterday'"),
        ("timestamp,value\n", "has no readings"),
        ("", "not a readable CSV"),
        ("timestamp,value\n2015-03-01 12:05:00,1\n2015-03-01 12:00:00,2\n", "line 3: .*backwards"),
    ],
)
def test_a_bad_csv_is_named_with_its_line(folder: Path, text: str, message: str) -> None:
    bad = folder / "data" / "beta-2" / "b_one.csv"
    bad.write_text(text)
    with pytest.raises(DatasetError, match=message) as error:
        read_nab(folder)
    assert "b_one.csv" in str(error.value)


# --- loading into ClickHouse -------------------------------------------------------------------


def test_load_writes_readings_and_window_labels_once(client: Any, folder: Path) -> None:
    first = load_nab(client, "anomaly", folder, progress=False)
    assert first.reloaded and first.rows == 20 and first.dataset == "nab"
    assert (first.first_minute, first.last_minute) == (NAB_START, NAB_START + timedelta(minutes=9))

    stored = client.query_df(
        "SELECT customer, series, ts, value FROM anomaly.nab_events ORDER BY customer, series, ts"
    )
    assert len(stored) == 20
    b_one = stored[stored["series"] == "b_one"]
    assert list(b_one["value"]) == [1.5, 2.5, 3.5, 4.5]
    assert list(b_one["ts"].dt.tz_localize(None)) == [minute(i) for i in range(4)]

    labels = client.query(
        "SELECT customer, metric, grouping, dimension_values, kind, start_minute, end_minute, "
        "detectable FROM anomaly.labels FINAL WHERE dataset = 'nab' ORDER BY customer"
    ).result_rows
    assert labels == [
        ("alpha", "value", "series", "a_one", "nab_window", minute(3), minute(6), 1),
        ("beta_2", "value", "series", "b_one", "nab_window", minute(0), minute(1), 1),
    ]

    again = load_nab(client, "anomaly", folder, progress=False)
    assert not again.reloaded and again.rows == 20
    assert client.query("SELECT count() FROM anomaly.nab_events").result_rows[0][0] == 20

    write_csv(folder / "data" / "beta-2" / "b_one.csv", [1.0, 2.0, 3.0, 4.0, 5.0])
    changed = load_nab(client, "anomaly", folder, progress=False)
    assert changed.reloaded and changed.rows == 21
    assert client.query("SELECT count() FROM anomaly.nab_events").result_rows[0][0] == 21
    count = "SELECT count() FROM anomaly.labels FINAL WHERE dataset = 'nab'"
    assert client.query(count).result_rows[0][0] == 2


def test_load_of_a_missing_folder_fails_before_touching_the_database(
    client: Any, tmp_path: Path
) -> None:
    with pytest.raises(DatasetError, match="absent"):
        load_nab(client, "anomaly", tmp_path / "absent", progress=False)


# --- the shared NAB extract --------------------------------------------------------------------


@pytest.mark.skipif(
    not SHARED_NAB.is_dir(),
    reason=f"the NAB extract is not here ({SHARED_NAB}); users supply their own NAB path",
)
def test_the_shared_nab_extract_loads_and_every_window_is_inside_its_file(client: Any) -> None:
    readings, windows = read_nab(SHARED_NAB)
    assert readings.groupby(["customer", "series"]).ngroups == 23
    assert set(readings["customer"]) == {"artificialWithAnomaly", "realAWSCloudwatch"}

    spans = readings.groupby("series")["minute"].agg(["min", "max", "count"])
    assert (spans["min"] == pd.Timestamp(NAB_START)).all()
    assert len(windows) > 20
    for window in windows.itertuples():
        span = spans.loc[window.series]
        assert span["min"] <= window.start_minute <= window.end_minute <= span["max"]

    result = load_nab(client, "anomaly", SHARED_NAB, progress=False)
    assert result.rows == len(readings)
    count = "SELECT count() FROM anomaly.labels FINAL WHERE dataset = 'nab'"
    assert client.query(count).result_rows[0][0] == len(windows)
