"""How the heavy customer's minute grows with its skew factor, on each engine.

The skew experiment's sweep (:func:`anomaly.experiment.run_sweep`) replays the same dataset
per engine and skew; from its progress rows this takes the heavy customer's query, series and
detect seconds per minute. Part of ``python -m benchmarks``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from anomaly.config import Params
from anomaly.experiment import isolation_table, per_minute_cost, run_sweep
from benchmarks.bench_engines import engine_session

# The stages that grow with the customer's rows; persist and checkpoint depend on anomalies
# and series, and restore is once per run (Ray) or per tick (Spark).
COST_STAGES = ("query_s", "series_s", "detect_s")


def measure(
    params: Params, engines: Sequence[str], skews: Sequence[float], heavy: str, cpus: int,
    reports: Path, say: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Sweep the skews on each engine; one row per engine and skew with the heavy customer's
    cost per minute.

    ``cost_vs_skew1`` divides a cost by the same engine's cost at skew 1, and ``rows_per_s`` is
    the heavy customer's rows a minute over its cost: how fast its minutes are turned into
    series and scored. ``cost_over_others`` divides it by the other customers' median cost in
    the same runs: recorded stage times include waiting for the CPU and the ClickHouse
    endpoint, which every customer of a run shares (under Ray all of them query at the same
    moment), and this ratio leaves that shared part out. Each engine's sweep runs inside one
    start-up of that engine, so no engine idles beside the other's runs.
    """

    def show(run: dict[str, Any]) -> None:
        say(
            f"scaling: {run['engine']} at skew {run['skew']:g}: replay {run['replay_s']:.0f} s, "
            f"heavy p95 lag {run['heavy_p95_s']:.2f} s, others {run['others_p95_s']:.2f} s"
        )

    sweeps = []
    for engine in engines:
        with engine_session(engine, cpus):
            sweep = run_sweep(params, [engine], skews, heavy=heavy, mode="compute", cpus=cpus,
                              reports=reports, progress=True, on_run=show)  # fmt: skip
        sweeps.append(sweep)
    lags = pd.concat([sweep.lags for sweep in sweeps], ignore_index=True)
    isolation = isolation_table(lags, heavy).set_index(["engine", "skew"])

    rows = []
    for (engine, skew), group in lags.groupby(["engine", "skew"], sort=False):
        mine = group[group["heavy"]]
        ticks = mine.drop_duplicates("tick_first_minute")
        figures = isolation.loc[(engine, skew)]
        row: dict[str, Any] = {
            "engine": engine,
            "skew": float(skew),
            "rows_per_minute": float(ticks["rows_scanned"].sum() / max(len(mine), 1)),
            **{f"{stage}_per_minute": per_minute_cost(mine, (stage,)) for stage in COST_STAGES},
            "cost_s": per_minute_cost(mine, COST_STAGES),
            "others_cost_s": float(
                group[~group["heavy"]]
                .groupby("customer")
                .apply(per_minute_cost, COST_STAGES, include_groups=False)
                .median()
            ),
            "heavy_p95_s": float(figures["heavy_p95_s"]),
            "others_p95_s": float(figures["others_p95_s"]),
            "isolation_factor": float(figures["isolation_factor"]),
        }
        row["rows_per_s"] = row["rows_per_minute"] / row["cost_s"]
        row["cost_over_others"] = row["cost_s"] / row["others_cost_s"]
        rows.append(row)

    base = {row["engine"]: row["cost_s"] for row in rows if row["skew"] == 1.0}
    for row in rows:
        row["cost_vs_skew1"] = row["cost_s"] / base[row["engine"]]
    return {
        "heavy": heavy,
        "customers": len(params.customers),
        "minutes": params.run.minutes,
        "speed": params.run.speed,
        "rows": rows,
    }
