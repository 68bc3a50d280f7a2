"""The demo dataset: deterministic generation, skew, injected anomalies, idempotent loading."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import clickhouse_connect
import numpy as np
import pandas as pd
import pytest

from anomaly.config import InjectedAnomaly, Params, load_params
from anomaly.dataset import (
    DIMENSIONS,
    EVENT_COLUMNS,
    LABEL_COLUMNS,
    create_events_table,
    generate_demo,
    load_demo,
    start_minute,
)
from anomaly.errors import ConfigError, DatasetError

MINUTES = 60

# A small dataset for the loading tests: fewer events, shorter history.
SMALL = {"dataset.events_per_minute": 120, "dataset.history_minutes": 30}


def small(**more: Any) -> Params:
    return load_params(overrides={**SMALL, **more})


@pytest.fixture(scope="module")
def default() -> tuple[Params, pd.DataFrame, pd.DataFrame]:
    params = load_params()
    events, labels = generate_demo(params, MINUTES)
    events["minute"] = events["ts"].dt.floor("min")
    return params, events, labels


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("chdb_dataset")
    return clickhouse_connect.get_client(dsn=f"chdb://{path}/db")


def slice_series(params: Params, events: pd.DataFrame, label: pd.Series) -> pd.DataFrame:
    """Per minute: the label's metric over its slice, and the slice's size."""
    customer = params.customer(label["customer"])
    aggregate = customer.metrics[label["metric"]]
    rows = events[events["customer"] == customer.name]
    if label["grouping"] != "all":
        columns = label["grouping"].split("+")
        for column, value in zip(columns, label["dimension_values"].split("|"), strict=True):
            rows = rows[rows[column] == value]
    groups = rows.groupby("minute")
    if aggregate.function == "count":
        value = groups.size().astype(float)
    elif aggregate.function.startswith("quantile"):
        value = groups[aggregate.columns[0]].quantile(float(aggregate.parameters[0]))
    else:
        value = groups[aggregate.columns[0]].agg({"avg": "mean", "sum": "sum"}[aggregate.function])
    return pd.DataFrame({"value": value, "size": groups.size()})


# --- generation ------------------------------------------------------------------------------


def test_same_seed_gives_identical_rows_and_another_seed_differs() -> None:
    params = small()
    first_events, first_labels = generate_demo(params, 20)
    again_events, again_labels = generate_demo(params, 20)
    pd.testing.assert_frame_equal(first_events, again_events)
    pd.testing.assert_frame_equal(first_labels, again_labels)

    other, _ = generate_demo(small(**{"dataset.seed": 8}), 20)
    assert len(other) != len(first_events) or not other.equals(first_events)


def test_events_have_the_table_columns_and_known_values(default: Any) -> None:
    params, events, _ = default
    assert tuple(events.columns[: len(EVENT_COLUMNS)]) == EVENT_COLUMNS
    assert set(events["customer"].unique()) == {c.name for c in params.customers}
    assert set(events["device"].unique()) == {"mobile", "desktop", "tablet"}
    assert events["country"].nunique() == 50
    assert (events["latency_ms"] > 0).all() and (events["bytes"] > 0).all()
    bought = events["amount"] > 0
    assert 0.01 < bought.mean() < 0.2 and (events["amount"] >= 0).all()


def test_every_customer_has_events_in_every_minute(default: Any) -> None:
    params, events, _ = default
    total = params.dataset.history_minutes + MINUTES
    per_customer = events.groupby("customer", observed=True)["minute"].nunique()
    assert (per_customer == total).all()
    assert events["minute"].min() == pd.Timestamp(start_minute(params.dataset))
    first = pd.Timestamp(start_minute(params.dataset))
    assert events["minute"].max() == first + timedelta(minutes=total - 1)


def test_small_dimensions_keep_groups_above_min_group_size(default: Any) -> None:
    params, events, _ = default
    for customer in params.customers:
        rows = events[events["customer"] == customer.name]
        for column in ("device", "browser", "plan", "os"):
            if (column,) in customer.groupings:
                sizes = rows.groupby(["minute", column], observed=True).size()
                scored = (sizes >= customer.min_group_size).mean()
                assert scored >= 0.85, (customer.name, column, scored)


def test_skew_multiplies_the_heavy_customer_and_leaves_the_others() -> None:
    # Without anomalies, whose extra events would blur the ratio.
    params = small(**{"dataset.anomalies": []})
    heavy = params.dataset.heavy_customer
    events, _ = generate_demo(params, 30)
    skewed, _ = generate_demo(small(**{"dataset.anomalies": [], "dataset.skew": 4}), 30)

    counts = events.groupby("customer", observed=True).size()
    skewed_counts = skewed.groupby("customer", observed=True).size()
    assert skewed_counts[heavy] / counts[heavy] == pytest.approx(4, rel=0.03)
    others = events[events["customer"] != heavy].reset_index(drop=True)
    skewed_others = skewed[skewed["customer"] != heavy].reset_index(drop=True)
    pd.testing.assert_frame_equal(others, skewed_others)


def test_sudden_skew_leaves_the_heavy_customers_history_alone() -> None:
    params = small(**{"dataset.anomalies": []})
    heavy = params.dataset.heavy_customer
    history = params.dataset.history_minutes
    plain, _ = generate_demo(params, 30)
    sudden, _ = generate_demo(
        small(**{"dataset.anomalies": [], "dataset.skew": 5, "dataset.skew_sudden": True}), 30
    )

    def per_phase(events: pd.DataFrame) -> pd.Series:
        mine = events[events["customer"] == heavy]
        index = (mine["ts"] - mine["ts"].min()).dt.total_seconds() // 60
        return mine.groupby(index >= history).size()

    before, after = per_phase(plain), per_phase(sudden)
    assert after[False] == pytest.approx(before[False], rel=0.03)
    assert after[True] / before[True] == pytest.approx(5, rel=0.05)


def test_skew_cardinality_adds_values_to_the_heavy_customer_only() -> None:
    params = small(**{"dataset.skew": 3, "dataset.skew_cardinality": True})
    events, _ = generate_demo(params, 20)
    plain, _ = generate_demo(small(**{"dataset.skew": 3}), 20)
    heavy = params.dataset.heavy_customer

    cardinality = events.groupby("customer", observed=True)[["country", "endpoint"]].nunique()
    assert cardinality.loc[heavy, "country"] > 100 and cardinality.loc[heavy, "endpoint"] > 40
    assert (cardinality.drop(heavy) <= [50, 20]).all().all()

    others = events[events["customer"] != heavy].astype({c: str for c in DIMENSIONS})
    plain_others = plain[plain["customer"] != heavy].astype({c: str for c in DIMENSIONS})
    pd.testing.assert_frame_equal(
        others.reset_index(drop=True), plain_others.reset_index(drop=True)
    )


# --- injected anomalies ------------------------------------------------------------------------


def label_of(labels: pd.DataFrame, anomaly: InjectedAnomaly) -> pd.Series:
    match = labels[
        (labels["customer"] == anomaly.customer)
        & (labels["metric"] == anomaly.metric)
        & (labels["grouping"] == anomaly.grouping)
        & (labels["dimension_values"] == "|".join(anomaly.values))
    ]
    assert len(match) == 1, anomaly
    return match.iloc[0]


def test_every_injected_anomaly_is_labelled_with_its_minutes(default: Any) -> None:
    params, _, labels = default
    assert tuple(labels.columns) == LABEL_COLUMNS
    assert len(labels) == len(params.dataset.anomalies)
    replay = pd.Timestamp(start_minute(params.dataset)) + timedelta(
        minutes=params.dataset.history_minutes
    )
    for anomaly in params.dataset.anomalies:
        label = label_of(labels, anomaly)
        assert label.kind == anomaly.kind
        assert label.start_minute == replay + timedelta(minutes=anomaly.offset_minutes)
        last = anomaly.offset_minutes + anomaly.duration_minutes - 1
        assert label.end_minute == replay + timedelta(minutes=last)
        assert label.dataset == "demo" and label.detectable == 1


@pytest.mark.parametrize("index", range(6))
def test_injected_anomaly_moves_its_slice_clearly(default: Any, index: int) -> None:
    params, events, labels = default
    anomaly = params.dataset.anomalies[index]
    label = label_of(labels, anomaly)
    customer = params.customer(label["customer"])
    series = slice_series(params, events, label)

    inside = series.loc[label["start_minute"] : label["end_minute"]]
    before = series.loc[label["start_minute"] - timedelta(minutes=120) : label["start_minute"]]
    before = before.iloc[:-1]
    after = series.loc[label["end_minute"] + timedelta(minutes=1) :].iloc[:5]
    assert len(inside) == anomaly.duration_minutes
    assert inside["size"].min() >= customer.min_group_size

    level, spread = before["value"].mean(), before["value"].std()
    if anomaly.kind == "variance":
        assert inside["value"].std() >= 3 * spread
        assert (abs(inside["value"] - level) >= 3 * spread).mean() >= 0.8
    else:
        ratio = inside["value"].mean() / level
        assert abs(np.log(ratio / anomaly.magnitude)) < np.log(1.25)
        assert (abs(inside["value"] - level) >= 5 * spread).all()
    if len(after):
        assert (abs(after["value"] - level) < 5 * spread).all()


SPIKE = {
    "customer": "shopfront", "kind": "spike", "metric": "events", "grouping": "device",
    "values": ["mobile"], "offset_minutes": 5, "duration_minutes": 3, "magnitude": 3.0,
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"values": ["smartwatch"]}, "device value 'smartwatch' is never generated"),
        ({"magnitude": 0.0}, "magnitude 0.0 must be greater than 0"),
        ({"duration_minutes": 0}, "duration_minutes 0 must be at least 1"),
        ({"kind": "variance", "offset_minutes": -25}, "variance anomaly needs 10 minutes"),
    ],
)
def test_an_anomaly_the_generator_cannot_inject_is_refused(
    change: dict[str, Any], message: str
) -> None:
    params = small(**{"dataset.anomalies": [{**SPIKE, **change}]})
    with pytest.raises(ConfigError, match=message):
        generate_demo(params, 20)


def test_an_anomaly_on_a_distinct_count_is_refused() -> None:
    customer = {
        "name": "solo", "table": "events", "time_column": "ts", "customer_column": "customer",
        "dimensions": ["device"], "metrics": {"browsers": "uniq(browser)"},
    }  # fmt: skip
    params = load_params(
        overrides={
            **SMALL,
            "customers": [customer],
            "dataset.heavy_customer": None,
            "dataset.anomalies": [{**SPIKE, "customer": "solo", "metric": "browsers"}],
        }
    )
    with pytest.raises(ConfigError, match="cannot be moved"):
        generate_demo(params, 20)


def test_minutes_must_be_positive() -> None:
    with pytest.raises(DatasetError, match="minutes"):
        generate_demo(small(), 0)


# --- loading into ClickHouse -----------------------------------------------------------------


def count(client: Any, sql: str) -> int:
    return int(client.query(sql).result_rows[0][0])


def test_load_is_idempotent_and_a_changed_spec_replaces_the_rows(client: Any) -> None:
    params = small()
    expected, labels = generate_demo(params, 30)
    first = load_demo(client, params, 30, progress=False)
    assert first.reloaded and first.rows == len(expected) > 0
    assert first.rows_per_second > 0
    assert first.first_minute == start_minute(params.dataset)
    assert first.last_minute == first.first_minute + timedelta(minutes=59)
    assert count(client, "SELECT count() FROM anomaly.events") == len(expected)
    assert count(client, "SELECT count() FROM anomaly.labels WHERE dataset = 'demo'") == len(labels)

    create_events_table(client, "anomaly")  # already there: changes nothing
    again = load_demo(client, params, 30, progress=False)
    assert not again.reloaded and again.rows == first.rows
    assert count(client, "SELECT count() FROM anomaly.events") == len(expected)

    changed = small(**{"dataset.seed": 11})
    new_expected, new_labels = generate_demo(changed, 30)
    reload = load_demo(client, changed, 30, progress=False)
    assert reload.reloaded and reload.rows == len(new_expected)
    assert count(client, "SELECT count() FROM anomaly.events") == len(new_expected)
    assert count(client, "SELECT count() FROM anomaly.datasets FINAL") == 1
    stored = client.query_df(
        "SELECT * FROM anomaly.labels FINAL WHERE dataset = 'demo' ORDER BY customer, metric"
    )
    want = new_labels.sort_values(["customer", "metric"]).reset_index(drop=True)
    for column in ("customer", "metric", "grouping", "dimension_values", "kind", "detectable"):
        assert list(stored[column]) == list(want[column]), column
    assert list(stored["start_minute"].dt.tz_localize(None)) == list(want["start_minute"])
    assert list(stored["end_minute"].dt.tz_localize(None)) == list(want["end_minute"])


def test_events_changed_behind_its_back_are_reloaded(client: Any) -> None:
    params = small(**{"dataset.seed": 21})
    load_demo(client, params, 10, progress=False)
    client.command(
        "INSERT INTO anomaly.events (customer, ts) VALUES ('shopfront', '2026-01-05 00:00:00')"
    )
    result = load_demo(client, params, 10, progress=False)
    assert result.reloaded
    assert count(client, "SELECT count() FROM anomaly.events") == result.rows


def test_a_load_interrupted_before_its_datasets_row_is_redone(client: Any) -> None:
    params = small(**{"dataset.seed": 22})
    load_demo(client, params, 10, progress=False)
    client.command("DELETE FROM anomaly.datasets WHERE dataset = 'demo'")
    assert load_demo(client, params, 10, progress=False).reloaded


def test_loading_leaves_other_datasets_and_tables_alone(client: Any) -> None:
    load_demo(client, small(**{"dataset.seed": 23}), 10, progress=False)
    client.command(
        "INSERT INTO anomaly.labels (dataset, customer, kind) VALUES ('nab', 'someone', 'x')"
    )
    client.command("INSERT INTO anomaly.anomalies (run_id, customer) VALUES ('r1', 'someone')")
    load_demo(client, small(**{"dataset.seed": 24}), 10, progress=False)
    assert count(client, "SELECT count() FROM anomaly.labels WHERE dataset = 'nab'") == 1
    assert count(client, "SELECT count() FROM anomaly.anomalies WHERE run_id = 'r1'") == 1


def test_a_load_failing_half_way_leaves_the_previous_dataset_whole(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anomaly.dataset as dataset

    params = small(**{"dataset.seed": 25})
    before = load_demo(client, params, 10, progress=False)
    real = dataset._generate_customer
    calls = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise OverflowError("generation failed half way")
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset, "_generate_customer", failing)
    with pytest.raises(OverflowError):
        load_demo(client, small(**{"dataset.seed": 26}), 10, progress=False)
    monkeypatch.undo()

    assert count(client, "SELECT count() FROM anomaly.events") == before.rows
    assert not load_demo(client, params, 10, progress=False).reloaded
