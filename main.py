"""Run the realtime anomaly detector on a replayed dataset under Ray or Spark.

python main.py --mode=ray                      # the demo dataset on the embedded ClickHouse
python main.py --mode=spark --minutes 30 --skew 10
python main.py --mode=ray --dataset nab --data-path ../shared/data/nab
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from anomaly.config import ROOT, load_params, reports_root
from anomaly.errors import report_failure

log = logging.getLogger("main")

NAB_PARAMS = ROOT / "params" / "nab.yaml"


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Replay a dataset through the realtime anomaly detector under Ray or Spark, "
        "then print a per-customer summary (also written under reports/).",
        epilog="Exit codes: 0 done; 1 unexpected error; 2 input refused or a run that failed "
        "(one line says why); 3 some customers did not finish by the deadline; 130 interrupted.",
    )
    parser.add_argument(
        "--mode",
        choices=["ray", "spark", "spark-fair"],
        default="ray",
        help="engine: one Ray actor per customer; Spark ticks partitioned by customer; or "
        "spark-fair, one Spark job loop per customer in FAIR scheduler pools (default: ray)",
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=None,
        help="params YAML (default: params/default.yaml, or params/nab.yaml with --dataset nab)",
    )
    parser.add_argument(
        "--dataset",
        choices=["demo", "nab"],
        default=None,
        help="generated demo customers, or NAB-format CSVs (needs --data-path)",
    )
    parser.add_argument(
        "--data-path",
        type=Path,
        default=None,
        help="folder of NAB-format data (data/<folder>/<file>.csv, windows.json)",
    )
    parser.add_argument(
        "--minutes",
        type=int,
        default=None,
        help="simulated minutes to replay after warm-up (run.minutes)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=None,
        help="simulated seconds per wall second (run.speed; 60 = a minute a second)",
    )
    parser.add_argument(
        "--skew",
        type=float,
        default=None,
        help="events-per-minute multiplier of the heavy customer (dataset.skew)",
    )
    parser.add_argument(
        "--heavy-customer",
        default=None,
        help="which customer the skew applies to (dataset.heavy_customer)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the generated demo dataset (dataset.seed)"
    )
    parser.add_argument(
        "--clickhouse-url",
        default=None,
        help="chdb:<dir> for the embedded ClickHouse, or http(s)://host:port for "
        "a server; credentials from CLICKHOUSE_USER / CLICKHOUSE_PASSWORD",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster instead of starting one on 127.0.0.1",
    )
    parser.add_argument(
        "--spark-master", default=None, help="Spark master URL (default: local[N] on 127.0.0.1)"
    )
    parser.add_argument(
        "--cpus",
        type=positive_int,
        default=2,
        help="parallelism given to either engine: Ray CPUs or Spark local slots (default: 2)",
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="name of the run; reusing one resumes it from its checkpoints",
    )
    parser.add_argument(
        "--reports",
        type=Path,
        default=reports_root(),
        help="where the summary is written (default: reports/)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "run.minutes": args.minutes,
        "run.speed": args.speed,
        "dataset.skew": args.skew,
        "dataset.heavy_customer": args.heavy_customer,
        "dataset.seed": args.seed,
        "clickhouse.url": args.clickhouse_url,
        "dataset.path": str(args.data_path) if args.data_path else None,
        "dataset.kind": args.dataset,
    }
    return {key: value for key, value in pairs.items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        from anomaly.job import run_job

        params_path = args.params or (NAB_PARAMS if args.dataset == "nab" else None)
        params = load_params(params_path, overrides_from(args))
        outcome = run_job(
            params,
            engine=args.mode,
            run_id=args.run_id,
            ray_address=args.ray_address,
            spark_master=args.spark_master,
            cpus=args.cpus,
            reports=args.reports,
            progress=not args.quiet,
            minutes_given=args.minutes is not None,
        )
    except (Exception, KeyboardInterrupt) as err:
        return report_failure(
            err, args.verbose, "interrupted: every process this run started has been stopped"
        )

    print()
    print(outcome.table_markdown)
    print()
    print(json.dumps(outcome.headline, default=str))
    print(f"summary written to {outcome.summary_path}")
    unfinished = ", ".join(outcome.engine.unfinished)
    if unfinished:
        message = (
            f"error: customers not finished by the deadline: {unfinished} (their minutes so "
            "far are persisted; rerun with the same --run-id to resume)"
        )
        print(message, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
