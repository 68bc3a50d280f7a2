"""Both engines run the seasonal detector, chosen per customer, and persist the same anomalies.

The tiny demo with two customers on the seasonal detector through their own ``detector``
mapping and one left on the global seed. Spark restores every customer's detector from its
checkpoint each tick while a Ray actor keeps it alive, so the same anomalies (up to the last
bits ClickHouse's order of summation moves) also show that the seasonal state restores.
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from anomaly.config import ROOT, params_from_dict
from anomaly.job import run_job
from anomaly.store import Store, read_anomalies

pytestmark = pytest.mark.engine

KEY = ["customer", "metric", "grouping", "dimension_values", "start_minute"]
SEASONAL = {"shopfront", "bankly"}


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines-seasonal")
    raw = yaml.safe_load((ROOT / "params" / "tiny.yaml").read_text())
    for customer in raw["customers"]:
        if customer["name"] in SEASONAL:
            customer["detector"] = {"kind": "seasonal"}
    return params_from_dict(raw, {"clickhouse.url": f"chdb:{folder / 'clickhouse'}"})


@pytest.fixture(scope="module")
def runs(params, tmp_path_factory):
    return {
        engine: run_job(params, engine, reports=tmp_path_factory.mktemp("reports"), progress=False)
        for engine in ("ray", "spark")
    }


def persisted(params, run_id: str) -> tuple[pd.DataFrame, dict[str, str]]:
    with Store(params.clickhouse) as store:
        client = store.client()
        anomalies = read_anomalies(client, params.clickhouse.database, run_id)
        kinds = client.query(
            "SELECT customer, any(detector) FROM {db:Identifier}.detector_state FINAL "
            "WHERE run_id = {run:String} GROUP BY customer",
            parameters={"db": params.clickhouse.database, "run": run_id},
        ).result_rows
    return anomalies, dict(kinds)


def test_each_customer_runs_the_detector_its_settings_name(params, runs):
    for run in runs.values():
        _, kinds = persisted(params, run.plan.run_id)
        assert kinds == {c.name: "seasonal" if c.name in SEASONAL else "seed"
                         for c in params.customers}  # fmt: skip


def test_the_seasonal_detector_finds_the_injected_anomalies_under_both_engines(runs):
    for run in runs.values():
        summary = run.summary.set_index("customer")
        assert summary["labels"].sum() == 2
        assert summary["caught"].sum() == 2
        assert summary.loc["quietco", "anomalies"] == 0


def test_spark_persists_the_same_seasonal_anomalies_as_ray(params, runs):
    ray, _ = persisted(params, runs["ray"].plan.run_id)
    spark, _ = persisted(params, runs["spark"].plan.run_id)

    assert set(ray["customer"]) & SEASONAL
    ray_keyed = ray.set_index(KEY).sort_index()
    spark_keyed = spark.set_index(KEY).sort_index()
    assert list(ray_keyed.index) == list(spark_keyed.index)
    # ClickHouse may sum a minute's floats in another order when the ticks differ: the last bit
    # of a value can move, and what the detector derived from it with it.
    for column in ("value", "expected", "band_low", "band_high", "peak_score"):
        pd.testing.assert_series_equal(ray_keyed[column], spark_keyed[column], rtol=1e-9)
    for column in ("end_minute", "detected_minute", "severity"):
        assert list(ray_keyed[column]) == list(spark_keyed[column])
