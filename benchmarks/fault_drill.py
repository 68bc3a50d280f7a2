"""Fault drills: replay the tiny dataset under a fault and compare it with an uninterrupted run.

Each drill runs ``main.py`` as a user would (a child process against an embedded ClickHouse
endpoint this script starts on 127.0.0.1), breaks something on purpose, and checks what was
persisted: every replayed minute of every customer exactly once, and the same anomalies as the
uninterrupted run. It also measures each customer's lag, so the harm can be seen.

    python -m benchmarks.fault_drill                 # every drill, prints the table
    python -m benchmarks.fault_drill --only outage --outage-seconds 30

tests/test_faults.py runs the same drills and asserts what they report.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from anomaly.config import ROOT, load_params
from anomaly.endpoint import EmbeddedEndpoint
from anomaly.faults import FAULT_ENV, Fault
from anomaly.store import connect, read_anomalies, read_progress
from anomaly.summary import to_markdown

PARAMS = ROOT / "params" / "tiny.yaml"
KEY = ["customer", "metric", "grouping", "dimension_values", "start_minute"]
COMPARED = ["end_minute", "detected_minute", "value", "expected", "peak_score", "severity"]
# The customer every drill breaks; the others show whether the harm spreads.
VICTIM = "shopfront"
# Wall seconds a drill waits for a run to end before it calls the run hung.
RUN_TIMEOUT = 300.0
# Every run gets this password in its environment: no output or report of a drill may show it.
SECRET = f"drill-{os.getpid()}-never-logged"


@dataclass
class Outcome:
    """What a drill saw: whether the run recovered whole, and the lag it cost."""

    drill: str
    engine: str
    run_id: str
    exit_codes: list[int]
    minutes_exact: bool
    anomalies_same: bool
    anomalies: int
    victim_lag_max_s: float
    others_lag_max_s: float
    baseline_others_lag_max_s: float
    warnings: dict[str, int]
    wall_s: float
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "drill": self.drill,
            "engine": self.engine,
            "exit codes": " then ".join(str(c) for c in self.exit_codes),
            "every minute once": self.minutes_exact,
            "same anomalies": self.anomalies_same,
            f"{VICTIM} max lag s": round(self.victim_lag_max_s, 2),
            "others max lag s": round(self.others_lag_max_s, 2),
            "others, same run without fault": round(self.baseline_others_lag_max_s, 2),
            "WARNING lines": sum(self.warnings.values()),
            "wall s": round(self.wall_s, 1),
            "notes": "; ".join(self.notes),
        }


class Harness:
    """An endpoint on a temporary chDB folder, the tiny dataset loaded, one baseline run."""

    def __init__(self, folder: Path, python: str = sys.executable, quiet_lags: bool = False):
        """``quiet_lags``: also run each engine uninterrupted at each drill's speed, so every
        drill's lag has a like-for-like figure beside it (the table; tests skip it)."""
        self.folder = folder
        self.quiet_lags = quiet_lags
        self._quiet: dict[tuple[str, float], float] = {}
        self.python = python
        self.endpoint = EmbeddedEndpoint()
        self.url = self.endpoint.start(folder / "clickhouse")
        self.params = load_params(PARAMS, {"clickhouse.url": self.url})
        self.database = self.params.clickhouse.database
        self._count = 0
        self.baseline_run = "baseline"
        self.baseline = self.run(["--mode", "ray", "--run-id", self.baseline_run])
        if self.baseline.returncode != 0:
            raise RuntimeError(f"the baseline run failed:\n{self.baseline.output[-3000:]}")
        self.baseline_anomalies = self.anomalies(self.baseline_run)
        self._quiet[("ray", self.params.run.speed)] = _others_lag(self.progress(self.baseline_run))

    def close(self) -> None:
        self.endpoint.stop()

    # --- running main.py --------------------------------------------------------------

    def start(self, args: list[str], *, env: dict[str, str] | None = None,
              url: str | None = None) -> tuple[subprocess.Popen[bytes], Path]:  # fmt: skip
        """Start ``main.py`` with tiny params against the endpoint; output goes to a file."""
        self._count += 1
        log = self.folder / f"main-{self._count}.log"
        command = [self.python, str(ROOT / "main.py"), "--params", str(PARAMS), "--quiet",
                   "--clickhouse-url", url or self.url, "--reports", str(self.folder / "reports"),
                   *args]  # fmt: skip
        with open(log, "wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, "CLICKHOUSE_PASSWORD": SECRET,
                                            **(env or {})},
                                       start_new_session=True)  # fmt: skip
        return process, log

    def run(self, args: list[str], **options: Any) -> Finished:
        process, log = self.start(args, **options)
        return finish(process, log)

    # --- reading what runs persisted ------------------------------------------------------

    def client(self) -> Any:
        return connect(self.url, attempts=1)

    def anomalies(self, run_id: str) -> pd.DataFrame:
        client = self.client()
        try:
            return read_anomalies(client, self.database, run_id)
        finally:
            client.close()

    def progress(self, run_id: str) -> pd.DataFrame:
        client = self.client()
        try:
            return read_progress(client, self.database, run_id)
        finally:
            client.close()

    def wait_for_replay(self, run_id: str, minutes: int, process: subprocess.Popen[bytes],
                        timeout: float = 120.0) -> None:  # fmt: skip
        """Wait until ``minutes`` replayed customer-minutes of a run are persisted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"run {run_id} ended (code {process.returncode}) too early")
            progress = self.progress(run_id)
            if not progress.empty and (progress["phase"] == "replay").sum() >= minutes:
                return
            time.sleep(0.2)
        raise RuntimeError(f"run {run_id} did not reach {minutes} replayed minutes")

    def first_replay_minute(self) -> pd.Timestamp:
        progress = self.progress(self.baseline_run)
        return pd.Timestamp(progress.loc[progress["phase"] == "replay", "minute"].min())

    def quiet_others_lag(self, engine: str, speed: float | None) -> float:
        """The others' max lag of an uninterrupted run of ``engine`` at ``speed`` (measured once,
        when the harness measures quiet lags; NaN otherwise)."""
        key = (engine, speed or self.params.run.speed)
        if key not in self._quiet and self.quiet_lags:
            run_id = f"quiet-{engine}-{key[1]:g}"
            done = self.run(["--mode", engine, "--run-id", run_id, "--speed", f"{key[1]:g}"])
            self._quiet[key] = _others_lag(self.progress(run_id)) if done.returncode == 0 else \
                float("nan")  # fmt: skip
        return self._quiet.get(key, float("nan"))

    def outcome(self, drill: str, engine: str, run_id: str, finished: list[Finished],
                started: float, anomalies: pd.DataFrame | None = None,
                progress: pd.DataFrame | None = None, speed: float | None = None
                ) -> Outcome:  # fmt: skip
        """Compare a drill's run with the baseline."""
        progress = self.progress(run_id) if progress is None else progress
        anomalies = self.anomalies(run_id) if anomalies is None else anomalies
        base_progress = self.progress(self.baseline_run)
        lag = _lag_by_customer(progress)
        wall_s = time.monotonic() - started
        others = [c for c in lag.index if c != VICTIM]
        output = "".join(f.output for f in finished)
        return Outcome(
            drill=drill,
            engine=engine,
            run_id=run_id,
            exit_codes=[f.returncode for f in finished],
            minutes_exact=_same_minutes(progress, base_progress),
            anomalies_same=same_anomalies(anomalies, self.baseline_anomalies),
            anomalies=len(anomalies),
            victim_lag_max_s=float(lag.get(VICTIM, float("nan"))),
            others_lag_max_s=float(lag[others].max()) if others else float("nan"),
            baseline_others_lag_max_s=self.quiet_others_lag(engine, speed),
            warnings=_warnings_by_customer(output),
            wall_s=wall_s,
        )


