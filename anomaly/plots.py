"""The workbook's plots: lag over time, lag against skew, isolation factor, stage times, one
series with its band, and an anomaly's root-cause ranking. Each returns the matplotlib Figure;
titles, axes and legends set."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

STAGE_COLUMNS = ["restore_s", "query_s", "series_s", "detect_s", "persist_s", "checkpoint_s"]
HEAVY_STYLE = {"color": "tab:red", "linewidth": 2.4, "zorder": 3}
OTHER_STYLE = {"linewidth": 1.0, "alpha": 0.7}


def lag_over_time(lags: pd.DataFrame, skew: float, heavy: str) -> Figure:
    """Lag per customer over the replayed minutes, one panel per engine, heavy in red."""
    data = lags[lags["skew"] == skew]
    engines = list(dict.fromkeys(data["engine"]))
    fig, axes = plt.subplots(1, len(engines), figsize=(5.5 * len(engines), 4), sharey=True,
                             squeeze=False)  # fmt: skip
    first = data["minute"].min()
    for ax, engine in zip(axes[0], engines, strict=True):
        mine = data[data["engine"] == engine]
        for customer, group in mine.groupby("customer"):
            x = (group["minute"] - first).dt.total_seconds() / 60
            style = HEAVY_STYLE if customer == heavy else OTHER_STYLE
            label = f"{customer} (heavy)" if customer == heavy else customer
            ax.plot(x, group["lag_s"], label=label, **style)
        ax.set_title(f"{engine}: lag per customer, skew {skew:g}")
        ax.set_xlabel("replayed minute (simulated)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("lag (wall seconds)")
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def p95_against_skew(table: pd.DataFrame) -> Figure:
    """p95 lag of the other customers (solid) and of the heavy one (dashed) against skew."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for engine, group in table.groupby("engine"):
        line = ax.plot(group["skew"], group["others_p95_s"], marker="o",
                       label=f"{engine}: other customers")  # fmt: skip
        ax.plot(group["skew"], group["heavy_p95_s"], marker="x", linestyle="--",
                color=line[0].get_color(), label=f"{engine}: heavy customer")  # fmt: skip
    ax.set_xscale("log")
    ax.set_title("p95 lag against the heavy customer's skew factor")
    ax.set_xlabel("skew factor (heavy customer's events per minute x)")
    ax.set_ylabel("p95 lag (wall seconds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def isolation_factor(table: pd.DataFrame) -> Figure:
    """Isolation factor per engine and skew; 1 means the others did not notice the heavy one."""
    pivot = table.pivot(index="skew", columns="engine", values="isolation_factor")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    pivot.plot.bar(ax=ax, rot=0)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_title("Isolation factor: others' p95 lag with skew / without")
    ax.set_xlabel("skew factor")
    ax.set_ylabel("isolation factor (1 = unaffected)")
    ax.legend(title="engine", fontsize="small")
    fig.tight_layout()
    return fig


def stage_times(lags: pd.DataFrame, customer: str) -> Figure:
    """Mean seconds per processed minute of each stage for one customer, per engine and skew."""
    data = lags[lags["customer"] == customer].drop_duplicates(
        ["engine", "skew", "tick_first_minute"]
    )
    per_minute = data[STAGE_COLUMNS].div(data["tick_minutes"], axis=0)
    per_minute[["engine", "skew"]] = data[["engine", "skew"]]
    means = per_minute.groupby(["engine", "skew"])[STAGE_COLUMNS].mean()
    means.index = [f"{engine}\nskew {skew:g}" for engine, skew in means.index]
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(means)), 4.2))
    means.rename(columns=lambda c: c.removesuffix("_s")).plot.bar(ax=ax, stacked=True, rot=0)
    ax.set_title(f"Per-stage time of {customer}, per processed minute")
    ax.set_xlabel("engine and skew")
    ax.set_ylabel("seconds per minute (wall)")
    ax.legend(title="stage", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def lag_by_customer(lags: pd.DataFrame, title: str) -> Figure:
    """Lag over the replayed minutes for one run, a line per customer."""
    fig, ax = plt.subplots(figsize=(8, 4))
    first = lags["minute"].min()
    for customer, group in lags.groupby("customer"):
        ax.plot((group["minute"] - first).dt.total_seconds() / 60, group["lag_s"], label=customer)
    ax.set_title(title)
    ax.set_xlabel("replayed minute (simulated)")
    ax.set_ylabel("lag (wall seconds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def stage_breakdown(lags: pd.DataFrame, title: str) -> Figure:
    """Mean seconds per processed minute of each stage, a bar per customer (one run)."""
    ticks = lags.drop_duplicates(["customer", "tick_first_minute"])
    per_minute = ticks[STAGE_COLUMNS].div(ticks["tick_minutes"], axis=0)
    per_minute["customer"] = ticks["customer"]
    means = per_minute.groupby("customer")[STAGE_COLUMNS].mean()
    fig, ax = plt.subplots(figsize=(8, 4))
    means.rename(columns=lambda c: c.removesuffix("_s")).plot.bar(ax=ax, stacked=True, rot=30)
    ax.set_title(title)
    ax.set_xlabel("customer")
    ax.set_ylabel("seconds per minute (wall)")
    ax.legend(title="stage", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def series_with_band(history: pd.DataFrame, anomalies: pd.DataFrame, title: str,
                     unit: str = "value") -> Figure:  # fmt: skip
    """A series, its band (mean +- k sd before each point) and its anomalies shaded."""
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(history["minute"], history["value"], color="black", linewidth=1, label="value")
    ax.plot(history["minute"], history["expected"], color="tab:blue", linewidth=1,
            label="expected (decayed mean)")  # fmt: skip
    ax.fill_between(history["minute"], history["band_low"], history["band_high"],
                    color="tab:blue", alpha=0.15, label="band")  # fmt: skip
    last = history["minute"].max()
    for i, row in enumerate(anomalies.itertuples()):
        end = row.end_minute if pd.notna(row.end_minute) else last
        ax.axvspan(row.start_minute, end, color="tab:red", alpha=0.25,
                   label="anomaly" if i == 0 else None)  # fmt: skip
    ax.set_title(title)
    ax.set_xlabel("minute (UTC)")
    ax.set_ylabel(unit)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


# Axis label of a ranking, by its measure (anomaly.records.SHARE, WEIGHTED_SHARE).
_MEASURE_LABELS = {
    "share": "share of the change (1 = all of it)",
    "weighted_share": "deviation x share of events, over the change",
}


def root_cause_ranking(table: pd.DataFrame, title: str) -> Figure:
    """An anomaly's ranked slices as horizontal bars, the best at the top."""
    fig, ax = plt.subplots(figsize=(8, 0.5 * max(len(table), 2) + 1.5))
    labels = [f"{g} = {v}" for g, v in zip(table["grouping"], table["dimension_values"],
                                           strict=True)]  # fmt: skip
    ax.barh(labels[::-1], table["contribution"].to_numpy()[::-1], color="tab:red", alpha=0.7)
    if table.empty:
        ax.text(0.5, 0.5, "no ranking: no finer slice moved with it", ha="center",
                transform=ax.transAxes)  # fmt: skip
    measures = set(table["measure"]) if len(table) else {"share"}
    ax.set_title(title)
    ax.set_xlabel(" / ".join(_MEASURE_LABELS.get(m, m) for m in sorted(measures)))
    ax.set_ylabel("slice (grouping = values)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
