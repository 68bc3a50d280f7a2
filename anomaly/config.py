"""Params files: load YAML, validate every value, and give typed settings to the rest.

Validation happens before anything runs. Each problem raises :class:`ConfigError` naming the
file section, the key and the bad value. Checks that need the database (columns exist in the
table) are in :func:`check_columns`.
"""

from __future__ import annotations

import copy
import math
import os
import re
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from anomaly.errors import ConfigError
from anomaly.records import ALL_GROUPING, GROUPING_SEPARATOR
from anomaly.sql import Aggregate, identifier, parse_aggregate

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS = ROOT / "params" / "default.yaml"
# An environment variable that, when set, replaces clickhouse.url of every params file (an
# explicit override still wins): points notebooks and tests at another ClickHouse.
URL_ENV = "ANOMALY_CLICKHOUSE_URL"
# Where run summaries, figures and executed notebooks go, when not reports/ (tests use it).
REPORTS_ENV = "ANOMALY_REPORTS_DIR"


def reports_root() -> Path:
    """``reports/`` of the project, or the folder ANOMALY_REPORTS_DIR names."""
    return Path(os.environ[REPORTS_ENV]) if os.environ.get(REPORTS_ENV) else ROOT / "reports"


# Bounds that keep a mistyped number from generating billions of rows or running for years.
MAX_SKEW = 10_000
MAX_MINUTES = 100_000


@dataclass(frozen=True)
class ClickHouseSettings:
    """Where ClickHouse is. ``chdb:<dir>`` means the embedded endpoint over that directory."""

    url: str = "chdb:data/clickhouse"
    database: str = "anomaly"
    max_threads: int = 1

    @property
    def embedded(self) -> bool:
        return self.url.startswith("chdb:")

    @property
    def data_dir(self) -> Path:
        """The chDB directory of an embedded URL, resolved against the project root."""
        path = Path(self.url.removeprefix("chdb:"))
        return path if path.is_absolute() else ROOT / path


@dataclass(frozen=True)
class DetectorSettings:
    """Settings of the streaming detectors: ``seed`` (anomaly.detector) and ``seasonal``
    (anomaly.seasonal). Counts of minutes are counts of a series' own points, as the detectors
    see one point a minute; the seasonal detector's season and envelope are clock minutes."""

    kind: str = "seed"
    # Seed only: the weight of the past in the decayed mean and variance, per point.
    decay: float = 0.99
    # Both: a point further than this many spreads from the expected value is outside the band;
    # an excursion opens an anomaly once its accumulated excess passes the tolerance.
    band_sigmas: float = 3.0
    tolerance_sigmas: float = 10.0
    warmup_minutes: int = 120
    calm_minutes: int = 5
    min_std_fraction: float = 0.01
    severity_sigmas: tuple[float, float] = (6.0, 12.0)

    # Seasonal only. The season (a day, in clock minutes) and the knots of its baseline, which
    # is linear between knots (96: one every 15 minutes).
    season_minutes: int = 1440
    season_slots: int = 96
    # Share of a point's clipped residual that the level and the seasonal offset learn.
    level_rate: float = 0.05
    # Share of a knot's baseline renewed per season, once each knot has its first average.
    season_rate: float = 0.3
    # Weight of a point in the decayed mean absolute error that sets each model's spread.
    spread_rate: float = 0.02
    # Residuals beyond this many spreads are clipped before anything learns them, so one
    # outlier moves the baseline little while a lasting level shift is learned step by step.
    clip_sigmas: float = 3.0
    # An excursion opens an anomaly only when its excess is also this many times the largest
    # excess of the series' recent excursions, which decays with this half-life (clock minutes).
    envelope_ratio: float = 1.5
    envelope_half_life_minutes: float = 10080.0
    # An anomaly whose points stay outside the band this many points in a row re-bases the
    # level (and the seasonal offset) on their mean, so even a large lasting shift ends soon;
    # 0: never (the clipped learning still catches up, a few spreads a point).
    rebase_minutes: int = 120


