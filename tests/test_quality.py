"""Offline quality runs: NAB files on the clock, alerts mapped back to rows, slices a label
explains."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly.config import DetectorSettings
from anomaly.nab import NAB_START
from anomaly.quality import explained_by_slices, nab_series, score_nab, slices_overlap

FIVE = timedelta(minutes=5)


def write_nab(root: Path, files: dict[str, tuple[datetime, list[float]]], windows: dict) -> Path:
    for key, (start, values) in files.items():
        path = root / "data" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["timestamp,value"]
        lines += [f"{start + i * FIVE:%Y-%m-%d %H:%M:%S},{v}" for i, v in enumerate(values)]
        path.write_text("\n".join(lines) + "\n")
    (root / "windows.json").write_text(json.dumps(windows))
    return root


def stamp(at: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S}.000000"


def test_nab_files_keep_their_time_of_day_and_start_on_one_day(tmp_path: Path) -> None:
    late = datetime(2014, 2, 14, 14, 27)
    early = datetime(2013, 10, 9, 16, 25)
    root = write_nab(
        tmp_path,
        {"real/a.csv": (late, [1.0] * 10), "real/b.csv": (early, [2.0] * 6)},
        {"real/a.csv": [[stamp(late + 3 * FIVE), stamp(late + 5 * FIVE)]], "real/b.csv": []},
    )

    a, b = nab_series(root)

    assert (a.customer, a.name, b.name) == ("real", "a", "b")
    day = np.datetime64(NAB_START, "D")
    assert a.minutes[0] == day + np.timedelta64(14 * 60 + 27, "m")
    assert b.minutes[0] == day + np.timedelta64(16 * 60 + 25, "m")
    assert np.all(np.diff(a.minutes) == np.timedelta64(5, "m"))
    assert a.windows == ((3, 5),) and b.windows == ()
    assert a.key != b.key
    points = a.points()
    assert list(points["dimension_values"].unique()) == ["a"] and len(points) == 10


def test_a_repeated_timestamp_is_fed_once_and_still_counts_as_a_row(tmp_path: Path) -> None:
    start = datetime(2014, 3, 1, 17, 34)
    root = write_nab(tmp_path, {"real/a.csv": (start, [1.0, 2.0, 3.0])}, {"real/a.csv": []})
    path = root / "data" / "real" / "a.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], lines[1].replace(",1.0", ",9.0"), *lines[2:]]))

    (series,) = nab_series(root)

    assert series.rows == 4
    assert list(series.points()["value"]) == [1.0, 2.0, 3.0]
    assert series.rows_of([pd.Timestamp(series.minutes[3]).to_pydatetime()]) == [3]


def test_score_nab_maps_alerts_back_to_rows_of_their_file(tmp_path: Path) -> None:
    start = datetime(2014, 4, 1)
    rng = np.random.default_rng(4)
    values = list(50.0 + rng.normal(0.0, 1.0, 400))
    values[300] = 90.0
    root = write_nab(
        tmp_path,
        {"art/spike.csv": (start, values), "art/flat.csv": (start, [5.0] * 400)},
        {"art/spike.csv": [[stamp(start + 280 * FIVE), stamp(start + 320 * FIVE)]]},
    )

    corpus = score_nab(nab_series(root), DetectorSettings(kind="seasonal"))

    by_file = {s.series: s for s in corpus.series}
    spike = by_file["art/spike"]
    assert (spike.windows, spike.hits, spike.detections, spike.delays) == (1, 1, 1, (20,))
    assert by_file["art/flat"].detections == 0
    assert corpus.score == pytest.approx(100 * (spike.raw + 1) / 2)


@pytest.mark.parametrize(
    ("alert", "label", "lineage_only", "expected"),
    [
        (("device", "mobile"), ("device", "mobile"), False, True),
        (("all", ""), ("device", "mobile"), False, True),  # a parent
        (("device+browser", "mobile|edge"), ("device", "mobile"), False, True),  # a child
        (("browser", "edge"), ("device", "mobile"), False, True),  # crossing: mobile edge users
        (("browser", "edge"), ("device", "mobile"), True, False),
        (("device+browser", "mobile|edge"), ("device", "mobile"), True, True),
        (("device", "desktop"), ("device", "mobile"), False, False),
        (("device+browser", "desktop|edge"), ("device", "mobile"), False, False),
    ],
)
def test_slices_overlap_when_every_shared_dimension_agrees(alert, label, lineage_only, expected):
    assert slices_overlap(*alert, *label, lineage_only=lineage_only) is expected


def test_a_label_explains_overlapping_alerts_during_its_window_only() -> None:
    minute = datetime(2026, 1, 5, 4, 20)
    labels = pd.DataFrame(
        [{"customer": "shop", "grouping": "device", "dimension_values": "mobile",
          "start_minute": minute, "end_minute": minute + timedelta(minutes=8)}]
    )  # fmt: skip
    rows = [
        ("shop", "browser", "edge", minute + timedelta(minutes=2)),  # during, crossing
        ("shop", "device", "desktop", minute + timedelta(minutes=2)),  # during, disjoint
        ("shop", "all", "", minute + timedelta(minutes=30)),  # long after
        ("bank", "all", "", minute),  # another customer
    ]
    anomalies = pd.DataFrame(
        [{"customer": c, "grouping": g, "dimension_values": v, "start_minute": at,
          "detected_minute": at, "end_minute": None} for c, g, v, at in rows]
    )  # fmt: skip

    assert list(explained_by_slices(anomalies, labels)) == [True, False, False, False]
    assert not explained_by_slices(anomalies, labels, lineage_only=True).any()
