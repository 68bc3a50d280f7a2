"""A whole run, as main.py and the notebooks start it: data, engine, summary, report files."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from clickhouse_connect.driver.exceptions import OperationalError
from tqdm.auto import tqdm

from anomaly.config import Params, check_columns, check_run_id, reports_root
from anomaly.engines import EngineResult, RunPlan, make_plan
from anomaly.errors import ConfigError
from anomaly.faults import FAULT_ENV, parse_fault
from anomaly.store import Store
from anomaly.summary import customer_summary, to_markdown

log = logging.getLogger(__name__)

ENGINES = ("ray", "spark", "spark-fair")


@dataclass
class JobOutcome:
    """Everything a finished run produced; the tables also live in ClickHouse."""

    params: Params
    plan: RunPlan
    load: Any
    engine: EngineResult
    summary: pd.DataFrame
    summary_path: Path

    @property
    def table_markdown(self) -> str:
        return to_markdown(self.summary)

    @property
    def headline(self) -> dict[str, Any]:
        frame = self.summary
        return {
            "run_id": self.plan.run_id,
            "engine": self.plan.engine,
            "customers": len(frame),
            "minutes": int(frame["minutes"].sum()),
            "anomalies": int(frame["anomalies"].sum()),
            "labels_caught": int(frame["caught"].sum()),
            "labels_missed": int(frame["missed"].sum()),
            "lag_p95_s_max": round(float(frame["lag_p95_s"].max()), 3),
            "warmup_s": round(self.engine.warmup_seconds, 1),
            "replay_s": round(self.engine.replay_seconds, 1),
            "unfinished": self.engine.unfinished,
        }


def prepare_dataset(client: Any, params: Params, minutes_given: bool = True,
                    progress: bool = True) -> tuple[Params, Any]:  # fmt: skip
    """Load the configured dataset if it is not loaded yet; NAB brings its own customers."""
    if params.dataset.kind == "nab":
        from anomaly.nab import load_nab, nab_customers

        path = Path(params.dataset.path or "")
        customers = nab_customers(path)
        load = load_nab(client, params.clickhouse.database, path, progress=progress)
        params = dataclasses.replace(params, customers=customers)
        if not minutes_given:
            span = int((load.last_minute - load.first_minute).total_seconds() // 60) + 1
            replay = span - params.dataset.history_minutes
            if replay < 1:
                raise ConfigError(
                    f"dataset.history_minutes {params.dataset.history_minutes} leaves nothing "
                    f"to replay of the {span} minutes in {path}"
                )
            run = dataclasses.replace(params.run, minutes=replay)
            params = dataclasses.replace(params, run=run)
        return params, load

    from anomaly.dataset import load_demo

    return params, load_demo(client, params, params.run.minutes, progress=progress)


def run_job(
    params: Params,
    engine: str = "ray",
    *,
    run_id: str | None = None,
    ray_address: str | None = None,
    spark_master: str | None = None,
    cpus: int = 2,
    reports: Path | None = None,
    progress: bool = True,
    minutes_given: bool = True,
) -> JobOutcome:
    """Load the dataset, run one engine over it, summarise, and write the report files."""
    # Everything that can be refused is refused before anything is loaded or replaced.
    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r} is not known; allowed: {', '.join(ENGINES)}")
    if run_id is not None:
        check_run_id(run_id)
    if os.environ.get(FAULT_ENV):
        parse_fault(os.environ[FAULT_ENV])
    reports = reports or reports_root()
    try:
        reports.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"reports folder {str(reports)!r} cannot be made: {err}") from None

    with Store(params.clickhouse) as store:
        client = store.client()
        database = params.clickhouse.database
        check_columns(client, database, params.customers, present_only=True)
        if run_id is not None:
            _check_run_engine(client, database, run_id, engine)
        params, load = prepare_dataset(client, params, minutes_given, progress)
        check_columns(client, database, params.customers)

        plan = make_plan(
            engine, load.first_minute, params.dataset.history_minutes, params.run.minutes,
            params.run.speed, params.run.data_delay_seconds, run_id,
        )  # fmt: skip
        log.info("run %s: %d customers, %d warm-up + %d replayed minutes at %gx", plan.run_id,
                 len(params.customers), params.dataset.history_minutes, plan.replay_minutes,
                 plan.speed)  # fmt: skip

        total = len(params.customers) * plan.replay_minutes
        with tqdm(total=total, disable=not progress, unit="customer-minute",
                  desc=f"{engine} replay") as bar:  # fmt: skip

            def show(done: int) -> None:
                bar.update(done - bar.n)

            result = run_engine(
                params,
                store.url,
                plan,
                engine,
                ray_address=ray_address,
                spark_master=spark_master,
                cpus=cpus,
                on_progress=show,
                count_done=progress_counter(client, params, plan.run_id),
            )

        dataset = "nab" if params.dataset.kind == "nab" else "demo"
        summary = customer_summary(
            client, params.clickhouse.database, plan.run_id, dataset, plan.replay_first,
            plan.replay_last, [c.name for c in params.customers],
        )  # fmt: skip
        client.close()

    outcome = JobOutcome(params, plan, load, result, summary, Path())
    outcome.summary_path = write_report(outcome, reports)
    return outcome


def _check_run_engine(client: Any, database: str, run_id: str, engine: str) -> None:
    """Refuse to resume a run under another engine: its report would mix the two."""
    engines = client.query(
        "SELECT DISTINCT engine FROM {db:Identifier}.progress WHERE run_id = {run:String}",
        parameters={"db": database, "run": run_id},
    ).result_rows
    others = sorted({name for (name,) in engines} - {engine})
    if others:
        raise ConfigError(
            f"run id {run_id!r} belongs to a {others[0]} run; resume it with --mode "
            f"{others[0]} or choose another run id"
        )


def run_engine(params: Params, url: str, plan: RunPlan, engine: str, **options: Any
               ) -> EngineResult:  # fmt: skip
    """Dispatch to the Ray or Spark engine."""
    if engine == "ray":
        from anomaly.engines.ray_engine import run_ray

        return run_ray(params, url, plan, address=options.get("ray_address"),
                       num_cpus=options.get("cpus", 2), on_progress=options.get("on_progress"),
                       count_done=options.get("count_done"))  # fmt: skip
    if engine in ("spark", "spark-fair"):
        from anomaly.engines.spark_engine import run_spark

        return run_spark(params, url, plan, master=options.get("spark_master"),
                         slots=options.get("cpus", 2), fair=engine == "spark-fair",
                         on_progress=options.get("on_progress"),
                         count_done=options.get("count_done"))  # fmt: skip
    raise ConfigError(f"engine {engine!r} is not known; allowed: {', '.join(ENGINES)}")


def progress_counter(client: Any, params: Params, run_id: str) -> Callable[[], int]:
    """:func:`replayed_minutes` for the progress display; while ClickHouse is unreachable it
    repeats the last count instead of failing the run (the workers retry on their own)."""
    last = 0

    def count() -> int:
        nonlocal last
        try:
            last = replayed_minutes(client, params, run_id)
        except OperationalError:
            log.debug("progress count skipped: ClickHouse unreachable")
        return last

    return count


def replayed_minutes(client: Any, params: Params, run_id: str) -> int:
    """How many replayed customer-minutes of a run are persisted so far."""
    return int(
        client.command(
            "SELECT count() FROM {db:Identifier}.progress FINAL "
            "WHERE run_id = {run:String} AND phase = 'replay'",
            parameters={"db": params.clickhouse.database, "run": run_id},
        )
    )


def write_report(outcome: JobOutcome, reports: Path) -> Path:
    """Write the summary as Markdown, CSV and JSON under ``reports/runs/<run_id>/``."""
    folder = reports / "runs" / outcome.plan.run_id
    folder.mkdir(parents=True, exist_ok=True)
    outcome.summary.to_csv(folder / "summary.csv", index=False)
    (folder / "summary.json").write_text(json.dumps(outcome.headline, indent=2, default=str))
    text = f"# Run {outcome.plan.run_id} ({outcome.plan.engine})\n\n{outcome.table_markdown}\n"
    (folder / "summary.md").write_text(text)
    return folder / "summary.md"
