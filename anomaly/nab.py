"""NAB-format input (Numenta Anomaly Benchmark): real series with labelled anomaly windows.

Each folder under ``data/`` is a customer, each CSV file one series; readings are replayed one a
minute from a fixed epoch, so every customer runs side by side.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from anomaly.config import CustomerConfig
from anomaly.dataset import (
    LoadResult,
    find_load,
    forget_load,
    insert_frame,
    record_load,
    recreate_table,
    spec_hash,
)
from anomaly.errors import DatasetError
from anomaly.schema import ensure_schema
from anomaly.sql import identifier, parse_aggregate

log = logging.getLogger(__name__)

NAB_DATASET = "nab"
NAB_TABLE = "nab_events"
NAB_METRIC = "value"
NAB_GROUPING = "series"
NAB_KIND = "nab_window"
# Reading i of every file is placed at NAB_START + i minutes.
NAB_START = datetime(2026, 1, 5)
WINDOWS_FILE = "windows.json"
# Bump whenever the mapping of files to rows changes, so stored NAB data is reloaded.
LOADER_VERSION = 1

READING_COLUMNS = ("customer", "series", "minute", "value", "timestamp")
WINDOW_COLUMNS = (
    "customer", "series", "start_minute", "end_minute", "start_timestamp", "end_timestamp",
)  # fmt: skip

_NAB_DDL = """
    CREATE TABLE IF NOT EXISTS {db:Identifier}.{table:Identifier} (
        customer LowCardinality(String),
        ts DateTime('UTC'),
        series LowCardinality(String),
        value Float64
    ) ENGINE = MergeTree
    ORDER BY (customer, ts)"""

_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")


def customer_name(folder: str) -> str:
    """A folder's customer name: the folder name when it is a plain identifier, else cleaned.

    Characters other than letters, digits and underscores become underscores, and a leading
    digit gets an underscore in front, so ``realAWSCloudwatch`` stays as it is and
    ``my-data`` becomes ``my_data``.
    """
    name = _NOT_IDENTIFIER.sub("_", folder)
    if not name or name[0].isdigit():
        name = f"_{name}"
    return identifier(name[:63], "NAB customer name")


def nab_customers(path: str | Path) -> tuple[CustomerConfig, ...]:
    """Customer configs for a NAB-format folder: one customer per folder under ``data/``.

    Each file is one series of the grouping ``series`` (its value is the file stem), measured
    by the metric ``value: avg(value)``; with one reading a minute the average is the reading.
    Only the ``series`` grouping is configured: a customer-wide ``all`` series would average
    unrelated files. min_group_size is 1 because every group holds exactly one reading.
    """
    metric = parse_aggregate(f"avg({NAB_METRIC})", NAB_METRIC)
    return tuple(
        CustomerConfig(
            name=customer,
            table=NAB_TABLE,
            time_column="ts",
            customer_column="customer",
            groupings=((NAB_GROUPING,),),
            metrics={NAB_METRIC: metric},
            min_group_size=1,
        )
        for customer in _files(Path(path))
    )


def read_nab(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a NAB-format folder into readings on minutes and windows on minutes.

    Parameters
    ----------
    path:
        A folder holding ``data/<folder>/<file>.csv`` (columns timestamp, value) and
        ``windows.json`` (``"<folder>/<file>.csv"`` -> list of [start, end] timestamps).

    Returns
    -------
    readings, windows:
        ``readings``: customer, series, minute, value, timestamp (the original one), reading i
        of a file at ``NAB_START + i`` minutes. ``windows``: customer, series, start_minute,
        end_minute, start_timestamp, end_timestamp; a window starts at the first reading at or
        after its start and ends at the last reading at or before its end. A window holding no
        reading is dropped with a warning.

    Raises
    ------
    DatasetError
        Naming the path, when the folder, ``windows.json`` or a CSV is missing or malformed.
    """
    root = Path(path)
    files = _files(root)
    windows_raw = _read_windows(root)

    readings, windows = [], []
    for customer, series_files in files.items():
        for file in series_files:
            frame = _read_csv(file)
            key = f"{file.parent.name}/{file.name}"
            readings.append(_readings(customer, file.stem, frame))
            windows.extend(_windows(customer, file.stem, key, frame, windows_raw.pop(key, [])))
    if windows_raw:
        log.info(
            "NAB %s: %d window entries name files that are not there, ignored", root,
            len(windows_raw),
        )  # fmt: skip

    window_frame = pd.DataFrame(windows, columns=list(WINDOW_COLUMNS))
    for column in ("start_minute", "end_minute", "start_timestamp", "end_timestamp"):
        window_frame[column] = pd.to_datetime(window_frame[column]).astype("datetime64[s]")
    return pd.concat(readings, ignore_index=True), window_frame


