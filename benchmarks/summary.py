"""The headline of a benchmark run and its Markdown report, from the figures ``suite`` gathers."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.bench_detector import report as detector_report
from benchmarks.bench_engines import markdown

Columns = list[tuple[str, str]]

HEADLINE_COLUMNS: Columns = [("section", "section"), ("figure", "figure"), ("value", "value"),
                             ("unit", "unit"), ("aim", "aim"), ("meets", "meets aim")]  # fmt: skip
QUERY_COLUMNS: Columns = [
    ("role", "role"), ("customer", "customer"), ("rows_per_minute", "rows a minute"),
    ("points_per_minute", "series points"), ("pipeline_ms", "pipeline ms"),
    ("series_query_ms", "of it, series query ms"), ("bare_ms", "bare ms"),
    ("pipeline_over_bare", "pipeline / bare"),
]  # fmt: skip
CATCH_UP_COLUMNS: Columns = [
    ("customer", "customer"), ("k", "k"), ("one_query_s", "one query s"),
    ("single_queries_s", "k queries s"), ("one_over_single", "one / k"),
]  # fmt: skip
OVERHEAD_COLUMNS: Columns = [
    ("customers", "N"), ("ray_lag_p50_s", "Ray minute s"), ("spark_tick_p50_s", "Spark tick s"),
    ("spark_one_stage_job_s", "Spark bare job s"), ("spark_tick_over_ray_minute", "tick / minute"),
    ("ray_actor_rss_mib", "Ray actor RSS MiB"), ("ray_actor_uss_mib", "Ray actor unique MiB"),
]  # fmt: skip
CAPACITY_COLUMNS: Columns = [
    ("engine", "engine"), ("customers", "N"), ("kept_up", "kept up"), ("lag_p50_s", "lag p50 s"),
    ("lag_p95_s", "lag p95 s"), ("lag_growth_s", "growth s"), ("cpu_percent", "CPU %"),
    ("endpoint_cores", "ClickHouse cores"),
    ("memory_per_customer_mib", "memory added / N MiB"), ("tick_p50_s", "tick p50 s"),
    ("wall_s", "wall s"),
]  # fmt: skip
SCALING_COLUMNS: Columns = [
    ("engine", "engine"), ("skew", "skew"), ("rows_per_minute", "rows a minute"),
    ("query_s_per_minute", "query s"), ("series_s_per_minute", "series s"),
    ("detect_s_per_minute", "detect s"), ("cost_s", "cost s"), ("cost_vs_skew1", "x skew 1"),
    ("others_cost_s", "others' cost s"), ("cost_over_others", "x others"),
    ("rows_per_s", "rows/s"), ("heavy_p95_s", "heavy lag p95 s"),
    ("others_p95_s", "others lag p95 s"),
]  # fmt: skip


# The aims the figures are read against: (comparison, threshold).
AIMS: dict[str, tuple[str, float]] = {
    "pipeline_over_bare": ("<=", 1.3),
    "detector_m_updates_per_s": (">=", 10.0),
    "detector_ratio": (">=", 0.4),
    "ray_customers": (">=", 50),
}


def headline(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures that answer the benchmark's questions, each with its aim where it has one."""
    rows: list[dict[str, Any]] = []

    def add(section: str, figure: str, value: float, unit: str, aim: str | None = None) -> None:
        row = {"section": section, "figure": figure, "value": value, "unit": unit, "aim": "",
               "meets": None}  # fmt: skip
        if aim is not None:
            comparison, threshold = AIMS[aim]
            row["aim"] = f"{comparison} {threshold:g}"
            row["meets"] = value <= threshold if comparison == "<=" else value >= threshold
        rows.append(row)

    for row in results.get("query", {}).get("customers", []):
        add("query", f"pipeline / bare GROUP BY, one minute of the {row['role']} customer "
            f"({row['rows_per_minute']} rows)", row["pipeline_over_bare"], "ratio",
            "pipeline_over_bare")  # fmt: skip
        for catch in row["catch_up"]:
            add("query", f"{catch['k']} minutes in one query / {catch['k']} one-minute queries, "
                f"{row['role']} customer", catch["one_over_single"], "ratio")  # fmt: skip

    if "detector" in results:
        detector = results["detector"]
        add("detector", "series-updates per second per core, series matching included",
            detector["process_updates_per_s"] / 1e6, "M/s", "detector_m_updates_per_s")  # fmt: skip
        add("detector", "the same / bare numpy update of the same arrays",
            detector["process_ratio"], "ratio", "detector_ratio")  # fmt: skip
        add("detector", "rows reshuffled every minute / bare numpy update",
            detector["shuffled_ratio"], "ratio")  # fmt: skip
        add("detector", "memory of the detector's state per 1000 series",
            detector["held_kib_per_1000_series"], "KiB")  # fmt: skip

    if "engines" in results:
        engines = results["engines"]
        for row in engines["overhead"]["rows"]:
            add("engines", f"idle Spark tick / idle Ray minute, {row['customers']} customer(s)",
                row["spark_tick_over_ray_minute"], "ratio")  # fmt: skip
        add("engines", "memory per Ray actor (unique to it)",
            engines["overhead"]["rows"][0]["ray_actor_uss_mib"], "MiB")  # fmt: skip
        speed = engines["capacity_rule"]["speed"]
        for found in engines["capacity"]:
            add("engines", f"most customers {found['engine']} keeps without lag at {speed:g}x "
                f"(stopped by {found['stopped_by']})", found["most_customers"], "customers",
                "ray_customers" if found["engine"] == "ray" else None)  # fmt: skip

    if "scaling" in results:
        top = max(row["skew"] for row in results["scaling"]["rows"])
        for row in results["scaling"]["rows"]:
            if row["skew"] == top:
                add("scaling", f"heavy customer's minute cost, skew {top:g} / skew 1, "
                    f"{row['engine']}", row["cost_vs_skew1"], "ratio")  # fmt: skip
                add("scaling", f"heavy customer's minute cost / the others', skew {top:g}, "
                    f"{row['engine']}", row["cost_over_others"], "ratio")  # fmt: skip
                add("scaling", f"heavy customer's rows per second of minute cost, skew {top:g}, "
                    f"{row['engine']}", row["rows_per_s"] / 1e6, "M rows/s")  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]], columns: Columns) -> str:
    """bench_engines' Markdown table, numbers written for reading (about 3 significant digits)."""
    return markdown([{key: _cell(row.get(key)) for key, _ in columns} for row in rows], columns)


