"""Params validation: every bad value gives one clear error naming it."""

from __future__ import annotations

import copy
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
