"""The seasonal detector: a baseline per time of day, a robust level, and the envelope of each
series' recent excursions, for every series of one customer at once (numpy, element-wise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from anomaly.config import DetectorSettings
from anomaly.detector import (
    NO_MINUTE,
    STD_EPSILON,
    ArrayState,
    MinuteEvents,
    StreamingDetector,
)

# A normal distribution's standard deviation is sqrt(pi / 2) times its mean absolute deviation:
# spreads are kept as mean absolute errors (robust to outliers) and reported as deviations.
SD_PER_MEAN_ABSOLUTE = math.sqrt(math.pi / 2)

# The decayed mean absolute errors learn from residuals clipped at this many times the clip of
# the level: large enough for a model's real misses (a lagging level at a daily jump) to count
# against it, small enough that one wild point does not.
ERROR_CLIP_FACTOR = 2.0

_NS_PER_MINUTE = 60 * 10**9


@dataclass
class SeasonalState(ArrayState):
    """Per-series arrays of the seasonal detector (structure of arrays, axis 0 the series).

    ``level`` is a robust level of the series alone, ``baseline`` its value at each knot of the
    season (one row per series, ``weight`` how much each knot has learned, 0: never seen) and
    ``offset`` the series' level relative to that baseline. ``level_error`` and
    ``season_error`` are the two models' decayed mean absolute errors over in-band points (their
    spreads), ``level_skill`` and ``season_skill`` the same over every point with a half-life
    of a season (which model to trust: a lagging level misses every daily ramp, and those
    misses are outside the band). ``first_seen`` is the minute of the series' first point, and
    ``season_count`` counts its points at which the season was known (a season after that first
    point, with both knots around the minute seen). ``predicted`` is what the
    detector expected of the series' latest point before it saw it, ``last_seen`` that point's
    minute. ``excess`` is the current excursion's accumulated distance outside the band, in the
    series' own units; ``shift`` is the mean of an open anomaly's latest run of outside points
    and ``shift_points`` their number. Each model also measures its own excursions (``level_run``,
    ``season_run``, while no anomaly is open) and keeps the decayed largest of its recent ones
    (``level_envelope``, ``season_envelope``): what is normal for one model says nothing about
    the other (a level lags every daily ramp, a learned season does not). The anomaly fields are
    those of :class:`anomaly.detector.SeriesState`.
    """

    count: np.ndarray
    season_count: np.ndarray
    level: np.ndarray
    offset: np.ndarray
    level_error: np.ndarray
    season_error: np.ndarray
    level_skill: np.ndarray
    season_skill: np.ndarray
    predicted: np.ndarray
    first_seen: np.ndarray
    last_seen: np.ndarray
    excess: np.ndarray
    shift: np.ndarray
    shift_points: np.ndarray
    level_run: np.ndarray
    season_run: np.ndarray
    level_envelope: np.ndarray
    season_envelope: np.ndarray
    peak: np.ndarray
    run_start: np.ndarray
    last_out: np.ndarray
    calm: np.ndarray
    is_open: np.ndarray
    detected: np.ndarray
    value: np.ndarray
    expected: np.ndarray
    band_low: np.ndarray
    band_high: np.ndarray
    baseline: np.ndarray
    weight: np.ndarray

    # dtype, the value a new series starts with, and whether there is one value per knot.
    LAYOUT: ClassVar[dict[str, tuple[type, Any, bool]]] = {
        "count": (np.int32, 0, False),
        "season_count": (np.int32, 0, False),
        "level": (np.float64, 0.0, False),
        "offset": (np.float64, 0.0, False),
        "level_error": (np.float64, 0.0, False),
        "season_error": (np.float64, 0.0, False),
        "level_skill": (np.float64, 0.0, False),
        "season_skill": (np.float64, 0.0, False),
        "predicted": (np.float64, 0.0, False),
        "first_seen": (np.int64, NO_MINUTE, False),
        "last_seen": (np.int64, NO_MINUTE, False),
        "excess": (np.float64, 0.0, False),
        "shift": (np.float64, 0.0, False),
        "shift_points": (np.int32, 0, False),
        "level_run": (np.float64, 0.0, False),
        "season_run": (np.float64, 0.0, False),
        "level_envelope": (np.float64, 0.0, False),
        "season_envelope": (np.float64, 0.0, False),
        "peak": (np.float64, 0.0, False),
        "run_start": (np.int64, NO_MINUTE, False),
        "last_out": (np.int64, NO_MINUTE, False),
        "calm": (np.int32, 0, False),
        "is_open": (np.bool_, False, False),
        "detected": (np.int64, NO_MINUTE, False),
        "value": (np.float64, 0.0, False),
        "expected": (np.float64, 0.0, False),
        "band_low": (np.float64, 0.0, False),
        "band_high": (np.float64, 0.0, False),
        "baseline": (np.float64, 0.0, True),
        # float32 halves the profile's memory; it only counts how much a knot has averaged.
        "weight": (np.float32, 0.0, True),
    }

    @classmethod
    def empty(cls, size: int, slots: int) -> SeasonalState:
        """State of ``size`` series that have seen nothing, with ``slots`` knots each."""
        return cls(
            **{
                name: np.full((size, slots) if per_knot else size, init, dtype)
                for name, (dtype, init, per_knot) in cls.LAYOUT.items()
            }
        )


def knots(minute: int, settings: DetectorSettings) -> tuple[int, int, float]:
    """The knots around a minute (int64 ns since the epoch) and the weight of the second.

    The season starts at midnight UTC (a multiple of ``season_minutes`` since the epoch); knot
    ``i`` sits at ``i * season_minutes / season_slots`` minutes into it, and a minute between
    two knots is ``(1 - w)`` of the first and ``w`` of the second.
    """
    into = (minute // _NS_PER_MINUTE) % settings.season_minutes
    position = into * settings.season_slots / settings.season_minutes
    first = int(position)
    return first, (first + 1) % settings.season_slots, position - first


def update_seasonal(
    state: SeasonalState, values: np.ndarray, minute: int, settings: DetectorSettings
) -> MinuteEvents:
    """Feed one minute's values to every series of ``state``, in place.

    Parameters
    ----------
    state:
        The series' arrays; updated in place.
    values:
        One value per series, aligned with ``state``; NaN or inf means no point this minute
        (the series is left exactly as it was).
    minute:
        The minute, as int64 nanoseconds since the epoch; newer than any before.
    settings:
        The detector settings (band, tolerance, warm-up, calm, floors and the seasonal keys).

    Returns
    -------
    MinuteEvents
        Positions (ascending) of the series whose anomaly opened or ended at this minute.

    Notes
    -----
    Every operation is element-wise (powers of the decay are computed once per distinct gap
    with Python floats), so any subset or order of series gives the same bits.
    """
    k = settings.band_sigmas
    ok = np.isfinite(values)
    x = np.where(ok, values, 0.0)
    first = ok & (state.count == 0)
    learn = ok & ~first

    # The season: the knots around this minute, their baselines, and whether the series has
    # a season behind it and both knots were seen (in the first season a knot is only the
    # average of the visit under way, which predicts nothing).
    i0, i1, w = knots(minute, settings)
    b0, b1 = state.baseline[:, i0].copy(), state.baseline[:, i1].copy()
    seen0, seen1 = state.weight[:, i0] > 0, state.weight[:, i1] > 0
    season_ns = settings.season_minutes * _NS_PER_MINUTE
    behind = learn & (minute - state.first_seen >= season_ns)
    ready = behind & seen0 & (seen1 | (w == 0.0))
    seasonal = b0 * (1.0 - w) + b1 * w + state.offset

    # The expected value: the seasonal model once its knots are known, it has been measured
    # over a warm-up of its own, and it has erred less than the level alone; the spread is the
    # chosen model's.
    measured = state.season_count >= max(settings.warmup_minutes, 1)
    use_season = ready & measured & (state.season_skill < state.level_skill)
    sd_level = _spread(state.level_error, state.level, settings)
    sd_season = _spread(state.season_error, np.where(ready, seasonal, state.level), settings)
    predicted = np.where(use_season, seasonal, state.level)
    sd = np.where(use_season, sd_season, sd_level)
    distance = np.abs(x - predicted)
    score = distance / sd
    warm = ok & (state.count >= max(settings.warmup_minutes, 1))
    outside = warm & (distance > k * sd)
    inside = ok & ~outside

    # The envelopes, decayed since each series' previous point; the chosen model's is the bar.
    gaps = np.where(learn, (minute - state.last_seen) // _NS_PER_MINUTE, 0)
    half_life = settings.envelope_half_life_minutes
    decay = _powers(gaps, learn, lambda gap: 0.5 ** (gap / half_life))
    level_envelope = state.level_envelope * decay
    season_envelope = state.season_envelope * decay
    envelope = np.where(use_season, season_envelope, level_envelope)

    was_open = state.is_open.copy()
    events = _anomaly_steps(state, minute, x, predicted, sd, score, distance, outside, inside,
                            envelope, settings)  # fmt: skip
    opened = np.zeros(len(x), np.bool_)
    opened[events.opened] = True

    # Each model's excursions while no anomaly is open: one that ends back inside enters its
    # envelope, so an excursion under way is measured against those before it. The excess of
    # an anomaly at its opening enters the chosen model's envelope; what follows does not.
    quiet = ok & ~was_open & ~opened
    for run, model_envelope, residual, model_sd, usable in (
        (state.level_run, level_envelope, x - state.level, sd_level, warm),
        (state.season_run, season_envelope, x - seasonal, sd_season, warm & ready),
    ):
        out = usable & (np.abs(residual) > k * model_sd)
        ended = np.where(quiet & ~out, run, 0.0)
        np.maximum(model_envelope, ended, out=model_envelope)
        grown = run + np.abs(residual) - k * model_sd
        run[...] = np.where(quiet & out, grown, np.where(ok, 0.0, run))
    at_open = np.where(opened, state.excess, 0.0)
    np.maximum(level_envelope, np.where(~use_season, at_open, 0.0), out=level_envelope)
    np.maximum(season_envelope, np.where(use_season, at_open, 0.0), out=season_envelope)
    state.level_envelope[...] = np.where(ok, level_envelope, state.level_envelope)
    state.season_envelope[...] = np.where(ok, season_envelope, state.season_envelope)

    _learn(state, x, ok, first, learn, outside, ready, seasonal, sd_level, sd_season, gaps,
           (i0, i1, w), (b0, b1, seen0, seen1), settings)  # fmt: skip
    _rebase(state, x, ok, outside, opened, ready, b0 * (1.0 - w) + b1 * w, settings)
    state.predicted[...] = np.where(first, x, np.where(ok, predicted, state.predicted))
    state.count += ok
    state.season_count += ok & ready
    state.first_seen[...] = np.where(first, minute, state.first_seen)
    state.last_seen[...] = np.where(ok, minute, state.last_seen)
    return events


def _anomaly_steps(
    state: SeasonalState,
    minute: int,
    x: np.ndarray,
    predicted: np.ndarray,
    sd: np.ndarray,
    score: np.ndarray,
    distance: np.ndarray,
    outside: np.ndarray,
    inside: np.ndarray,
    envelope: np.ndarray,
    settings: DetectorSettings,
) -> MinuteEvents:
    """Excursions and anomalies, as in the seed detector but with the excess in the series'
    units and the envelope as a second bar to pass."""
    k = settings.band_sigmas
    is_open = state.is_open.copy()

    # An open anomaly outside the band: the calm count restarts and the peak may grow.
    at = is_open & outside
    state.calm[at] = 0
    state.last_out[at] = minute
    state.peak[at] = np.maximum(state.peak[at], score[at])

    # An open anomaly back inside: it ends after enough consecutive calm points.
    at = is_open & inside
    state.calm[at] += 1
    ended = np.flatnonzero(at & (state.calm >= settings.calm_minutes))
    ended_start = state.run_start[ended].copy()
    ended_end = state.last_out[ended].copy()
    ended_peak = state.peak[ended].copy()
    _clear_excursion(state, ended)
    state.is_open[ended] = False

    # No anomaly open, outside the band: the excursion starts or goes on, and accumulates.
    at = ~is_open & outside
    state.run_start[at & (state.run_start == NO_MINUTE)] = minute
    state.excess[at] += distance[at] - k * sd[at]
    state.peak[at] = np.maximum(state.peak[at], score[at])
    state.last_out[at] = minute

    # The excess passed the tolerance and the envelope of recent excursions: the anomaly opens.
    bar = np.maximum(settings.tolerance_sigmas * sd, settings.envelope_ratio * envelope)
    opened = np.flatnonzero(at & (state.excess > bar))
    state.is_open[opened] = True
    state.calm[opened] = 0
    state.detected[opened] = minute
    state.value[opened] = x[opened]
    state.expected[opened] = predicted[opened]
    state.band_low[opened] = predicted[opened] - k * sd[opened]
    state.band_high[opened] = predicted[opened] + k * sd[opened]

    # No anomaly open, back inside the band: a pending excursion is forgotten.
    _clear_excursion(state, np.flatnonzero(~is_open & inside))
    return MinuteEvents(opened, ended, ended_start, ended_end, ended_peak)


def _learn(
    state: SeasonalState,
    x: np.ndarray,
    ok: np.ndarray,
    first: np.ndarray,
    learn: np.ndarray,
    outside: np.ndarray,
    ready: np.ndarray,
    seasonal: np.ndarray,
    sd_level: np.ndarray,
    sd_season: np.ndarray,
    gaps: np.ndarray,
    where: tuple[int, int, float],
    knot_values: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    settings: DetectorSettings,
) -> None:
    """Both models learn from every point, each residual clipped at ``clip_sigmas`` spreads.

    Clipping bounds what one outlier moves, while a lasting level shift is still learned, a
    clipped step a point, so its anomaly ends once the level has caught up. The errors learn
    only from points inside the band, so an anomaly does not widen the band that measures it.
    """
    alpha = settings.level_rate
    clip_level = settings.clip_sigmas * sd_level
    clip_season = settings.clip_sigmas * sd_season
    to_level = x - state.level
    to_season = x - seasonal

    # The models' spreads (in-band points) and skills (every point, a season's half-life);
    # the seasonal ones mirror the level's until its knots are known.
    track = learn & ~outside
    season = settings.season_minutes
    rate = _powers(gaps, learn, lambda gap: 1.0 - 0.5 ** (gap / season))
    for error, skill, residual, limit, known in (
        (state.level_error, state.level_skill, to_level, clip_level, learn),
        (state.season_error, state.season_skill, to_season, clip_season, learn & ready),
    ):
        miss = np.minimum(np.abs(residual), ERROR_CLIP_FACTOR * limit)
        error[...] = np.where(track & known, error + settings.spread_rate * (miss - error), error)
        skill[...] = np.where(known, skill + rate * (miss - skill), skill)
    mirror = ok & ~ready
    state.season_error[...] = np.where(mirror, state.level_error, state.season_error)
    state.season_skill[...] = np.where(mirror, state.level_skill, state.season_skill)

    # The level, and the offset once the season is known: a clipped step towards the point.
    target = x - state.offset
    moved = state.level + alpha * _clip(to_level, clip_level)
    state.level[...] = np.where(first, x, np.where(learn, moved, state.level))
    moved = state.offset + alpha * _clip(to_season, clip_season)
    state.offset[...] = np.where(learn & ready, moved, state.offset)

    # The two knots learn the point less the offset, each by its share of the minute: a knot
    # never seen takes the value, then averages it until it has a season's worth of weight,
    # then renews season_rate of itself per season (clipped steps).
    i0, i1, w = where
    b0, b1, seen0, seen1 = knot_values
    known0 = np.where(seen0, b0, np.where(seen1, b1, target))
    known1 = np.where(seen1, b1, known0)
    step = _clip(target - (known0 * (1.0 - w) + known1 * w), clip_season)
    slot_minutes = settings.season_minutes / settings.season_slots
    keep = 1.0 - settings.season_rate
    renew = _powers(gaps, learn, lambda gap: 1.0 - keep ** (gap / slot_minutes))
    for knot, share, seen in ((i0, 1.0 - w, seen0), (i1, w, seen1)):
        if share == 0.0:
            continue
        weight = state.weight[:, knot] + np.where(ok, share, 0.0).astype(np.float32)
        gain = np.minimum(1.0, share * np.maximum(renew, 1.0 / np.maximum(weight, share)))
        column = state.baseline[:, knot]
        moved = column + gain * step
        state.baseline[:, knot] = np.where(ok, np.where(seen, moved, target), column)
        state.weight[:, knot] = weight


def _rebase(
    state: SeasonalState,
    x: np.ndarray,
    ok: np.ndarray,
    outside: np.ndarray,
    opened: np.ndarray,
    ready: np.ndarray,
    base: np.ndarray,
    settings: DetectorSettings,
) -> None:
    """Follow the mean of an open anomaly's consecutive outside points; after
    ``rebase_minutes`` of them the level and the offset move onto it, so the next points are
    inside and the anomaly ends after its calm points."""
    running = state.is_open & outside
    count = np.where(running, state.shift_points + 1, np.where(ok, 0, state.shift_points))
    count = np.where(opened, 1, count).astype(np.int32)
    mean = state.shift + (x - state.shift) / np.maximum(count, 1)
    state.shift[...] = np.where(count == 1, x, np.where(running, mean, state.shift))
    state.shift_points[...] = count
    if settings.rebase_minutes <= 0:
        return
    at = running & (count >= settings.rebase_minutes)
    state.level[...] = np.where(at, state.shift, state.level)
    state.offset[...] = np.where(at & ready, state.shift - base, state.offset)
    state.shift_points[...] = np.where(at, 0, state.shift_points)


def _spread(error: np.ndarray, around: np.ndarray, settings: DetectorSettings) -> np.ndarray:
    """A model's standard deviation from its mean absolute error, floored at
    ``min_std_fraction`` of the expected value and at :data:`STD_EPSILON`."""
    sd = error * SD_PER_MEAN_ABSOLUTE
    np.maximum(sd, np.abs(around) * settings.min_std_fraction, out=sd)
    np.maximum(sd, STD_EPSILON, out=sd)
    return sd


def _clip(values: np.ndarray, limit: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(values, -limit), limit)


def _powers(gaps: np.ndarray, where: np.ndarray, power: Any) -> np.ndarray:
    """``power(gap)`` per series (0 where ``where`` is False), computed once per distinct gap
    with Python floats, so a series' value does not depend on which others share the array."""
    out = np.zeros(len(gaps))
    if not where.any():
        return out
    at = np.flatnonzero(where)
    present = gaps[at]
    low, high = int(present.min()), int(present.max())
    if low == high:  # the usual minute: every series had its previous point at the same minute
        out[at] = power(low)
        return out
    distinct, inverse = np.unique(present, return_inverse=True)
    out[at] = np.array([power(int(gap)) for gap in distinct])[inverse]
    return out


