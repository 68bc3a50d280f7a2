"""The demo dataset: generated events for the configured customers, standing in for masked data.

Generation is pure and deterministic for a seed; loading into ClickHouse is idempotent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from anomaly.config import CustomerConfig, DatasetSettings, InjectedAnomaly, Params
from anomaly.errors import ConfigError, DatasetError
from anomaly.records import ALL_GROUPING, GROUPING_SEPARATOR, VALUE_SEPARATOR
from anomaly.schema import ensure_schema
from anomaly.sql import Aggregate, identifier

log = logging.getLogger(__name__)

DEMO_DATASET = "demo"
STAGING_TABLE = "events_loading"
EVENTS_TABLE = "events"
TIME_COLUMN = "ts"
CUSTOMER_COLUMN = "customer"

# Bump whenever a change below alters the generated rows, so stored datasets are reloaded.
GENERATOR_VERSION = 1

# The dimension vocabularies. Order matters only as the canonical category order; each
# customer ranks the values in its own order (see _shape).
VOCABULARY: dict[str, tuple[str, ...]] = {
    "device": ("mobile", "desktop", "tablet"),
    "browser": ("chrome", "safari", "firefox", "edge", "samsung", "opera"),
    "os": ("android", "ios", "windows", "macos", "linux"),
    "country": (
        "US", "IN", "BR", "GB", "DE", "FR", "JP", "CA", "MX", "ID",
        "IT", "ES", "KR", "AU", "NL", "TR", "PL", "PH", "VN", "NG",
        "AR", "SE", "CH", "BE", "AT", "NO", "DK", "FI", "IE", "PT",
        "CZ", "RO", "GR", "HU", "IL", "ZA", "EG", "SA", "AE", "TH",
        "MY", "SG", "NZ", "CL", "CO", "PE", "PK", "BD", "UA", "KE",
    ),
    "plan": ("free", "pro", "team", "enterprise"),
    "endpoint": (
        "/", "/home", "/login", "/logout", "/search", "/cart", "/checkout", "/profile",
        "/settings", "/help", "/api/items", "/api/user", "/api/orders", "/api/payments",
        "/api/feed", "/api/stream", "/api/video", "/api/messages", "/static/app.js", "/health",
    ),
    "status": ("200", "304", "404", "500", "503"),
}  # fmt: skip
# Columns whose values every customer ranks in vocabulary order (most requests succeed).
CANONICAL_ORDER = {"status"}
DIMENSIONS = tuple(VOCABULARY)
METRIC_COLUMNS = ("latency_ms", "bytes", "amount")
EVENT_COLUMNS = (CUSTOMER_COLUMN, TIME_COLUMN, *DIMENSIONS, *METRIC_COLUMNS)
LABEL_COLUMNS = (
    "dataset", "customer", "metric", "grouping", "dimension_values",
    "kind", "start_minute", "end_minute", "detectable",
)  # fmt: skip

# Columns whose cardinality grows with the heavy customer's skew when skew_cardinality is on,
# the prefix of their synthetic extra values, and the cap on the growth factor.
HIGH_CARDINALITY = {"country": "X", "endpoint": "/x/"}
CARDINALITY_CAP = 10.0

# Shape of the traffic. The volume factor runs from the first number for the first customer listed
# down to the second for the last. A customer's daily peak, value ranks, Zipf exponents and metric
# scales come from its name alone, so it keeps its character across seeds; the seed draws the noise.
VOLUME_FACTOR = (1.6, 0.6)
SEASON_AMPLITUDE = 0.3
PEAK_HOUR = (12.0, 18.0)
ZIPF_EXPONENT = {
    "low": (0.7, 1.1),
    "country": (1.0, 1.4),
    "endpoint": (0.9, 1.2),
    "status": (2.0, 3.0),
}
LATENCY_MEDIAN_MS = (60.0, 220.0)
LATENCY_SIGMA = 0.45
BYTES_MEDIAN = (5_000.0, 80_000.0)
BYTES_SIGMA = 1.0
PURCHASE_PROBABILITY = (0.03, 0.08)
AMOUNT_MEDIAN = (20.0, 60.0)
AMOUNT_SIGMA = 0.6

# Injected anomalies: a slice is kept at least this many times min_group_size where the shares
# allow it (a named value's share is raised up to MAX_SHARE), and a variance anomaly moves the
# slice's metric by magnitude x its natural minute-to-minute spread x (1 + |z|), never below
# VARIANCE_MIN_FACTOR of the normal value.
SLICE_SAFETY = 2.0
MAX_SHARE = 0.9
VARIANCE_MIN_FACTOR = 0.3
VARIANCE_BASELINE_MINUTES = 10
# Aggregates whose value scales with the metric column's values, so scaling the column moves them.
SCALABLE = {"sum", "avg", "min", "max", "median", "stddevPop"}
_PANDAS_AGGREGATE = {"sum": "sum", "avg": "mean", "min": "min", "max": "max"}

CHUNK_ROWS = 1_000_000

_EVENTS_DDL = """
    CREATE TABLE IF NOT EXISTS {db:Identifier}.{table:Identifier} (
        customer LowCardinality(String),
        ts DateTime('UTC'),
        device LowCardinality(String),
        browser LowCardinality(String),
        os LowCardinality(String),
        country LowCardinality(String),
        plan LowCardinality(String),
        endpoint LowCardinality(String),
        status LowCardinality(String),
        latency_ms Float64,
        bytes Float64,
        amount Float64
    ) ENGINE = MergeTree
    ORDER BY (customer, ts)"""


@dataclass(frozen=True)
class LoadResult:
    """What a load did. ``rows_per_second`` is 0.0 when the stored dataset was kept."""

    rows: int
    seconds: float
    rows_per_second: float
    dataset: str
    first_minute: datetime
    last_minute: datetime
    reloaded: bool


@dataclass(frozen=True)
class _Shape:
    """A customer's traffic character: volume, daily peak, value shares and metric scales."""

    factor: float
    peak_hour: float
    shares: dict[str, np.ndarray]  # column -> probability per category (canonical order)
    latency_median: float
    bytes_median: float
    purchase_probability: float
    amount_median: float