@dataclass
class Finished:
    returncode: int
    output: str


def finish(process: subprocess.Popen[bytes], log: Path, timeout: float = RUN_TIMEOUT) -> Finished:
    """Wait for a child run; kill its whole process group if it hangs."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return Finished(process.returncode, log.read_text(errors="replace"))


def same_anomalies(found: pd.DataFrame, expected: pd.DataFrame) -> bool:
    """The same anomaly keys with the same details (values to 1e-9 relative)."""
    if len(found) != len(expected):
        return False
    left = found.set_index(KEY).sort_index()
    right = expected.set_index(KEY).sort_index()
    if list(left.index) != list(right.index):
        return False
    for column in COMPARED:
        a, b = left[column], right[column]
        if a.dtype.kind == "f":
            if not ((a - b).abs() <= 1e-9 * b.abs().clip(lower=1.0)).all():
                return False
        elif list(a.astype(str)) != list(b.astype(str)):
            return False
    return True


def _same_minutes(progress: pd.DataFrame, baseline: pd.DataFrame) -> bool:
    """Every (customer, minute, phase) of the baseline once, and nothing else."""
    columns = ["customer", "minute", "phase"]
    mine = progress[columns].sort_values(columns).reset_index(drop=True)
    theirs = baseline[columns].sort_values(columns).reset_index(drop=True)
    return not mine.duplicated().any() and mine.equals(theirs)


def _others_lag(progress: pd.DataFrame) -> float:
    return float(_lag_by_customer(progress).drop(VICTIM, errors="ignore").max())


def _lag_by_customer(progress: pd.DataFrame) -> pd.Series:
    replay = progress[progress["phase"] == "replay"]
    lag = (replay["persisted_at"] - replay["processable_at"]).dt.total_seconds()
    return lag.groupby(replay["customer"]).max()


_WARNING = re.compile(r"WARNING[ :].*?customer (\w+)")


def _warnings_by_customer(output: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for match in _WARNING.finditer(output):
        counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


# --- the drills --------------------------------------------------------------------------


def worker_fault(harness: Harness, engine: str, action: str, drill: str,
                 offset_minutes: int = 5) -> Outcome:  # fmt: skip
    """A run of ``engine`` whose victim's worker meets ``action`` (kill or fail) once, in the
    middle of the tick covering the ``offset_minutes``-th replayed minute."""
    started, run_id = time.monotonic(), f"{engine}-{action}"
    minute = harness.first_replay_minute() + pd.Timedelta(minutes=offset_minutes)
    marker = harness.folder / f"fault-{run_id}-{time.monotonic_ns()}"
    fault = Fault(action, VICTIM, minute.to_pydatetime(), str(marker))
    done = harness.run(["--mode", engine, "--run-id", run_id], env={FAULT_ENV: fault.to_env()})
    outcome = harness.outcome(drill, engine, run_id, [done], started)
    outcome.notes.append(f"fault fired: {marker.exists()}")
    return outcome


def ray_actor_killed(harness: Harness) -> Outcome:
    """SIGKILL of one customer's actor process in the middle of a replayed tick."""
    return worker_fault(harness, "ray", "kill", "Ray actor killed mid-tick")


