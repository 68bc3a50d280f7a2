"""The project's named errors; every message names the bad value and what is allowed."""


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