@dataclass
class _Events:
    """One customer's events as columns: minute index, second, category codes, metric values."""

    minute: np.ndarray
    second: np.ndarray
    codes: dict[str, np.ndarray]
    metrics: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.minute)

    def take(self, index: np.ndarray) -> _Events:
        return _Events(
            self.minute[index],
            self.second[index],
            {k: v[index] for k, v in self.codes.items()},
            {k: v[index] for k, v in self.metrics.items()},
        )

    def concat(self, other: _Events) -> _Events:
        return _Events(
            np.concatenate([self.minute, other.minute]),
            np.concatenate([self.second, other.second]),
            {k: np.concatenate([v, other.codes[k]]) for k, v in self.codes.items()},
            {k: np.concatenate([v, other.metrics[k]]) for k, v in self.metrics.items()},
        )


# --- public API ----------------------------------------------------------------------------


def generate_demo(params: Params, minutes: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate the demo events and their labels, without touching a database.

    Parameters
    ----------
    params:
        Validated params; its customers and its ``dataset`` section shape the traffic.
    minutes:
        Replayed minutes generated after ``dataset.history_minutes`` of history.

    Returns
    -------
    events, labels:
        ``events`` has the columns of the events table (dimensions as categoricals, ``ts`` as
        naive UTC datetimes), sorted by customer then time. ``labels`` has the columns of the
        ``labels`` table, one row per injected anomaly that falls inside the generated minutes.
    """
    _check_minutes(minutes)
    frames, labels = [], []
    for customer in _demo_customers(params):
        frame, customer_labels = _generate_customer(params, customer, minutes)
        frames.append(frame)
        labels.extend(customer_labels)
    events = pd.concat(frames, ignore_index=True)
    return events, _labels_frame(labels)


def demo_spec_hash(params: Params, minutes: int) -> str:
    """A hash of everything that changes the generated rows or labels."""
    settings = params.dataset
    spec = {
        "generator": GENERATOR_VERSION,
        "seed": settings.seed,
        "start": start_minute(settings).isoformat(),
        "history_minutes": settings.history_minutes,
        "minutes": minutes,
        "events_per_minute": settings.events_per_minute,
        "heavy_customer": settings.heavy_customer,
        "skew": settings.skew,
        "skew_cardinality": settings.skew_cardinality,
        "skew_sudden": settings.skew_sudden,
        "customers": [
            [c.name, c.min_group_size, {m: a.to_sql() for m, a in c.metrics.items()}]
            for c in params.customers
        ],
        "anomalies": [asdict(a) for a in settings.anomalies],
    }
    return spec_hash(spec)


def load_demo(client: Any, params: Params, minutes: int, *, progress: bool = True) -> LoadResult:
    """Generate the demo dataset into ``<database>.events`` unless the same one is there.

    The dataset is kept when the ``datasets`` table holds its spec hash and the events table
    still has the rows recorded then. Otherwise the events table is recreated, the demo labels
    replaced, and the ``datasets`` row written last, so an interrupted load is redone next time.
    Other tables' data is never touched.

    Parameters
    ----------
    client:
        A clickhouse-connect client.
    params:
        Validated params (database from ``clickhouse.database``).
    minutes:
        Replayed minutes after the history.
    progress:
        Show a progress bar over customers.
    """
    started = time.perf_counter()
    _check_minutes(minutes)
    database = identifier(params.clickhouse.database, "clickhouse.database")
    customers = _demo_customers(params)
    wanted = demo_spec_hash(params, minutes)
    ensure_schema(client, database)

    kept = find_load(client, database, DEMO_DATASET, wanted, EVENTS_TABLE)
    if kept is not None:
        log.info("demo dataset unchanged (%d rows), kept", kept.rows)
        return replace(kept, seconds=time.perf_counter() - started)

    log.info("demo dataset: generating %d customers x %d minutes (%d of history)",
             len(customers), params.dataset.history_minutes + minutes,
             params.dataset.history_minutes)  # fmt: skip
    # Generated beside the events table and swapped in whole, so a load that fails half way
    # leaves the previous dataset as it was.
    recreate_table(client, database, STAGING_TABLE, _EVENTS_DDL)
    rows, labels = 0, []
    with tqdm(
        total=len(customers), unit="customer", desc="demo events", disable=not progress
    ) as bar:
        for customer in customers:
            frame, customer_labels = _generate_customer(params, customer, minutes)
            insert_frame(client, database, STAGING_TABLE, frame)
            rows += len(frame)
            labels.extend(customer_labels)
            bar.set_postfix(rows=rows)
            bar.update()

    forget_load(client, database, DEMO_DATASET)
    swap_in(client, database, STAGING_TABLE, EVENTS_TABLE)
    insert_frame(client, database, "labels", _labels_frame(labels))
    first = start_minute(params.dataset)
    last = first + timedelta(minutes=params.dataset.history_minutes + minutes - 1)
    result = record_load(
        client, database, DEMO_DATASET, wanted, rows, first, last, time.perf_counter() - started
    )
    log.info(
        "demo dataset: loaded %d rows in %.1f s (%.0f rows/s), %d labels",
        rows, result.seconds, result.rows_per_second, len(labels),
    )  # fmt: skip
    return result


# --- loading helpers, shared with anomaly.nab ------------------------------------------------


def find_load(
    client: Any, database: str, dataset: str, wanted_hash: str, table: str
) -> LoadResult | None:
    """The recorded load of ``dataset`` if it has ``wanted_hash`` and ``table`` holds its rows."""
    recorded = client.query(
        "SELECT spec_hash, rows, first_minute, last_minute FROM {db:Identifier}.datasets FINAL "
        "WHERE dataset = {dataset:String}",
        parameters={"db": database, "dataset": dataset},
    ).result_rows
    if not recorded or recorded[0][0] != wanted_hash:
        return None
    _, rows, first, last = recorded[0]

    # total_rows of a MergeTree table is exact and costs nothing; a table that is missing or
    # holds another number of rows (an interrupted or foreign write) means a reload.
    present = client.query(
        "SELECT total_rows FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": database, "t": table},
    ).result_rows
    if not present or present[0][0] != rows:
        return None
    return LoadResult(int(rows), 0.0, 0.0, dataset, first, last, reloaded=False)


def forget_load(client: Any, database: str, dataset: str) -> None:
    """Remove ``dataset``'s datasets row and labels, before its rows are replaced."""
    for table in ("datasets", "labels"):
        client.command(
            "DELETE FROM {db:Identifier}.{table:Identifier} WHERE dataset = {dataset:String}",
            parameters={"db": database, "table": table, "dataset": dataset},
        )


def create_events_table(client: Any, database: str) -> None:
    """Create ``<database>.events``, the demo's table, where it does not exist yet."""
    client.command(
        _EVENTS_DDL, parameters={"db": identifier(database, "database"), "table": EVENTS_TABLE}
    )


def recreate_table(client: Any, database: str, table: str, ddl: str) -> None:
    """Drop ``table`` and create it again from ``ddl`` (which binds ``db`` and ``table``)."""
    names = {"db": database, "table": identifier(table, "table")}
    client.command("DROP TABLE IF EXISTS {db:Identifier}.{table:Identifier} SYNC", parameters=names)
    client.command(ddl, parameters=names)


def swap_in(client: Any, database: str, loaded: str, table: str) -> None:
    """Make the freshly ``loaded`` table ``table``, dropping what ``table`` held."""
    names = {"db": database, "new": identifier(loaded, "table"), "old": identifier(table, "table")}
    exists = client.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {old:String}",
        parameters=names,
    ).result_rows[0][0]
    if exists:
        client.command(
            "EXCHANGE TABLES {db:Identifier}.{new:Identifier} AND {db:Identifier}.{old:Identifier}",
            parameters=names,
        )
        client.command("DROP TABLE {db:Identifier}.{new:Identifier} SYNC", parameters=names)
    else:
        client.command(
            "RENAME TABLE {db:Identifier}.{new:Identifier} TO {db:Identifier}.{old:Identifier}",
            parameters=names,
        )


