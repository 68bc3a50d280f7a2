"""The seasonal detector on synthetic series: daily patterns, level shifts, bursts, round trips."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from anomaly.config import DetectorSettings
from anomaly.detector import SeedDetector, make_detector
from anomaly.errors import ConfigError
from anomaly.records import POINT_COLUMNS, Anomaly
from anomaly.seasonal import SeasonalDetector, knots

START = datetime(2026, 1, 5)  # a midnight: minute i of the stream is minute i of day 0
DAY = 1440
SEASONAL = DetectorSettings(kind="seasonal")
SEED = DetectorSettings()
# A short season so that round trips cover several of them quickly.
HOURLY = replace(SEASONAL, season_minutes=60, season_slots=12, warmup_minutes=20)


def frame(minutes: np.ndarray, keys: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    """A POINT_COLUMNS frame of (minute index, series key, value) rows, in the given order."""
    keys = np.asarray(keys, dtype=np.uint64)
    out = pd.DataFrame(
        {
            "minute": np.datetime64(START, "ns") + np.asarray(minutes) * np.timedelta64(1, "m"),
            "grouping": "device",
            "dimension_values": [f"d{k}" for k in keys.tolist()],
            "metric": "events",
            "value": np.asarray(values, dtype=np.float64),
            "group_size": np.full(len(keys), 100, np.uint64),
            "series_key": keys,
        }
    )
    return out[list(POINT_COLUMNS)]


def one_series(values: np.ndarray, key: int = 7) -> pd.DataFrame:
    return frame(np.arange(len(values)), np.full(len(values), key), values)


def opened(records: list[Anomaly]) -> list[Anomaly]:
    return [r for r in records if r.end_minute is None]


def minute_of(at: datetime) -> int:
    return int((at - START) / timedelta(minutes=1))


def daily_pattern(days: int, seed: int = 1) -> np.ndarray:
    """100 at night, a one-hour ramp to 300 at 06:00, 300 by day, back down from 18:00; noise
    of sd 3. The ramps move 100 standard deviations an hour."""
    minute = np.arange(days * DAY) % DAY
    up = np.clip((minute - 360) / 60, 0, 1)
    down = np.clip((minute - 1080) / 60, 0, 1)
    noise = np.random.default_rng(seed).normal(0.0, 3.0, days * DAY)
    return 100.0 + 200.0 * (up - down) + noise


# --- detection ---------------------------------------------------------------------------------


def test_a_spike_on_a_daily_pattern_is_caught_where_the_seed_alarms_at_the_ramps() -> None:
    values = daily_pattern(4)
    spike = 3 * DAY + 12 * 60  # day 3, noon, 14 standard deviations for three minutes
    values[spike : spike + 3] += 42.0
    points = one_series(values)

    seasonal = opened(make_detector("shop", SEASONAL).process(points))
    seed = opened(make_detector("shop", SEED).process(points))

    # From day 2 on the season is learned: the only alert is the spike, at its first minute.
    late = [a for a in seasonal if minute_of(a.start_minute) >= 2 * DAY]
    assert [minute_of(a.start_minute) for a in late] == [spike]
    assert minute_of(late[0].detected_minute) - spike <= 1
    assert late[0].value > late[0].band_high and late[0].expected == pytest.approx(300, abs=6)

    # The seed's mean lags the morning ramp: every day it alarms there, and its anomaly stays
    # open all day (it learns nothing meanwhile), so the spike is hidden in it.
    late = [a for a in seed if minute_of(a.start_minute) >= 2 * DAY]
    assert [(minute_of(a.start_minute) // DAY, a.start_minute.hour) for a in late] == [
        (2, 6),
        (3, 6),
    ]


def test_a_level_shift_opens_one_anomaly_that_ends_once_the_level_is_learned() -> None:
    rng = np.random.default_rng(2)
    values = 100.0 + rng.normal(0.0, 1.0, 1200)
    values[400:] += 30.0  # about 24 standard deviations, for good
    detector = make_detector("shop", SEASONAL)

    records = detector.process(one_series(values))

    starts = [minute_of(r.start_minute) for r in opened(records)]
    assert starts == [400]
    (ended,) = [r for r in records if r.end_minute is not None]
    assert minute_of(ended.start_minute) == 400
    assert 400 < minute_of(ended.end_minute) < 700
    assert detector.open_anomalies() == []
    assert detector.expected(np.array([7], np.uint64))[0] == pytest.approx(130.0, abs=1.0)

    # The seed never learns the new level: its anomaly stays open.
    seed = make_detector("shop", SEED)
    seed.process(one_series(values))
    assert len(seed.open_anomalies()) == 1


def test_a_large_lasting_shift_re_bases_after_rebase_minutes_outside() -> None:
    rng = np.random.default_rng(3)
    values = 100.0 + rng.normal(0.0, 1.0, 1000)
    values[400:] += 500.0  # far more than clipped learning catches up with in hours

    rebased = make_detector("shop", SEASONAL)
    records = rebased.process(one_series(values))
    ((start, end),) = [(r.start_minute, r.end_minute) for r in records if r.end_minute]
    assert minute_of(start) == 400
    assert minute_of(end) == 400 + SEASONAL.rebase_minutes - 1  # its last outside point
    assert rebased.open_anomalies() == []
    assert rebased.expected(np.array([7], np.uint64))[0] == pytest.approx(600.0, abs=1.0)

    never = make_detector("shop", replace(SEASONAL, rebase_minutes=0))
    never.process(one_series(values))
    assert len(never.open_anomalies()) == 1


def test_bursts_like_recent_ones_do_not_alert_and_a_larger_one_does() -> None:
    values = np.zeros(3000)
    values[np.arange(300, 2800, 97)] = 50.0  # a normal burst every 97 minutes
    values[2900] = 120.0
    detector = make_detector("shop", SEASONAL)

    alerts = opened(detector.process(one_series(values)))

    # The first burst after warm-up is new; every later one is no larger than it.
    assert [minute_of(a.start_minute) for a in alerts] == [300, 2900]


def test_missing_values_change_nothing() -> None:
    values = daily_pattern(1)[:600]
    holes = values.copy()
    holes[[100, 250, 251, 400]] = [np.nan, np.inf, -np.inf, np.nan]
    keys = np.full(600, 7)

    whole = make_detector("shop", HOURLY)
    whole.process(frame(np.arange(600)[np.isfinite(holes)], keys[np.isfinite(holes)],
                        values[np.isfinite(holes)]))  # fmt: skip
    with_holes = make_detector("shop", HOURLY)
    with_holes.process(frame(np.arange(600), keys, holes))

    assert with_holes.to_bytes() == whole.to_bytes()


# --- state -------------------------------------------------------------------------------------


def random_stream(minutes: int, seed: int = 5) -> list[pd.DataFrame]:
    """Frames of 40 series: hourly patterns, noise, spikes, a level shift, missing points, ten
    series that start late, and minutes with only a few series present."""
    rng = np.random.default_rng(seed)
    keys = rng.permutation(np.arange(1, 41, dtype=np.uint64) * 7919)
    frames = []
    for m in range(minutes):
        present = keys[:30] if m < 150 else keys
        if m % 17 == 5:
            present = present[:3]  # a sparse minute: the gathered update path
        phase = (m % 60) / 60
        base = 100 + 50 * np.sin(2 * np.pi * phase + np.arange(len(present)))
        values = base + rng.normal(0, 2, len(present))
        values[(m % 50 == 0) & (np.arange(len(present)) % 4 == 0)] += 80
        if m >= 200:
            values[:5] += 40
        values[rng.random(len(present)) < 0.03] = np.nan
        order = rng.permutation(len(present))
        frames.append(frame(np.full(len(present), m), present[order], values[order]))
    return frames


def test_a_restored_detector_continues_bit_identically() -> None:
    frames = random_stream(320)
    frames = frames[:250] + [pd.concat(frames[i : i + 5]) for i in range(250, 320, 5)]
    whole = make_detector("shop", HOURLY)
    expected = [r for f in frames for r in whole.process(f)]

    interrupted = make_detector("shop", HOURLY)
    records: list[Anomaly] = []
    for i, f in enumerate(frames):
        if i in (0, 1, 30, 149, 150, 151, 205, 251, 260):
            interrupted = SeasonalDetector.from_bytes("shop", HOURLY, interrupted.to_bytes())
        records.extend(interrupted.process(f))

    assert len(opened(expected)) >= 5
    assert records == expected
    assert interrupted.to_bytes() == whole.to_bytes()
    assert interrupted.series_count == 40
    assert interrupted.open_anomalies() == whole.open_anomalies()
    keys = interrupted.series_keys
    np.testing.assert_array_equal(interrupted.expected(keys), whole.expected(keys))


def test_a_series_state_does_not_depend_on_the_other_series_or_row_order() -> None:
    frames = random_stream(260, seed=9)
    crowd = make_detector("shop", HOURLY)
    records = [r for f in frames for r in crowd.process(f.iloc[::-1])]

    # A series that is always there, one with a level shift, one that starts late.
    for key in (crowd.series_keys[0], frames[-1]["series_key"].iloc[0], np.uint64(40 * 7919)):
        alone = make_detector("shop", HOURLY)
        mine = [r for f in frames for r in alone.process(f[f["series_key"] == key])]

        assert mine == [r for r in records if r.dimension_values == f"d{key}"]
        at = int(np.flatnonzero(crowd.series_keys == key)[0])
        for name, array in crowd.state.arrays().items():
            assert array[at].tobytes() == getattr(alone.state, name)[0].tobytes(), name


def test_state_of_another_kind_or_settings_is_refused() -> None:
    seed = SeedDetector("shop", SEED)
    seed.process(one_series(np.full(5, 1.0)))
    with pytest.raises(ConfigError, match="kind 'seed'"):
        SeasonalDetector.from_bytes("shop", SEASONAL, seed.to_bytes())

    seasonal = SeasonalDetector("shop", SEASONAL)
    seasonal.process(one_series(np.full(5, 1.0)))
    with pytest.raises(ConfigError, match="settings"):
        SeasonalDetector.from_bytes("shop", replace(SEASONAL, season_slots=24), seasonal.to_bytes())


def test_expected_gives_nan_for_unknown_keys_on_both_kinds() -> None:
    values = 50.0 + np.arange(30) % 2
    for settings in (SEED, SEASONAL):
        detector = make_detector("shop", settings)
        assert np.isnan(detector.expected(np.array([7], np.uint64))[0])
        detector.process(one_series(values, key=7))
        got = detector.expected(np.array([99, 7], np.uint64))
        assert np.isnan(got[0])
        assert got[1] == pytest.approx(50.5, abs=0.5)


def test_knots_place_a_minute_between_two_knots_of_its_day() -> None:
    at = np.datetime64("2026-01-05T06:45", "ns").astype(np.int64)
    assert knots(int(at), replace(SEASONAL, season_slots=48)) == (13, 14, 0.5)  # 06:30, 07:00
    midnight = np.datetime64("2026-01-06T23:59", "ns").astype(np.int64)
    first, second, weight = knots(int(midnight), SEASONAL)  # 15-minute knots
    assert (first, second) == (95, 0) and weight == pytest.approx(14 / 15)