def nab_spec_hash(path: str | Path) -> str:
    """A hash of the folder's file names, sizes and modification times."""
    root = Path(path)
    files = [f for fs in _files(root).values() for f in fs] + [root / WINDOWS_FILE]
    entries = []
    for file in files:
        try:
            stat = file.stat()
        except OSError as err:
            raise DatasetError(f"NAB file {str(file)!r} cannot be read: {err.strerror}") from None
        entries.append([str(file.relative_to(root)), stat.st_size, stat.st_mtime_ns])
    spec = {"loader": LOADER_VERSION, "start": NAB_START.isoformat(), "files": entries}
    return spec_hash(spec)


def load_nab(client: Any, database: str, path: str | Path, *, progress: bool = True) -> LoadResult:
    """Load a NAB-format folder into ``<database>.nab_events`` and its windows into ``labels``.

    Idempotent like :func:`anomaly.dataset.load_demo`: kept when the ``datasets`` table holds
    the folder's spec hash and the table still has the rows recorded then.
    """
    started = time.perf_counter()
    database = identifier(database, "database")
    wanted = nab_spec_hash(path)
    ensure_schema(client, database)

    kept = find_load(client, database, NAB_DATASET, wanted, NAB_TABLE)
    if kept is not None:
        log.info("NAB dataset unchanged (%d rows), kept", kept.rows)
        return replace(kept, seconds=time.perf_counter() - started)

    log.info("NAB dataset: reading %s", path)
    readings, windows = read_nab(path)
    forget_load(client, database, NAB_DATASET)
    recreate_table(client, database, NAB_TABLE, _NAB_DDL)
    customers = list(readings["customer"].unique())
    with tqdm(
        total=len(customers), unit="customer", desc="NAB events", disable=not progress
    ) as bar:
        for customer, frame in readings.groupby("customer", sort=False):
            rows = pd.DataFrame(
                {
                    "customer": pd.Categorical([customer] * len(frame)),
                    "ts": frame["minute"].to_numpy(),
                    "series": pd.Categorical(frame["series"]),
                    "value": frame["value"].to_numpy(),
                }
            )
            insert_frame(client, database, NAB_TABLE, rows)
            bar.update()

    insert_frame(client, database, "labels", _labels(windows))
    result = record_load(
        client,
        database,
        NAB_DATASET,
        wanted,
        len(readings),
        readings["minute"].min().to_pydatetime(),
        readings["minute"].max().to_pydatetime(),
        time.perf_counter() - started,
    )
    log.info(
        "NAB dataset: loaded %d readings of %d customers in %.1f s, %d windows",
        result.rows, len(customers), result.seconds, len(windows),
    )  # fmt: skip
    return result


# --- reading -----------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, list[Path]]:
    """Customer name -> its CSV files, both sorted; raises when there is nothing to read."""
    if not root.is_dir():
        raise DatasetError(f"NAB folder {str(root)!r} does not exist or is not a folder")
    data = root / "data"
    if not data.is_dir():
        raise DatasetError(f"NAB folder {str(root)!r} has no data/ folder of <folder>/<file>.csv")

    files: dict[str, list[Path]] = {}
    folders: dict[str, str] = {}
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        csvs = sorted(folder.glob("*.csv"))
        if not csvs:
            continue
        name = customer_name(folder.name)
        if name in folders:
            raise DatasetError(
                f"NAB folders {folders[name]!r} and {folder.name!r} in {str(data)!r} both "
                f"become customer {name!r}; rename one"
            )
        folders[name] = folder.name
        files[name] = csvs
    if not files:
        raise DatasetError(f"NAB folder {str(data)!r} holds no <folder>/<file>.csv files")
    return files


