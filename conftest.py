"""Test-session setup shared by the unit tests and the notebooks (nbval).

Every test and notebook talks to a ClickHouse in a temporary folder, never to data/: a
JupyterLab session's endpoint or a user's loaded dataset is left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from anomaly.config import URL_ENV

_folder: str | None = None


def pytest_configure(config: object) -> None:
    global _folder
    if not os.environ.get(URL_ENV):
        _folder = tempfile.mkdtemp(prefix="anomaly-tests-")
        os.environ[URL_ENV] = f"chdb:{_folder}/clickhouse"


def pytest_unconfigure(config: object) -> None:
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)
        os.environ.pop(URL_ENV, None)
