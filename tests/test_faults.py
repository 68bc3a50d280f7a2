"""Faults against the real engines and the embedded ClickHouse, each compared with an
uninterrupted run on the same data (the drills of benchmarks/fault_drill.py, tiny sized).

Every drill runs main.py as a child process, as a user would, and must end with every replayed
minute of every customer persisted exactly once and the same anomalies as the baseline.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from anomaly.errors import ConfigError
from anomaly.faults import FAULT_ENV, Fault, parse_fault, trip
from benchmarks import fault_drill
from benchmarks.fault_drill import Outcome

pytestmark = pytest.mark.engine

CUSTOMERS = {"shopfront", "bankly", "quietco"}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    with fault_drill.harness(tmp_path_factory.mktemp("drills")) as made:
        yield made


def recovered_whole(outcome: Outcome) -> None:
    assert outcome.exit_codes[-1] == 0, outcome
    assert outcome.minutes_exact, outcome
    assert outcome.anomalies_same, outcome
    assert outcome.anomalies > 0


def test_baseline_finds_anomalies_to_compare(harness):
    assert len(harness.baseline_anomalies) > 0


def test_killed_ray_actor_restarts_restores_and_loses_nothing(harness):
    outcome = fault_drill.ray_actor_killed(harness)
    recovered_whole(outcome)
    assert "fault fired: True" in outcome.notes


def test_failed_spark_task_is_retried_and_loses_nothing(harness):
    outcome = fault_drill.spark_task_failed(harness)
    recovered_whole(outcome)
    assert "fault fired: True" in outcome.notes


def test_killed_spark_driver_leaves_nothing_running_and_a_rerun_resumes(harness):
    outcome = fault_drill.spark_driver_killed(harness)
    assert outcome.exit_codes[0] == -9
    recovered_whole(outcome)
    assert "processes left by the killed driver: 0" in outcome.notes


def test_endpoint_down_30_s_both_engines_retry_warn_once_per_customer_and_recover(harness):
    outcomes = fault_drill.endpoint_outage(harness, ["ray", "spark"], outage_seconds=30)
    for outcome in outcomes:
        recovered_whole(outcome)
        if outcome.engine == "ray":  # every actor was in its own loop when ClickHouse went
            assert outcome.warnings == dict.fromkeys(CUSTOMERS, 1), outcome
        else:  # a task waiting for a slot may not have called ClickHouse during the outage
            assert outcome.warnings and set(outcome.warnings.values()) == {1}, outcome
            assert set(outcome.warnings) <= CUSTOMERS
        # The outage shows as lag: the minutes that came due meanwhile waited for it.
        assert outcome.others_lag_max_s > 20


def test_ctrl_c_stops_every_process_it_started_and_a_rerun_resumes(harness):
    outcome = fault_drill.interrupted(harness)
    assert outcome.exit_codes[0] == 130
    recovered_whole(outcome)
    left = [note for note in outcome.notes if note.startswith("processes left")]
    assert left and left[0].startswith("processes left after Ctrl-C: 0 of ")
    assert not left[0].endswith(" of 0")  # the run did start processes


def test_no_log_or_report_of_any_drill_shows_the_password(harness):
    files = [f for f in harness.folder.rglob("*") if f.is_file() and f.suffix in
             (".log", ".md", ".csv", ".json")]  # fmt: skip
    assert any(f.name.startswith("main-") for f in files)
    assert any(f.name == "summary.json" for f in files)
    for file in files:
        assert fault_drill.SECRET not in file.read_text(errors="replace"), file


def test_a_password_in_the_url_stays_out_of_errors_and_tracebacks(harness):
    url = f"http://drill:{fault_drill.SECRET}@127.0.0.1:9/"
    for extra in ([], ["--verbose"]):
        done = harness.run(["--mode", "ray", "--run-id", "never", *extra], url=url)
        assert done.returncode != 0
        assert "cannot reach ClickHouse" in done.output
        assert fault_drill.SECRET not in done.output


def test_resuming_a_run_under_another_engine_is_refused(harness):
    done = harness.run(["--mode", "spark", "--run-id", harness.baseline_run])
    assert done.returncode == 2
    assert f"run id {harness.baseline_run!r} belongs to a ray run" in done.output


def test_a_malformed_fault_is_refused_in_one_line_before_anything_runs(harness):
    done = harness.run(["--mode", "ray", "--run-id", "bad-fault"], env={FAULT_ENV: "not json"})
    errors = [line for line in done.output.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and FAULT_ENV in errors[0]
    assert "Traceback" not in done.output and "demo dataset" not in done.output


# --- the fault switch itself (pure logic) ------------------------------------------------


def test_fault_fires_once_for_its_customer_and_minute(tmp_path, monkeypatch):
    minute = datetime(2026, 1, 5, 8, 35)
    fault = Fault("fail", "shopfront", minute, str(tmp_path / "fired"))
    monkeypatch.setenv(FAULT_ENV, fault.to_env())

    trip("bankly", minute, minute)  # another customer: nothing
    trip("shopfront", datetime(2026, 1, 5, 8, 36), datetime(2026, 1, 5, 8, 40))  # later tick
    with pytest.raises(Exception, match="injected fault"):
        trip("shopfront", datetime(2026, 1, 5, 8, 30), minute)
    trip("shopfront", minute, minute)  # fired already: disarmed


@pytest.mark.parametrize(
    "text",
    ["not json", json.dumps({"action": "kill"}),
     json.dumps({"action": "explode", "customer": "a", "minute": "2026-01-05 08:35:00",
                 "marker": "/tmp/x"})],
)  # fmt: skip
def test_malformed_fault_is_named(text):
    with pytest.raises(ConfigError, match=FAULT_ENV):
        parse_fault(text)