def _read_windows(root: Path) -> dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]:
    """windows.json as file key -> [(start, end)], checked."""
    path = root / WINDOWS_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"NAB windows file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"NAB windows file {str(path)!r} is not readable JSON: {err}") from None
    if not isinstance(raw, dict):
        raise DatasetError(
            f"NAB windows file {str(path)!r} must map '<folder>/<file>.csv' to lists of "
            "[start, end] timestamps"
        )

    windows = {}
    for key, entries in raw.items():
        if not isinstance(entries, list):
            raise DatasetError(f"NAB windows file {str(path)!r}: {key!r} must map to a list")
        pairs = []
        for entry in entries:
            try:
                if not isinstance(entry, list) or len(entry) != 2:
                    raise ValueError
                begin, end = (pd.Timestamp(str(t)) for t in entry)
            except ValueError:
                raise DatasetError(
                    f"NAB windows file {str(path)!r}: {key!r} has {entry!r}, not a "
                    "[start, end] pair of timestamps"
                ) from None
            if end < begin:
                raise DatasetError(
                    f"NAB windows file {str(path)!r}: {key!r} has a window ending before it "
                    f"starts: {entry!r}"
                )
            pairs.append((begin, end))
        windows[str(key)] = pairs
    return windows


def _read_csv(file: Path) -> pd.DataFrame:
    """A file's readings (timestamp, value) in file order, checked."""
    try:
        frame = pd.read_csv(file, dtype=str)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DatasetError(f"NAB file {str(file)!r} is not a readable CSV: {err}") from None
    missing = {"timestamp", "value"} - set(frame.columns)
    if missing:
        raise DatasetError(
            f"NAB file {str(file)!r} lacks column(s) {', '.join(sorted(missing))}; "
            f"it has: {', '.join(map(str, frame.columns))}"
        )
    if frame.empty:
        raise DatasetError(f"NAB file {str(file)!r} has no readings")

    timestamp = pd.to_datetime(frame["timestamp"], format="ISO8601", errors="coerce")
    value = pd.to_numeric(frame["value"], errors="coerce")
    for column, parsed in (("timestamp", timestamp), ("value", value)):
        bad = np.flatnonzero(parsed.isna().to_numpy())
        if len(bad):
            line = int(bad[0]) + 2  # the header is line 1
            raise DatasetError(
                f"NAB file {str(file)!r} line {line}: {column} "
                f"{frame[column].iloc[bad[0]]!r} is not valid"
            )
    if not timestamp.is_monotonic_increasing:
        line = int(np.flatnonzero(np.diff(timestamp.to_numpy()) < np.timedelta64(0))[0]) + 3
        raise DatasetError(f"NAB file {str(file)!r} line {line}: timestamps go backwards")
    return pd.DataFrame({"timestamp": timestamp.astype("datetime64[s]"), "value": value})


def _readings(customer: str, series: str, frame: pd.DataFrame) -> pd.DataFrame:
    minutes = np.datetime64(NAB_START, "s") + np.arange(len(frame)).astype("timedelta64[m]")
    return pd.DataFrame(
        {
            "customer": customer,
            "series": series,
            "minute": minutes.astype("datetime64[s]"),
            "value": frame["value"].to_numpy(dtype=float),
            "timestamp": frame["timestamp"].to_numpy(),
        }
    )


def _windows(
    customer: str,
    series: str,
    key: str,
    frame: pd.DataFrame,
    pairs: list[tuple[pd.Timestamp, pd.Timestamp]],
) -> list[dict[str, Any]]:
    """Map each window to the indexes of its first and last reading, then to minutes."""
    stamps = frame["timestamp"].to_numpy()
    rows = []
    for begin, end in pairs:
        first = int(np.searchsorted(stamps, np.datetime64(begin), side="left"))
        last = int(np.searchsorted(stamps, np.datetime64(end), side="right")) - 1
        if first > last:
            log.warning("NAB %s: window %s..%s holds no reading, dropped", key, begin, end)
            continue
        rows.append(
            {
                "customer": customer,
                "series": series,
                "start_minute": NAB_START + timedelta(minutes=first),
                "end_minute": NAB_START + timedelta(minutes=last),
                "start_timestamp": begin,
                "end_timestamp": end,
            }
        )
    return rows


def _labels(windows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": NAB_DATASET,
            "customer": windows["customer"],
            "metric": NAB_METRIC,
            "grouping": NAB_GROUPING,
            "dimension_values": windows["series"],
            "kind": NAB_KIND,
            "start_minute": windows["start_minute"],
            "end_minute": windows["end_minute"],
            "detectable": np.ones(len(windows), dtype=np.uint8),
        }
    )
