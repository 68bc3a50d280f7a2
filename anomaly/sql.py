"""Validation of what goes into SQL: plain identifiers and single aggregate expressions.

Nothing from a params file reaches a statement as text unless it passed these checks;
values always travel as bound parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from anomaly.errors import ExpressionError, IdentifierError

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_NUMBER = re.compile(r"(?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,9})?")

# Aggregates a metric may use, with how many column arguments and numeric parameters each takes.
AGGREGATES: dict[str, tuple[tuple[int, ...], int]] = {
    "count": ((0, 1), 0),
    "sum": ((1,), 0),
    "avg": ((1,), 0),
    "min": ((1,), 0),
    "max": ((1,), 0),
    "median": ((1,), 0),
    "stddevPop": ((1,), 0),
    "uniq": ((1,), 0),
    "uniqExact": ((1,), 0),
    "quantile": ((1,), 1),
    "quantileExact": ((1,), 1),
    "quantileTDigest": ((1,), 1),
}

_CALL = re.compile(
    r"\s*(?P<func>[A-Za-z_][A-Za-z0-9_]*)\s*"
    r"(?:\((?P<params>[^()]*)\)\s*)?"
    r"\((?P<args>[^()]*)\)\s*"
)


def identifier(name: object, what: str = "identifier") -> str:
    """Return ``name`` if it is a plain identifier (letters, digits, underscore), else raise.

    Parameters
    ----------
    name:
        The candidate, as read from a params file.
    what:
        What the name is for, used in the error message ("column", "table", ...).
    """
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise IdentifierError(
            f"{what} {name!r} is not a plain name: use letters, digits and underscores, "
            "starting with a letter or underscore, at most 63 characters"
        )
    return name


def quote(name: str) -> str:
    """Backtick-quote a name that already passed :func:`identifier`."""
    return f"`{identifier(name)}`"


@dataclass(frozen=True)
class Aggregate:
    """A parsed metric expression: one aggregate function over plain columns."""

    function: str
    parameters: tuple[str, ...]
    columns: tuple[str, ...]

    def to_sql(self) -> str:
        """The expression rebuilt from its validated parts (never the text as written)."""
        params = f"({', '.join(self.parameters)})" if self.parameters else ""
        args = ", ".join(quote(c) for c in self.columns)
        return f"{self.function}{params}({args})"


def parse_aggregate(expression: object, metric: str = "?") -> Aggregate:
    """Parse ``expression`` as one allowed aggregate, e.g. ``quantile(0.95)(latency_ms)``.

    Raises
    ------
    ExpressionError
        Naming the metric and the expression, when it is not exactly one allowed aggregate
        over plain column names with numeric parameters.
    """
    allowed = ", ".join(sorted(AGGREGATES))
    if not isinstance(expression, str):
        raise ExpressionError(f"metric {metric!r}: expression {expression!r} is not a string")
    match = _CALL.fullmatch(expression)
    if match is None:
        raise ExpressionError(
            f"metric {metric!r}: {expression!r} is not a single aggregate call such as "
            f"sum(column) or quantile(0.95)(column); allowed functions: {allowed}"
        )

    function = match["func"]
    if function not in AGGREGATES:
        raise ExpressionError(
            f"metric {metric!r}: {function!r} in {expression!r} is not an allowed aggregate; "
            f"allowed: {allowed}"
        )
    arities, n_params = AGGREGATES[function]

    raw_params = match["params"]
    parameters = _split(raw_params) if raw_params is not None else ()
    if len(parameters) != n_params or any(not _NUMBER.fullmatch(p) for p in parameters):
        raise ExpressionError(
            f"metric {metric!r}: {function} in {expression!r} takes {n_params} numeric "
            f"parameter(s), got {raw_params!r}"
        )
    if function.startswith("quantile") and not 0.0 <= float(parameters[0]) <= 1.0:
        raise ExpressionError(
            f"metric {metric!r}: quantile level {parameters[0]} in {expression!r} "
            "must be between 0 and 1"
        )

    columns = _split(match["args"])
    if len(columns) not in arities:
        raise ExpressionError(
            f"metric {metric!r}: {function} in {expression!r} takes "
            f"{' or '.join(map(str, arities))} column(s), got {len(columns)}"
        )
    for column in columns:
        try:
            identifier(column, "column")
        except IdentifierError as err:
            raise ExpressionError(f"metric {metric!r} in {expression!r}: {err}") from None
    return Aggregate(function, parameters, columns)


def _split(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(","))
    return () if parts == ("",) else parts
