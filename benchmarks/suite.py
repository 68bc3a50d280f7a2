"""Every benchmark in one run: query, detector, engines and scaling, side by side.

Each figure is a ratio or a rate of two things measured in the same run, and the output names
the machine (cores, memory) and the versions it ran on, so runs on different machines compare.
Writes ``reports/benchmarks/bench-<timestamp>.{json,md}`` and ``latest.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import psutil
import yaml
from tqdm.auto import tqdm

from anomaly.config import ROOT, load_params, reports_root
from anomaly.errors import ConfigError, report_failure
from anomaly.store import Store
from benchmarks import bench_capacity, bench_detector, bench_engines, bench_queries, bench_scaling
from benchmarks.summary import HEADLINE_COLUMNS, headline, table, to_markdown
from main import positive_int

SIZES = ROOT / "params" / "benchmarks"
SECTIONS = ("query", "detector", "engines", "scaling")
GIB = 1024**3
PACKAGES = ("ray", "pyspark", "chdb", "clickhouse-connect", "numpy", "pandas")


# --- sizes -------------------------------------------------------------------------------------


# Each section's sizes, one field a key of its section in params/benchmarks/<size>.yaml, where
# every key is explained.


@dataclass(frozen=True)
class QuerySize:
    params_file: str
    minutes: int
    normal_customer: str
    heavy_customer: str
    skew: float
    repeats: int
    catch_up: tuple[int, ...]
    catch_up_repeats: int


@dataclass(frozen=True)
class DetectorSize:
    series: int
    minutes: int
    python_series: int
    python_minutes: int
    warmup: int
    seed: int


@dataclass(frozen=True)
class EnginesSize:
    overhead_customers: tuple[int, ...]
    overhead_minutes: int
    rounds: int
    speed: float
    capacity_customers: tuple[int, ...]
    capacity_minutes: int
    capacity_history_minutes: int
    capacity_events_per_minute: int
    capacity_p95_limit_s: float
    capacity_growth_limit_s: float
    capacity_seconds: float
    memory_fraction: float


@dataclass(frozen=True)
class ScalingSize:
    params_file: str
    heavy_customer: str
    skews: tuple[float, ...]
    engines: tuple[str, ...]
    minutes: int
    history_minutes: int
    speed: float


@dataclass(frozen=True)
class Sizes:
    name: str
    query: QuerySize
    detector: DetectorSize
    engines: EnginesSize
    scaling: ScalingSize


def size_names() -> list[str]:
    return sorted(path.stem for path in SIZES.glob("*.yaml"))


def load_sizes(name: str) -> Sizes:
    """The sizes in ``params/benchmarks/<name>.yaml``; every key of every section required."""
    if name not in size_names():
        raise ConfigError(f"size {name!r} is not known; sizes: {', '.join(size_names())}")
    path = SIZES / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text()) or {}
    kinds = {
        "query": QuerySize,
        "detector": DetectorSize,
        "engines": EnginesSize,
        "scaling": ScalingSize,
    }
    unknown = sorted(set(raw) - set(kinds))
    if unknown:
        raise ConfigError(f"{path.name}: unknown section(s) {unknown}; allowed: {list(kinds)}")
    sections = {
        key: _section(kind, raw.get(key), f"{path.name} {key}") for key, kind in kinds.items()
    }
    sizes = Sizes(name=name, **sections)

    if max(sizes.query.catch_up) > sizes.query.minutes:
        raise ConfigError(
            f"{path.name} query: catch_up {list(sizes.query.catch_up)} needs at "
            f"least {max(sizes.query.catch_up)} minutes, not {sizes.query.minutes}"
        )
    return sizes


def _section(kind: Any, mapping: Any, where: str) -> Any:
    """A size dataclass from its YAML mapping: exactly its keys, lists as tuples."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must be a mapping of settings, got {mapping!r}")
    names = {f.name for f in fields(kind)}
    if set(mapping) != names:
        missing, extra = sorted(names - set(mapping)), sorted(set(mapping) - names)
        raise ConfigError(f"{where}: missing {missing}, unknown {extra}")
    values = {
        key: tuple(value) if isinstance(value, list) else value for key, value in mapping.items()
    }
    return kind(**values)


