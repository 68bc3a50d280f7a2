"""Run the workbook's notebooks headless with papermill and collect their outputs in reports/.

python -m anomaly.report                 # the study sizes (params/papermill/study/)
python -m anomaly.report --size small    # the quick sizes the tests use
python -m anomaly.report --only skew_experiment
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import yaml

from anomaly.config import ROOT, reports_root
from anomaly.errors import ConfigError

log = logging.getLogger(__name__)

NOTEBOOKS = ("run_ray", "run_spark", "skew_experiment", "explore")
PARAMS = ROOT / "params" / "papermill"


def notebook_parameters(size: str, name: str) -> dict[str, object]:
    """The papermill parameters of a notebook at a size (a YAML mapping; empty if absent)."""
    path = PARAMS / size / f"{name}.yaml"
    if not path.exists():
        return {}
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of notebook parameters")
    return values


def run_notebooks(size: str = "study", only: list[str] | None = None,
                  reports: Path | None = None) -> list[Path]:  # fmt: skip
    """Execute the notebooks in order; executed copies go to ``reports/notebooks``."""
    import papermill

    if not (PARAMS / size).is_dir():
        sizes = ", ".join(sorted(p.name for p in PARAMS.iterdir() if p.is_dir()))
        raise ConfigError(f"report size {size!r} has no folder in {PARAMS}; sizes: {sizes}")
    names = only or list(NOTEBOOKS)
    unknown = sorted(set(names) - set(NOTEBOOKS))
    if unknown:
        raise ConfigError(f"unknown notebook(s) {unknown}; known: {', '.join(NOTEBOOKS)}")

    folder = (reports or reports_root()) / "notebooks"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        started = time.time()
        target = folder / f"{name}.ipynb"
        log.info("running %s (%s)", name, size)
        papermill.execute_notebook(
            str(ROOT / "notebooks" / f"{name}.ipynb"), str(target),
            parameters=notebook_parameters(size, name), cwd=str(ROOT / "notebooks"),
            progress_bar=False,
        )  # fmt: skip
        log.info("%s done in %.0f s -> %s", name, time.time() - started, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the notebooks headless into reports/.")
    parser.add_argument("--size", default="study", help="params/papermill/<size>/ (study, small)")
    parser.add_argument("--only", nargs="*", choices=NOTEBOOKS, help="run just these notebooks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    try:
        paths = run_notebooks(args.size, args.only)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in paths))
    print(f"figures and summaries: {reports_root()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