def insert_frame(client: Any, database: str, table: str, frame: pd.DataFrame) -> None:
    """Insert ``frame`` in chunks through Arrow, the fastest path measured with chDB.

    Categorical columns travel as Arrow dictionaries, which LowCardinality columns take as is.
    """
    for begin in range(0, len(frame), CHUNK_ROWS):
        chunk = pa.Table.from_pandas(frame.iloc[begin : begin + CHUNK_ROWS], preserve_index=False)
        client.insert_arrow(identifier(table, "table"), chunk, database=database)


def record_load(
    client: Any,
    database: str,
    dataset: str,
    loaded_hash: str,
    rows: int,
    first_minute: datetime,
    last_minute: datetime,
    seconds: float,
) -> LoadResult:
    """Write the datasets row that marks a load complete, and say what was loaded."""
    client.insert(
        "datasets",
        [[dataset, loaded_hash, rows, first_minute, last_minute, datetime.now(UTC)]],
        column_names=["dataset", "spec_hash", "rows", "first_minute", "last_minute", "loaded_at"],
        database=database,
    )
    rate = rows / seconds if seconds > 0 else 0.0
    return LoadResult(rows, seconds, rate, dataset, first_minute, last_minute, reloaded=True)


def start_minute(settings: DatasetSettings) -> datetime:
    """The dataset's first minute as a naive UTC datetime (how ClickHouse returns DateTime)."""
    start = settings.start
    if start.tzinfo is not None:
        start = start.astimezone(UTC).replace(tzinfo=None)
    return start.replace(second=0, microsecond=0)


