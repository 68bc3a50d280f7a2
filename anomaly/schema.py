"""The project's own tables, created idempotently (CREATE ... IF NOT EXISTS, and ADD COLUMN IF
NOT EXISTS for columns added since a table was first made).

Re-persisting is harmless everywhere: anomalies, progress and detector state are
ReplacingMergeTree tables keyed so that writing the same row again replaces it.
Read them with FINAL (or through the helpers in anomaly.store) to see one row per key.
"""

from __future__ import annotations

from typing import Any

from anomaly.sql import identifier

_TABLES = {
    # One row per anomaly; a later version (the minute it was last updated) replaces earlier ones,
    # so an anomaly is written when it opens and again when it ends. root_cause is the ranking of
    # finer slices as JSON (anomaly.records.causes_to_json), "" when there is none.
    "anomalies": """
        run_id String,
        engine LowCardinality(String),
        customer LowCardinality(String),
        metric LowCardinality(String),
        grouping LowCardinality(String),
        dimension_values String,
        start_minute DateTime('UTC'),
        end_minute Nullable(DateTime('UTC')),
        detected_minute DateTime('UTC'),
        value Float64,
        expected Float64,
        band_low Float64,
        band_high Float64,
        peak_score Float64,
        severity LowCardinality(String),
        persisted_at DateTime64(6, 'UTC'),
        version UInt64,
        root_cause String DEFAULT ''
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY (run_id, customer, metric, grouping, dimension_values, start_minute)""",
    # One row per customer-minute processed. Stage times are those of the whole tick that
    # covered the minute (tick_minutes minutes in one query), not divided among its minutes.
    # persisted_at is when the minute's anomalies were written; the progress row follows, then
    # the state checkpoint, whose duration is recorded as checkpoint_s on the next tick's rows
    # (a row cannot time its own write). Lag = persisted_at - processable_at.
    "progress": """
        run_id String,
        engine LowCardinality(String),
        customer LowCardinality(String),
        minute DateTime('UTC'),
        phase LowCardinality(String),
        tick_first_minute DateTime('UTC'),
        tick_minutes UInt32,
        processable_at DateTime64(6, 'UTC'),
        started_at DateTime64(6, 'UTC'),
        persisted_at DateTime64(6, 'UTC'),
        rows_scanned UInt64,
        series_count UInt32,
        points UInt32,
        anomalies_opened UInt32,
        restore_s Float64,
        query_s Float64,
        series_s Float64,
        detect_s Float64,
        persist_s Float64,
        checkpoint_s Float64,
        cpu_percent Float32
    ) ENGINE = ReplacingMergeTree
    ORDER BY (run_id, customer, minute)""",
    # The detector's whole state for a customer after a minute, as one blob (see
    # anomaly.detector); the newest checkpoint per (run, customer) wins.
    "detector_state": """
        run_id String,
        customer LowCardinality(String),
        checkpoint_minute DateTime('UTC'),
        detector LowCardinality(String),
        series_count UInt32,
        state String CODEC(ZSTD(1))
    ) ENGINE = ReplacingMergeTree(checkpoint_minute)
    ORDER BY (run_id, customer)""",
    # Ground truth of a dataset: which slices carry which anomaly, and when.
    "labels": """
        dataset LowCardinality(String),
        customer LowCardinality(String),
        metric LowCardinality(String),
        grouping LowCardinality(String),
        dimension_values String,
        kind LowCardinality(String),
        start_minute DateTime('UTC'),
        end_minute DateTime('UTC'),
        detectable UInt8
    ) ENGINE = ReplacingMergeTree
    ORDER BY (dataset, customer, metric, grouping, dimension_values, start_minute)""",
    # Which dataset is loaded, so a run reloads only when the dataset's spec changed.
    "datasets": """
        dataset LowCardinality(String),
        spec_hash String,
        rows UInt64,
        first_minute DateTime('UTC'),
        last_minute DateTime('UTC'),
        loaded_at DateTime64(6, 'UTC')
    ) ENGINE = ReplacingMergeTree(loaded_at)
    ORDER BY dataset""",
}

TABLES = tuple(_TABLES)

# Columns added after their table's first release: ClickHouse folders made before get them on the
# next start. Each is also in its table's CREATE above, in the same (last) position.
_ADDED_COLUMNS = {
    "anomalies": ("root_cause String DEFAULT ''",),
}


def ensure_schema(client: Any, database: str) -> None:
    """Create the database and the project's tables where they do not exist yet, and add the
    columns a table made by an earlier version lacks."""
    db = identifier(database, "database")
    client.command(f"CREATE DATABASE IF NOT EXISTS `{db}`")
    for table, body in _TABLES.items():
        client.command(f"CREATE TABLE IF NOT EXISTS `{db}`.`{table}` ({body}")
    for table, columns in _ADDED_COLUMNS.items():
        for column in columns:
            client.command(f"ALTER TABLE `{db}`.`{table}` ADD COLUMN IF NOT EXISTS {column}")
