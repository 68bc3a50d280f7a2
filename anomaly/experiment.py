"""The skewed-customer experiment: the same replay per engine and skew factor, lag compared.

For each skew factor the demo dataset is reloaded with the heavy customer's events per minute
multiplied by it (the other customers' rows do not change), and each engine replays it. In
``wait`` mode the data stays unskewed and the heavy customer's replayed ticks instead wait, per
minute, (skew - 1) times its measured per-minute cost at skew 1 (the median over the engines,
so every engine gets the same wait): extra time spent waiting instead of computing, so any
spread to other customers is synchronisation, not CPU contention.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from anomaly.config import Params
from anomaly.job import JobOutcome, run_job
from anomaly.store import Store, read_progress
from anomaly.summary import lag_frame, to_markdown

log = logging.getLogger(__name__)

STAGES = ["restore_s", "query_s", "series_s", "detect_s", "persist_s", "checkpoint_s"]
# The stages that make a minute's work, the per-minute cost (restore and checkpoint are not per
# minute: a Ray actor restores once, and a checkpoint follows a tick, whatever its length).
MINUTE_STAGES = ("query_s", "series_s", "detect_s", "persist_s")


@dataclass
class Sweep:
    """Every run of a sweep: per customer-minute lag and stage times, and per-run figures."""

    heavy: str
    mode: str
    lags: pd.DataFrame
    runs: pd.DataFrame
    outcomes: list[JobOutcome] = field(default_factory=list, repr=False)

    def isolation(self) -> pd.DataFrame:
        """p95 lag of the other customers at each skew, and the isolation factor per engine."""
        return isolation_table(self.lags, self.heavy)


def run_sweep(
    params: Params,
    engines: Iterable[str] = ("ray", "spark"),
    skews: Iterable[float] = (1, 10, 50),
    *,
    heavy: str | None = None,
    mode: str = "compute",
    cpus: int = 2,
    reports: Path | None = None,
    progress: bool = True,
    on_run: Callable[[dict[str, object]], None] | None = None,
) -> Sweep:
    """Run every engine at every skew factor on the same dataset; collect lags and stages.

    Parameters
    ----------
    mode:
        ``compute``: the heavy customer has skew x the events. ``wait``: it has the same
        events but waits (skew - 1) x its skew-1 per-minute cost in every tick.
    on_run:
        Called with each run's row of :attr:`Sweep.runs` as soon as the run ends.
    """
    if mode not in ("compute", "wait"):
        raise ValueError(f"mode {mode!r} is not known; allowed: compute, wait")
    heavy = heavy or params.dataset.heavy_customer or params.customers[0].name
    params.customer(heavy)  # a clear error for an unknown name
    skews = sorted(set(float(s) for s in skews) | {1.0})

    lags, runs, outcomes = [], [], []
    costs: list[float] = []
    for skew in skews:
        # One wait for every engine: the median of their skew-1 costs (each engine measures a
        # different cost, and a fair comparison gives all of them the same extra time).
        unit_cost = float(pd.Series(costs).median()) if costs else 0.0
        for engine in engines:
            run_params = _variant(params, heavy, skew, mode, unit_cost)
            log.info("sweep: %s at skew %g (%s)", engine, skew, mode)
            with CpuSampler() as cpu:
                outcome = run_job(run_params, engine, cpus=cpus, reports=reports,
                                  progress=progress)  # fmt: skip
            frame = _lags(outcome)
            frame["engine"], frame["skew"], frame["mode"] = engine, skew, mode
            frame["wait_s_per_minute"] = run_params.run.wait_seconds_per_minute
            frame["heavy"] = frame["customer"] == heavy
            if skew == 1.0:
                costs.append(per_minute_cost(frame[frame["heavy"]]))
            lags.append(frame)
            runs.append(_run_row(outcome, engine, skew, mode, heavy, frame, cpu.mean))
            outcomes.append(outcome)
            if on_run is not None:
                on_run(runs[-1])

    return Sweep(heavy, mode, pd.concat(lags, ignore_index=True), pd.DataFrame(runs), outcomes)


def isolation_table(lags: pd.DataFrame, heavy: str) -> pd.DataFrame:
    """Per engine and skew: p95 lag of the heavy and of the other customers, and the isolation
    factor (the others' p95 lag divided by their p95 lag at skew 1, same engine)."""
    rows = []
    for (engine, skew), group in lags.groupby(["engine", "skew"]):
        others = group.loc[group["customer"] != heavy, "lag_s"]
        mine = group.loc[group["customer"] == heavy, "lag_s"]
        rows.append({"engine": engine, "skew": skew, "heavy_p95_s": mine.quantile(0.95),
                     "others_p95_s": others.quantile(0.95),
                     "others_p50_s": others.quantile(0.5),
                     "heavy_wait_s": group["wait_s_per_minute"].iloc[0]
                     if "wait_s_per_minute" in group else 0.0})  # fmt: skip
    table = pd.DataFrame(rows)
    base = table[table["skew"] == 1.0].set_index("engine")["others_p95_s"]
    table["isolation_factor"] = table["others_p95_s"] / table["engine"].map(base)
    return table


class CpuSampler:
    """Samples the machine's CPU use once a second while a run goes on (percent of all cores),
    its memory in use (bytes), whose peak tells what the run's processes held at most, and
    optionally the CPU of some processes (percent of one core, summed), each sample timed so a
    part of the run can be read apart (:meth:`mean_between`)."""

    def __init__(self, interval: float = 1.0, pids: Iterable[int] = ()):
        self.interval = interval
        self.times: list[float] = []
        self.samples: list[float] = []
        self.memory_samples: list[int] = []
        self.process_samples: list[float] = []
        self._processes = [psutil.Process(pid) for pid in pids]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> CpuSampler:
        psutil.cpu_percent()
        self._process_percent()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else float("nan")

    @property
    def peak_memory(self) -> int:
        """The most memory in use on the machine at any sample (bytes); 0 before a sample."""
        return max(self.memory_samples, default=0)

    def mean_between(self, start: float, end: float, processes: bool = False) -> float:
        """Mean of the samples taken from ``start`` to ``end`` (epoch seconds): the machine's
        CPU, or with ``processes`` the given processes'; NaN when none fall inside."""
        series = self.process_samples if processes else self.samples
        inside = [v for t, v in zip(self.times, series, strict=False) if start <= t <= end]
        return sum(inside) / len(inside) if inside else float("nan")

    def _process_percent(self) -> float:
        total = 0.0
        for process in self._processes:
            with contextlib.suppress(psutil.Error):
                total += process.cpu_percent()
        return total

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.times.append(time.time())
            self.samples.append(psutil.cpu_percent())
            self.memory_samples.append(psutil.virtual_memory().used)
            self.process_samples.append(self._process_percent())


def _variant(params: Params, heavy: str, skew: float, mode: str, unit_cost: float) -> Params:
    dataset = dataclasses.replace(params.dataset, heavy_customer=heavy)
    run = params.run
    if mode == "compute":
        dataset = dataclasses.replace(dataset, skew=skew)
    else:
        run = dataclasses.replace(run, wait_customer=heavy,
                                  wait_seconds_per_minute=(skew - 1.0) * unit_cost)  # fmt: skip
    return dataclasses.replace(params, dataset=dataset, run=run)


def _lags(outcome: JobOutcome) -> pd.DataFrame:
    with Store(outcome.params.clickhouse) as store:
        client = store.client()
        progress = read_progress(client, outcome.params.clickhouse.database, outcome.plan.run_id)
        client.close()
    return lag_frame(progress)


def per_minute_cost(minutes: pd.DataFrame, stages: Iterable[str] = MINUTE_STAGES) -> float:
    """Median seconds of work per minute of one customer: its ticks' ``stages`` / minutes.

    ``minutes`` holds the customer's replayed minutes as :func:`anomaly.summary.lag_frame`
    gives them (a tick of several minutes repeats its stage times on each of its rows).
    """
    ticks = minutes.drop_duplicates("tick_first_minute")
    if ticks.empty:
        return 0.0
    work = ticks[list(stages)].sum(axis=1)
    return float((work / ticks["tick_minutes"]).median())


def _run_row(outcome: JobOutcome, engine: str, skew: float, mode: str, heavy: str,
             frame: pd.DataFrame, cpu_mean: float) -> dict[str, object]:  # fmt: skip
    others = frame[~frame["heavy"]]
    heavy_minutes = frame[frame["heavy"]]
    heavy_ticks = heavy_minutes.drop_duplicates("tick_first_minute")
    return {
        "engine": engine,
        "skew": skew,
        "mode": mode,
        "run_id": outcome.plan.run_id,
        "wait_s_per_minute": outcome.params.run.wait_seconds_per_minute,
        "heavy_rows_per_minute": float(heavy_ticks["rows_scanned"].sum() / len(heavy_minutes)),
        "heavy_p95_s": float(frame.loc[frame["heavy"], "lag_s"].quantile(0.95)),
        "others_p95_s": float(others["lag_s"].quantile(0.95)),
        "anomalies": int(outcome.summary["anomalies"].sum()),
        "labels_caught": int(outcome.summary["caught"].sum()),
        "labels": int(outcome.summary["labels"].sum()),
        "machine_cpu_percent": round(cpu_mean, 1),
        "replay_s": round(outcome.engine.replay_seconds, 2),
        "finished_at": time.time(),
    }


def repeatability(first: pd.DataFrame, second: pd.DataFrame) -> dict[str, float]:
    """Relative difference of the others' p95 lag between two unskewed runs, per engine.

    Both sweeps start with a run at skew 1 on the same data, so their difference is the
    run-to-run noise of the machine: the scale against which an isolation factor is read.
    """
    a = first[first["skew"] == 1.0].set_index("engine")["others_p95_s"]
    b = second[second["skew"] == 1.0].set_index("engine")["others_p95_s"]
    both = a.index.intersection(b.index)
    return {str(e): float(abs(a[e] - b[e]) / min(a[e], b[e])) for e in both}


def summarise(sweep: Sweep, waits: Sweep | None = None) -> dict[str, Any]:
    """The sweep's figures, a Markdown report and a conclusion written from the numbers."""
    table = sweep.isolation()
    top = table["skew"].max()
    at_top = table[table["skew"] == top].set_index("engine")
    base = table[table["skew"] == 1.0].set_index("engine")

    lines = [f"Heavy customer: {sweep.heavy}; highest skew: {top:g}."]
    for engine, row in at_top.iterrows():
        lines.append(
            f"- {engine}: the other customers' p95 lag went from "
            f"{base.loc[engine, 'others_p95_s']:.2f} s at skew 1 to {row['others_p95_s']:.2f} s "
            f"(isolation factor {row['isolation_factor']:.2f}); the heavy customer's p95 lag "
            f"was {row['heavy_p95_s']:.2f} s."
        )
    ranked = at_top["isolation_factor"].sort_values()
    lines.append(
        f"Lowest isolation factor at skew {top:g}: {ranked.index[0]} ({ranked.iloc[0]:.2f}); "
        f"highest: {ranked.index[-1]} ({ranked.iloc[-1]:.2f})."
    )

    figures: dict[str, Any] = {
        "heavy": sweep.heavy,
        "compute": table.to_dict(orient="records"),
        "runs": sweep.runs.to_dict(orient="records"),
    }
    markdown = ["# Skew experiment", "", to_markdown(table.round(3)), ""]
    if waits is not None:
        wait_table = waits.isolation()
        wait_skew = wait_table["skew"].max()
        wait_top = wait_table[wait_table["skew"] == wait_skew].set_index("engine")
        computed = table[table["skew"] == wait_skew].set_index("engine")["isolation_factor"]
        for engine, row in wait_top.iterrows():
            compare = (
                f" (computing at the same skew: {computed[engine]:.2f})"
                if engine in computed.index
                else ""
            )
            lines.append(
                f"- {engine}, heavy customer waiting {row['heavy_wait_s']:.2f} s per minute "
                f"instead of computing (skew {wait_skew:g}): isolation factor "
                f"{row['isolation_factor']:.2f}{compare}. What remains when waiting is "
                "synchronisation; the rest of a computing run's factor is contention."
            )
        figures["wait"] = wait_table.to_dict(orient="records")
        noise = repeatability(table, wait_table)
        figures["repeatability"] = noise
        worst = max(noise.values())
        each = ", ".join(f"{engine} {value:.0%}" for engine, value in noise.items())
        lines.append(
            f"Repeatability: the two unskewed runs of each engine (one per sweep) differ in the "
            f"others' p95 lag by up to {worst:.0%} ({each}); isolation factors closer to 1 "
            "than that are not distinguishable from no effect."
        )
        markdown += ["## Waiting instead of computing", "", to_markdown(wait_table.round(3)), ""]

    conclusion = "\n".join(lines)
    markdown += ["## Conclusion", "", conclusion, ""]
    return {"figures": figures, "markdown": "\n".join(markdown), "conclusion": conclusion}
