"""The streaming detectors' shared machinery, and the seed detector: per-series decayed
statistics, a health band and accumulated excess.

One detector holds the state of every series of one customer and updates all of them at once
with numpy. :class:`StreamingDetector` matches points to series, keeps labels and persists the
state; a detector kind adds its per-series arrays and their one-minute update (here
:func:`update_arrays` for the seed, anomaly.seasonal for the seasonal detector).
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Self, TypeVar

import numpy as np
import pandas as pd

from anomaly.config import DetectorSettings
from anomaly.errors import ConfigError, DatasetError
from anomaly.records import Anomaly

logger = logging.getLogger(__name__)

# "No minute" in the int64 nanosecond minute arrays (the same bits as numpy's NaT).
NO_MINUTE = np.iinfo(np.int64).min

# Absolute floor of a standard deviation, so a series that never moved (or sits at 0, where the
# relative floor is 0 too) has a finite z-score. Far below any real metric's resolution.
STD_EPSILON = 1e-9

# When at least this share of the known series has a row in a minute, the update runs over all
# series in place (one scatter of the values); below it, only the rows' series are gathered,
# updated and scattered back. Both give the same bits; this only picks the cheaper one. The whole-
# array update costs a few ns a series, a gathered row about ten times more: at 200k series the
# two cross between 3 % and 5 % of the series present.
DENSE_MIN_SHARE = 0.04

# New series are looked up in a small second index until it holds this share of all series;
# then one index over all keys is rebuilt. Keeps a trickle of new series from rebuilding a large
# index every minute.
TAIL_MAX_SHARE = 0.125

_EPOCH = datetime(1970, 1, 1)
_MAGIC = b"ANOMSTAT"
_FORMAT = 1
_REQUIRED_COLUMNS = ("minute", "series_key", "value")
_LABEL_COLUMNS = ("metric", "grouping", "dimension_values")


class ArrayState:
    """Per-series arrays (structure of arrays) of a detector kind: axis 0 is the series.

    Subclasses are dataclasses whose fields are all arrays; these are the fields every kind has,
    which describe an anomaly as it was when it opened (minutes as in :class:`SeriesState`).
    """

    peak: np.ndarray
    run_start: np.ndarray
    last_out: np.ndarray
    is_open: np.ndarray
    detected: np.ndarray
    value: np.ndarray
    expected: np.ndarray
    band_low: np.ndarray
    band_high: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def take(self, index: np.ndarray) -> Self:
        """A copy holding the series at ``index``, in that order."""
        return type(self)(**{name: array[index] for name, array in self.arrays().items()})

    def put(self, index: np.ndarray | slice, part: Self) -> None:
        """Write ``part`` (as made by :meth:`take` with the same index) back in place."""
        for name, array in self.arrays().items():
            array[index] = getattr(part, name)

    def head(self, size: int) -> Self:
        """Views of the first ``size`` series (writes go through to this state)."""
        return type(self)(**{name: array[:size] for name, array in self.arrays().items()})

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.arrays().values())


StateT = TypeVar("StateT", bound=ArrayState)


@dataclass
class SeriesState(ArrayState):
    """Per-series arrays of the seed algorithm, one element per series (structure of arrays).

    Minutes are int64 nanoseconds since the epoch, :data:`NO_MINUTE` when unset. ``count`` is
    the number of finite points seen, ``excess`` the accumulated distance outside the band in
    standard deviations, ``run_start`` the first minute of the current excursion (kept while an
    anomaly is open), ``last_out`` the latest outside-band minute, ``calm`` the in-band points
    since the last outside one while open, ``peak`` the largest |z| of the excursion. The
    ``detected`` ... ``band_high`` arrays describe the open anomaly as it was when it opened.
    """

    count: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    excess: np.ndarray
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

    # dtype and the value a new series starts with, per field.
    LAYOUT: ClassVar[dict[str, tuple[type, Any]]] = {
        "count": (np.int32, 0),
        "mean": (np.float64, 0.0),
        "var": (np.float64, 0.0),
        "excess": (np.float64, 0.0),
        "peak": (np.float64, 0.0),
        "run_start": (np.int64, NO_MINUTE),
        "last_out": (np.int64, NO_MINUTE),
        "calm": (np.int32, 0),
        "is_open": (np.bool_, False),
        "detected": (np.int64, NO_MINUTE),
        "value": (np.float64, 0.0),
        "expected": (np.float64, 0.0),
        "band_low": (np.float64, 0.0),
        "band_high": (np.float64, 0.0),
    }

    @classmethod
    def empty(cls, size: int) -> SeriesState:
        """State of ``size`` series that have seen nothing."""
        return cls(
            **{name: np.full(size, init, dtype) for name, (dtype, init) in cls.LAYOUT.items()}
        )


@dataclass(frozen=True)
class MinuteEvents:
    """What one minute's update changed: anomalies opened and ended, by position in the arrays.

    The opened anomalies' details are in the state's ``detected`` ... ``band_high`` arrays. An
    ended anomaly's start, end and peak are given here, because the update clears them from the
    state; its detection details stay in the state until the series opens a new anomaly.
    """

    opened: np.ndarray
    ended: np.ndarray
    ended_start: np.ndarray
    ended_end: np.ndarray
    ended_peak: np.ndarray


def floored_std(mean: np.ndarray, var: np.ndarray, settings: DetectorSettings) -> np.ndarray:
    """The standard deviation the band uses: floored at ``min_std_fraction * |mean|`` and at
    :data:`STD_EPSILON`, so a constant series still has a band."""
    sd = np.sqrt(var)
    np.maximum(sd, np.abs(mean) * settings.min_std_fraction, out=sd)
    np.maximum(sd, STD_EPSILON, out=sd)
    return sd


def update_arrays(
    state: SeriesState, values: np.ndarray, minute: int, settings: DetectorSettings
) -> MinuteEvents:
    """Feed one minute's values to every series of ``state``, in place.

    Parameters
    ----------
    state:
        The series' arrays, all of one length; updated in place.
    values:
        One value per series, aligned with ``state``; NaN or inf means the series has no point
        this minute (it is left exactly as it was).
    minute:
        The minute, as int64 nanoseconds since the epoch; must be newer than any before.
    settings:
        The detector settings (decay, band, tolerance, warm-up, calm, floors).

    Returns
    -------
    MinuteEvents
        Positions (ascending) of the series whose anomaly opened or ended at this minute.

    Notes
    -----
    The common case (a warmed-up series inside its band, no excursion) is handled with whole-
    array operations; everything else (points outside the band, pending excursions, open
    anomalies, first points) is a small subset handled by index. Every operation is element-
    wise IEEE arithmetic, so any subset or order of series gives the same bits.
    """
    decay = settings.decay
    alpha = 1.0 - decay
    k = settings.band_sigmas
    warm = max(settings.warmup_minutes, 1)
    mean, var = state.mean, state.var

    # The band of each series from what it has learned so far; sd floored so constants work.
    ok = np.isfinite(values)
    sd = floored_std(mean, var, settings)

    # Distance from the mean in standard deviations; only warmed-up series can be outside.
    diff = values - mean
    score = np.divide(diff, sd)
    np.abs(score, out=score)
    outside = score > k
    outside &= ok
    outside &= state.count >= warm

    # Learn from every finite point of a warming-up series, and afterwards only from in-band
    # points of a series with no open anomaly.
    learn = ~outside
    learn &= ok
    learn &= ~state.is_open
    state.count += ok
    incr = diff * alpha
    new_var = diff * incr
    new_var += var
    new_var *= decay
    np.copyto(var, new_var, where=learn)
    np.add(mean, incr, out=mean, where=learn)

    # The few series that need more than that: first points, points outside the band, and
    # series with an excursion under way or an anomaly open.
    rare = state.run_start != NO_MINUTE
    rare |= outside
    first = state.count == 1
    first &= ok
    rare |= first
    todo = np.flatnonzero(rare)
    return _update_rare(state, todo, values, minute, settings, sd, score, outside, ok, first)


def _update_rare(
    state: SeriesState,
    todo: np.ndarray,
    values: np.ndarray,
    minute: int,
    settings: DetectorSettings,
    sd: np.ndarray,
    score: np.ndarray,
    outside: np.ndarray,
    ok: np.ndarray,
    first: np.ndarray,
) -> MinuteEvents:
    """The excursion and anomaly steps of :func:`update_arrays` for the series at ``todo``."""
    k = settings.band_sigmas
    is_open = state.is_open[todo]
    out = outside[todo]
    inside = ~out & ok[todo]

    # A first point is the series' mean; its spread starts at zero (the floors cover it).
    seeded = todo[first[todo]]
    state.mean[seeded] = values[seeded]
    state.var[seeded] = 0.0

    # An open anomaly outside the band: the calm count restarts and the peak may grow.
    at = todo[is_open & out]
    state.calm[at] = 0
    state.last_out[at] = minute
    state.peak[at] = np.maximum(state.peak[at], score[at])

    # An open anomaly back inside: it ends after enough consecutive calm points.
    at = todo[is_open & inside]
    calm = state.calm[at] + 1
    state.calm[at] = calm
    ended = at[calm >= settings.calm_minutes]
    ended_start = state.run_start[ended]
    ended_end = state.last_out[ended]
    ended_peak = state.peak[ended]
    _clear_excursion(state, ended)
    state.is_open[ended] = False

    # No anomaly open, outside the band: the excursion starts or goes on, and accumulates.
    at = todo[~is_open & out]
    run_start = state.run_start[at]
    state.run_start[at] = np.where(run_start == NO_MINUTE, minute, run_start)
    excess = state.excess[at] + (score[at] - k)
    state.excess[at] = excess
    state.peak[at] = np.maximum(state.peak[at], score[at])
    state.last_out[at] = minute

    # The excess passed the tolerance: the anomaly opens, described as the series is now.
    opened = at[excess > settings.tolerance_sigmas]
    state.is_open[opened] = True
    state.calm[opened] = 0
    state.detected[opened] = minute
    state.value[opened] = values[opened]
    mean = state.mean[opened]
    half_band = sd[opened] * k
    state.expected[opened] = mean
    state.band_low[opened] = mean - half_band
    state.band_high[opened] = mean + half_band

    # No anomaly open, back inside the band: a pending excursion is forgotten.
    _clear_excursion(state, todo[~is_open & inside])
    return MinuteEvents(opened, ended, ended_start, ended_end, ended_peak)


def _clear_excursion(state: SeriesState, at: np.ndarray) -> None:
    state.excess[at] = 0.0
    state.peak[at] = 0.0
    state.calm[at] = 0
    state.run_start[at] = NO_MINUTE
    state.last_out[at] = NO_MINUTE


def severity(peak_score: float, settings: DetectorSettings) -> str:
    """Severity of a peak score: minor, major or critical, by ``settings.severity_sigmas``."""
    major, critical = settings.severity_sigmas
    if peak_score < major:
        return "minor"
    if peak_score < critical:
        return "major"
    return "critical"


class StreamingDetector(Generic[StateT]):
    """What every detector kind shares: series matching, labels, records and persistence.

    ``process`` takes the series points of one or more minutes; each minute must be newer than
    the last one processed. Series are identified by ``series_key``; a new key gets its state
    (in key order, so the state does not depend on row order) and keeps its metric, grouping
    and dimension values for the anomaly records. A kind gives its per-series arrays
    (:meth:`_empty_state`), their update for one minute (:meth:`_update`, element-wise, so any
    subset or order of series gives the same bits) and what it expects of a series
    (:meth:`_expected_at`).
    """

    kind: ClassVar[str]

    def __init__(self, customer: str, settings: DetectorSettings) -> None:
        if settings.kind != self.kind:
            raise ConfigError(
                f"detector kind {settings.kind!r} given to the {self.kind!r} detector; "
                "use make_detector to pick the detector by kind"
            )
        self.customer = customer
        self.settings = settings
        self._size = 0
        self._state = self._empty_state(0)
        self._keys = np.empty(0, np.uint64)
        self._labels = np.empty((0, 3), np.int32)
        self._last_minute: int | None = None

        # Strings of metric, grouping and dimension values, each kept once, with their codes.
        self._strings: list[str] = []
        self._string_codes: dict[str, int] = {}
        self._string_bytes = bytearray()
        self._string_ends = np.empty(0, np.int64)

        # Key lookup: one index over the first keys and a small one over those added since.
        self._main_index = pd.Index(np.empty(0, np.uint64))
        self._main_size = 0
        self._tail_index: pd.Index | None = None

        # The previous minute's keys and their positions: queries often repeat their row order.
        self._last_keys: np.ndarray | None = None
        self._last_positions: np.ndarray | None = None

    # --- public ---------------------------------------------------------------------------

    @property
    def series_count(self) -> int:
        """How many series the detector keeps state for."""
        return self._size

    @property
    def last_minute(self) -> datetime | None:
        """The newest minute processed (naive UTC), None before the first."""
        return None if self._last_minute is None else _to_datetime(self._last_minute)

    @property
    def state(self) -> StateT:
        """Views of the live per-series arrays, in series order (for inspection)."""
        return self._state.head(self._size)

    @property
    def series_keys(self) -> np.ndarray:
        """The series keys, in series order (a copy)."""
        return self._keys[: self._size].copy()

    def expected(self, keys: np.ndarray) -> np.ndarray:
        """The value each series is expected to take, one float64 per key in the order given;
        NaN for a key the detector does not know or whose series has no point yet.

        For the seed detector it is the series' mean, which stays as it was while a series is
        outside its band (nothing is learned there); for the seasonal one, what it expected of
        the series' latest point before seeing it.
        """
        keys = np.asarray(keys, dtype=np.uint64)
        out = np.full(len(keys), np.nan)
        if self._size == 0 or len(keys) == 0:
            return out
        positions = self._lookup(keys)
        known = positions >= 0
        out[known] = self._expected_at(positions[known])
        return out

    def process(self, points: pd.DataFrame) -> list[Anomaly]:
        """Feed the series points of one or more consecutive minutes.

        Parameters
        ----------
        points:
            A frame with :data:`anomaly.records.POINT_COLUMNS` (``minute``, ``series_key`` and
            ``value`` are required; the label columns are read only for new series). Rows may
            come in any order; minutes are processed in increasing order and each must be newer
            than :attr:`last_minute`. One row per series and minute.

        Returns
        -------
        list[Anomaly]
            The anomalies that opened (``end_minute`` None) or ended, in minute order and, within
            a minute, in series order.

        Raises
        ------
        DatasetError
            A required column is missing, a minute is not newer than :attr:`last_minute` (checked
            before anything changes), or a minute holds two rows of one series (checked minute
            by minute: the frame's earlier minutes stay applied).
        """
        if len(points) == 0:
            return []
        minutes, keys, values = _point_arrays(points)

        # Refuse old minutes before changing anything, so a bad frame leaves the state intact.
        first_minute = int(minutes.min())
        if self._last_minute is not None and first_minute <= self._last_minute:
            raise DatasetError(
                f"customer {self.customer!r}: points of minute {_to_datetime(first_minute)} "
                f"arrive after minute {_to_datetime(self._last_minute)} was processed; "
                "minutes must come in increasing order, each once"
            )

        # One slice of rows per minute, oldest first (no reordering in the common single minute).
        if int(minutes.max()) == first_minute:
            groups: list[tuple[int, np.ndarray | None]] = [(first_minute, None)]
        else:
            order = np.argsort(minutes, kind="stable")
            sorted_minutes = minutes[order]
            bounds = np.flatnonzero(sorted_minutes[1:] != sorted_minutes[:-1]) + 1
            groups = [
                (int(sorted_minutes[rows[0]]), order[rows])
                for rows in np.split(np.arange(len(order)), bounds)
            ]

        records: list[Anomaly] = []
        for minute, rows in groups:
            if rows is None:
                records.extend(self._process_minute(minute, keys, values, points, None))
            else:
                records.extend(self._process_minute(minute, keys[rows], values[rows], points, rows))
        return records

    def open_anomalies(self) -> list[Anomaly]:
        """The anomalies open now, in series order, with their peak so far."""
        state = self.state
        at = np.flatnonzero(state.is_open)
        return [self._record(int(i), None, float(state.peak[i])) for i in at]

    def to_bytes(self) -> bytes:
        """The whole state as bytes: deterministic, exact, restorable with :meth:`from_bytes`.

        Layout: a magic tag, a JSON header (format, kind, customer, settings, last minute and
        the arrays' names, dtypes and lengths), the arrays' raw little-endian bytes, and a
        CRC-32 of everything before it. Nothing is pickled.
        """
        arrays = self._persisted_arrays()
        header = {
            "format": _FORMAT,
            "kind": self.kind,
            "customer": self.customer,
            "settings": _settings_dict(self.settings),
            "last_minute": self._last_minute,
            "series_count": self._size,
            "arrays": [[name, array.dtype.str, len(array)] for name, array in arrays.items()],
        }
        head = json.dumps(header, sort_keys=True).encode()
        parts: list[bytes | memoryview] = [_MAGIC, struct.pack("<I", len(head)), head]
        parts.extend(np.ascontiguousarray(array).data.cast("B") for array in arrays.values())
        crc = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
        parts.append(struct.pack("<I", crc))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, customer: str, settings: DetectorSettings, blob: bytes) -> Self:
        """Rebuild a detector from :meth:`to_bytes` output.

        Raises
        ------
        DatasetError
            The blob is not a readable detector state (truncated, corrupt, unknown format) or
            belongs to another customer.
        ConfigError
            The blob is a state of another detector kind or of other settings, which would make
            the restored detector silently behave differently from the one that saved it.
        """
        header, payload = _read_blob(blob)
        if header.get("kind") != cls.kind:
            raise ConfigError(
                f"detector state is of kind {header.get('kind')!r}; this detector is "
                f"{cls.kind!r}: start a fresh state or use the matching detector kind"
            )
        if header.get("customer") != customer:
            raise DatasetError(
                f"detector state belongs to customer {header.get('customer')!r}, not {customer!r}"
            )
        saved = header.get("settings")
        if saved != _settings_dict(settings):
            raise ConfigError(
                f"customer {customer!r}: detector state was saved with settings {saved}, "
                f"which differ from the current {_settings_dict(settings)}"
            )
        detector = cls(customer, settings)
        detector._restore(header, payload)
        return detector

    # --- what a kind gives -----------------------------------------------------------------

    def _empty_state(self, size: int) -> StateT:
        """Arrays of ``size`` series that have seen nothing."""
        raise NotImplementedError

    def _update(self, state: StateT, values: np.ndarray, minute: int) -> MinuteEvents:
        """Feed one minute's values (aligned with ``state``, NaN: no point) in place."""
        raise NotImplementedError

    def _expected_at(self, at: np.ndarray) -> np.ndarray:
        """What the series at positions ``at`` are expected to take (see :meth:`expected`)."""
        raise NotImplementedError

    # --- one minute -----------------------------------------------------------------------

    def _process_minute(
        self,
        minute: int,
        keys: np.ndarray,
        values: np.ndarray,
        points: pd.DataFrame,
        rows: np.ndarray | None,
    ) -> list[Anomaly]:
        """Match the minute's rows to series state, update it, and describe what changed."""
        positions = self._positions(minute, keys, points, rows)

        # Dense: scatter the values over all series and update in place. Sparse: update only
        # the gathered rows' series. Both give the same bits.
        size = self._size
        live = self._state.head(size)
        if len(positions) >= DENSE_MIN_SHARE * size:
            aligned = np.full(size, np.nan)
            aligned[positions] = values
            events = self._update(live, aligned, minute)
        else:
            part = live.take(positions)
            events = self._update(part, values, minute)
            live.put(positions, part)
            events = _reindex(events, positions)
        self._last_minute = minute

        # Records in series order; a series opens or ends at most once a minute.
        if len(events.opened) == 0 and len(events.ended) == 0:
            return []
        records = [(int(i), self._record(int(i), None, float(live.peak[i]))) for i in events.opened]
        for i, start, end, peak in zip(
            events.ended, events.ended_start, events.ended_end, events.ended_peak, strict=True
        ):
            records.append((int(i), self._record(int(i), int(end), float(peak), int(start))))
        records.sort(key=lambda pair: pair[0])
        for _, record in records:
            logger.debug(
                "customer %s: anomaly %s for %s %s %r at %s",
                self.customer,
                "opened" if record.end_minute is None else "ended",
                record.metric,
                record.grouping,
                record.dimension_values,
                _to_datetime(minute),
            )
        return [record for _, record in records]

    def _positions(
        self, minute: int, keys: np.ndarray, points: pd.DataFrame, rows: np.ndarray | None
    ) -> np.ndarray:
        """State positions of ``keys``, adding series for new keys; rejects repeated keys."""
        last = self._last_keys
        if (
            last is not None
            and len(last) == len(keys)
            and last[0] == keys[0]
            and np.array_equal(last, keys)
        ):
            assert self._last_positions is not None
            return self._last_positions

        positions = self._lookup(keys)
        if positions.min() < 0:
            self._add_series(keys, positions, np.flatnonzero(positions < 0), points, rows)
        if _has_repeats(positions, self._size):
            raise DatasetError(
                f"customer {self.customer!r}: minute {_to_datetime(minute)} has more than one "
                "row for the same series_key; the series query must return one row per series"
            )

        self._last_keys = keys.copy()
        self._last_positions = positions
        return positions

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        positions = self._main_index.get_indexer(keys)
        if self._tail_index is not None:
            missing = np.flatnonzero(positions < 0)
            if len(missing):
                found = self._tail_index.get_indexer(keys[missing])
                hit = found >= 0
                positions[missing[hit]] = found[hit] + self._main_size
        return positions

    def _add_series(
        self,
        keys: np.ndarray,
        positions: np.ndarray,
        new: np.ndarray,
        points: pd.DataFrame,
        rows: np.ndarray | None,
    ) -> None:
        """Give state to the keys at ``new`` (in key order) and fill in their positions."""
        new_keys, first, inverse = np.unique(keys[new], return_index=True, return_inverse=True)
        if len(new_keys) < len(new):
            raise DatasetError(
                f"customer {self.customer!r}: a new series_key appears in more than one row of "
                "one minute; the series query must return one row per series"
            )
        label_rows = new[first]
        if rows is not None:
            label_rows = rows[label_rows]
        labels = self._encode_labels(points, label_rows)

        # Grow the arrays geometrically, then append the new series.
        start, end = self._size, self._size + len(new_keys)
        self._reserve(end)
        self._keys[start:end] = new_keys
        self._labels[start:end] = labels
        self._size = end
        positions[new] = start + inverse

        # Index the new keys: in the small tail index, or all of them anew when it grew large.
        if self._main_size == 0 or end - self._main_size > TAIL_MAX_SHARE * end:
            self._main_index = pd.Index(self._keys[:end].copy())
            self._main_size = end
            self._tail_index = None
        else:
            self._tail_index = pd.Index(self._keys[self._main_size : end].copy())
        logger.debug("customer %s: %d new series, %d in all", self.customer, len(new_keys), end)

    def _encode_labels(self, points: pd.DataFrame, label_rows: np.ndarray) -> np.ndarray:
        """String codes of the label columns at ``label_rows``, adding unseen strings."""
        missing = [name for name in _LABEL_COLUMNS if name not in points.columns]
        if missing:
            raise DatasetError(
                f"customer {self.customer!r}: points of new series lack column(s) {missing}; "
                f"expected {list(_LABEL_COLUMNS)}"
            )
        texts = np.concatenate(
            [points[name].to_numpy(dtype=object)[label_rows] for name in _LABEL_COLUMNS]
        )
        local, uniques = pd.factorize(texts, use_na_sentinel=False)

        # Only distinct strings go through Python; each unseen one is kept and encoded once.
        distinct = [value if isinstance(value, str) else _as_text(value) for value in uniques]
        known = self._string_codes
        fresh = [text for text in dict.fromkeys(distinct) if text not in known]
        if fresh:
            base = len(self._strings)
            known.update(zip(fresh, range(base, base + len(fresh)), strict=True))
            self._strings.extend(fresh)
            encoded = [text.encode() for text in fresh]
            lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
            ends = np.cumsum(lengths) + len(self._string_bytes)
            self._string_bytes += b"".join(encoded)
            self._string_ends = np.concatenate([self._string_ends, ends])
        mapping = np.fromiter((known[text] for text in distinct), np.int32, len(distinct))
        return mapping[local].reshape(len(_LABEL_COLUMNS), -1).T

    def _reserve(self, size: int) -> None:
        capacity = len(self._keys)
        if size <= capacity:
            return
        capacity = max(size, 2 * capacity, 1024)
        grown = self._empty_state(capacity)
        grown.head(self._size).put(slice(None), self._state.head(self._size))
        self._state = grown
        self._keys = _grow(self._keys, capacity, self._size)
        self._labels = _grow(self._labels, capacity, self._size)

    def _record(self, at: int, end: int | None, peak: float, start: int | None = None) -> Anomaly:
        state = self._state
        metric, grouping, dimension_values = (self._strings[c] for c in self._labels[at])
        return Anomaly(
            customer=self.customer,
            metric=metric,
            grouping=grouping,
            dimension_values=dimension_values,
            start_minute=_to_datetime(int(state.run_start[at]) if start is None else start),
            end_minute=None if end is None else _to_datetime(end),
            detected_minute=_to_datetime(int(state.detected[at])),
            value=float(state.value[at]),
            expected=float(state.expected[at]),
            band_low=float(state.band_low[at]),
            band_high=float(state.band_high[at]),
            peak_score=peak,
            severity=severity(peak, self.settings),
        )

    # --- persistence ----------------------------------------------------------------------

    def _persisted_arrays(self) -> dict[str, np.ndarray]:
        size = self._size
        arrays: dict[str, np.ndarray] = {
            "series_key": self._keys[:size],
            "labels": self._labels[:size].ravel(),
        }
        # Arrays of more than one value per series (a seasonal profile) are kept row by row.
        arrays.update(
            {name: array[:size].reshape(-1) for name, array in self._state.arrays().items()}
        )
        arrays["strings"] = np.frombuffer(bytes(self._string_bytes), dtype=np.uint8)
        arrays["string_ends"] = self._string_ends
        return {
            name: array.astype(array.dtype.newbyteorder("<"), copy=False)
            for name, array in arrays.items()
        }

    def _restore(self, header: dict[str, Any], payload: memoryview) -> None:
        """Load the arrays a header describes, checking names, dtypes and lengths."""
        size = header.get("series_count")
        if not isinstance(size, int) or size < 0:
            raise DatasetError(f"detector state has a bad series_count {size!r}")
        template = self._persisted_arrays()
        specs = header.get("arrays")
        wanted = list(template)
        names = [s[0] if isinstance(s, list) and len(s) == 3 else None for s in specs or []]
        if not isinstance(specs, list) or names != wanted:
            raise DatasetError(f"detector state does not hold the arrays {wanted}")

        arrays: dict[str, np.ndarray] = {}
        offset = 0
        for name, dtype_text, length in specs:
            dtype = template[name].dtype
            if dtype_text != dtype.str or not isinstance(length, int) or length < 0:
                raise DatasetError(f"detector state array {name!r} is {dtype_text} x {length}")
            nbytes = dtype.itemsize * length
            if offset + nbytes > len(payload):
                raise DatasetError(f"detector state is truncated in array {name!r}")
            raw = np.frombuffer(payload, dtype, length, offset)
            arrays[name] = raw.astype(dtype.newbyteorder("="))
            offset += nbytes
        if offset != len(payload):
            raise DatasetError("detector state has bytes after its last array")

        # Series arrays must have their values per series, labels three codes per series.
        shapes = {name: array.shape[1:] for name, array in self._empty_state(0).arrays().items()}
        for name, shape in {"series_key": (), **shapes}.items():
            if len(arrays[name]) != size * int(np.prod(shape)):
                raise DatasetError(f"detector state array {name!r} does not hold {size} series")
        if len(arrays["labels"]) != 3 * size:
            raise DatasetError(f"detector state labels do not hold {size} series")
        self._restore_strings(arrays["strings"], arrays["string_ends"])
        labels = arrays["labels"].reshape(size, 3)
        if size and (labels.min() < 0 or labels.max() >= len(self._strings)):
            raise DatasetError("detector state labels refer to strings it does not hold")

        keys = arrays["series_key"]
        index = pd.Index(keys)
        if not index.is_unique:
            raise DatasetError("detector state holds a series_key twice")
        self._reserve(size)
        self._keys[:size] = keys
        self._labels[:size] = labels
        restored = type(self._state)(
            **{name: arrays[name].reshape(size, *shape) for name, shape in shapes.items()}
        )
        self._state.head(size).put(slice(None), restored)
        self._size = size
        self._main_index, self._main_size, self._tail_index = index, size, None
        last = header.get("last_minute")
        if last is not None and not isinstance(last, int):
            raise DatasetError(f"detector state has a bad last_minute {last!r}")
        self._last_minute = last

    def _restore_strings(self, blob: np.ndarray, ends: np.ndarray) -> None:
        total = int(ends[-1]) if len(ends) else 0
        if total != len(blob) or (len(ends) and (ends[0] < 0 or np.any(np.diff(ends) < 0))):
            raise DatasetError("detector state strings are inconsistent")
        raw = blob.tobytes()
        starts = np.concatenate([np.zeros(1, np.int64), ends])[:-1].tolist()
        try:
            strings = [raw[a:b].decode() for a, b in zip(starts, ends.tolist(), strict=True)]
        except UnicodeDecodeError:
            raise DatasetError("detector state strings are not valid UTF-8") from None
        self._strings = strings
        self._string_codes = {text: code for code, text in enumerate(strings)}
        if len(self._string_codes) != len(strings):
            raise DatasetError("detector state holds a string twice")
        self._string_bytes = bytearray(raw)
        self._string_ends = ends.copy()


class SeedDetector(StreamingDetector[SeriesState]):
    """The seed algorithm over every series of one customer.

    Per series: an exponentially decayed mean and variance (``mean <- d*mean + (1-d)*x`` and
    the matching decayed variance), a band of ``band_sigmas`` standard deviations around the
    mean, the standard deviation floored at ``min_std_fraction * |mean|`` and at
    :data:`STD_EPSILON`.

    Semantics, where the seed left a choice:

    - Warm-up counts the series' own finite points: a series scores its point only after it
      has seen ``warmup_minutes`` of them (at least one, so there is a mean), so a series first
      seen late warms up from then. During warm-up every finite point is learned.
    - After warm-up, a point outside the band is never learned, whether or not an anomaly is
      open yet. Learning from a pending excursion would pull the mean towards it and widen the
      band with its squared distance, so a level shift of a few standard deviations would argue
      itself back inside before the excess reached the tolerance; and a lone outlier would
      inflate the variance for about 1/(1-d) minutes and blind the band. Slow drift still moves
      the mean through its in-band points. The cost: a permanent level shift is never learned,
      so its anomaly stays open (the same holds for the seed once an anomaly is open); a rule
      that re-bases a series after a long open anomaly would fix that.
    - While an anomaly is open nothing is learned, including its calm points.
    - An anomaly ends at the ``calm_minutes``-th consecutive in-band point (the first in-band
      point when it is 0); its ``end_minute`` is the minute of its last outside-band point, so
      the anomaly spans exactly the minutes the series was out, not the calm tail.
    - Missing, NaN and inf values are not points: they change nothing, do not count for warm-up
      and do not interrupt a calm run or an excursion.
    """

    kind: ClassVar[str] = "seed"

    def _empty_state(self, size: int) -> SeriesState:
        return SeriesState.empty(size)

    def _update(self, state: SeriesState, values: np.ndarray, minute: int) -> MinuteEvents:
        return update_arrays(state, values, minute, self.settings)

    def _expected_at(self, at: np.ndarray) -> np.ndarray:
        """The mean the band is centred on (it stays as it was while a series is outside its
        band, where nothing is learned); NaN before a series' first point."""
        state = self._state
        return np.where(state.count[at] > 0, state.mean[at], np.nan)


def make_detector(customer: str, settings: DetectorSettings) -> StreamingDetector[Any]:
    """The detector ``settings.kind`` names, with empty state, for ``customer``."""
    # Imported here: the seasonal module builds on this one.
    from anomaly.seasonal import SeasonalDetector

    kinds: dict[str, type[StreamingDetector[Any]]] = {
        SeedDetector.kind: SeedDetector,
        SeasonalDetector.kind: SeasonalDetector,
    }
    if settings.kind not in kinds:
        raise ConfigError(
            f"detector kind {settings.kind!r} is not known; allowed: {', '.join(sorted(kinds))}"
        )
    return kinds[settings.kind](customer, settings)


# --- helpers -------------------------------------------------------------------------------


def _point_arrays(points: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minutes (int64 ns), series keys (uint64) and values (float64) of a points frame."""
    missing = [name for name in _REQUIRED_COLUMNS if name not in points.columns]
    if missing:
        raise DatasetError(f"points frame lacks column(s) {missing}; it has {list(points.columns)}")
    minute = points["minute"]
    if isinstance(minute.dtype, pd.DatetimeTZDtype):
        minute = minute.dt.tz_convert("UTC").dt.tz_localize(None)
    elif not np.issubdtype(minute.dtype, np.datetime64):
        try:
            minute = pd.to_datetime(minute)
        except (TypeError, ValueError) as err:
            raise DatasetError(f"points column 'minute' is not a time: {err}") from None
    minutes = minute.to_numpy().astype("datetime64[ns]", copy=False).view(np.int64)
    if np.any(minutes == NO_MINUTE):
        raise DatasetError("points column 'minute' has missing times (NaT)")
    try:
        keys = points["series_key"].to_numpy(dtype=np.uint64)
        values = points["value"].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"points columns series_key/value are malformed: {err}") from None
    return minutes, keys, values


def _as_text(value: object) -> str:
    """A label as text: missing values (None, NaN, NA) are the empty string."""
    if isinstance(value, str):
        return value
    if value is None or value is pd.NA or value != value:
        return ""
    return str(value)


def _has_repeats(positions: np.ndarray, size: int) -> bool:
    """Whether a position occurs twice (a series with two rows in one minute)."""
    if len(positions) >= DENSE_MIN_SHARE * size:
        seen = np.zeros(size, np.bool_)
        seen[positions] = True
        return int(np.count_nonzero(seen)) != len(positions)
    return len(np.unique(positions)) != len(positions)


def _reindex(events: MinuteEvents, positions: np.ndarray) -> MinuteEvents:
    """Events of a gathered part, mapped back to positions in the whole state."""
    return MinuteEvents(
        positions[events.opened],
        positions[events.ended],
        events.ended_start,
        events.ended_end,
        events.ended_peak,
    )


def _grow(array: np.ndarray, capacity: int, used: int) -> np.ndarray:
    grown = np.zeros((capacity, *array.shape[1:]), array.dtype)
    grown[:used] = array[:used]
    return grown


def _to_datetime(minute: int) -> datetime:
    return _EPOCH + timedelta(microseconds=minute // 1000)


def _settings_dict(settings: DetectorSettings) -> dict[str, Any]:
    """Settings as plain JSON values (tuples as lists), for saving and comparing."""
    return json.loads(json.dumps(asdict(settings)))


def _read_blob(blob: bytes) -> tuple[dict[str, Any], memoryview]:
    """Check a state blob's frame and checksum; return its header and array bytes."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise DatasetError(f"detector state must be bytes, got {type(blob).__name__}")
    data = memoryview(blob).cast("B")
    if len(data) < len(_MAGIC) + 8 or bytes(data[: len(_MAGIC)]) != _MAGIC:
        raise DatasetError("detector state is not a state blob (missing its magic tag)")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise DatasetError("detector state is corrupt or truncated (checksum mismatch)")
    start = len(_MAGIC) + 4
    (head_length,) = struct.unpack("<I", data[len(_MAGIC) : start])
    if start + head_length > len(data) - 4:
        raise DatasetError("detector state header is truncated")
    try:
        header = json.loads(bytes(data[start : start + head_length]))
    except ValueError:
        raise DatasetError("detector state header is not valid JSON") from None
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise DatasetError(f"detector state format {found!r} is not known; allowed: {_FORMAT}")
    return header, data[start + head_length : -4]