def _check_minutes(minutes: int) -> None:
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 1:
        raise DatasetError(f"minutes {minutes!r} must be a whole number of at least 1")


def spec_hash(spec: dict[str, Any]) -> str:
    """A stable hash of a JSON-able description of what a load would write."""
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --- generation ------------------------------------------------------------------------------


def _demo_customers(params: Params) -> tuple[CustomerConfig, ...]:
    """The customers, checked against what the demo table has."""
    for customer in params.customers:
        where = f"customer {customer.name!r}"
        expected = (EVENTS_TABLE, TIME_COLUMN, CUSTOMER_COLUMN)
        actual = (customer.table, customer.time_column, customer.customer_column)
        if actual != expected:
            raise ConfigError(
                f"{where}: the demo dataset has table/time_column/customer_column "
                f"{'/'.join(expected)}, got {'/'.join(map(str, actual))}"
            )
        for column in customer.dimension_columns:
            if column not in VOCABULARY:
                raise ConfigError(
                    f"{where}: dimension {column!r} is not a demo column; "
                    f"allowed: {', '.join(DIMENSIONS)}"
                )
        for column in customer.metric_columns:
            if column not in METRIC_COLUMNS + DIMENSIONS:
                raise ConfigError(
                    f"{where}: metric column {column!r} is not a demo column; "
                    f"allowed: {', '.join(METRIC_COLUMNS + DIMENSIONS)}"
                )
    for index, anomaly in enumerate(params.dataset.anomalies):
        _check_anomaly(params, anomaly, f"dataset.anomalies[{index}]")
    return params.customers


