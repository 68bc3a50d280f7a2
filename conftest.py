"""Test-session setup shared by the unit tests and the notebooks (nbval).

Every test and notebook talks to a ClickHouse in a temporary folder, never to data/, and
writes its reports there too, never to reports/: a JupyterLab session's endpoint, a user's
loaded dataset and the last study's figures are left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from anomaly.config import REPORTS_ENV, URL_ENV

_folder: str | None = None


def pytest_configure(config: object) -> None:
    global _folder
    if not os.environ.get(URL_ENV):
        _folder = tempfile.mkdtemp(prefix="anomaly-tests-")
        os.environ[URL_ENV] = f"chdb:{_folder}/clickhouse"
        os.environ.setdefault(REPORTS_ENV, f"{_folder}/reports")


def pytest_unconfigure(config: object) -> None:
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)
        os.environ.pop(URL_ENV, None)
        os.environ.pop(REPORTS_ENV, None)
