"""Detection quality against labelled anomaly windows: the NAB score, precision, recall, delay.

The rules are those of the Numenta Anomaly Benchmark's scoring (standard profile), applied to
alerts (one row per detection) rather than to per-row anomaly scores and a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from anomaly.errors import DatasetError

# The first 15 % of a series' rows, at most 750 (15 % of 5000), are a probation period in which
# a detector learns: detections there are not scored, and a window that ends there is not either.
PROBATION_SHARE = 0.15
PROBATION_MAX_ROWS = 750

# Steepness of the scaled sigmoid, and the relative position from which a false positive costs
# its full weight (NAB's values).
SIGMOID_SLOPE = 5.0
FAR_POSITION = 3.0


@dataclass(frozen=True)
class CostProfile:
    """How much each kind of outcome weighs in the score.

    ``true_negative`` is part of NAB's profiles but the window score does not use it: quiet
    rows earn nothing, so a detector that never fires scores exactly minus the missed windows.
    """

    true_positive: float
    false_positive: float
    false_negative: float
    true_negative: float


# NAB's standard application profile: a missed window costs as much as an early hit earns, and
# a false positive about a ninth of that (at most).
STANDARD_PROFILE = CostProfile(
    true_positive=1.0, false_positive=0.11, false_negative=1.0, true_negative=1.0
)


def probation_rows(rows: int) -> int:
    """How many leading rows of a series of ``rows`` readings are not scored."""
    return int(min(math.floor(PROBATION_SHARE * rows), PROBATION_MAX_ROWS))


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """``2 / (1 + exp(5 * position)) - 1``, and exactly -1 from position 3 on.

    Position -1 is the first row of a window (about 0.987), 0 its end (0.0); positive positions
    are false positives after a window, in window widths (about -0.987 one width after it).
    """
    position = np.asarray(position, dtype=np.float64)
    with np.errstate(over="ignore"):
        value = 2.0 / (1.0 + np.exp(SIGMOID_SLOPE * position)) - 1.0
    return np.where(position >= FAR_POSITION, -1.0, value)


@dataclass(frozen=True)
class SeriesScore:
    """The score of one series' detections against its windows.

    ``windows`` counts the scored windows (those ending after the probation period), ``hits``
    those with at least one detection. ``detections`` counts the scored detections (after the
    probation period, one per row), ``in_window`` those inside a window (the first in a window
    is its true positive, later ones neither earn nor cost), ``false_positives`` those outside
    every window. ``raw`` is the weighted sum; ``null`` the raw score of a detector that never
    fires, ``perfect`` that of one firing exactly at the start of every window. ``delays`` are
    rows from each hit window's start to its first detection.
    """

    series: str
    rows: int
    windows: int
    hits: int
    detections: int
    in_window: int
    false_positives: int
    raw: float
    null: float
    perfect: float
    delays: tuple[int, ...]

    @property
    def score(self) -> float:
        """The raw score on NAB's scale: 0 for no detections, 100 for perfect; NaN without
        scored windows (then ``raw`` says what the false positives cost)."""
        return normalised(self.raw, self.null, self.perfect)

    @property
    def precision(self) -> float:
        """Share of scored detections that fall inside a window; NaN without detections."""
        return self.in_window / self.detections if self.detections else math.nan

    @property
    def recall(self) -> float:
        """Share of scored windows with a detection; NaN without windows."""
        return self.hits / self.windows if self.windows else math.nan


def normalised(raw: float, null: float, perfect: float) -> float:
    """``100 * (raw - null) / (perfect - null)``; NaN when perfect equals null (no windows)."""
    if perfect == null:
        return math.nan
    return 100.0 * (raw - null) / (perfect - null)


def score_series(
    rows: int,
    windows: Sequence[tuple[int, int]] | np.ndarray,
    detections: Iterable[int] | np.ndarray,
    *,
    series: str = "",
    profile: CostProfile = STANDARD_PROFILE,
) -> SeriesScore:
    """Score one series' detections against its anomaly windows.

    Parameters
    ----------
    rows:
        How many readings the series has; rows are numbered 0 .. rows - 1 in time order.
    windows:
        ``(first_row, last_row)`` pairs, inclusive, in order and not overlapping.
    detections:
        The rows at which the detector raised an alert (any order; a row counts once).
    series:
        A name for the result.
    profile:
        The cost profile, :data:`STANDARD_PROFILE` by default.

    Returns
    -------
    SeriesScore
        Scored as follows. A window's first detection earns ``true_positive`` times the
        scaled sigmoid of its position, ``-(last_row - row + 1) / width``, divided by the
        sigmoid at -1, so a detection at the window's first row earns exactly the weight and
        one at its last row almost nothing. A window without a detection costs
        ``false_negative``. A detection outside every window costs ``false_positive`` times the
        scaled sigmoid of its distance after the preceding window's last row in that window's
        widths less one (soon after a window costs little, three widths later the full
        weight); before the first window it costs the full weight.

    Raises
    ------
    DatasetError
        ``rows`` is not positive, a window is out of range, reversed, overlapping or out of
        order, or a detection row is out of range; each names the bad value.
    """
    if rows < 1:
        raise DatasetError(f"series {series!r}: rows {rows!r} must be at least 1")
    starts, ends = _window_bounds(windows, rows, series)
    found = np.unique(np.array(list(detections), dtype=np.int64))
    if len(found) and (found[0] < 0 or found[-1] >= rows):
        bad = found[0] if found[0] < 0 else found[-1]
        raise DatasetError(
            f"series {series!r}: detection row {int(bad)} is outside the rows 0..{rows - 1}"
        )

    # Only rows after the probation period are scored, and only windows that reach past it.
    probation = probation_rows(rows)
    found = found[found >= probation]
    scored = ends >= probation
    widths = ends - starts + 1

    # Each detection's window: the last window starting at or before it, if it has not ended.
    at = np.searchsorted(starts, found, side="right") - 1
    inside = at >= 0
    inside[inside] = found[inside] <= ends[at[inside]]

    # The first detection inside each window is its true positive.
    hit_windows, first = np.unique(at[inside], return_index=True)
    hit_rows = found[inside][first]
    position = -(ends[hit_windows] - hit_rows + 1) / widths[hit_windows]
    earned = scaled_sigmoid(position) / scaled_sigmoid(-1.0) * profile.true_positive
    missed = int(scored.sum()) - len(hit_windows)

    # Detections outside every window, weighted by their distance after the preceding one.
    outside = found[~inside]
    before = np.searchsorted(ends, outside, side="left") - 1
    cost = np.full(len(outside), -1.0)
    after = before >= 0
    spans = np.maximum(widths[before[after]] - 1, 1)
    cost[after] = scaled_sigmoid((outside[after] - ends[before[after]]) / spans)

    windows_scored = int(scored.sum())
    raw = float(earned.sum() + profile.false_positive * cost.sum())
    raw -= profile.false_negative * missed
    return SeriesScore(
        series=series,
        rows=rows,
        windows=windows_scored,
        hits=len(hit_windows),
        detections=len(found),
        in_window=int(inside.sum()),
        false_positives=len(outside),
        raw=raw,
        null=-profile.false_negative * windows_scored,
        perfect=profile.true_positive * windows_scored,
        delays=tuple(int(d) for d in hit_rows - starts[hit_windows]),
    )


@dataclass(frozen=True)
class CorpusScore:
    """The scores of many series summed: NAB's corpus score is the normalised sum."""

    series: tuple[SeriesScore, ...]

    @property
    def raw(self) -> float:
        return sum(s.raw for s in self.series)

    @property
    def null(self) -> float:
        return sum(s.null for s in self.series)

    @property
    def perfect(self) -> float:
        return sum(s.perfect for s in self.series)

    @property
    def score(self) -> float:
        """``100 * (raw - null) / (perfect - null)`` over the whole corpus."""
        return normalised(self.raw, self.null, self.perfect)

    @property
    def windows(self) -> int:
        return sum(s.windows for s in self.series)

    @property
    def hits(self) -> int:
        return sum(s.hits for s in self.series)

    @property
    def detections(self) -> int:
        return sum(s.detections for s in self.series)

    @property
    def false_positives(self) -> int:
        return sum(s.false_positives for s in self.series)

    @property
    def precision(self) -> float:
        """Share of all scored detections inside a window; NaN without detections."""
        inside = sum(s.in_window for s in self.series)
        return inside / self.detections if self.detections else math.nan

    @property
    def recall(self) -> float:
        """Share of all scored windows with a detection; NaN without windows."""
        return self.hits / self.windows if self.windows else math.nan

    @property
    def median_delay(self) -> float:
        """Median rows from window start to first detection over all hit windows; NaN if none."""
        delays = [d for s in self.series for d in s.delays]
        return float(np.median(delays)) if delays else math.nan


def _window_bounds(
    windows: Sequence[tuple[int, int]] | np.ndarray, rows: int, series: str
) -> tuple[np.ndarray, np.ndarray]:
    """Window starts and ends as int64 arrays, checked for range, order and overlap."""
    bounds = np.asarray(windows, dtype=np.int64).reshape(-1, 2)
    starts, ends = bounds[:, 0].copy(), bounds[:, 1].copy()
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if not 0 <= start <= end < rows:
            raise DatasetError(
                f"series {series!r}: window ({start}, {end}) must satisfy "
                f"0 <= first_row <= last_row <= {rows - 1}"
            )
    if len(starts) > 1 and np.any(starts[1:] <= ends[:-1]):
        i = int(np.flatnonzero(starts[1:] <= ends[:-1])[0])
        raise DatasetError(
            f"series {series!r}: window ({starts[i + 1]}, {ends[i + 1]}) starts before the "
            f"previous one ({starts[i]}, {ends[i]}) ends; windows must be in order, apart"
        )
    return starts, ends
