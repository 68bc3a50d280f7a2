"""The NAB-style scorer on small cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anomaly.errors import DatasetError
from anomaly.scoring import (
    STANDARD_PROFILE,
    CorpusScore,
    CostProfile,
    probation_rows,
    scaled_sigmoid,
    score_series,
)

# 1000 rows: the first 150 are probation. One window of 100 rows, 200..299.
ROWS = 1000
WINDOW = (200, 299)


def sigmoid(position: float) -> float:
    """The scaled sigmoid written out: 2 / (1 + e^(5 p)) - 1."""
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def test_scaled_sigmoid_runs_from_almost_one_at_a_window_start_to_minus_one_far_after() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(2.99) > -1.0
    assert list(scaled_sigmoid(np.array([3.0, 50.0, 1e6]))) == [-1.0, -1.0, -1.0]


def test_the_standard_profile_is_nabs() -> None:
    assert STANDARD_PROFILE == CostProfile(
        true_positive=1.0, false_positive=0.11, false_negative=1.0, true_negative=1.0
    )


def test_probation_is_fifteen_percent_of_the_rows_at_most_750() -> None:
    assert probation_rows(1000) == 150
    assert probation_rows(99) == 14
    assert probation_rows(4032) == 604
    assert probation_rows(10_000) == 750


def test_a_detection_at_the_window_start_earns_the_full_weight() -> None:
    score = score_series(ROWS, [WINDOW], [200])
    assert score.raw == pytest.approx(1.0)
    assert (score.null, score.perfect) == (-1.0, 1.0)
    assert score.score == pytest.approx(100.0)
    assert score.delays == (0,)


def test_a_later_detection_earns_less_and_only_the_first_in_a_window_counts() -> None:
    # Halfway: position -(299 - 250 + 1) / 100 = -0.5, scaled so the start is worth 1.
    halfway = sigmoid(-0.5) / sigmoid(-1.0)
    score = score_series(ROWS, [WINDOW], [250, 260, 299])
    assert score.raw == pytest.approx(halfway)
    assert (score.hits, score.in_window, score.false_positives) == (1, 3, 0)
    assert score.delays == (50,)
    assert score.precision == 1.0 and score.recall == 1.0

    # At the last row: position -1 / 100, worth almost nothing.
    assert score_series(ROWS, [WINDOW], [299]).raw == pytest.approx(sigmoid(-0.01) / sigmoid(-1))


def test_a_missed_window_costs_the_false_negative_weight() -> None:
    score = score_series(ROWS, [WINDOW], [])
    assert score.raw == -1.0
    assert score.score == 0.0
    assert score.recall == 0.0
    assert math.isnan(score.precision)


def test_false_positives_cost_by_their_distance_after_the_preceding_window() -> None:
    # Before any window: the full weight. 101 rows after the window's end: in widths less one,
    # 101 / 99. Far after (three widths): the full weight again.
    score = score_series(ROWS, [WINDOW], [160, 400, 999])
    expected = -1.0 + 0.11 * (-1.0 + sigmoid(101 / 99) + -1.0)
    assert score.raw == pytest.approx(expected)
    assert (score.detections, score.false_positives, score.in_window) == (3, 3, 0)
    assert score.precision == 0.0

    # Right after the window a false positive is almost free.
    assert score_series(ROWS, [WINDOW], [200, 300]).raw == pytest.approx(
        1.0 + 0.11 * sigmoid(1 / 99)
    )


def test_probation_ignores_early_detections_and_windows_that_end_in_it() -> None:
    score = score_series(ROWS, [(20, 60), WINDOW], [30, 100, 149])
    assert (score.windows, score.detections, score.hits) == (1, 0, 0)
    assert score.raw == -1.0

    # A window that reaches past probation counts; its rows in probation do not score.
    score = score_series(ROWS, [(100, 199)], [120, 175])
    assert score.windows == 1 and score.delays == (75,)
    assert score.raw == pytest.approx(sigmoid(-(199 - 175 + 1) / 100) / sigmoid(-1.0))


def test_a_corpus_is_the_normalised_sum_of_its_series() -> None:
    perfect = score_series(ROWS, [WINDOW], [200], series="a")
    missed = score_series(ROWS, [(300, 399), (600, 699)], [], series="b")
    quiet = score_series(ROWS, [], [500], series="c")  # no window: costs, never normalises
    corpus = CorpusScore((perfect, missed, quiet))

    assert math.isnan(quiet.score)
    assert corpus.null == -3.0 and corpus.perfect == 3.0
    raw = 1.0 - 2.0 - 0.11
    assert corpus.raw == pytest.approx(raw)
    assert corpus.score == pytest.approx(100 * (raw + 3.0) / 6.0)
    assert (corpus.windows, corpus.hits, corpus.detections) == (3, 1, 2)
    assert corpus.recall == pytest.approx(1 / 3)
    assert corpus.precision == 0.5
    assert corpus.median_delay == 0.0


def test_a_detector_that_never_fires_scores_zero_and_a_perfect_one_100() -> None:
    windows = [(200, 249), (500, 599), (800, 999)]
    assert score_series(ROWS, windows, []).score == 0.0
    assert score_series(ROWS, windows, [200, 500, 800]).score == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("windows", "detections", "message"),
    [
        ([(300, 200)], [], r"window \(300, 200\) must satisfy"),
        ([(900, 1000)], [], r"last_row <= 999"),
        ([(200, 300), (250, 400)], [], r"\(250, 400\) starts before the previous one"),
        ([(200, 300)], [1000], "detection row 1000 is outside the rows 0..999"),
        ([(200, 300)], [-1], "detection row -1"),
    ],
)
def test_bad_windows_and_detections_are_named(windows, detections, message) -> None:
    with pytest.raises(DatasetError, match=message):
        score_series(ROWS, windows, detections, series="s")


def test_rows_must_be_positive() -> None:
    with pytest.raises(DatasetError, match="rows 0 must be at least 1"):
        score_series(0, [], [])
