"""The project's named errors; every message names the bad value and what is allowed."""

from __future__ import annotations

import re
import sys

# Colour codes Ray puts around worker names in its error text.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A Python exception line inside an engine's error text: "package.SomeError: message".
_PYTHON_ERROR = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Fault)): (.+)$", re.MULTILINE)


def worker_cause(err: BaseException) -> str:
    """One line saying what failed inside an engine's worker, from the error the engine raised
    in the driver: Ray keeps the worker's exception as ``cause``; Spark only has the text of
    the Python traceback inside a Java one, whose last Python exception line is taken."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {first_line(cause)}"
    text = _ANSI.sub("", str(err))
    jvm = ("java.", "javax.", "org.", "scala.", "py4j.")
    found = [m for m in _PYTHON_ERROR.finditer(text) if not m.group(1).startswith(jvm)]
    if found:
        name, message = found[-1].groups()
        return f"{name.rsplit('.', 1)[-1]}: {message.strip()}"
    return first_line(err)


def report_failure(err: BaseException, verbose: bool, interrupted: str = "interrupted") -> int:
    """Print one line about a command's failure and return its exit code: 2 for the project's
    own errors, 130 for Ctrl-C, 1 for anything else (re-raised with ``verbose``, so its
    traceback shows)."""
    if isinstance(err, AnomalyError):
        print(f"error: {err}", file=sys.stderr)
        return 2
    if isinstance(err, KeyboardInterrupt):
        print(interrupted, file=sys.stderr)
        return 130
    if verbose:
        raise err
    print(f"error: {type(err).__name__}: {first_line(err)} (rerun with --verbose for the "
          "traceback)", file=sys.stderr)  # fmt: skip
    return 1


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type name when it has none), for one-line
    reports to a user."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


class AnomalyError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(AnomalyError, ValueError):
    """A params file or setting is malformed, unknown or inconsistent."""


class IdentifierError(ConfigError):
    """A table, column or metric name is not a plain identifier."""


class ExpressionError(ConfigError):
    """A metric expression is not an allowed aggregate over known columns."""


class StoreError(AnomalyError):
    """ClickHouse could not be reached or refused a statement."""


class EndpointError(StoreError):
    """The embedded ClickHouse endpoint could not be started or stopped."""


class DatasetError(AnomalyError, ValueError):
    """Input data is missing, empty or malformed."""


class EngineError(AnomalyError):
    """Ray or Spark failed to start or to finish a run."""