@dataclass(frozen=True)
class RunSettings:
    """How a replay runs: how many simulated minutes, how fast, how late data may arrive."""

    minutes: int = 60
    speed: float = 60.0
    data_delay_seconds: float = 5.0
    checkpoint_every_minutes: int = 1
    # A customer whose replayed ticks also wait this many wall seconds per minute covered (not
    # during warm-up), standing for
    # work that waits (slow I/O) rather than computes: it separates synchronisation delay from
    # CPU contention in the skew experiment.
    wait_customer: str | None = None
    wait_seconds_per_minute: float = 0.0
    # How long a customer's worker keeps retrying (with backoff) a ClickHouse call that fails
    # because the server cannot be reached, before the run gives up on that customer.
    retry_seconds: float = 120.0


@dataclass(frozen=True)
class RootCauseSettings:
    """How an anomaly of a coarse grouping is explained by finer slices (anomaly.rootcause)."""

    # Slices kept in an anomaly's ranking, best first; 0 turns the ranking off.
    top: int = 5


@dataclass(frozen=True)
class InjectedAnomaly:
    """An anomaly the demo generator puts into one slice of one customer's events."""

    customer: str
    kind: str
    metric: str
    grouping: str
    values: tuple[str, ...]
    offset_minutes: int
    duration_minutes: int
    magnitude: float


@dataclass(frozen=True)
class DatasetSettings:
    """Which dataset to load. ``demo`` is generated; ``nab`` replays NAB-format CSV files."""

    kind: str = "demo"
    seed: int = 7
    start: datetime = datetime(2026, 1, 5)
    history_minutes: int = 240
    heavy_customer: str | None = None
    skew: float = 1.0
    skew_cardinality: bool = False
    # True: the heavy customer's history is normal and the skew starts with the first replayed
    # minute (a sudden surge); False: it has the skew throughout.
    skew_sudden: bool = False
    events_per_minute: int = 1500
    anomalies: tuple[InjectedAnomaly, ...] = ()
    path: str | None = None


