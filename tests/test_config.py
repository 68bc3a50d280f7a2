"""Params validation: every bad value gives one clear error naming it."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from anomaly.config import DEFAULT_PARAMS, load_params, params_from_dict
from anomaly.errors import ConfigError, ExpressionError, IdentifierError
from anomaly.sql import parse_aggregate


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(DEFAULT_PARAMS.read_text())


def with_customer(raw: dict, **changes: object) -> dict:
    raw = copy.deepcopy(raw)
    raw["customers"][0].update(changes)
    return raw


def test_default_params_load_with_every_customer_and_the_implicit_all_grouping():
    params = load_params()
    assert len(params.customers) >= 8
    for customer in params.customers:
        assert customer.groupings[0] == ()
        assert 2 <= len(customer.dimension_columns) <= 4
    assert any(len(g) > 1 for c in params.customers for g in c.groupings)


def test_overrides_replace_file_values():
    params = load_params(overrides={"run.minutes": 7, "dataset.skew": 10})
    assert params.run.minutes == 7
    assert params.dataset.skew == 10.0


def test_malformed_yaml_names_the_file_and_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  minutes: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*not valid YAML at line"):
        load_params(bad)


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("section", "key"),
    [("run", "minutess"), ("detector", "decai"), ("clickhouse", "host"), ("root_cause", "depth")],
)
def test_unknown_keys_are_named(raw: dict, section: str, key: str):
    raw[section][key] = 1
    with pytest.raises(ConfigError, match=rf"{section}: unknown key\(s\) '{key}'"):
        params_from_dict(raw)


def test_unknown_customer_key_is_named(raw: dict):
    with pytest.raises(ConfigError, match="unknown key.*'dimension'"):
        params_from_dict(with_customer(raw, dimension=["device"]))


@pytest.mark.parametrize(
    "bad",
    [
        "device; DROP TABLE events",
        "device`",
        "dev'ice",
        'dev"ice',
        "device -- comment",
        "device/*x*/",
        "1device",
        "",
    ],
)
def test_identifiers_that_are_not_plain_names_are_rejected(raw: dict, bad: str):
    with pytest.raises(IdentifierError, match="is not a plain name"):
        params_from_dict(with_customer(raw, dimensions=[bad]))
    with pytest.raises(IdentifierError):
        params_from_dict(with_customer(raw, table=bad))
    with pytest.raises(IdentifierError):
        params_from_dict(with_customer(raw, time_column=bad))


@pytest.mark.parametrize(
    "expression",
    [
        "latency_ms",  # not an aggregate
        "sum(latency_ms) + 1",
        "sum(latency_ms); DROP TABLE events",
        "sum(latency_ms) -- x",
        "sleep(3)",
        "sum(`latency_ms`)",
        "sum(latency_ms, amount)",
        "quantile(2)(latency_ms)",
        "quantile(0.9; 1)(latency_ms)",
        "avg()",
        "sum(toString(latency_ms))",
        "file('x')",
    ],
)
def test_metric_expressions_that_are_not_single_aggregates_are_rejected(raw: dict, expression):
    with pytest.raises(ExpressionError, match="metric 'bad'"):
        params_from_dict(with_customer(raw, metrics={"bad": expression}))


def test_aggregates_are_rebuilt_from_their_parts():
    aggregate = parse_aggregate("  quantile( 0.95 )( latency_ms ) ", "p95")
    assert aggregate.to_sql() == "quantile(0.95)(`latency_ms`)"
    assert parse_aggregate("count()", "n").to_sql() == "count()"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("run.minutes", 0, "run.minutes"),
        ("run.speed", -1, "run.speed"),
        ("run.minutes", "many", "run.minutes: 'many'"),
        ("detector.decay", 1.5, "detector.decay"),
        ("detector.kind", "magic", "detector.kind 'magic'"),
        ("dataset.skew", 0.5, "dataset.skew"),
        ("dataset.heavy_customer", "nobody", "heavy_customer 'nobody'"),
        ("clickhouse.url", "ftp://x", "clickhouse.url"),
        ("clickhouse.database", "a-b", "clickhouse.database"),
        ("root_cause.top", -1, "root_cause.top -1"),
    ],
)
def test_bad_values_are_named(key: str, value: object, message: str):
    with pytest.raises(ConfigError, match=message):
        load_params(overrides={key: value})


def test_password_in_url_is_not_repeated_in_errors():
    with pytest.raises(ConfigError) as caught:
        load_params(overrides={"clickhouse.url": "ftp://user:s3cret@host"})
    assert "s3cret" not in str(caught.value)


def test_injected_anomaly_must_name_a_configured_slice(raw: dict):
    raw["dataset"]["anomalies"][0]["grouping"] = "browser+device"
    with pytest.raises(ConfigError, match=r"anomalies\[0\].grouping 'browser\+device'"):
        params_from_dict(raw)


def test_duplicate_customers_are_rejected(raw: dict):
    raw["customers"].append(copy.deepcopy(raw["customers"][0]))
    with pytest.raises(ConfigError, match="repeated"):
        params_from_dict(raw)


# --- detector kinds and per-customer detector settings -------------------------------------------


def test_the_seasonal_kind_is_chosen_globally_with_documented_defaults():
    params = load_params(overrides={"detector.kind": "seasonal"})
    assert params.detector.kind == "seasonal"
    assert params.detector.season_minutes == 1440 and params.detector.season_slots == 96
    # The seed's keys keep their values from the file.
    assert params.detector.band_sigmas == 3.0 and params.detector.decay == 0.99
    assert all(params.detector_for(c) == params.detector for c in params.customers)


def test_a_customer_detector_mapping_replaces_only_its_keys(raw: dict):
    raw = with_customer(raw, detector={"kind": "seasonal", "band_sigmas": 4})
    params = params_from_dict(raw)

    first, second = params.customers[0], params.customers[1]
    own = params.detector_for(first)
    assert (own.kind, own.band_sigmas) == ("seasonal", 4.0)
    assert own.tolerance_sigmas == params.detector.tolerance_sigmas == 10.0
    assert params.detector_for(second.name) is params.detector
    assert params.detector.kind == "seed"


def test_a_customer_inherits_global_overrides_it_does_not_set(raw: dict):
    raw = with_customer(raw, detector={"kind": "seasonal"})
    params = params_from_dict(raw, {"detector.warmup_minutes": 30})
    assert params.detector_for(params.customers[0]).warmup_minutes == 30


@pytest.mark.parametrize(
    ("detector", "message"),
    [
        ({"kind": "forest"}, r"customer 'shopfront' detector.kind 'forest' is not known; "
                             r"allowed: seed, seasonal"),
        ({"band_sigma": 3}, r"customer 'shopfront' detector: unknown key\(s\) 'band_sigma'; "
                            r"allowed: .*band_sigmas"),
        ({"season_slots": 0}, r"detector.season_slots 0 must be between 1 and season_minutes"),
        ({"level_rate": 1.5}, r"detector.level_rate 1.5 must be between 0 and 1"),
        ({"envelope_ratio": -1}, r"detector.envelope_ratio -1.0 must be >= 0"),
        ({"season_minutes": "daily"}, r"detector.season_minutes: 'daily' is not a valid int"),
        (["kind", "seasonal"], r"customer 'shopfront' detector must be a mapping"),
    ],
)  # fmt: skip
def test_bad_customer_detector_settings_are_named(raw: dict, detector, message: str):
    with pytest.raises(ConfigError, match=message):
        params_from_dict(with_customer(raw, detector=detector))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("detector.season_rate", 0, "detector.season_rate 0.0 must be in"),
        ("detector.clip_sigmas", 0, "detector.clip_sigmas: 0.0 must be greater than 0"),
        ("detector.envelope_half_life_minutes", -5, "envelope_half_life_minutes: -5.0"),
        ("detector.season_slots", 2000, "season_slots 2000 must be between 1 and"),
    ],
)
def test_bad_seasonal_values_are_named(key: str, value: object, message: str):
    with pytest.raises(ConfigError, match=message):
        load_params(overrides={key: value})


@pytest.mark.parametrize(
    "url",
    ["http://alice:pa@ss@127.0.0.1:1", "http:/alice:pa@ss@127.0.0.1:1", "https://u:pa@ss@h:8443/x"],
)
def test_redaction_hides_a_password_holding_at_signs_or_behind_a_mistyped_scheme(url):
    from anomaly.config import redact

    shown = redact(url)
    assert "pa@ss" not in shown and "ss@" not in shown and "***@" in shown
    assert shown.endswith(url.rsplit("@", 1)[1])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("run.speed", float("inf"), "run.speed: inf is not a valid float"),
        ("run.data_delay_seconds", float("nan"), "run.data_delay_seconds: nan"),
        ("run.retry_seconds", float("nan"), "run.retry_seconds: nan"),
        ("run.minutes", float("inf"), "run.minutes: inf is not a valid int"),
        ("run.minutes", 10**9, "run.minutes 1000000000 must be at most"),
        ("detector.band_sigmas", float("inf"), "detector.band_sigmas: inf"),
        ("dataset.skew", float("nan"), "dataset.skew: nan"),
        ("dataset.skew", 10**7, "dataset.skew 10000000.0 must be between 1 and"),
        ("dataset.seed", -1, "dataset.seed -1 must be >= 0"),
        ("dataset.start", "9999-12-31 23:00:00", "dataset.start 9999-12-31 23:00:00 must lie"),
        ("clickhouse.url", "chdb:", "must name a folder"),
        ("clickhouse.url", "http://127.0.0.1:abc", "is not a valid http(s)://host:port"),
        ("clickhouse.url", "http://u:secret@127.0.0.1:99999", "'http://***@127.0.0.1:99999'"),
    ],
)
def test_non_finite_out_of_range_and_malformed_values_are_named(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_params(None, {key: value})


@pytest.mark.parametrize(
    "run_id", ["../../tmp/escape", "a" * 101, "", "x'; DROP TABLE t", ".hidden"]
)
def test_run_ids_that_cannot_name_a_folder_are_refused(run_id):
    from anomaly.config import check_run_id

    with pytest.raises(ConfigError, match="run id"):
        check_run_id(run_id)
    assert check_run_id("ray-2026.12_04") == "ray-2026.12_04"


def test_worker_cause_finds_the_python_error_inside_an_engine_error():
    from anomaly.errors import worker_cause

    class RayLike(Exception):
        cause = ValueError("bad value 7\nsecond line")

    assert worker_cause(RayLike("\x1b[36mray::Actor\x1b[0m ...")) == "ValueError: bad value 7"
    spark_text = (
        "An error occurred while calling o1.collect.\n"
        "org.apache.spark.SparkException: Job aborted\n"
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        "anomaly.errors.ConfigError: ANOMALY_FAULT 'x' must be JSON\n"
        "\tat org.apache.spark.api.python.PythonRunner\n"
        "java.lang.RuntimeException: wrapper\n"
    )
    assert worker_cause(Exception(spark_text)) == "ConfigError: ANOMALY_FAULT 'x' must be JSON"


def test_a_params_file_that_is_not_text_is_named(tmp_path: Path):
    binary = tmp_path / "params.yaml"
    binary.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_params(binary)


def test_cluster_addresses_that_do_not_answer_are_named_at_once():
    from anomaly.engines import check_reachable
    from anomaly.engines.spark_engine import spark_session
    from anomaly.errors import EngineError

    with pytest.raises(EngineError, match="Ray address '127.0.0.1:1' does not answer"):
        check_reachable("127.0.0.1:1", "Ray address")
    with pytest.raises(EngineError, match="must end in host:port"):
        check_reachable("garbage", "Ray address")
    with pytest.raises(EngineError, match="Spark master 'garbage' is not a master URL"):
        spark_session("garbage", 2)
    with pytest.raises(EngineError, match="does not answer"):
        spark_session("spark://127.0.0.1:1", 2)