def _check_anomaly(params: Params, anomaly: InjectedAnomaly, where: str) -> None:
    """Refuse what the generator cannot inject, before anything is written."""
    aggregate = params.customer(anomaly.customer).metrics[anomaly.metric]
    if aggregate.function != "count" and not _scalable(aggregate):
        raise ConfigError(
            f"{where}: metric {anomaly.metric!r} ({aggregate.to_sql()}) cannot be moved by "
            f"the demo generator; use count, {', '.join(sorted(SCALABLE))} or a quantile"
        )
    if not anomaly.magnitude > 0:
        raise ConfigError(f"{where}: magnitude {anomaly.magnitude!r} must be greater than 0")
    if anomaly.duration_minutes < 1:
        raise ConfigError(
            f"{where}: duration_minutes {anomaly.duration_minutes!r} must be at least 1"
        )
    start = params.dataset.history_minutes + anomaly.offset_minutes
    if anomaly.kind == "variance" and start < VARIANCE_BASELINE_MINUTES:
        raise ConfigError(
            f"{where}: a variance anomaly needs {VARIANCE_BASELINE_MINUTES} minutes of data "
            f"before it to measure the normal spread; it starts at minute {start}"
        )
    categories = _categories(params.dataset)
    for column, value in zip(_columns(anomaly), anomaly.values, strict=True):
        if value not in categories[column]:
            shown = ", ".join(categories[column][:60])
            raise ConfigError(
                f"{where}: {column} value {value!r} is never generated; allowed: {shown}"
            )


def _categories(settings: DatasetSettings) -> dict[str, tuple[str, ...]]:
    """Every column's values: the vocabulary plus the heavy customer's extra values, if any."""
    extra = _extra_values(settings)
    return {column: values + extra.get(column, ()) for column, values in VOCABULARY.items()}


def _extra_values(settings: DatasetSettings) -> dict[str, tuple[str, ...]]:
    if settings.heavy_customer is None or not settings.skew_cardinality or settings.skew <= 1:
        return {}
    growth = min(settings.skew, CARDINALITY_CAP)
    extra = {}
    for column, prefix in HIGH_CARDINALITY.items():
        count = round(len(VOCABULARY[column]) * (growth - 1))
        extra[column] = tuple(f"{prefix}{i:04d}" for i in range(1, count + 1))
    return extra


def _name_rng(name: str, *more: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(name.encode()), *more])


def _customer_anomalies(params: Params, customer: CustomerConfig) -> list[InjectedAnomaly]:
    return [a for a in params.dataset.anomalies if a.customer == customer.name]


def _shape(params: Params, customer: CustomerConfig, minutes: int) -> _Shape:
    """Draw a customer's character from its name, then make its anomalies' slices big enough."""
    settings = params.dataset
    rng = _name_rng(customer.name)
    categories = _categories(settings)
    heavy = customer.name == settings.heavy_customer
    anomalies = _customer_anomalies(params, customer)

    # A value an anomaly names ranks first for this customer, so the slice is one it serves
    # much; the other values follow in an order of the customer's own.
    named: dict[str, list[str]] = {}
    for anomaly in anomalies:
        for column, value in zip(_columns(anomaly), anomaly.values, strict=True):
            named.setdefault(column, [])
            if value not in named[column]:
                named[column].append(value)

    # The heavy customer's extra values rank after the vocabulary's, and the draws are the same
    # with or without them, so skew_cardinality changes its cardinality and nothing else.
    shares = {}
    for column, values in categories.items():
        base = VOCABULARY[column]
        pool = [base[i] for i in rng.permutation(len(base))]
        if column in CANONICAL_ORDER:
            pool = list(base)
        if heavy:
            pool += values[len(base) :]
        kind = column if column in ZIPF_EXPONENT else "low"
        exponent = rng.uniform(*ZIPF_EXPONENT[kind])
        first = [v for v in named.get(column, []) if v in pool]
        ranked = first + [v for v in pool if v not in first]
        weights = 1.0 / np.arange(1, len(ranked) + 1) ** exponent
        share = np.zeros(len(values))
        index = {v: i for i, v in enumerate(values)}
        for value, weight in zip(ranked, weights / weights.sum(), strict=True):
            share[index[value]] = weight
        shares[column] = share

    names = [c.name for c in params.customers]
    shape = _Shape(
        factor=float(np.linspace(*VOLUME_FACTOR, len(names))[names.index(customer.name)]),
        peak_hour=rng.uniform(*PEAK_HOUR),
        shares=shares,
        latency_median=rng.uniform(*LATENCY_MEDIAN_MS),
        bytes_median=rng.uniform(*BYTES_MEDIAN),
        purchase_probability=rng.uniform(*PURCHASE_PROBABILITY),
        amount_median=rng.uniform(*AMOUNT_MEDIAN),
    )
    for anomaly in anomalies:
        _widen_slice(params, customer, shape, anomaly, minutes, categories)
    return shape


