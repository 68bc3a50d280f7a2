"""Detection quality of each detector kind: the NAB score of a NAB-format folder, and recall,
precision and delay on the demo dataset's injected anomalies.

Run from the project root:
``python -m benchmarks.bench_quality --nab-path ../shared/data/nab [--detector seed|seasonal|all]
[--json out.json]``. Without the NAB folder (users do not have it) the NAB part is skipped with
a message and the demo part still runs; the exit status is 0. A NAB folder that is there but
malformed, or params that do not validate, exit with status 2 and one line saying why.

Every kind runs with the params file's detector section (the seed's defaults in
params/default.yaml), only ``kind`` replaced. NAB readings are fed at their own 5-minute
timestamps, so a day is a day for the seasonal detector and settings counted in points (warm-up,
calm) count readings; see anomaly.quality. Alerts are anomalies opened (one per anomaly, at its
detection minute); NAB scores them with its standard profile (anomaly.scoring).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from anomaly.config import DEFAULT_PARAMS, DETECTOR_KINDS, load_params
from anomaly.errors import AnomalyError
from anomaly.quality import demo_quality, demo_series, nab_series, score_nab
from anomaly.scoring import CorpusScore
from anomaly.store import Store

# Published NAB scores on the full corpus (standard profile), for scale; see the NAB folder's
# SOURCE.md. The shared folder holds only part of the corpus.
PUBLISHED = {"Windowed Gaussian": 39.6, "earthgecko Skyline": 58.2}

# The summary table: key in a row, header.
COLUMNS = [
    ("detector", "detector"),
    ("nab_score", "NAB score"),
    ("nab_precision", "NAB precision"),
    ("nab_recall", "NAB recall"),
    ("nab_delay", "NAB median delay (readings)"),
    ("nab_alerts", "NAB alerts"),
    ("demo_recall", "demo recall"),
    ("demo_precision", "demo precision"),
    ("demo_strict_precision", "demo strict precision"),
    ("demo_delay", "demo median delay (min)"),
    ("demo_alerts", "demo alerts"),
]


def nab_figures(path: Path, kinds: list[str], base: Any) -> dict[str, Any] | None:
    """Score every kind on the NAB folder; None (with a message) when the folder is absent."""
    if not path.is_dir():
        print(f"NAB folder {str(path)!r} not found: NAB figures skipped (the NAB data is not "
              "distributed with the project; pass --nab-path to a NAB-format folder)")  # fmt: skip
        return None
    series = nab_series(path)
    figures: dict[str, Any] = {
        "path": str(path),
        "files": len(series),
        "rows": sum(s.rows for s in series),
        "windows": sum(len(s.windows) for s in series),
        "detectors": {},
    }
    for kind in kinds:
        started = time.perf_counter()
        corpus = score_nab(series, replace(base, kind=kind))
        figures["detectors"][kind] = corpus_figures(corpus, time.perf_counter() - started)
    return figures


def corpus_figures(corpus: CorpusScore, seconds: float) -> dict[str, Any]:
    return {
        "score": corpus.score,
        "raw": corpus.raw,
        "null": corpus.null,
        "perfect": corpus.perfect,
        "precision": corpus.precision,
        "recall": corpus.recall,
        "median_delay": corpus.median_delay,
        "windows": corpus.windows,
        "hits": corpus.hits,
        "alerts": corpus.detections,
        "false_positives": corpus.false_positives,
        "seconds": seconds,
        "files": [
            {
                "file": s.series,
                "rows": s.rows,
                "windows": s.windows,
                "hits": s.hits,
                "alerts": s.detections,
                "false_positives": s.false_positives,
                "raw": s.raw,
                "score": s.score,
                "delays": list(s.delays),
            }
            for s in corpus.series
        ],
    }


def demo_figures(params_path: Path, kinds: list[str], minutes: int | None) -> dict[str, Any]:
    """Load the demo dataset into a fresh embedded ClickHouse (its endpoint, in a temporary
    folder), run the series query per customer, and score every kind on the series."""
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as folder:
        params = load_params(params_path, {"clickhouse.url": f"chdb:{Path(folder) / 'ch'}"})
        started = time.perf_counter()
        with Store(params.clickhouse) as store:
            client = store.client()
            try:
                demo = demo_series(params, client, minutes)
            finally:
                client.close()
        figures: dict[str, Any] = {
            "params": str(params_path),
            "minutes": minutes or params.run.minutes,
            "series_s": time.perf_counter() - started,
            "detectors": {},
        }
        for kind in kinds:
            quality = demo_quality(params, demo, kind)
            figures["detectors"][kind] = asdict(quality)
    return figures


def summary_rows(figures: dict[str, Any], kinds: list[str]) -> list[dict[str, Any]]:
    rows = []
    nab = (figures.get("nab") or {}).get("detectors", {})
    demo = (figures.get("demo") or {}).get("detectors", {})
    for kind in kinds:
        row: dict[str, Any] = {"detector": kind}
        if kind in nab:
            n = nab[kind]
            row.update(nab_score=n["score"], nab_precision=n["precision"], nab_recall=n["recall"],
                       nab_delay=n["median_delay"], nab_alerts=n["alerts"])  # fmt: skip
        if kind in demo:
            d = demo[kind]
            row.update(demo_recall=d["recall"], demo_precision=d["precision"],
                       demo_strict_precision=d["strict_precision"],
                       demo_delay=d["median_delay"], demo_alerts=d["alerts"])  # fmt: skip
        rows.append(row)
    return rows


def cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def table(columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(header for _, header in columns) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")
    lines += ["| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return lines


def report(figures: dict[str, Any], kinds: list[str]) -> str:
    lines: list[str] = []
    nab = figures.get("nab")
    if nab:
        lines += [
            f"NAB: {nab['path']}, {nab['files']} files, {nab['rows']} readings, "
            f"{nab['windows']} windows; standard profile (TP 1, FP 0.11, FN 1)",
            "",
        ]
        columns = [("file", "file"), ("rows", "rows"), ("windows", "windows")]
        for kind in kinds:
            columns += [(f"{kind}_hits", f"{kind} hits"), (f"{kind}_alerts", f"{kind} alerts"),
                        (f"{kind}_score", f"{kind} score")]  # fmt: skip
        rows: dict[str, dict[str, Any]] = {}
        for kind in kinds:
            for f in nab["detectors"][kind]["files"]:
                row = rows.setdefault(f["file"], {"file": f["file"], "rows": f["rows"],
                                                  "windows": f["windows"]})  # fmt: skip
                row[f"{kind}_hits"] = f["hits"]
                row[f"{kind}_alerts"] = f["alerts"]
                row[f"{kind}_score"] = f["score"]
        lines += table(columns, list(rows.values()))
        lines += [
            "",
            "score per file: 100 = an alert at each window's start and no other, 0 = no alert "
            "(n/a: a file without windows, where alerts only cost).",
            "",
        ]
    demo = figures.get("demo")
    if demo:
        lines.append(f"demo: {demo['params']}, {demo['minutes']} replayed minutes after warm-up")
        for kind in kinds:
            d = demo["detectors"][kind]
            lines.append(
                f"  {kind}: {d['caught']}/{d['labels']} detectable labels caught, "
                f"{d['explained']}/{d['alerts']} alerts explained by a label "
                f"({d['strictly_explained']} on its own slice, a parent or a child)"
                + (f"; missed: {', '.join(d['missed'])}" if d["missed"] else "")
                + (f"; unexplained: {', '.join(d['unexplained'][:5])}" if d["unexplained"] else "")
            )
        lines.append("")
    lines += table(COLUMNS, figures["summary"])
    lines += [
        "",
        "NAB precision: alerts inside a window / alerts (after NAB's probation); recall: windows "
        "with an alert / windows; delay: readings from a window's start to its first alert.",
        "demo precision: alerts opened on a slice sharing events with a label's slice while its "
        "window lasts / alerts (strict: on the label's slice, a parent or a child only); recall: "
        "detectable labels whose series alerted in the window; delay: from the label's start.",
        "published (full NAB corpus): "
        + ", ".join(f"{name} {score}" for name, score in PUBLISHED.items()),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--nab-path", type=Path, default=None, help="a NAB-format folder (default: none, skipped)"
    )
    parser.add_argument(
        "--detector",
        choices=[*DETECTOR_KINDS, "all"],
        default="all",
        help="the detector kind to measure (default: all)",
    )
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: default.yaml)"
    )
    parser.add_argument(
        "--demo-minutes", type=int, default=None, help="replayed demo minutes (default: the file's)"
    )
    parser.add_argument("--no-demo", action="store_true", help="skip the demo dataset")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.demo_minutes is not None and args.demo_minutes < 1:
        parser.error("--demo-minutes must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure the kinds asked for; print the report and return the figures."""
    args = parse_args(argv)
    kinds = list(DETECTOR_KINDS) if args.detector == "all" else [args.detector]
    started = time.perf_counter()
    base = load_params(args.params).detector
    figures: dict[str, Any] = {
        "machine": {"cores": os.cpu_count()},
        "params": str(args.params),
        "settings": asdict(base),
        "kinds": kinds,
        "nab": None,
        "demo": None,
    }

    if args.nab_path is None:
        print("no --nab-path given: NAB figures skipped")
    else:
        print(f"scoring {', '.join(kinds)} on NAB {args.nab_path} ...", flush=True)
        figures["nab"] = nab_figures(args.nab_path, kinds, base)
    if not args.no_demo:
        print(f"scoring {', '.join(kinds)} on the demo dataset ...", flush=True)
        figures["demo"] = demo_figures(args.params, kinds, args.demo_minutes)

    figures["summary"] = summary_rows(figures, kinds)
    figures["wall_s"] = time.perf_counter() - started
    print()
    print(report(figures, kinds))
    print(f"\nwall time {figures['wall_s']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        print(f"figures written to {args.json}")
    return figures


def cli() -> int:
    try:
        main()
    except AnomalyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
