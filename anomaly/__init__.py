"""Realtime anomaly detection over ClickHouse, run under Ray or Spark."""

__version__ = "0.1.0"
