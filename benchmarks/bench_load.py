"""Rows per second of the demo dataset: generated, inserted, and loaded through the endpoint.

Run from the project root: ``python -m benchmarks.bench_load [--params params/default.yaml]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomaly.config import DEFAULT_PARAMS, Params, load_params
from anomaly.dataset import (
    EVENTS_TABLE,
    create_events_table,
    generate_demo,
    insert_frame,
    load_demo,
)
from anomaly.schema import ensure_schema
from anomaly.store import Store

# A database of its own for the bare insert, beside the one load_demo fills.
INSERT_DATABASE = "bench_insert"


def case_params(path: Path, folder: Path, skew: float | None) -> Params:
    """The params file pointed at a fresh chDB directory; ``skew`` on its heavy customer.

    A file without a heavy customer gets its first customer as the heavy one, so that a skew
    always changes the data.
    """
    overrides: dict[str, Any] = {"clickhouse.url": f"chdb:{folder / 'clickhouse'}"}
    params = load_params(path, overrides)
    if skew is not None:
        overrides["dataset.skew"] = skew
        if params.dataset.heavy_customer is None:
            overrides["dataset.heavy_customer"] = params.customers[0].name
        params = load_params(path, overrides)
    return params


def measure(name: str, params: Params, minutes: int) -> dict[str, Any]:
    """Generate once without a database, then load twice and insert once through a new endpoint.

    The first load generates again and inserts (what a first run does); the second finds the
    same dataset recorded and keeps it (what every later run does). The bare insert sends the
    frame generated at first into an empty table of another database, so insert and generation
    are timed apart.
    """
    started = time.perf_counter()
    events, _ = generate_demo(params, minutes)
    generate_s = time.perf_counter() - started
    rows = len(events)

    started = time.perf_counter()
    with Store(params.clickhouse) as store:
        endpoint_s = time.perf_counter() - started
        client = store.client()
        first = load_demo(client, params, minutes, progress=False)
        second = load_demo(client, params, minutes, progress=False)

        ensure_schema(client, INSERT_DATABASE)
        create_events_table(client, INSERT_DATABASE)
        started = time.perf_counter()
        insert_frame(client, INSERT_DATABASE, EVENTS_TABLE, events)
        insert_s = time.perf_counter() - started
        client.close()

    settings = params.dataset
    return {
        "case": name,
        "heavy_customer": settings.heavy_customer or "-",
        "skew": settings.skew,
        "customers": len(params.customers),
        "minutes": settings.history_minutes + minutes,
        "rows": rows,
        "generate_s": generate_s,
        "generate_rows_per_s": rows / generate_s,
        "load_s": first.seconds,
        "load_rows_per_s": first.rows_per_second,
        "insert_s": insert_s,
        "insert_rows_per_s": rows / insert_s,
        "second_load_s": second.seconds,
        "second_load_kept": not second.reloaded,
        "endpoint_start_s": endpoint_s,
        "loaded_rows": first.rows,
    }


COLUMNS = [
    ("case", "case"),
    ("rows", "rows"),
    ("generate_s", "generate s"),
    ("generate_rows_per_s", "generate rows/s"),
    ("load_s", "load s"),
    ("load_rows_per_s", "load rows/s"),
    ("insert_s", "insert s"),
    ("insert_rows_per_s", "insert rows/s"),
    ("second_load_s", "second load s"),
    ("second_load_kept", "second load kept"),
]


def report(figures: dict[str, Any]) -> str:
    """The printed report: one row per case, and what each column means."""

    def cell(value: Any) -> str:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:,.0f}" if value >= 1000 else f"{value:.3f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    rows = figures["rows"]
    lines = [
        f"machine: {figures['machine']['cores']} cores; params {figures['params']}; "
        f"{figures['minutes']} replayed minutes after the file's history; 1-minute load "
        f"average {figures['machine']['load_before']:.1f} before, "
        f"{figures['machine']['load_after']:.1f} after",
        "",
        "| " + " | ".join(header for _, header in COLUMNS) + " |",
        "|" + "|".join("---:" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(row[key]) for key, _ in COLUMNS) + " |" for row in rows]
    lines += [
        "",
        "generate: generate_demo alone, in memory. load: load_demo into a fresh embedded",
        "ClickHouse through its endpoint (generates again and inserts, as a first run does).",
        "insert: the generated frame alone into an empty table (Arrow, as load_demo sends it).",
        "second load: load_demo again, which finds the same dataset recorded and keeps it.",
    ]
    for row in rows:
        lines.append(
            f"{row['case']}: {row['customers']} customers x {row['minutes']} minutes, heavy "
            f"customer {row['heavy_customer']} x {row['skew']:g}; endpoint started in "
            f"{row['endpoint_start_s']:.2f} s"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: default.yaml)"
    )
    parser.add_argument(
        "--minutes", type=int, default=None, help="replayed minutes (default: the file's run)"
    )
    parser.add_argument(
        "--skew", type=float, default=10.0, help="skew of the heavy customer (default: 10)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.minutes is not None and args.minutes < 1:
        parser.error("--minutes must be >= 1")
    if args.skew < 1:
        parser.error("--skew must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure the default and the skewed dataset; print the report and return the figures."""
    args = parse_args(argv)
    minutes = args.minutes or load_params(args.params).run.minutes
    figures: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "load_before": os.getloadavg()[0]},
        "params": str(args.params),
        "minutes": minutes,
        "rows": [],
    }
    started = time.perf_counter()

    # Each case in its own directory: a fresh endpoint and an empty database.
    for name, skew in (("default", None), (f"skew {args.skew:g}", args.skew)):
        with tempfile.TemporaryDirectory(prefix="bench-load-") as folder:
            params = case_params(args.params, Path(folder), skew)
            print(f"measuring {name} ...", flush=True)
            figures["rows"].append(measure(name, params, minutes))

    figures["wall_s"] = time.perf_counter() - started
    figures["machine"]["load_after"] = os.getloadavg()[0]
    print(report(figures))
    print(f"\nwall time {figures['wall_s']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        print(f"figures written to {args.json}")
    return figures


if __name__ == "__main__":
    main()