# --- the machine -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on: cores, memory, system and its load when it started."""
    memory = psutil.virtual_memory()
    return {
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(memory.total / GIB, 1),
        "memory_available_gib": round(memory.available / GIB, 1),
        "system": platform.platform(),
        "processor": platform.machine(),
        "load_average_before": os.getloadavg()[0],
    }


def versions() -> dict[str, str]:
    """Python's and the measured packages' versions (ClickHouse's own comes from the server)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


# --- the sections ------------------------------------------------------------------------------


@dataclass
class Context:
    """What every section shares: sizes, parallelism, a scratch folder and the progress line."""

    sizes: Sizes
    cpus: int
    folder: Path
    say: Callable[[str], None]

    def url(self, name: str) -> str:
        """A chDB folder of the section's own (``chdb:<dir>``)."""
        return f"chdb:{self.folder / name / 'clickhouse'}"


def run_query(context: Context) -> dict[str, Any]:
    size = context.sizes.query
    params = load_params(
        ROOT / size.params_file,
        {
            "clickhouse.url": context.url("query"),
            "dataset.history_minutes": 0,
            "dataset.heavy_customer": size.heavy_customer,
            "dataset.skew": size.skew,
            "dataset.skew_sudden": False,
            "dataset.anomalies": [],
        },
    )
    context.say(
        f"query: loading {size.minutes} minutes of {size.params_file}, "
        f"{size.heavy_customer} at skew {size.skew:g} ..."
    )
    customers = {"normal": size.normal_customer, "heavy": size.heavy_customer}
    return bench_queries.measure(params, size.minutes, customers, size.repeats, size.catch_up,
                                 size.catch_up_repeats, say=context.say)  # fmt: skip


def run_detector(context: Context) -> dict[str, Any]:
    size = context.sizes.detector
    context.say(f"detector: {size.series} series x {size.minutes} minutes ...")
    figures = bench_detector.measure(
        size.series, size.minutes, size.python_series, size.python_minutes, size.warmup, size.seed
    )
    context.say(
        f"detector: {figures['process_updates_per_s'] / 1e6:.1f} M series-updates/s with "
        f"matching, {figures['process_ratio']:.2f} of the bare update; "
        f"{figures['held_kib_per_1000_series']:.0f} KiB per 1000 series"
    )
    return figures


def run_engines(context: Context) -> dict[str, Any]:
    size = context.sizes.engines
    context.say(f"engines: idle overhead at {list(size.overhead_customers)} customers ...")
    # The JVM stays up for the rest of the run (stopped at its end): idle, it costs memory only.
    overhead = bench_engines.measure(size.overhead_customers, size.overhead_minutes, size.speed,
                                     size.rounds, context.cpus, keep_jvm=True)  # fmt: skip
    for row in overhead["rows"]:
        row["spark_tick_over_ray_minute"] = bench_engines.ratio(
            row["spark_tick_p50_s"], row["ray_lag_p50_s"]
        )
        context.say(
            f"engines: {row['customers']} idle customers: Ray minute "
            f"{row['ray_lag_p50_s']:.3f} s, Spark tick {row['spark_tick_p50_s']:.3f} s "
            f"(x{row['spark_tick_over_ray_minute']:.1f}); Ray actor "
            f"{row['ray_actor_uss_mib']:.0f} MiB unique"
        )

    limits = bench_capacity.Limits(size.capacity_p95_limit_s, size.capacity_growth_limit_s,
                                   size.capacity_seconds, size.memory_fraction)  # fmt: skip
    url = context.url("capacity")

    def make_params(count: int) -> Any:
        return bench_capacity.light_params(
            count, url, size.capacity_minutes, size.speed, size.capacity_events_per_minute,
            size.capacity_history_minutes,
        )  # fmt: skip

    capacity = []
    with Store(make_params(1).clickhouse) as store:
        client = store.client()
        setup = bench_capacity.ProbeSetup(client, store.endpoint_pid, context.cpus,
                                          context.folder / "capacity" / "reports")  # fmt: skip
        for engine in ("ray", "spark"):
            context.say(f"engines: customers {engine} keeps without lag at {size.speed:g}x ...")
            with bench_engines.engine_session(engine, context.cpus):
                found = bench_capacity.search(engine, size.capacity_customers, make_params,
                                              setup, limits, context.say)  # fmt: skip
            capacity.append(found)
            context.say(
                f"engines: {engine} keeps {found['most_customers']} customers; "
                f"limit: {found['limit']}"
            )
        client.close()
    return {
        "overhead": overhead,
        "capacity": capacity,
        "capacity_rule": {
            "speed": size.speed,
            "minutes": size.capacity_minutes,
            "events_per_minute": size.capacity_events_per_minute,
            "p95_limit_s": size.capacity_p95_limit_s,
            "growth_limit_s": size.capacity_growth_limit_s,
            "budget_s": size.capacity_seconds,
            "memory_fraction": size.memory_fraction,
        },
    }


