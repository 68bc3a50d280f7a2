"""The seed detector on synthetic series: detection, warm-up, calm, state round trips, matching."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anomaly import detector as detector_module
from anomaly.config import DetectorSettings
from anomaly.detector import STD_EPSILON, SeedDetector, make_detector, update_arrays
from anomaly.errors import ConfigError, DatasetError
from anomaly.records import POINT_COLUMNS, Anomaly
from anomaly.seasonal import SeasonalDetector

START = datetime(2026, 1, 5)
SETTINGS = DetectorSettings(warmup_minutes=120, calm_minutes=5)


def minute_at(i: int) -> datetime:
    return START + timedelta(minutes=i)


def labels_of(key: int) -> tuple[str, str, str]:
    """Deterministic metric, grouping and dimension values for a series key."""
    return (f"m{key % 3}", "device+browser", f"d{key}|x")


def points(rows: list[tuple[int, int, float]]) -> pd.DataFrame:
    """A POINT_COLUMNS frame from (minute index, series key, value) rows, in the given order."""
    frame = pd.DataFrame(
        {
            "minute": np.array([minute_at(m) for m, _, _ in rows], dtype="datetime64[ns]"),
            "grouping": [labels_of(k)[1] for _, k, _ in rows],
            "dimension_values": [labels_of(k)[2] for _, k, _ in rows],
            "metric": [labels_of(k)[0] for _, k, _ in rows],
            "value": np.array([v for _, _, v in rows], dtype=np.float64),
            "group_size": np.full(len(rows), 100, dtype=np.uint64),
            "series_key": np.array([k for _, k, _ in rows], dtype=np.uint64),
        }
    )
    return frame[list(POINT_COLUMNS)]


def steady(minute: int, key: int) -> float:
    """A series around 100 that alternates by one unit: its sd settles near 1."""
    return 100.0 + (1.0 if (minute + key) % 2 else -1.0)


def run(detector: SeedDetector, frames: list[pd.DataFrame]) -> list[Anomaly]:
    records: list[Anomaly] = []
    for frame in frames:
        records.extend(detector.process(frame))
    return records


def stream(
    minutes: int, keys: list[int], spikes: dict[tuple[int, int], float] | None = None
) -> list[pd.DataFrame]:
    """One frame per minute of steady series, with ``spikes[(minute, key)]`` added."""
    spikes = spikes or {}
    return [
        points([(m, k, steady(m, k) + spikes.get((m, k), 0.0)) for k in keys])
        for m in range(minutes)
    ]


# --- detection ---------------------------------------------------------------------------------


def test_spike_after_warmup_opens_anomaly_at_excursion_start_for_that_series() -> None:
    keys = [11, 2**63 + 5, 42]
    # About 7.5 sd above the mean: 4.5 sd of excess a minute, past the 10 sd tolerance on the
    # excursion's third minute.
    spikes = {(m, 42): 7.5 for m in range(200, 206)}
    detector = SeedDetector("shop", SETTINGS)

    records = run(detector, stream(211, keys, spikes))

    opened = [r for r in records if r.end_minute is None]
    assert len(opened) == 1
    anomaly = opened[0]
    assert (anomaly.customer, anomaly.metric, anomaly.grouping, anomaly.dimension_values) == (
        "shop",
        *labels_of(42),
    )
    assert anomaly.start_minute == minute_at(200)
    assert anomaly.detected_minute == minute_at(202)
    assert anomaly.value == steady(202, 42) + 7.5
    assert anomaly.band_low < anomaly.expected < anomaly.band_high < anomaly.value
    assert 7.0 < anomaly.peak_score < 9.0
    assert anomaly.severity == "major"
    assert detector.open_anomalies() == []  # the spike ended, so did the anomaly
    assert [r.end_minute for r in records if r.end_minute is not None] == [minute_at(205)]


def test_slow_drift_with_noise_raises_nothing() -> None:
    rng = np.random.default_rng(3)
    keys = list(range(20))
    frames = []
    for m in range(800):
        level = 1000.0 * (1.0 + 0.05 * m / 800)  # 5 % growth over 800 minutes
        noise = rng.normal(0.0, 10.0, len(keys))  # 1 % of the level
        frames.append(points([(m, k, level + n) for k, n in zip(keys, noise, strict=True)]))
    detector = SeedDetector("shop", SETTINGS)

    assert run(detector, frames) == []
    assert detector.series_count == len(keys)


def test_warmup_holds_alerts_until_enough_points() -> None:
    spikes = {(m, 1): 50.0 for m in range(60, 70)}
    detector = SeedDetector("shop", SETTINGS)

    assert run(detector, stream(119, [1, 2], spikes)) == []
    assert detector.open_anomalies() == []

    # The same spike once the series has its 120 points is an anomaly.
    late = {(m, 1): 50.0 for m in range(130, 140)}
    assert len(run(SeedDetector("shop", SETTINGS), stream(140, [1, 2], late))) == 1


def test_series_first_seen_late_warms_up_on_its_own() -> None:
    early = stream(300, [1])
    # Series 2 starts at minute 200: its spike at 250 is inside its warm-up, at 330 it is not.
    late = [
        points([(m, 2, steady(m, 2) + (60.0 if m in (250, 330) else 0.0))]) for m in range(200, 340)
    ]
    frames = [
        pd.concat([early[m], late[m - 200]]) if m >= 200 else early[m] for m in range(300)
    ] + late[100:]
    detector = SeedDetector("shop", SETTINGS)

    records = run(detector, frames)

    assert [(r.dimension_values, r.start_minute) for r in records if r.end_minute is None] == [
        (labels_of(2)[2], minute_at(330))
    ]


def test_anomaly_ends_after_calm_minutes_in_band_and_not_before() -> None:
    detector = SeedDetector("shop", replace(SETTINGS, calm_minutes=4))
    run(detector, stream(150, [7]))
    opened = detector.process(points([(150, 7, 200.0)]))
    assert len(opened) == 1
    frozen_mean, frozen_var = detector.state.mean[0], detector.state.var[0]

    # Two calm points, one outside (restarts the count), then three calm: still open.
    for m, value in [(151, 100.0), (152, 101.0), (153, 180.0), (154, 99.0), (155, 100.0)]:
        assert detector.process(points([(m, 7, value)])) == []
    assert detector.process(points([(156, 7, 101.0)])) == []
    assert len(detector.open_anomalies()) == 1

    # The fourth consecutive calm point ends it; end_minute is the last outside minute.
    (ended,) = detector.process(points([(157, 7, 100.0)]))
    assert ended.end_minute == minute_at(153)
    assert ended.start_minute == minute_at(150)
    assert ended.peak_score == opened[0].peak_score  # 200 was further out than 180
    assert ended.detected_minute == minute_at(150) and ended.value == 200.0
    assert detector.open_anomalies() == []

    # Nothing was learned while the anomaly was open; the next in-band point is learned.
    assert detector.state.mean[0] == frozen_mean
    assert detector.state.var[0] == frozen_var
    detector.process(points([(158, 7, 100.5)]))
    assert detector.state.mean[0] != frozen_mean


def test_pending_excursion_is_not_learned_and_resets_inside() -> None:
    detector = SeedDetector("shop", SETTINGS)
    run(detector, stream(150, [7]))
    mean, var = detector.state.mean[0], detector.state.var[0]

    # 5 sd out: 2 sd of excess, below the tolerance; then back in, which forgets it.
    assert detector.process(points([(150, 7, mean + 5.0 * math.sqrt(var))])) == []
    assert detector.state.mean[0] == mean
    assert detector.state.excess[0] > 0
    detector.process(points([(151, 7, mean)]))
    assert detector.state.excess[0] == 0.0
    assert detector.state.run_start[0] == detector_module.NO_MINUTE


def test_constant_series_has_a_floored_band() -> None:
    detector = SeedDetector("shop", replace(SETTINGS, warmup_minutes=5))
    run(detector, [points([(m, 1, 0.0), (m, 2, 50.0)]) for m in range(10)])

    # Exactly constant: no division by zero, and a jump is an anomaly.
    assert np.all(np.isfinite(detector.state.mean))
    records = detector.process(points([(10, 1, 1.0), (10, 2, 50.1)]))
    assert [r.dimension_values for r in records] == [labels_of(1)[2]]
    assert records[0].band_high - records[0].band_low == pytest.approx(6 * STD_EPSILON)


# --- inputs ------------------------------------------------------------------------------------


def test_nan_and_inf_values_are_ignored() -> None:
    keys = [1, 2]
    spikes = {(m, 2): 30.0 for m in range(150, 154)}
    clean = stream(170, keys, spikes)
    # Bad values in warm-up, after it, inside an anomaly, during its calm run, and after it.
    bad = {5: np.nan, 50: np.inf, 151: -np.inf, 155: np.nan, 160: np.inf}
    dirty, without = [], []
    for m, frame in enumerate(clean):
        is_bad = (frame.series_key == 2).to_numpy() & (m in bad)
        dirty.append(frame.assign(value=np.where(is_bad, bad.get(m, 0.0), frame.value)))
        without.append(frame[~is_bad])

    with_bad = SeedDetector("shop", SETTINGS)
    without_bad = SeedDetector("shop", SETTINGS)
    records = run(with_bad, dirty)

    assert records == run(without_bad, without)
    assert [r.end_minute is None for r in records] == [True, False]
    assert with_bad.to_bytes() == without_bad.to_bytes()
    assert np.all(np.isfinite(with_bad.state.mean)) and np.all(np.isfinite(with_bad.state.var))


def test_many_series_match_their_state_whatever_the_row_order() -> None:
    rng = np.random.default_rng(5)
    keys = [int(k) for k in rng.integers(0, 2**64, 400, dtype=np.uint64)]
    spiked = keys[::37]
    spikes = {(m, k): 40.0 for k in spiked for m in range(140, 143)}
    ordered = stream(150, keys, spikes)
    shuffled = [frame.sample(frac=1.0, random_state=m) for m, frame in enumerate(ordered)]

    a, b = SeedDetector("shop", SETTINGS), SeedDetector("shop", SETTINGS)
    records = run(a, ordered)

    assert records == run(b, shuffled)
    assert a.to_bytes() == b.to_bytes()
    assert sorted(r.dimension_values for r in records if r.end_minute is None) == sorted(
        labels_of(k)[2] for k in spiked
    )
    assert all(r.start_minute == minute_at(140) for r in records)


def test_dense_and_sparse_updates_give_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = list(range(30))
    spikes = {(m, k): 25.0 for k in (3, 17) for m in range(130, 136)}
    # Some minutes carry only a few of the series, so both paths see real work.
    frames = [f if m % 3 else f.iloc[: 2 + m % 5] for m, f in enumerate(stream(160, keys, spikes))]

    results = []
    for share in (0.0, 2.0):  # always dense, never dense
        monkeypatch.setattr(detector_module, "DENSE_MIN_SHARE", share)
        detector = SeedDetector("shop", replace(SETTINGS, warmup_minutes=40))
        results.append((run(detector, frames), detector.to_bytes()))

    assert results[0] == results[1]
    assert len(results[0][0]) == 4


def test_several_minutes_in_one_frame_equal_minute_by_minute() -> None:
    frames = stream(200, [1, 2, 3], {(m, 3): 20.0 for m in range(150, 160)})
    one = SeedDetector("shop", SETTINGS)
    batched = SeedDetector("shop", SETTINGS)

    expected = run(one, frames)
    # Batches of 7 minutes, rows shuffled across minutes.
    batches = [
        pd.concat(frames[i : i + 7]).sample(frac=1.0, random_state=i) for i in range(0, 200, 7)
    ]

    assert run(batched, batches) == expected
    assert len(expected) == 2
    assert batched.last_minute == minute_at(199)


def test_old_minute_and_repeated_series_are_refused() -> None:
    detector = SeedDetector("shop", SETTINGS)
    detector.process(points([(10, 1, 1.0), (10, 2, 1.0)]))
    before = detector.to_bytes()

    with pytest.raises(DatasetError, match="increasing order"):
        detector.process(points([(11, 1, 1.0), (10, 1, 1.0)]))
    with pytest.raises(DatasetError, match="more than one row"):
        detector.process(points([(12, 1, 1.0), (12, 1, 2.0)]))
    with pytest.raises(DatasetError, match="lacks column"):
        detector.process(points([(12, 1, 1.0)]).drop(columns=["series_key"]))
    assert detector.to_bytes() == before
    assert detector.process(points([])) == []


# --- state -------------------------------------------------------------------------------------


def test_restored_state_continues_exactly_like_the_uninterrupted_run() -> None:
    rng = np.random.default_rng(11)
    keys = [int(k) for k in rng.integers(0, 2**64, 60, dtype=np.uint64)]
    spikes = {(m, k): 15.0 for k in keys[:6] for m in range(150 + 3 * keys.index(k), 160)}
    frames = stream(260, keys[:50], spikes)
    # Ten more series appear at minute 180; multi-minute frames in the second half.
    frames = frames[:180] + [
        pd.concat([f, points([(m, k, steady(m, k)) for k in keys[50:]])])
        for m, f in enumerate(frames[180:], start=180)
    ]
    frames = frames[:200] + [pd.concat(frames[i : i + 3]) for i in range(200, 260, 3)]

    whole = SeedDetector("shop", SETTINGS)
    expected = run(whole, frames)

    interrupted = SeedDetector("shop", SETTINGS)
    records: list[Anomaly] = []
    for i, frame in enumerate(frames):
        if i in (0, 1, 120, 151, 152, 155, 180, 181, 203, 210):
            interrupted = SeedDetector.from_bytes("shop", SETTINGS, interrupted.to_bytes())
        records.extend(interrupted.process(frame))

    assert records == expected
    assert len(expected) >= 8
    assert interrupted.to_bytes() == whole.to_bytes()
    assert interrupted.series_count == 60
    assert interrupted.open_anomalies() == whole.open_anomalies()


def test_empty_detector_round_trips() -> None:
    blob = SeedDetector("shop", SETTINGS).to_bytes()
    restored = SeedDetector.from_bytes("shop", SETTINGS, blob)

    assert restored.series_count == 0
    assert restored.last_minute is None
    assert restored.to_bytes() == blob


class OtherDetector(SeedDetector):
    kind = "other"


def test_corrupt_or_foreign_state_raises_a_clear_error() -> None:
    detector = SeedDetector("shop", SETTINGS)
    run(detector, stream(20, [1, 2, 3]))
    blob = detector.to_bytes()

    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x10
    with pytest.raises(DatasetError, match="checksum"):
        SeedDetector.from_bytes("shop", SETTINGS, bytes(flipped))
    with pytest.raises(DatasetError, match="checksum|truncated"):
        SeedDetector.from_bytes("shop", SETTINGS, blob[:-10])
    with pytest.raises(DatasetError, match="magic"):
        SeedDetector.from_bytes("shop", SETTINGS, b"PK\x03\x04 not a state")
    with pytest.raises(DatasetError, match="customer"):
        SeedDetector.from_bytes("bank", SETTINGS, blob)
    with pytest.raises(ConfigError, match="settings"):
        SeedDetector.from_bytes("shop", replace(SETTINGS, band_sigmas=4.0), blob)

    other = OtherDetector("shop", replace(SETTINGS, kind="other"))
    run(other, stream(3, [1]))
    with pytest.raises(ConfigError, match="kind 'other'"):
        SeedDetector.from_bytes("shop", SETTINGS, other.to_bytes())


def test_make_detector_picks_by_kind() -> None:
    assert type(make_detector("shop", SETTINGS)) is SeedDetector
    assert type(make_detector("shop", replace(SETTINGS, kind="seasonal"))) is SeasonalDetector
    with pytest.raises(ConfigError, match="'forest' is not known; allowed: seasonal, seed"):
        make_detector("shop", replace(SETTINGS, kind="forest"))


def test_update_arrays_leaves_absent_series_untouched() -> None:
    detector = SeedDetector("shop", replace(SETTINGS, warmup_minutes=3))
    run(detector, stream(10, [1, 2, 3]))
    state = detector.state.take(np.arange(3))
    before = {name: array.copy() for name, array in state.arrays().items()}

    events = update_arrays(state, np.array([np.nan, 500.0, 100.0]), 10**18, detector.settings)

    for name, array in state.arrays().items():
        assert array[0] == before[name][0], name
    assert state.count[2] == before["count"][2] + 1
    assert state.excess[1] > 0 and state.mean[1] == before["mean"][1]
    assert list(events.opened) == [1]


def test_expected_is_each_known_series_mean_and_nan_for_an_unknown_key() -> None:
    detector = SeedDetector("shop", SETTINGS)
    assert np.isnan(detector.expected(np.array([1], np.uint64))).all()
    run(detector, stream(130, [1, 2]))
    means = dict(zip(detector.series_keys.tolist(), detector.state.mean.tolist(), strict=True))

    expected = detector.expected(np.array([2, 99, 1], np.uint64))
    assert expected[0] == means[2] and np.isnan(expected[1]) and expected[2] == means[1]

    # An outside-band point is not learned, so its series keeps its expectation; an in-band
    # one moves it.
    detector.process(points([(130, 1, 500.0), (130, 2, 100.5)]))
    after = detector.expected(np.array([1, 2], np.uint64))
    assert after[0] == means[1] and after[1] != means[2]


# --- an independent scalar reference, compared on random streams --------------------------------


def reference_records(
    settings_: DetectorSettings, minutes: list[tuple[int, list[tuple[int, float]]]]
) -> list[Anomaly]:
    """The seed algorithm written point by point in plain Python, as the docstrings state it."""
    alpha, k = 1.0 - settings_.decay, settings_.band_sigmas
    series: dict[int, dict] = {}
    order: list[int] = []
    records: list[Anomaly] = []

    def record(key: int, s: dict, end: int | None) -> Anomaly:
        major, critical = settings_.severity_sigmas
        peak = s["peak"]
        return Anomaly(
            "shop",
            *labels_of(key),
            start_minute=minute_at(s["run_start"]),
            end_minute=None if end is None else minute_at(end),
            detected_minute=minute_at(s["detected"]),
            value=s["value"],
            expected=s["expected"],
            band_low=s["band_low"],
            band_high=s["band_high"],
            peak_score=peak,
            severity="minor" if peak < major else "major" if peak < critical else "critical",
        )

    for minute, rows in minutes:
        for key in sorted({key for key, _ in rows} - set(series)):
            series[key] = dict(count=0, mean=0.0, var=0.0, excess=0.0, peak=0.0, run_start=None)
            series[key].update(is_open=False, calm=0, last_out=None)
            order.append(key)
        events = []
        for key, x in rows:
            s = series[key]
            if not math.isfinite(x):
                continue
            if s["count"] == 0:
                s.update(count=1, mean=x, var=0.0)
                continue
            sd = max(math.sqrt(s["var"]), abs(s["mean"]) * settings_.min_std_fraction, STD_EPSILON)
            diff = x - s["mean"]
            score = abs(diff / sd)
            out = s["count"] >= max(settings_.warmup_minutes, 1) and score > k
            s["count"] += 1
            if s["is_open"]:
                if out:
                    s.update(calm=0, last_out=minute, peak=max(s["peak"], score))
                    continue
                s["calm"] += 1
                if s["calm"] >= settings_.calm_minutes:
                    events.append((order.index(key), record(key, s, s["last_out"])))
                    s.update(is_open=False, calm=0, excess=0.0, peak=0.0, run_start=None)
                continue
            if out:
                if s["run_start"] is None:
                    s["run_start"] = minute
                s["excess"] = s["excess"] + (score - k)
                s.update(peak=max(s["peak"], score), last_out=minute)
                if s["excess"] > settings_.tolerance_sigmas:
                    s.update(is_open=True, calm=0, detected=minute, value=x, expected=s["mean"])
                    s.update(band_low=s["mean"] - sd * k, band_high=s["mean"] + sd * k)
                    events.append((order.index(key), record(key, s, None)))
                continue
            s.update(excess=0.0, peak=0.0, run_start=None)
            incr = diff * alpha
            s["var"] = settings_.decay * (s["var"] + diff * incr)
            s["mean"] = s["mean"] + incr
        records.extend(record for _, record in sorted(events, key=lambda pair: pair[0]))
    return records


SPECIAL = [math.nan, math.inf, -math.inf, 1e6, -1e6, 0.0]


@st.composite
def random_streams(draw: st.DrawFn) -> tuple[DetectorSettings, list, list[list[int]]]:
    detector_settings = DetectorSettings(
        decay=draw(st.sampled_from([0.5, 0.9, 0.99])),
        band_sigmas=draw(st.sampled_from([1.0, 2.0, 3.0])),
        tolerance_sigmas=draw(st.sampled_from([0.5, 2.0, 6.0])),
        warmup_minutes=draw(st.integers(0, 6)),
        calm_minutes=draw(st.integers(0, 3)),
        min_std_fraction=draw(st.sampled_from([0.0, 0.01])),
    )
    keys = draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=5, unique=True))
    minutes = []
    minute = 0
    for _ in range(draw(st.integers(1, 40))):
        minute += draw(st.integers(1, 3))
        present = draw(st.lists(st.sampled_from(keys), unique=True, min_size=1))
        rows = []
        for key in present:
            if draw(st.integers(0, 9)) == 0:
                value = draw(st.sampled_from(SPECIAL))
            else:
                value = float(draw(st.integers(90, 110)) + (key % 7))
            rows.append((key, value))
        minutes.append((minute, draw(st.permutations(rows))))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(minutes) - 1, 1)), max_size=5)))
    batches = [list(range(a, b)) for a, b in zip([0, *cuts], [*cuts, len(minutes)], strict=True)]
    return detector_settings, minutes, [b for b in batches if b]


@settings(max_examples=150, deadline=None)
@given(random_streams(), st.randoms(use_true_random=False))
def test_matches_scalar_reference_in_any_row_order_and_batching(case, rnd) -> None:
    detector_settings, minutes, batches = case
    expected = reference_records(detector_settings, minutes)

    detector = SeedDetector("shop", detector_settings)
    records: list[Anomaly] = []
    for batch in batches:
        rows = [(minutes[i][0], key, value) for i in batch for key, value in minutes[i][1]]
        rnd.shuffle(rows)
        records.extend(detector.process(points(rows)))
        detector = SeedDetector.from_bytes("shop", detector_settings, detector.to_bytes())

    assert records == expected
