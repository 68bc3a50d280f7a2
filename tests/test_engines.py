"""End to end on the tiny demo dataset: Ray and Spark over the embedded ClickHouse.

One module-scoped run per engine on the same data; the tests read what each persisted.
"""

from __future__ import annotations

import pandas as pd
import pytest

from anomaly.config import ROOT, load_params
from anomaly.job import run_job
from anomaly.records import causes_from_json
from anomaly.rootcause import coarse_groupings
from anomaly.store import Store, read_anomalies, read_progress

pytestmark = pytest.mark.engine

KEY = ["customer", "metric", "grouping", "dimension_values", "start_minute"]


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines")
    return load_params(
        ROOT / "params" / "tiny.yaml", {"clickhouse.url": f"chdb:{folder / 'clickhouse'}"}
    )


@pytest.fixture(scope="module")
def ray_run(params, tmp_path_factory):
    return run_job(params, "ray", reports=tmp_path_factory.mktemp("reports"), progress=False)


@pytest.fixture(scope="module")
def spark_run(params, ray_run, tmp_path_factory):
    return run_job(params, "spark", reports=tmp_path_factory.mktemp("reports"), progress=False)


def persisted(params, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    with Store(params.clickhouse) as store:
        client = store.client()
        return (
            read_anomalies(client, params.clickhouse.database, run_id),
            read_progress(client, params.clickhouse.database, run_id),
        )


def test_ray_finds_the_injected_anomalies(ray_run):
    summary = ray_run.summary.set_index("customer")
    assert summary["labels"].sum() == 2
    assert summary["caught"].sum() == summary["labels"].sum()
    assert ray_run.engine.unfinished == []


def test_ray_finds_nothing_in_a_customer_without_anomalies(ray_run):
    assert ray_run.summary.set_index("customer").loc["quietco", "anomalies"] == 0


def test_ray_processes_every_replayed_minute_once_in_order(params, ray_run):
    _, progress = persisted(params, ray_run.plan.run_id)
    replay = progress[progress["phase"] == "replay"]
    for _, minutes in replay.groupby("customer")["minute"]:
        expected = pd.date_range(ray_run.plan.replay_first, ray_run.plan.replay_last, freq="min")
        assert list(minutes.sort_values()) == list(expected)
    assert (replay["persisted_at"] >= replay["processable_at"]).all()


def test_summary_reports_lag_and_writes_files(ray_run):
    assert (ray_run.summary["minutes"] == ray_run.plan.replay_minutes).all()
    assert ray_run.summary["lag_p95_s"].notna().all()
    assert ray_run.summary_path.exists()
    assert "lag_p95_s" in ray_run.summary_path.read_text()


def test_spark_persists_the_same_anomalies_as_ray(params, ray_run, spark_run):
    ray_anomalies, ray_progress = persisted(params, ray_run.plan.run_id)
    spark_anomalies, spark_progress = persisted(params, spark_run.plan.run_id)

    assert not ray_anomalies.empty
    ray_keyed = ray_anomalies.set_index(KEY).sort_index()
    spark_keyed = spark_anomalies.set_index(KEY).sort_index()
    assert list(ray_keyed.index) == list(spark_keyed.index)
    for column in ("value", "expected", "band_low", "band_high", "peak_score"):
        pd.testing.assert_series_equal(ray_keyed[column], spark_keyed[column], rtol=1e-9)
    for column in ("end_minute", "detected_minute", "severity", "root_cause"):
        assert list(ray_keyed[column]) == list(spark_keyed[column])

    minutes = ["customer", "minute", "phase"]
    assert ray_progress[minutes].equals(spark_progress[minutes])
    assert (spark_progress["engine"] == "spark").all()


def test_a_coarse_anomaly_ranks_the_injected_slice_first_from_open_to_end(params, ray_run):
    anomalies, _ = persisted(params, ray_run.plan.run_id)
    shopfront = anomalies[anomalies["customer"] == "shopfront"]

    # The injected spike is on device = mobile: the customer's total must put it first.
    total = shopfront[(shopfront["metric"] == "events") & (shopfront["grouping"] == "all")]
    assert len(total) >= 1
    for text in total["root_cause"]:
        top = causes_from_json(text)[0]
        assert (top.grouping, top.dimension_values) == ("device", "mobile")
        assert top.contribution > 0.8

    # Every anomaly of a grouping with finer ones has a ranking, the ended ones too.
    coarse = shopfront[shopfront["grouping"].isin(coarse_groupings(params.customer("shopfront")))]
    assert coarse["end_minute"].notna().any()
    assert (coarse["root_cause"] != "").all()
    finest = shopfront[shopfront["grouping"] == "device+browser"]
    assert (finest["root_cause"] == "").all()


def test_spark_summary_matches_ray(ray_run, spark_run):
    columns = ["customer", "minutes", "anomalies", "labels", "caught", "missed"]
    pd.testing.assert_frame_equal(ray_run.summary[columns], spark_run.summary[columns])


def test_reading_a_run_with_nothing_persisted_gives_frames_with_columns(params):
    with Store(params.clickhouse) as store:
        client = store.client()
        anomalies = read_anomalies(client, params.clickhouse.database, "no-such-run")
        progress = read_progress(client, params.clickhouse.database, "no-such-run")
    assert anomalies.empty and "end_minute" in anomalies.columns
    assert progress.empty and "persisted_at" in progress.columns