def _widen_slice(
    params: Params,
    customer: CustomerConfig,
    shape: _Shape,
    anomaly: InjectedAnomaly,
    minutes: int,
    categories: dict[str, tuple[str, ...]],
) -> None:
    """Raise the named values' shares so the slice keeps SLICE_SAFETY x min_group_size events."""
    columns = _columns(anomaly)
    window = _window(params, anomaly, minutes)
    if not columns or window is None:
        return
    low = _rates(params, customer, shape, minutes)[window[0] : window[1] + 1].min()
    low *= _lowest_count_factor(customer, anomaly)
    needed = SLICE_SAFETY * customer.min_group_size / max(low, 1e-9)
    if _slice_share(shape, anomaly, categories) >= needed:
        return
    floor = min(needed ** (1 / len(columns)), MAX_SHARE)
    for column, value in zip(columns, anomaly.values, strict=True):
        share = shape.shares[column]
        i = categories[column].index(value)
        if share[i] < floor:
            others = share.sum() - share[i]
            share *= (1 - floor) / others
            share[i] = floor


def _slice_share(
    shape: _Shape, anomaly: InjectedAnomaly, categories: dict[str, tuple[str, ...]]
) -> float:
    share = 1.0
    for column, value in zip(_columns(anomaly), anomaly.values, strict=True):
        share *= float(shape.shares[column][categories[column].index(value)])
    return share


def _columns(anomaly: InjectedAnomaly) -> tuple[str, ...]:
    """The grouping's columns; the "all" grouping has none."""
    if anomaly.grouping == ALL_GROUPING:
        return ()
    return tuple(anomaly.grouping.split(GROUPING_SEPARATOR))


def _window(params: Params, anomaly: InjectedAnomaly, minutes: int) -> tuple[int, int] | None:
    """First and last generated minute index of the anomaly, clipped; None when outside."""
    total = params.dataset.history_minutes + minutes
    first = params.dataset.history_minutes + anomaly.offset_minutes
    last = first + anomaly.duration_minutes - 1
    first, last = max(first, 0), min(last, total - 1)
    return (first, last) if first <= last else None


def _lowest_count_factor(customer: CustomerConfig, anomaly: InjectedAnomaly) -> float:
    """How far the anomaly can thin the slice's events (count metrics only)."""
    if customer.metrics[anomaly.metric].function != "count":
        return 1.0
    if anomaly.kind == "variance":
        return VARIANCE_MIN_FACTOR
    return min(anomaly.magnitude, 1.0)


def _rates(params: Params, customer: CustomerConfig, shape: _Shape, minutes: int) -> np.ndarray:
    """Expected events per minute: base x customer factor x daily season x skew."""
    settings = params.dataset
    index = np.arange(settings.history_minutes + minutes)
    start = start_minute(settings)
    hours = start.hour + start.minute / 60 + index / 60
    season = 1 + SEASON_AMPLITUDE * np.sin(2 * np.pi * (hours - shape.peak_hour + 6) / 24)
    skew = np.full(len(index), settings.skew if customer.name == settings.heavy_customer else 1.0)
    if settings.skew_sudden:
        skew[index < settings.history_minutes] = 1.0
    return settings.events_per_minute * shape.factor * season * skew