def _clear_excursion(state: SeasonalState, at: np.ndarray) -> None:
    state.excess[at] = 0.0
    state.peak[at] = 0.0
    state.calm[at] = 0
    state.run_start[at] = NO_MINUTE
    state.last_out[at] = NO_MINUTE


class SeasonalDetector(StreamingDetector[SeasonalState]):
    """Daily seasonality and level shifts, robustly, over every series of one customer.

    Two models per series, both learning from every point:

    - a *level*: an exponentially weighted level that moves ``level_rate`` of each residual,
      the residual clipped at ``clip_sigmas`` spreads (a Huber-type update);
    - a *seasonal* model: a baseline per time of day (``season_slots`` knots over
      ``season_minutes``, linear between knots) plus an offset that moves like the level. A
      knot's first season is its plain average; after that it renews ``season_rate`` of itself
      per season, with clipped residuals.

    Each model's spread is its decayed mean absolute error (rate ``spread_rate``, learned from
    in-band points only), times sqrt(pi/2). The expected value is the level's until the series
    has a season behind it and the seasonal model has been measured for ``warmup_minutes``
    points; from then on it is the model with the smaller mean absolute error over about the
    last season (all points, clipped): a series without a daily pattern keeps the level, a
    seasonal one switches on its second day.

    Excursions and anomalies follow the seed's rules (band of ``band_sigmas`` spreads, excess
    accumulated over consecutive outside points, ``calm_minutes`` in-band points end an
    anomaly, warm-up in points) with two differences. The excess is kept in the series' units,
    and it must pass both ``tolerance_sigmas`` spreads and ``envelope_ratio`` times the
    *envelope*: the largest excess of the series' recent excursions, decaying with a half-life
    of ``envelope_half_life_minutes``. So a series whose normal life has bursts (batch jobs,
    traffic spikes) alerts only on a burst larger than the ones it has lately had, and a
    repeated new pattern stops alerting once it has been seen. And learning goes on while an
    anomaly is open (clipped), and after ``rebase_minutes`` consecutive outside points the level
    re-bases on their mean, so a lasting level shift opens one anomaly that ends, instead of
    staying open.

    Cost: about ``12 * season_slots + 190`` bytes a series (1.3 kB with 96 knots; a seed
    series takes about 100), and roughly twenty times the seed's time per point (measured at
    200,000 series: about 50 ms a minute against 2.4 ms).
    """

    kind: ClassVar[str] = "seasonal"

    def _empty_state(self, size: int) -> SeasonalState:
        return SeasonalState.empty(size, self.settings.season_slots)

    def _update(self, state: SeasonalState, values: np.ndarray, minute: int) -> MinuteEvents:
        return update_seasonal(state, values, minute, self.settings)

    def _expected_at(self, at: np.ndarray) -> np.ndarray:
        """What the detector expected of each series' latest point before it saw that point
        (the level or the seasonal baseline plus offset, as chosen then); NaN before a series'
        first point."""
        state = self._state
        return np.where(state.count[at] > 0, state.predicted[at], np.nan)
