"""The benchmarks run end to end at their smallest sizes and report every figure they promise."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from anomaly.config import REPORTS_ENV, ROOT
from anomaly.experiment import CpuSampler
from benchmarks import bench_capacity, bench_engines, bench_load, bench_quality

SHARED_NAB = ROOT.parent / "shared" / "data" / "nab"


def is_positive_number(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def printed_table(output: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the Markdown table in ``output`` whose first column is ``first_header``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    headers = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append(dict(zip(headers, cells, strict=True)))
    return rows


@pytest.mark.engine
def test_bench_engines_reports_positive_figures_for_both_engines(tmp_path, capsys):
    path = tmp_path / "engines.json"
    arguments = ["--customers", "1", "--minutes", "3", "--speed", "120", "--rounds", "3"]
    bench_engines.main([*arguments, "--json", str(path)])
    output = capsys.readouterr().out

    table = printed_table(output, "N")
    assert [row["N"] for row in table] == ["1"]
    for _, header in bench_engines.MAIN_COLUMNS:
        assert is_positive_number(float(table[0][header])), header

    figures = json.loads(path.read_text())
    assert figures["machine"]["cores"] >= 1
    assert is_positive_number(figures["direct_tick_s"])
    assert is_positive_number(figures["spark_jvm_s"])
    (row,) = figures["rows"]
    for key, _ in bench_engines.MAIN_COLUMNS + bench_engines.DETAIL_COLUMNS:
        assert is_positive_number(row[key]), key
    assert row["ray_minutes"] == row["spark_minutes"] == 3
    assert row["ray_unfinished"] == 0


@pytest.mark.engine
def test_bench_load_reports_rates_and_keeps_the_second_load(tmp_path, capsys):
    path = tmp_path / "load.json"
    params = ROOT / "params" / "tiny.yaml"
    bench_load.main(["--params", str(params), "--minutes", "5", "--skew", "2", "--json", str(path)])
    output = capsys.readouterr().out

    table = printed_table(output, "case")
    assert [row["case"] for row in table] == ["default", "skew 2"]
    assert all(row["second load kept"] == "yes" for row in table)

    figures = json.loads(path.read_text())
    default, skewed = figures["rows"]
    for row in (default, skewed):
        for key in ("rows", "generate_rows_per_s", "insert_rows_per_s", "load_rows_per_s",
                    "second_load_s"):  # fmt: skip
            assert is_positive_number(row[key]), key
        assert row["loaded_rows"] == row["rows"]
        assert row["second_load_kept"] is True
    assert skewed["rows"] > default["rows"]


@pytest.mark.skipif(
    not SHARED_NAB.is_dir(),
    reason=f"the NAB extract is not here ({SHARED_NAB}); users supply their own NAB path",
)
def test_bench_quality_scores_every_kind_on_nab_and_the_demo(tmp_path, capsys):
    path = tmp_path / "quality.json"
    arguments = ["--nab-path", str(SHARED_NAB), "--demo-minutes", "50", "--json", str(path)]
    bench_quality.main(arguments)
    output = capsys.readouterr().out

    table = printed_table(output, "detector")
    assert [row["detector"] for row in table] == ["seed", "seasonal"]
    figures = json.loads(path.read_text())
    assert figures["nab"]["files"] == 23 and figures["nab"]["windows"] > 20
    for kind in ("seed", "seasonal"):
        nab = figures["nab"]["detectors"][kind]
        assert math.isfinite(nab["score"]) and nab["score"] <= 100
        assert 0 <= nab["recall"] <= 1 and 0 <= nab["precision"] <= 1
        assert len(nab["files"]) == 23
        demo = figures["demo"]["detectors"][kind]
        assert demo["labels"] >= 1 and 0 <= demo["recall"] <= 1
    # The seasonal detector is the stronger one on NAB (the seed is the baseline row).
    detectors = figures["nab"]["detectors"]
    assert detectors["seasonal"]["score"] > detectors["seed"]["score"]


def test_bench_quality_without_a_nab_folder_says_so_and_goes_on(tmp_path, capsys):
    absent = tmp_path / "no-nab-here"
    figures = bench_quality.main(["--nab-path", str(absent), "--no-demo", "--detector", "seed"])
    output = capsys.readouterr().out

    assert f"NAB folder {str(absent)!r} not found: NAB figures skipped" in output
    assert figures["nab"] is None and figures["demo"] is None
    assert [row["detector"] for row in printed_table(output, "detector")] == ["seed"]


# --- python -m benchmarks ------------------------------------------------------------------------


def run_command(*arguments: str, reports: Any = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if reports is not None:
        env[REPORTS_ENV] = str(reports)
    return subprocess.run([sys.executable, "-m", "benchmarks", *arguments], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def is_finite_ratio(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.engine
def test_benchmark_command_at_smoke_size_writes_every_section_with_sane_figures(tmp_path):
    result = run_command("--size", "smoke", reports=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    folder = tmp_path / "benchmarks"
    figures = json.loads((folder / "latest.json").read_text())
    markdown = (folder / "latest.md").read_text()
    assert len(list(folder.glob("bench-*.json"))) == len(list(folder.glob("bench-*.md"))) == 1
    for heading in ("## Headline", "## Query", "## Detector", "## Engines", "## Scaling"):
        assert heading in markdown

    machine, versions = figures["machine"], figures["versions"]
    assert machine["cores"] >= 1 and machine["memory_gib"] > 0
    for package in ("python", "ray", "pyspark", "chdb", "clickhouse"):
        assert versions[package] not in ("", "not installed"), package

    for customer in figures["query"]["customers"]:
        assert customer["rows_per_minute"] > 0
        for key in ("pipeline_s", "bare_s", "pipeline_over_bare"):
            assert is_finite_ratio(customer[key]), key
        assert [c["k"] for c in customer["catch_up"]] == [2, 4]
        assert all(is_finite_ratio(c["one_over_single"]) for c in customer["catch_up"])
    assert [c["role"] for c in figures["query"]["customers"]] == ["normal", "heavy"]

    detector = figures["detector"]
    for key in ("bare_updates_per_s", "process_updates_per_s", "process_ratio",
                "shuffled_ratio", "held_kib_per_1000_series"):  # fmt: skip
        assert is_finite_ratio(detector[key]), key
    assert detector["same_state"] is True

    engines = figures["engines"]
    (idle,) = engines["overhead"]["rows"]
    for key in ("ray_lag_p50_s", "spark_tick_p50_s", "spark_tick_over_ray_minute",
                "ray_actor_uss_mib"):  # fmt: skip
        assert is_finite_ratio(idle[key]), key
    assert [found["engine"] for found in engines["capacity"]] == ["ray", "spark"]
    for found in engines["capacity"]:
        assert found["probes"] and found["limit"]
        assert found["most_customers"] in [0] + [p["customers"] for p in found["probes"]]
        assert all(p["minutes_expected"] > 0 for p in found["probes"])

    rows = figures["scaling"]["rows"]
    assert {(row["engine"], row["skew"]) for row in rows} == {
        (engine, skew) for engine in ("ray", "spark") for skew in (1.0, 4.0)
    }
    for row in rows:
        for key in ("rows_per_minute", "cost_s", "cost_vs_skew1", "rows_per_s", "cost_over_others"):
            assert is_finite_ratio(row[key]), key
    heavy = {row["skew"]: row["rows_per_minute"] for row in rows if row["engine"] == "ray"}
    assert heavy[4.0] > 2 * heavy[1.0]

    assert all(isinstance(row["value"], int | float) for row in figures["headline"])
    assert all(math.isfinite(row["value"]) for row in figures["headline"])


@pytest.mark.parametrize(
    ("arguments", "named"),
    [(["--size", "huge"], "'huge'"), (["--cpus", "0"], "0"), (["--only", "nothing"], "'nothing'")],
)
def test_benchmark_command_names_a_bad_argument_in_one_line(tmp_path, arguments, named):
    result = run_command(*arguments, reports=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and named in line
    assert not (tmp_path / "benchmarks").exists()


# --- what "keeps up" means, and how the customer search walks ------------------------------------

LIMITS = bench_capacity.Limits(p95_limit_s=1.0, growth_limit_s=0.25, budget_s=1e9,
                               memory_fraction=1.0)  # fmt: skip


def lags(per_minute: list[float], customers: int = 2) -> pd.DataFrame:
    start = datetime(2026, 1, 5)
    return pd.DataFrame(
        [{"customer": f"c{c}", "minute": start + timedelta(minutes=m), "lag_s": lag}
         for m, lag in enumerate(per_minute) for c in range(customers)]
    )  # fmt: skip


def test_steady_small_lag_keeps_up():
    verdict = bench_capacity.lag_verdict(lags([0.2, 0.3, 0.2, 0.25, 0.2, 0.3]), 12, LIMITS)
    assert verdict["kept_up"] is True


def test_lag_that_grows_over_the_run_does_not_keep_up_even_under_the_p95_limit():
    verdict = bench_capacity.lag_verdict(lags([0.1, 0.1, 0.3, 0.5, 0.7, 0.9]), 12, LIMITS)
    assert verdict["lag_p95_s"] < 1.0
    assert verdict["kept_up"] is False


def test_missing_minutes_do_not_keep_up():
    verdict = bench_capacity.lag_verdict(lags([0.1, 0.1, 0.1]), 12, LIMITS)
    assert verdict["kept_up"] is False


def fake_probes(monkeypatch, most: int, **figures: float) -> list[int]:
    """Probes that keep up up to ``most`` customers, with ``figures`` beside the usual ones;
    returns the counts probed, in order."""
    probed: list[int] = []

    def probe(engine, count, setup, limits):
        probed.append(count)
        return {"engine": engine, "customers": count, "kept_up": count <= most, "lag_p50_s": 0.1,
                "lag_p95_s": 0.2, "lag_growth_s": 0.0, "cpu_percent": 99.0, "wall_s": 1.0,
                "memory_per_customer_mib": 1.0, "memory_available_mib": 1e4, **figures}  # fmt: skip

    monkeypatch.setattr(bench_capacity, "probe", probe)
    return probed


@pytest.mark.parametrize(
    ("most", "probed", "found"),
    [
        (20, [8, 16, 32], 16),
        (100, [8, 16, 32, 50, 64], 64),
        (3, [8, 4, 2], 2),
        (0, [8, 4, 2, 1], 0),
    ],
)
def test_customer_search_stops_at_the_first_lag_and_looks_below_a_first_count_that_lags(
    monkeypatch, most, probed, found
):
    seen = fake_probes(monkeypatch, most)
    setup = bench_capacity.ProbeSetup(client=None, endpoint_pid=None, cpus=2, reports=ROOT)
    result = bench_capacity.search("ray", [8, 16, 32, 50, 64], lambda n: n, setup, LIMITS,
                                   say=lambda line: None)  # fmt: skip
    assert seen == probed
    assert result["most_customers"] == found
    assert result["stopped_by"] == ("end of the list" if most >= 64 else "lag")


@pytest.mark.parametrize(
    ("figures", "limit"),
    [
        ({"tick_p50_s": 0.9, "task_work_per_tick_s": 0.2}, "per-tick scheduling"),
        ({"tick_p50_s": 0.9, "task_work_per_tick_s": 1.6}, "CPU"),
        ({"endpoint_cores": 0.9}, "CPU"),
        ({"cpu_percent": 50.0}, "lag at 16 customers"),
    ],
)
def test_customer_search_says_what_held_the_engine_back(monkeypatch, figures, limit):
    fake_probes(monkeypatch, 8, **figures)
    setup = bench_capacity.ProbeSetup(client=None, endpoint_pid=None, cpus=2, reports=ROOT)
    result = bench_capacity.search("spark", [8, 16], lambda n: n, setup, LIMITS,
                                   say=lambda line: None)  # fmt: skip
    assert result["limit"].startswith(limit)


def test_cpu_sampler_reads_the_samples_of_a_window_only():
    sampler = CpuSampler(pids=[os.getpid()])
    sampler.times = [1.0, 2.0, 3.0, 4.0]
    sampler.samples = [100.0, 40.0, 60.0, 0.0]
    sampler.process_samples = [10.0, 20.0, 30.0, 40.0]
    assert sampler.mean_between(2.0, 3.0) == 50.0
    assert sampler.mean_between(2.0, 4.0, processes=True) == 30.0
    assert math.isnan(sampler.mean_between(5.0, 6.0))