def _generate_customer(
    params: Params, customer: CustomerConfig, minutes: int
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """One customer's events (sorted by time) and the labels of its injected anomalies."""
    settings = params.dataset
    shape = _shape(params, customer, minutes)
    categories = _categories(settings)
    rng = _name_rng(customer.name, settings.seed)

    counts = rng.poisson(_rates(params, customer, shape, minutes))
    events = _draw_events(rng, shape, np.repeat(np.arange(len(counts)), counts))

    labels = []
    for anomaly in _customer_anomalies(params, customer):
        window = _window(params, anomaly, minutes)
        if window is None:
            log.warning(
                "customer %s: %s anomaly at offset %d lies outside the %d generated minutes; "
                "not injected",
                customer.name, anomaly.kind, anomaly.offset_minutes, minutes,
            )  # fmt: skip
            continue
        events = _inject(rng, customer, shape, events, anomaly, window, categories)
        labels.append(_label(params, customer, shape, anomaly, window, minutes, categories))

    order = np.argsort(events.minute * 60 + events.second, kind="stable")
    events = events.take(order)
    return _events_frame(settings, customer.name, params, events, categories), labels


def _draw_events(
    rng: np.random.Generator,
    shape: _Shape,
    minute: np.ndarray,
    codes: dict[str, np.ndarray] | None = None,
) -> _Events:
    """Events at the given minute indexes; dimension values drawn unless ``codes`` gives them."""
    n = len(minute)
    if codes is not None:
        return _Events(minute, rng.integers(0, 60, n), codes, _draw_metrics(rng, shape, n))
    codes = {}
    for column, share in shape.shares.items():
        # Normalised by its own end, the cumulative share of the last value drawn is exactly 1,
        # so a value with share 0 (another customer's extra value) is never drawn.
        cumulative = np.cumsum(share)
        cumulative /= cumulative[-1]
        codes[column] = np.searchsorted(cumulative, rng.random(n), side="right").astype(np.int32)
    return _Events(minute, rng.integers(0, 60, n), codes, _draw_metrics(rng, shape, n))


def _draw_metrics(rng: np.random.Generator, shape: _Shape, n: int) -> dict[str, np.ndarray]:
    latency = shape.latency_median * rng.lognormal(0.0, LATENCY_SIGMA, n)
    size = shape.bytes_median * rng.lognormal(0.0, BYTES_SIGMA, n)
    bought = rng.random(n) < shape.purchase_probability
    amount = np.where(bought, shape.amount_median * rng.lognormal(0.0, AMOUNT_SIGMA, n), 0.0)
    return {
        "latency_ms": np.round(latency, 3),
        "bytes": np.round(size),
        "amount": np.round(amount, 2),
    }


def _inject(
    rng: np.random.Generator,
    customer: CustomerConfig,
    shape: _Shape,
    events: _Events,
    anomaly: InjectedAnomaly,
    window: tuple[int, int],
    categories: dict[str, tuple[str, ...]],
) -> _Events:
    """Move the anomaly's metric on its slice during its window by a factor per minute.

    A count metric moves by adding copies of the slice's events (factor > 1) or dropping some
    (factor < 1); any other supported aggregate moves by scaling its column's values, which
    scales sum, avg, quantiles, min, max and spread alike.
    """
    aggregate = customer.metrics[anomaly.metric]
    in_slice = _slice_mask(events, anomaly, categories)
    factors = _factors(rng, customer, events, anomaly, window, in_slice)
    first, last = window
    hit = in_slice & (events.minute >= first) & (events.minute <= last)
    factor = np.ones(len(events))
    factor[hit] = factors[events.minute[hit] - first]

    if aggregate.function != "count":
        column = aggregate.columns[0]
        events.metrics[column] = events.metrics[column] * factor
        return events

    keep = rng.random(len(events)) < np.minimum(factor, 1.0)
    copies = rng.poisson(np.maximum(factor - 1.0, 0.0))
    source = np.repeat(np.arange(len(events)), copies)
    copied = {column: codes[source] for column, codes in events.codes.items()}
    extra = _draw_events(rng, shape, events.minute[source], copied)
    return events.take(np.flatnonzero(keep)).concat(extra)


def _scalable(aggregate: Aggregate) -> bool:
    return aggregate.function in SCALABLE or aggregate.function.startswith("quantile")


def _slice_mask(
    events: _Events, anomaly: InjectedAnomaly, categories: dict[str, tuple[str, ...]]
) -> np.ndarray:
    mask = np.ones(len(events), dtype=bool)
    for column, value in zip(_columns(anomaly), anomaly.values, strict=True):
        mask &= events.codes[column] == categories[column].index(value)
    return mask


def _factors(
    rng: np.random.Generator,
    customer: CustomerConfig,
    events: _Events,
    anomaly: InjectedAnomaly,
    window: tuple[int, int],
    in_slice: np.ndarray,
) -> np.ndarray:
    """The factor the slice's metric is multiplied by at each minute of the window.

    spike, drop and level_shift hold ``magnitude`` over the whole window (a spike is simply a
    short one). variance measures the slice's natural minute-to-minute spread before the window
    and pushes each minute up or down by ``magnitude`` times that spread times (1 + |z|).
    """
    length = window[1] - window[0] + 1
    if anomaly.kind != "variance":
        return np.full(length, anomaly.magnitude)

    before = in_slice & (events.minute < window[0])
    series = _slice_series(customer.metrics[anomaly.metric], events, before)
    if len(series) < VARIANCE_BASELINE_MINUTES or series.mean() <= 0:
        raise DatasetError(
            f"variance anomaly of {customer.name!r} on {anomaly.metric!r}: its slice has too "
            f"few minutes ({len(series)}) or no positive value before it to measure the spread"
        )
    spread = np.std(np.diff(series)) / np.sqrt(2) / series.mean()
    sign = rng.choice([-1.0, 1.0], length)
    size = anomaly.magnitude * spread * (1 + np.abs(rng.standard_normal(length)))
    return np.maximum(1 + sign * size, VARIANCE_MIN_FACTOR)


def _slice_series(aggregate: Aggregate, events: _Events, mask: np.ndarray) -> np.ndarray:
    """The aggregate per minute over the masked events, as the detector would see it."""
    minute = events.minute[mask]
    if aggregate.function == "count":
        return np.bincount(minute)[np.unique(minute)].astype(float)
    values = pd.Series(events.metrics[aggregate.columns[0]][mask]).groupby(minute)
    function = aggregate.function
    if function.startswith("quantile"):
        return values.quantile(float(aggregate.parameters[0])).to_numpy()
    if function == "median":
        return values.median().to_numpy()
    if function == "stddevPop":
        return values.std(ddof=0).to_numpy()
    return values.agg(_PANDAS_AGGREGATE[function]).to_numpy()


def _label(
    params: Params,
    customer: CustomerConfig,
    shape: _Shape,
    anomaly: InjectedAnomaly,
    window: tuple[int, int],
    minutes: int,
    categories: dict[str, tuple[str, ...]],
) -> dict[str, Any]:
    """The labels row; detectable when the slice's expected size stays >= min_group_size."""
    start = start_minute(params.dataset)
    rates = _rates(params, customer, shape, minutes)[window[0] : window[1] + 1]
    expected = rates.min() * _slice_share(shape, anomaly, categories)
    expected *= _lowest_count_factor(customer, anomaly)
    detectable = expected >= customer.min_group_size
    if not detectable:
        log.warning(
            "customer %s: %s anomaly on %s=%s expects %.0f events a minute, under "
            "min_group_size %d; labelled not detectable",
            customer.name, anomaly.kind, anomaly.grouping, anomaly.values, expected,
            customer.min_group_size,
        )  # fmt: skip
    return {
        "dataset": DEMO_DATASET,
        "customer": customer.name,
        "metric": anomaly.metric,
        "grouping": anomaly.grouping,
        "dimension_values": VALUE_SEPARATOR.join(anomaly.values),
        "kind": anomaly.kind,
        "start_minute": start + timedelta(minutes=window[0]),
        "end_minute": start + timedelta(minutes=window[1]),
        "detectable": int(detectable),
    }


def _events_frame(
    settings: DatasetSettings,
    name: str,
    params: Params,
    events: _Events,
    categories: dict[str, tuple[str, ...]],
) -> pd.DataFrame:
    start = np.datetime64(start_minute(settings), "s")
    seconds = (events.minute * 60 + events.second).astype("timedelta64[s]")
    customers = [c.name for c in params.customers]
    columns: dict[str, Any] = {
        CUSTOMER_COLUMN: pd.Categorical.from_codes(
            np.full(len(events), customers.index(name)), categories=customers
        ),
        TIME_COLUMN: start + seconds,
    }
    for column in DIMENSIONS:
        columns[column] = pd.Categorical.from_codes(
            events.codes[column], categories=list(categories[column])
        )
    columns.update(events.metrics)
    return pd.DataFrame(columns)


def _labels_frame(labels: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(labels, columns=list(LABEL_COLUMNS))
    frame["detectable"] = frame["detectable"].astype(np.uint8)
    for column in ("start_minute", "end_minute"):
        frame[column] = pd.to_datetime(frame[column]).astype("datetime64[s]")
    return frame