def to_markdown(results: dict[str, Any]) -> str:
    """The report: machine and versions, the headline, then each section's own tables."""
    machine = results["machine"]
    walls = ", ".join(f"{name} {s:.0f} s" for name, s in results["section_wall_s"].items())
    lines = [
        f"# Benchmarks, size {results['size']}, {results['started_at']}",
        "",
        f"Machine: {machine['cores']} cores ({machine['physical_cores']} physical), "
        f"{machine['memory_gib']} GiB memory ({machine['memory_available_gib']} GiB available "
        f"at the start), {machine['system']}; 1-minute load average "
        f"{machine['load_average_before']:.1f} before, {machine['load_average_after']:.1f} "
        f"after. Engines: {results['cpus']} Ray CPUs against Spark local[{results['cpus']}].",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "",
        f"Command: `{results['command']}`; wall time {results['wall_s']:.0f} s ({walls}).",
        "",
        "## Headline",
        "",
        table(results["headline"], HEADLINE_COLUMNS),
    ]
    if "query" in results:
        lines += _query(results["query"])
    if "detector" in results:
        lines += ["", "## Detector", "", "```", detector_report(results["detector"]), "```"]
    if "engines" in results:
        lines += _engines(results["engines"])
    if "scaling" in results:
        lines += _scaling(results["scaling"])
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "", True: "yes", False: "no"}[value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _query(query: dict[str, Any]) -> list[str]:
    in_ms = ("pipeline", "series_query", "bare")
    rows = [{**row, **{f"{key}_ms": row[f"{key}_s"] * 1e3 for key in in_ms}}
            for row in query["customers"]]  # fmt: skip
    catch = [{"customer": row["customer"], **c} for row in rows for c in row["catch_up"]]
    return [
        "",
        "## Query",
        "",
        f"ClickHouse {query['clickhouse_version']}, max_threads {query['max_threads']}, "
        f"{query['loaded_rows']:,} rows over {query['minutes']} minutes. Pipeline: query_series "
        "and to_points for one customer-minute, as a worker does before detection (the series "
        "query alone beside it). Bare: one "
        "GROUP BY GROUPING SETS of the same groupings and metrics over the same minute, read as "
        f"a frame through the same client. Medians of {query['repeats']} rounds, the three taking "
        "turns.",
        "",
        table(rows, QUERY_COLUMNS),
        "",
        "Catch-up: k minutes in one query against k one-minute queries, both through the "
        f"pipeline (medians of {query['catch_up_repeats']} rounds).",
        "",
        table(catch, CATCH_UP_COLUMNS),
    ]


def _engines(engines: dict[str, Any]) -> list[str]:
    settings = engines["overhead"]["settings"]
    rule = engines["capacity_rule"]
    probes = [probe for found in engines["capacity"] for probe in found["probes"]]
    lines = [
        "",
        "## Engines",
        "",
        f"Idle customers (no events), {settings['minutes']} minutes at {settings['speed']:g}x. "
        "Ray minute: an idle actor's lag p50 (its query, progress and checkpoint). Spark tick: "
        "the p50 of an idle tick's job; bare job: a one-stage job whose tasks do nothing.",
        "",
        table(engines["overhead"]["rows"], OVERHEAD_COLUMNS),
        "",
        f"Customers kept without lag at {rule['speed']:g}x: light customers (about "
        f"{rule['events_per_minute']} events a minute each, times the demo's volume factor), "
        f"{rule['minutes']} replayed minutes per probe. Kept up: every customer-minute "
        f"persisted, p95 lag under {rule['p95_limit_s']:g} s, and no growth: the median of the "
        "per-minute p95 lag over the last third of the minutes exceeds the first third's by "
        f"less than {rule['growth_limit_s']:g} s. The search stops at the first N that lags "
        "(halving below the first N when that one lags), or before a probe expected to end "
        f"past {rule['budget_s']:g} s per engine or to need {rule['memory_fraction']:.0%} of "
        "the available memory. CPU: the machine's, over the replay alone (not the start-up), "
        "and the embedded ClickHouse endpoint's in cores. Memory added: the machine's peak "
        "during the probe above its use before, over N (Ray: mostly its actors; Spark: mostly "
        "its Python workers, so not a cost per customer).",
        "",
        table(probes, CAPACITY_COLUMNS),
        "",
    ]
    for found in engines["capacity"]:
        lines.append(f"- {found['engine']}: {found['most_customers']} customers, stopped by "
                     f"{found['stopped_by']}; limit: {found['limit']}.")  # fmt: skip
    return lines


def _scaling(scaling: dict[str, Any]) -> list[str]:
    return [
        "",
        "## Scaling",
        "",
        f"The heavy customer ({scaling['heavy']}) among {scaling['customers']} customers, its "
        f"events times the skew from the first replayed minute; {scaling['minutes']} minutes at "
        f"{scaling['speed']:g}x per run. Cost: query + series + detect seconds per minute "
        "(median over its ticks, from the progress table); others' cost: the median of the "
        "other customers' costs in the same run. Recorded stage times include waiting for the "
        "CPU and the ClickHouse endpoint that all customers of a run share (under Ray every "
        "actor queries at the same moment), so 'x others' is the heavy customer's own growth "
        "with that shared part left out.",
        "",
        table(scaling["rows"], SCALING_COLUMNS),
    ]