def spark_task_failed(harness: Harness) -> Outcome:
    """One customer's Spark task raises in the middle of a replayed tick; Spark retries it."""
    return worker_fault(harness, "spark", "fail", "Spark task fails mid-tick")


def spark_driver_killed(harness: Harness) -> Outcome:
    """SIGKILL of the Spark driver during the replay, then the same command again."""
    started, run_id = time.monotonic(), "spark-driver-killed"
    args = ["--mode", "spark", "--run-id", run_id, "--speed", "60"]
    process, log = harness.start(args)
    harness.wait_for_replay(run_id, 6, process)
    tree = _descendants(process.pid)
    process.send_signal(signal.SIGKILL)
    first = finish(process, log)
    survivors = _wait_gone(tree, timeout=30.0)
    second = harness.run(args)
    outcome = harness.outcome("Spark driver killed, rerun", "spark", run_id, [first, second],
                              started, speed=60)  # fmt: skip
    outcome.notes.append(f"processes left by the killed driver: {len(survivors)}")
    return outcome


def endpoint_outage(harness: Harness, engines: list[str], outage_seconds: float
                    ) -> list[Outcome]:  # fmt: skip
    """The ClickHouse endpoint stops for ``outage_seconds`` and restarts, while a run of each
    engine (started together, on the same data) is in its replay."""
    started = time.monotonic()
    # Slow enough that each replay outlasts the outage by some 20 s.
    speed = 20 * 60 / (outage_seconds + 20)
    runs = {}
    for engine in engines:
        run_id = f"outage-{engine}"
        args = ["--mode", engine, "--run-id", run_id, "--speed", f"{speed:g}"]
        runs[engine] = (run_id, *harness.start(args))
    for run_id, process, _ in runs.values():
        harness.wait_for_replay(run_id, 3, process)

    port, data_dir = harness.endpoint.port, harness.endpoint.data_dir
    harness.endpoint.stop()
    stopped = time.monotonic()
    time.sleep(outage_seconds)
    harness.endpoint.start(data_dir or harness.folder / "clickhouse", port=port)
    down = time.monotonic() - stopped

    outcomes = []
    for engine, (run_id, process, log) in runs.items():
        done = finish(process, log)
        outcome = harness.outcome(f"endpoint down {down:.0f} s", engine, run_id, [done], started,
                                  speed=float(f"{speed:g}"))  # fmt: skip
        outcome.notes.append(f"customers warned: {len(outcome.warnings)}")
        outcomes.append(outcome)
    return outcomes