@dataclass(frozen=True)
class CustomerConfig:
    """One customer: where its events are, its groupings and its metrics."""

    name: str
    table: str
    time_column: str
    customer_column: str | None
    groupings: tuple[tuple[str, ...], ...]
    metrics: dict[str, Aggregate] = field(hash=False)
    min_group_size: int = 50
    # Most series the detector keeps for this customer; series beyond it are not tracked
    # (a warning says how many), so a dimension with unbounded values cannot exhaust memory.
    max_series: int = 100_000
    # This customer's detector settings when its params entry has a ``detector`` mapping (the
    # global section with that mapping's keys replaced); None: the global settings.
    detector: DetectorSettings | None = None

    @property
    def dimension_columns(self) -> tuple[str, ...]:
        """Every column any grouping uses, in first-seen order."""
        seen: dict[str, None] = {}
        for grouping in self.groupings:
            seen.update(dict.fromkeys(grouping))
        return tuple(seen)

    @property
    def metric_columns(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for aggregate in self.metrics.values():
            seen.update(dict.fromkeys(aggregate.columns))
        return tuple(seen)


def grouping_name(grouping: tuple[str, ...]) -> str:
    """``()`` is ``all``; ``("device", "browser")`` is ``device+browser``."""
    return GROUPING_SEPARATOR.join(grouping) if grouping else ALL_GROUPING


@dataclass(frozen=True)
class Params:
    """Everything a run needs, validated."""

    clickhouse: ClickHouseSettings
    detector: DetectorSettings
    run: RunSettings
    dataset: DatasetSettings
    customers: tuple[CustomerConfig, ...]
    source: str = "<dict>"
    root_cause: RootCauseSettings = RootCauseSettings()

    def detector_for(self, customer: CustomerConfig | str) -> DetectorSettings:
        """The detector settings of a customer: its own where it has them, else the global."""
        if isinstance(customer, str):
            customer = self.customer(customer)
        return customer.detector if customer.detector is not None else self.detector

    def customer(self, name: str) -> CustomerConfig:
        for customer in self.customers:
            if customer.name == name:
                return customer
        known = ", ".join(c.name for c in self.customers)
        raise ConfigError(f"unknown customer {name!r}; configured: {known}")


def load_params(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Read a params YAML file, apply dotted-key overrides, and validate everything.

    Parameters
    ----------
    path:
        The YAML file; ``params/default.yaml`` when None.
    overrides:
        ``{"run.minutes": 30, "dataset.skew": 10}``: values that replace the file's.
    """
    path = Path(path) if path is not None else DEFAULT_PARAMS
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"params file {str(path)!r} cannot be read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"params file {str(path)!r} is not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"params file {str(path)!r} is not valid YAML{line}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"params file {str(path)!r} must hold a mapping of sections")
    return params_from_dict(raw, overrides, source=str(path))


def params_from_dict(
    raw: dict[str, Any], overrides: dict[str, Any] | None = None, source: str = "<dict>"
) -> Params:
    """Validate an already-parsed params mapping (see :func:`load_params`)."""
    raw = copy.deepcopy(raw)
    overrides = dict(overrides or {})
    if os.environ.get(URL_ENV):
        overrides.setdefault("clickhouse.url", os.environ[URL_ENV])
    for dotted, value in overrides.items():
        _apply_override(raw, dotted, value)
    sections = {"clickhouse", "detector", "run", "dataset", "customers", "root_cause"}
    _reject_unknown(raw, sections, "top level")

    clickhouse = _section(ClickHouseSettings, raw.get("clickhouse") or {}, "clickhouse")
    identifier(clickhouse.database, "clickhouse.database")
    _positive(clickhouse.max_threads, "clickhouse.max_threads")
    if not clickhouse.url.startswith(("chdb:", "http://", "https://")):
        raise ConfigError(
            f"clickhouse.url {redact(clickhouse.url)!r} must start with chdb:, http:// or https://"
        )
    if clickhouse.url.strip() in ("chdb:", "chdb:.", "chdb:./"):
        raise ConfigError(
            f"clickhouse.url {clickhouse.url!r} must name a folder for the embedded ClickHouse, "
            "e.g. chdb:data/clickhouse"
        )
    if not clickhouse.embedded:
        try:
            parts = urlsplit(clickhouse.url)
            port_ok = parts.hostname is not None and (parts.port or 1) > 0
        except ValueError:
            port_ok = False
        if not port_ok:
            raise ConfigError(
                f"clickhouse.url {redact(clickhouse.url)!r} is not a valid http(s)://host:port"
            )

    detector_raw = raw.get("detector") or {}
    detector = _detector(detector_raw)
    run = _section(RunSettings, raw.get("run") or {}, "run")
    _positive(run.minutes, "run.minutes")
    if run.minutes > MAX_MINUTES:
        raise ConfigError(f"run.minutes {run.minutes!r} must be at most {MAX_MINUTES}")
    _positive(run.speed, "run.speed")
    _positive(run.checkpoint_every_minutes, "run.checkpoint_every_minutes")
    for key in ("data_delay_seconds", "wait_seconds_per_minute", "retry_seconds"):
        if getattr(run, key) < 0:
            raise ConfigError(f"run.{key} {getattr(run, key)!r} must be >= 0")

    root_cause = _section(RootCauseSettings, raw.get("root_cause") or {}, "root_cause")
    if root_cause.top < 0:
        raise ConfigError(f"root_cause.top {root_cause.top!r} must be >= 0 (0: no ranking)")

    dataset = _dataset(raw.get("dataset") or {})
    customers_raw = raw.get("customers") or []
    if not isinstance(customers_raw, list):
        raise ConfigError("customers must be a list of customer mappings")
    customers = tuple(_customer(c, i, detector_raw) for i, c in enumerate(customers_raw))
    names = [c.name for c in customers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"customers: names must be unique, repeated: {duplicates}")
    if run.wait_customer is not None and run.wait_customer not in names:
        raise ConfigError(
            f"run.wait_customer {run.wait_customer!r} is not a configured customer; "
            f"configured: {', '.join(names)}"
        )
    if dataset.kind == "demo":
        if not customers:
            raise ConfigError("customers: the demo dataset needs at least one customer")
        _check_demo(dataset, customers)
    return Params(clickhouse, detector, run, dataset, customers, source, root_cause)


def check_columns(client: Any, database: str, customers: tuple[CustomerConfig, ...],
                  *, present_only: bool = False) -> None:  # fmt: skip
    """Check that every table and column a customer names exists in ClickHouse.

    ``present_only`` skips customers whose table does not exist yet (a dataset not loaded
    yet), so a run can refuse a bad metric before it loads or replaces anything.
    """
    for customer in customers:
        rows = client.query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} "
            "AND table = {table:String}",
            parameters={"db": database, "table": customer.table},
        ).result_rows
        types = dict(rows)
        if not types and present_only:
            continue
        if not types:
            raise ConfigError(
                f"customer {customer.name!r}: table {database}.{customer.table} does not exist"
            )
        wanted = {customer.time_column: "time_column"}
        if customer.customer_column:
            wanted[customer.customer_column] = "customer_column"
        wanted.update(dict.fromkeys(customer.dimension_columns, "dimensions"))
        wanted.update(dict.fromkeys(customer.metric_columns, "metrics"))
        for column, key in wanted.items():
            if column not in types:
                raise ConfigError(
                    f"customer {customer.name!r}: {key} names column {column!r}, which table "
                    f"{database}.{customer.table} does not have (it has: {', '.join(types)})"
                )
        for metric, aggregate in customer.metrics.items():
            if aggregate.function in TYPE_FREE_AGGREGATES:
                continue
            for column in aggregate.columns:
                if not _NUMERIC_TYPE.fullmatch(types[column]):
                    raise ConfigError(
                        f"customer {customer.name!r}: metric {metric!r} applies "
                        f"{aggregate.function} to column {column!r} of type {types[column]}; "
                        "it needs a numeric column"
                    )


# Aggregates that work on any column type (the rest need numbers: the result is a Float64).
TYPE_FREE_AGGREGATES = {"count", "uniq", "uniqExact"}
_NUMERIC_TYPE = re.compile(r"(?:Nullable\()?(?:U?Int\d+|Float\d+|Decimal.*|Bool)\)?")


# --- helpers -------------------------------------------------------------------------------


def _apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def _reject_unknown(mapping: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _section(cls: Any, mapping: Any, where: str) -> Any:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must be a mapping, got {mapping!r}")
    allowed = {f.name: f for f in fields(cls)}
    _reject_unknown(mapping, set(allowed), where)
    values = {}
    for key, value in mapping.items():
        default = getattr(cls(), key)
        values[key] = _coerce(value, default, f"{where}.{key}")
    return cls(**values)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Coerce a YAML value to the type of the field's default, naming the key on failure."""
    if default is None:
        return value
    kind = type(default)
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind is int:
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if kind is float:
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise TypeError
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if kind is tuple:
            numbers = tuple(float(v) for v in value)
            if not all(math.isfinite(n) for n in numbers):
                raise TypeError
            return numbers
        if kind is datetime:
            return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(
            f"{where}: {value!r} is not a valid {kind.__name__} (default {default!r})"
        ) from None
    return value


def _positive(value: float, where: str) -> None:
    if not value > 0:
        raise ConfigError(f"{where}: {value!r} must be greater than 0")


DETECTOR_KINDS = ("seed", "seasonal")


def _detector(mapping: Any, where: str = "detector") -> DetectorSettings:
    """Validated detector settings; ``where`` names the section in messages."""
    settings: DetectorSettings = _section(DetectorSettings, mapping, where)
    if settings.kind not in DETECTOR_KINDS:
        raise ConfigError(
            f"{where}.kind {settings.kind!r} is not known; allowed: {', '.join(DETECTOR_KINDS)}"
        )
    for key in ("decay", "level_rate", "spread_rate"):
        value = getattr(settings, key)
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{where}.{key} {value!r} must be between 0 and 1 (exclusive)")
    if not 0.0 < settings.season_rate <= 1.0:
        raise ConfigError(f"{where}.season_rate {settings.season_rate!r} must be in (0, 1]")
    for key in ("band_sigmas", "tolerance_sigmas", "clip_sigmas", "season_minutes",
                "envelope_half_life_minutes"):  # fmt: skip
        _positive(getattr(settings, key), f"{where}.{key}")
    for key in ("warmup_minutes", "calm_minutes", "rebase_minutes"):
        if getattr(settings, key) < 0:
            raise ConfigError(f"{where}.{key} {getattr(settings, key)!r} must be >= 0")
    if settings.min_std_fraction < 0:
        raise ConfigError(f"{where}.min_std_fraction {settings.min_std_fraction!r} must be >= 0")
    if settings.envelope_ratio < 0:
        raise ConfigError(
            f"{where}.envelope_ratio {settings.envelope_ratio!r} must be >= 0 (0: no envelope)"
        )
    if not 1 <= settings.season_slots <= settings.season_minutes:
        raise ConfigError(
            f"{where}.season_slots {settings.season_slots!r} must be between 1 and "
            f"season_minutes ({settings.season_minutes!r})"
        )
    low, high = (settings.severity_sigmas + (0.0, 0.0))[:2]
    if len(settings.severity_sigmas) != 2 or not 0 < low < high:
        raise ConfigError(
            f"{where}.severity_sigmas {list(settings.severity_sigmas)!r} must be two "
            "increasing positive numbers [major, critical]"
        )
    return settings


def _dataset(mapping: dict[str, Any]) -> DatasetSettings:
    if not isinstance(mapping, dict):
        raise ConfigError(f"dataset must be a mapping, got {mapping!r}")
    mapping = dict(mapping)
    anomalies_raw = mapping.pop("anomalies", []) or []
    settings: DatasetSettings = _section(DatasetSettings, mapping, "dataset")
    if settings.kind not in ("demo", "nab"):
        raise ConfigError(f"dataset.kind {settings.kind!r} is not known; allowed: demo, nab")
    if settings.kind == "nab" and not settings.path:
        raise ConfigError("dataset.path must name a NAB-format folder when dataset.kind is nab")
    if not 1 <= settings.skew <= MAX_SKEW:
        raise ConfigError(f"dataset.skew {settings.skew!r} must be between 1 and {MAX_SKEW}")
    if settings.seed < 0:
        raise ConfigError(f"dataset.seed {settings.seed!r} must be >= 0")
    # ClickHouse's DateTime holds 1970-01-01 .. 2106-02-07; leave room for the replay.
    if not datetime(1971, 1, 1) <= settings.start <= datetime(2100, 1, 1):
        raise ConfigError(
            f"dataset.start {settings.start} must lie between 1971-01-01 and 2100-01-01"
        )
    _positive(settings.events_per_minute, "dataset.events_per_minute")
    if settings.history_minutes < 0:
        raise ConfigError(f"dataset.history_minutes {settings.history_minutes!r} must be >= 0")
    if not isinstance(anomalies_raw, list):
        raise ConfigError("dataset.anomalies must be a list")
    anomalies = tuple(_injected(a, i) for i, a in enumerate(anomalies_raw))
    return DatasetSettings(**{**settings.__dict__, "anomalies": anomalies})


_ANOMALY_KINDS = ("spike", "drop", "level_shift", "variance")


def _injected(raw: Any, index: int) -> InjectedAnomaly:
    where = f"dataset.anomalies[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    allowed = {f.name for f in fields(InjectedAnomaly)}
    _reject_unknown(raw, allowed, where)
    missing = sorted(allowed - set(raw))
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    if raw["kind"] not in _ANOMALY_KINDS:
        raise ConfigError(
            f"{where}.kind {raw['kind']!r} is not known; allowed: {', '.join(_ANOMALY_KINDS)}"
        )
    values = raw["values"]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{where}.values {values!r} must be a list of strings")
    try:
        return InjectedAnomaly(
            customer=identifier(raw["customer"], f"{where}.customer"),
            kind=raw["kind"],
            metric=identifier(raw["metric"], f"{where}.metric"),
            grouping=str(raw["grouping"]),
            values=tuple(values),
            offset_minutes=int(raw["offset_minutes"]),
            duration_minutes=int(raw["duration_minutes"]),
            magnitude=float(raw["magnitude"]),
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


_CUSTOMER_KEYS = {
    "name", "table", "time_column", "customer_column", "dimensions", "metrics", "min_group_size",
    "max_series", "detector",
}  # fmt: skip


def _customer(raw: Any, index: int, detector_raw: Any) -> CustomerConfig:
    where = f"customers[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    _reject_unknown(raw, _CUSTOMER_KEYS, where)
    for key in ("name", "table", "time_column", "metrics"):
        if key not in raw:
            raise ConfigError(f"{where}: missing key {key!r}")
    name = identifier(raw["name"], f"{where}.name")
    where = f"customer {name!r}"
    table = identifier(raw["table"], f"{where} table")
    time_column = identifier(raw["time_column"], f"{where} time_column")
    customer_column = raw.get("customer_column")
    if customer_column is not None:
        customer_column = identifier(customer_column, f"{where} customer_column")

    dimensions = raw.get("dimensions") or []
    if not isinstance(dimensions, list):
        raise ConfigError(f"{where}: dimensions must be a list, got {dimensions!r}")
    groupings: list[tuple[str, ...]] = [()]
    for entry in dimensions:
        if not isinstance(entry, str):
            raise ConfigError(f"{where}: dimension {entry!r} must be a string")
        parts = tuple(
            identifier(part.strip(), f"{where} dimension")
            for part in entry.split(GROUPING_SEPARATOR)
        )
        if len(set(parts)) != len(parts):
            raise ConfigError(f"{where}: dimension {entry!r} repeats a column")
        if parts in groupings:
            raise ConfigError(f"{where}: dimension {entry!r} is listed twice")
        groupings.append(parts)

    metrics_raw = raw["metrics"]
    if not isinstance(metrics_raw, dict) or not metrics_raw:
        raise ConfigError(f"{where}: metrics must be a non-empty mapping of name: aggregate")
    metrics = {
        identifier(metric, f"{where} metric name"): parse_aggregate(expression, metric)
        for metric, expression in metrics_raw.items()
    }

    min_group_size = _coerce(raw.get("min_group_size", 50), 50, f"{where}.min_group_size")
    if min_group_size < 1:
        raise ConfigError(f"{where}: min_group_size {min_group_size!r} must be >= 1")
    max_series = _coerce(raw.get("max_series", 100_000), 100_000, f"{where}.max_series")
    if max_series < 1:
        raise ConfigError(f"{where}: max_series {max_series!r} must be >= 1")

    # Its own detector keys replace the global section's, and the result is checked as a whole.
    detector = None
    if raw.get("detector") is not None:
        own = raw["detector"]
        if not isinstance(own, dict):
            raise ConfigError(f"{where} detector must be a mapping of detector keys, got {own!r}")
        base = detector_raw if isinstance(detector_raw, dict) else {}
        detector = _detector({**base, **own}, f"{where} detector")
    return CustomerConfig(
        name, table, time_column, customer_column, tuple(groupings), metrics, min_group_size,
        max_series, detector,
    )  # fmt: skip


def _check_demo(dataset: DatasetSettings, customers: tuple[CustomerConfig, ...]) -> None:
    by_name = {c.name: c for c in customers}
    if dataset.heavy_customer is not None and dataset.heavy_customer not in by_name:
        raise ConfigError(
            f"dataset.heavy_customer {dataset.heavy_customer!r} is not a configured customer; "
            f"configured: {', '.join(by_name)}"
        )
    for i, anomaly in enumerate(dataset.anomalies):
        where = f"dataset.anomalies[{i}]"
        customer = by_name.get(anomaly.customer)
        if customer is None:
            raise ConfigError(f"{where}.customer {anomaly.customer!r} is not configured")
        if anomaly.metric not in customer.metrics:
            raise ConfigError(
                f"{where}.metric {anomaly.metric!r} is not a metric of {customer.name!r}; "
                f"it has: {', '.join(customer.metrics)}"
            )
        names = {grouping_name(g): g for g in customer.groupings}
        if anomaly.grouping not in names:
            raise ConfigError(
                f"{where}.grouping {anomaly.grouping!r} is not a grouping of {customer.name!r}; "
                f"it has: {', '.join(names)}"
            )
        if len(anomaly.values) != len(names[anomaly.grouping]):
            raise ConfigError(
                f"{where}.values {list(anomaly.values)!r} must give one value per column of "
                f"{anomaly.grouping!r}"
            )


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_run_id(run_id: str) -> str:
    """``run_id`` if it can name a run (and its report folder), else a ConfigError."""
    if not _RUN_ID.fullmatch(run_id):
        raise ConfigError(
            f"run id {run_id!r} must be 1-100 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    return run_id


def redact(url: str) -> str:
    """A URL with any user and password removed, for messages and logs.

    Everything before the last ``@`` of the part after the scheme goes (a password may hold
    ``@`` itself, and a URL parser takes the host after the last one), also when the scheme's
    slashes are mistyped.
    """
    scheme, separator, rest = url.partition(":")
    if not separator or "@" not in rest:
        return url
    slashes = rest[: len(rest) - len(rest.lstrip("/"))]
    return f"{scheme}:{slashes}***@{rest.rsplit('@', 1)[1]}"
