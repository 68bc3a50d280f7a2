"""The benchmarks run end to end at their smallest sizes and report every figure they promise."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from anomaly.config import ROOT
from benchmarks import bench_engines, bench_load, bench_quality

SHARED_NAB = ROOT.parent / "shared" / "data" / "nab"

pytestmark = pytest.mark.engine


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