def interrupted(harness: Harness) -> Outcome:
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) during the replay, then the
    same command again. This run owns its own embedded endpoint (a chdb: URL), so the check
    that nothing is left running covers the endpoint as well as Ray."""
    started, run_id = time.monotonic(), "interrupted"
    url = f"chdb:{harness.folder / 'own-clickhouse'}"
    args = ["--mode", "ray", "--run-id", run_id, "--speed", "60"]
    process, log = harness.start(args, url=url)
    own = load_params(PARAMS, {"clickhouse.url": url})
    seen: set[int] = set()
    _wait_for_file_replay(own, run_id, process, seen)
    seen |= _descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)
    first = finish(process, log, timeout=60.0)
    survivors = _wait_gone(seen, timeout=15.0)
    second = harness.run(args, url=url)

    progress, anomalies = _read_own(own, run_id)
    outcome = harness.outcome("Ctrl-C, rerun", "ray", run_id, [first, second], started,
                              anomalies=anomalies, progress=progress, speed=60)  # fmt: skip
    outcome.notes.append(f"processes left after Ctrl-C: {len(survivors)} of {len(seen)}")
    return outcome


def _wait_for_file_replay(params: Any, run_id: str, process: subprocess.Popen[bytes],
                          seen: set[int], timeout: float = 180.0) -> None:  # fmt: skip
    """Wait until a run on its own endpoint has replayed a few minutes (its endpoint's URL is
    in the state file beside its data folder), noting every process it starts meanwhile."""
    from anomaly.endpoint import running_endpoint

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"run {run_id} ended (code {process.returncode}) too early")
        seen |= _descendants(process.pid)
        url = running_endpoint(params.clickhouse.data_dir)
        if url:
            with contextlib.suppress(Exception):
                client = connect(url, attempts=1)
                try:
                    progress = read_progress(client, params.clickhouse.database, run_id)
                finally:
                    client.close()
                if (progress.get("phase", pd.Series(dtype=str)) == "replay").sum() >= 6:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"run {run_id} did not reach the replay")


def _read_own(params: Any, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    endpoint = EmbeddedEndpoint()
    try:
        client = connect(endpoint.start(params.clickhouse.data_dir), attempts=1)
        progress = read_progress(client, params.clickhouse.database, run_id)
        anomalies = read_anomalies(client, params.clickhouse.database, run_id)
        client.close()
    finally:
        endpoint.stop()
    return progress, anomalies


def _descendants(pid: int) -> set[int]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    return set()


def _wait_gone(pids: set[int], timeout: float) -> list[str]:
    """The processes of ``pids`` still running after ``timeout`` s, as 'pid name' strings."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if psutil.pid_exists(p) and _running(p)]
        if not alive or time.monotonic() > deadline:
            return [f"{p} {_name(p)}" for p in alive]
        time.sleep(0.25)


def _running(pid: int) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


def _name(pid: int) -> str:
    with contextlib.suppress(psutil.NoSuchProcess):
        return " ".join(psutil.Process(pid).cmdline()[:3])[:80]
    return "?"


DRILLS: dict[str, Callable[[Harness, float], list[Outcome]]] = {
    "ray-actor-killed": lambda h, _: [ray_actor_killed(h)],
    "spark-task-failed": lambda h, _: [spark_task_failed(h)],
    "spark-driver-killed": lambda h, _: [spark_driver_killed(h)],
    "outage": lambda h, seconds: endpoint_outage(h, ["ray", "spark"], seconds),
    "interrupted": lambda h, _: [interrupted(h)],
}


@contextlib.contextmanager
def harness(folder: Path | None = None, quiet_lags: bool = False) -> Iterator[Harness]:
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="drill-")))
        made = Harness(folder, quiet_lags=quiet_lags)
        stack.callback(made.close)
        yield made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(DRILLS), default=list(DRILLS))
    parser.add_argument("--outage-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)

    rows = []
    with harness(quiet_lags=True) as made:
        for name in args.only:
            print(f"drill {name} ...", file=sys.stderr, flush=True)
            for outcome in DRILLS[name](made, args.outage_seconds):
                rows.append(outcome.row())
                print(f"  {outcome.row()}", file=sys.stderr, flush=True)
    print(to_markdown(pd.DataFrame(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
