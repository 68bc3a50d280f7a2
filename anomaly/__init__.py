"""Realtime anomaly detection over ClickHouse, run under Ray or Spark."""

import os as _os

# Ray reads this when it is imported, not at ray.init(): without it a local Ray binds the
# machine's public interface. Importing this package first keeps local Ray on 127.0.0.1.
_os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

__version__ = "0.1.0"