def run_scaling(context: Context) -> dict[str, Any]:
    size = context.sizes.scaling
    params = load_params(
        ROOT / size.params_file,
        {
            "clickhouse.url": context.url("scaling"),
            "run.minutes": size.minutes,
            "run.speed": size.speed,
            "dataset.history_minutes": size.history_minutes,
            "dataset.heavy_customer": size.heavy_customer,
            "dataset.skew_sudden": True,
            "dataset.anomalies": [],
        },
    )
    context.say(
        f"scaling: {size.heavy_customer} at skews {list(size.skews)} on "
        f"{', '.join(size.engines)} ..."
    )
    return bench_scaling.measure(params, size.engines, size.skews, size.heavy_customer,
                                 context.cpus, context.folder / "scaling" / "reports",
                                 say=context.say)  # fmt: skip


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "query": run_query,
    "detector": run_detector,
    "engines": run_engines,
    "scaling": run_scaling,
}


# --- the command -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the value, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--size",
        default="full",
        help=f"params/benchmarks/<size>.yaml: {', '.join(size_names())} "
        "(default: full, about 10 minutes on 2 cores)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run just these sections ({', '.join(SECTIONS)})",
    )
    parser.add_argument(
        "--cpus", type=positive_int, default=2, help="Ray CPUs and Spark local slots (default: 2)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where the reports go (default: reports/benchmarks)"
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="a traceback on errors; warnings from the engines",
    )
    return parser.parse_args(argv)


def run(sizes: Sizes, sections: Sequence[str], cpus: int, command: str) -> dict[str, Any]:
    """Run ``sections`` in order and return every figure, with the machine and versions."""
    results: dict[str, Any] = {
        "size": sizes.name,
        "command": command,
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpus": cpus,
        "machine": machine(),
        "versions": versions(),
        "sizes": dataclasses.asdict(sizes),
        "section_wall_s": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="benchmarks-") as folder:
        context = Context(sizes, cpus, Path(folder), tqdm.write)
        try:
            for name in tqdm(sections, desc="benchmarks", unit="section", leave=False):
                begun = time.perf_counter()
                results[name] = RUNNERS[name](context)
                results["section_wall_s"][name] = time.perf_counter() - begun
        finally:
            bench_engines.stop_spark_jvm()
    if "query" in results:
        results["versions"]["clickhouse"] = results["query"]["clickhouse_version"]
    results["wall_s"] = time.perf_counter() - started
    results["machine"]["load_average_after"] = os.getloadavg()[0]
    results["headline"] = headline(results)
    return results


def write(results: dict[str, Any], folder: Path) -> list[Path]:
    """``bench-<timestamp>.{json,md}`` and copies as ``latest.{json,md}``."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    paths = [folder / f"bench-{stamp}.json", folder / f"bench-{stamp}.md"]
    paths[0].write_text(json.dumps(results, indent=2, default=str) + "\n")
    paths[1].write_text(to_markdown(results))
    for path in paths:
        shutil.copyfile(path, folder / f"latest{path.suffix}")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    command = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        sizes = load_sizes(args.size)
        sections = [name for name in SECTIONS if name in (args.only or SECTIONS)]
        results = run(sizes, sections, args.cpus, command.strip())
        paths = write(results, args.out or reports_root() / "benchmarks")
    except (Exception, KeyboardInterrupt) as err:
        return report_failure(err, args.verbose)

    print()
    print(table(results["headline"], HEADLINE_COLUMNS))
    print(
        f"\nwall time {results['wall_s']:.0f} s; written: {paths[0]}, {paths[1]} "
        "(and latest.json, latest.md beside them)"
    )
    return 0
