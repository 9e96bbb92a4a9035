"""The report's charts: matplotlib figures drawn as inline SVG (no JavaScript, no fonts or scripts
from anywhere), one function per chart, each returning a Chart that says what it holds.

Every chart shares one time axis, Chicago local time (what users think in; ride windows are
stored that way, UTC bookkeeping times are converted before they get here), over the same range,
so a moment lines up from chart to chart. Every artist that plots data carries an SVG id starting
with the chart's key (`batches-succeeded`, `drift-fare-pvalue`, `accuracy-daily-v3`, ...), so the
browser test can find the marks of each chart. Series of more than DENSE marks are drawn as an image
inside the SVG instead (and so have no such id), which keeps a month's report near 1 MB.

Model events are drawn on every time chart, at the moment they happened: a solid purple line per
move of production (`{key}-moves`, one line each, labelled "v2 → v3 promoted by alice"), so that a
step in live MAE or in the predictions reads against the move that caused it, and a dashed grey one
per change of the challenger (`{key}-challenger-events`), which changes no prediction.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from worker.monitor.drift import CATEGORICAL, DATASET_COLUMNS, DRIFT_SHARE, TARGET
from worker.monitor.overview import (
    ACCURACY_MARGIN,
    MARGIN_CAP,
    MOVED_OUTSIDE,
    Overview,
    gaps,
    has_version,
    to_chicago,
    version_text,
    whatif_knobs,
)

TIME_LABEL = "Chicago local time (America/Chicago)"
LEGEND_ROW = 17.0  # points a legend row takes between an axes and its title
WIDTH = 10.0  # inches; the page scales the SVG to its column
DENSE = 1200  # marks above which a series is drawn as an embedded image instead of SVG shapes (a week of slots)
RASTER_DPI = 150  # resolution of those images
COORDINATES = re.compile(r'\b(d|x|y|x1|x2|y1|y2|width|height)="([^"]*)"')
DECIMALS = re.compile(r"(\d\.\d)\d+")

STATUS_COLORS = {"succeeded": "#4a7fb0", "failed": "#d1495b", "running": "#edae49", "retrying": "#edae49"}
DRIFT_COLOR = "#d1495b"
CALM_COLOR = "#8d99a6"
WINDOW_COLOR = "#1d2733"
VERSION_COLORS = ("#4a7fb0", "#2a9d8f", "#9b5de5", "#e07a1f", "#577590", "#43aa8b", "#b5838d", "#6d597a")
PINNED_STYLE = {"alias": "", "fixed": "..", "given": "..", "fallback": "xx"}
# How each kind of model event is drawn (overview.classify): (colour, line style, width, gid suffix).
EVENT_STYLE = {
    "production": ("#6a3d9a", "solid", 1.4, "moves"),
    "challenger": ("#8d99a6", (0, (3, 2)), 0.9, "challenger-events"),
}
LABEL_ROWS, LABEL_STEP = 4, 9.0  # event labels are staggered over this many rows, this many points apart
LABEL_GAP = 0.3  # labels of events closer than this share of the time axis go on different rows
ACTION_WORDS = {
    "promoted": "promoted",
    "rolled_back": "rolled back",
    "converted": "converted to skops",
    "challenger_set": "set",
    "challenger_retired": "retired",
}
COLUMN_TITLES = {
    "pickup_community_area": "pickup area",
    "dropoff_community_area": "dropoff area",
    "trip_miles": "trip miles",
    "fare": "fare",
    "trip_total": "trip total",
    "predicted_duration": "predicted minutes",
    TARGET: "actual minutes (target; not counted)",
}
STYLE = {
    "svg.fonttype": "none",  # text stays text: smaller, selectable, drawn in the page's fonts
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#d9dee3",
    "grid.linewidth": 0.6,
    "axes.edgecolor": "#8d99a6",
    "axes.labelcolor": "#1d2733",
    "xtick.color": "#4a5560",
    "ytick.color": "#4a5560",
    "legend.frameon": False,
    "legend.fontsize": 8.5,
}


@dataclass(frozen=True)
class Chart:
    """One chart of the report: its key (the HTML id), its title, a caption that says how to read
    it, and either the SVG or, when there is nothing to draw, a sentence saying why (commands in
    `backticks`)."""

    key: str
    title: str
    caption: str
    svg: str | None
    empty: str | None = None
    marks: int = 0  # data points drawn (batches, tests, days, ...)


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context(STYLE):
        yield


def _svg(figure: Figure, key: str, label: str) -> str:
    """The figure as an SVG element to inline in HTML: no XML prolog, no metadata, every id unique in
    the page (salted and prefixed with the chart's key), scaled to the page's width."""
    buffer = io.StringIO()
    with matplotlib.rc_context({**STYLE, "svg.hashsalt": key}):
        figure.savefig(buffer, format="svg", metadata={"Date": None}, dpi=RASTER_DPI)
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    # A tenth of a point is finer than any screen shows; matplotlib writes six decimals.
    text = COORDINATES.sub(lambda m: m.group(1) + '="' + DECIMALS.sub(r"\1", m.group(2)) + '"', text)
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
    # matplotlib numbers its groups per figure (figure_1, axes_1, ...): five inline SVGs would repeat
    # them, so every id not already the chart's own gets the chart's key in front, references too.
    ids = {name for name in re.findall(r'\bid="([^"]+)"', text) if not name.startswith(f"{key}-")}
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{key}_{m.group(1)}"' if m.group(1) in ids else m.group(0), text)
    text = re.sub(
        r'(url\(#|href="#)([^")]+)',
        lambda m: f"{m.group(1)}{key}_{m.group(2)}" if m.group(2) in ids else m.group(0),
        text,
    )
    text = re.sub(
        r'<svg ([^>]*?)width="[\d.]+pt" height="[\d.]+pt"',
        lambda m: f'<svg {m.group(1)}width="100%" role="img" aria-label="{html.escape(label)}"',
        text,
        count=1,
    )
    return text


def _span(overview: Overview, *times: pd.Series) -> tuple[datetime, datetime]:
    """The shared time range: from the earliest data (or the period's start, if later) to now."""
    end = overview.generated_local
    found = [pd.to_datetime(t).min() for t in times if len(t) and pd.to_datetime(t).notna().any()]
    start = min(found) if found else overview.since_local
    start = max(pd.Timestamp(start), pd.Timestamp(overview.since_local))
    pad = max((end - start) * 0.02, timedelta(minutes=2))
    return (start - pad).to_pydatetime(), pd.Timestamp(end + pad).to_pydatetime()


def _missed_ends(overview: Overview) -> pd.Series:
    """Missed beat slots as the Chicago-local end of the window their batch would have covered."""
    return pd.Series([to_chicago(slot) for slot in overview.missed], dtype="datetime64[ns]")


def time_span(overview: Overview) -> tuple[datetime, datetime]:
    missed = _missed_ends(overview) - pd.Timedelta(seconds=overview.interval_seconds)
    drawn = _drawn_events(overview)["local"]
    return _span(overview, overview.batches["start"], overview.windows["window_start"], missed, drawn)


def _drawn_events(overview: Overview) -> pd.DataFrame:
    """The period's model events that the charts draw (done moves of production and of the challenger)."""
    return overview.events[overview.events["kind"].notna()]


def event_label(action: str, actor: str, before: str | None, after: str | None, kind: str) -> str:
    """What an event's line says: "v2 → v3 promoted by alice", "challenger v4 set by bob", "v3 → v5 moved
    outside the project" (who moved it outside is unknown; a first promotion has no version before)."""
    if action == MOVED_OUTSIDE:
        who = "challenger " if kind == "challenger" else ""
        return f"{who}{version_text(before)} → {version_text(after)} moved outside the project"
    words = ACTION_WORDS.get(action, action)
    if kind == "challenger":
        return f"challenger {version_text(after if action == 'challenger_set' else before)} {words} by {actor}"
    moved = f"{version_text(before)} → {version_text(after)}" if has_version(before) else version_text(after)
    return f"{moved} {words} by {actor}"


def label_rows(x: np.ndarray, span: tuple[datetime, datetime]) -> list[int]:
    """A row (0 at the top) for each event's label, in time order: the first row whose last label is at least
    LABEL_GAP of the span away, else the row whose last label is oldest, so that labels of moves close in time
    (a promotion and its rollback minutes apart) print one under the other instead of over each other."""
    gap = LABEL_GAP * (date2num(span[1]) - date2num(span[0]))
    last = [-np.inf] * LABEL_ROWS
    rows = []
    for at in x:
        row = next((r for r in range(LABEL_ROWS) if at - last[r] >= gap), int(np.argmin(last)))
        last[row] = at
        rows.append(row)
    return rows


def _model_events(ax: Axes, overview: Overview, span: tuple[datetime, datetime], key: str | None) -> None:
    """A vertical line per drawn model event, across the whole axes, labelled near its top. `key` None
    draws lines without ids or labels (the lower panels of a chart whose top panel carries them)."""
    drawn = _drawn_events(overview)
    drawn = drawn.assign(row=label_rows(_num(drawn["local"]), span))
    for kind, (color, style, width, suffix) in EVENT_STYLE.items():
        part = drawn[drawn["kind"] == kind]
        if part.empty:
            continue
        ax.vlines(
            _num(part["local"]),
            0,
            1,
            transform=ax.get_xaxis_transform(),  # x in time, y across the whole axes whatever its scale
            colors=color,
            linestyles=style,
            linewidth=width,
            zorder=4,
            gid=f"{key}-{suffix}" if key else None,
        )
        if key:
            _event_labels(ax, part, span, kind, f"{key}-label-{suffix}")


def _event_labels(ax: Axes, part: pd.DataFrame, span: tuple[datetime, datetime], kind: str, gid: str) -> None:
    """Each event's label at the top of its line, on the row label_rows gave it; late in the period it reads
    leftwards, so that it stays inside the chart."""
    color = EVENT_STYLE[kind][0]
    middle = date2num(span[0]) + 0.6 * (date2num(span[1]) - date2num(span[0]))
    for i, (at, event) in enumerate(zip(_num(part["local"]), part.itertuples(), strict=True)):
        left = at > middle
        ax.annotate(
            event_label(event.action, event.actor, event.from_version, event.to_version, kind),
            xy=(at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-3 if left else 3, -3 - LABEL_STEP * event.row),
            textcoords="offset points",
            ha="right" if left else "left",
            va="top",
            fontsize=7.0 if kind == "production" else 6.5,
            color=color,
            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "alpha": 0.75, "linewidth": 0},
            annotation_clip=False,
            zorder=5,
            gid=f"{gid}-{i}",
        )


def _event_handles(overview: Overview) -> list:
    """Legend entries for the model events drawn, with their counts."""
    drawn = _drawn_events(overview)
    handles = []
    for kind, label in (("production", "production moved"), ("challenger", "challenger changed")):
        count = int((drawn["kind"] == kind).sum())
        if count:
            color, style, width, _ = EVENT_STYLE[kind]
            handles.append(Line2D([], [], color=color, linestyle=style, linewidth=width, label=f"{label}: {count}"))
    return handles


def _time_axis(ax: Axes, span: tuple[datetime, datetime], label: bool = True, ticks: bool = True) -> None:
    locator = AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlim(date2num(span[0]), date2num(span[1]))
    if label:
        ax.set_xlabel(TIME_LABEL)
    if not ticks:  # a panel above another with the same axis: its tick labels would only repeat
        ax.tick_params(labelbottom=False)
        ax.xaxis.get_offset_text().set_visible(False)


def _num(values: pd.Series) -> np.ndarray:
    return date2num(pd.to_datetime(values).to_numpy()) if len(values) else np.array([])


def _boxes(starts: np.ndarray, ends: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> list[np.ndarray]:
    return [
        np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
        for x0, x1, y0, y1 in zip(starts, ends, lows, highs, strict=True)
    ]


def _headline(ax: Axes, title: str, handles: list, per_row: int = 5) -> None:
    """The title, and under it the legend in rows of `per_row`, both above the axes where they never hide data."""
    rows = 0
    if handles:
        ncols = min(len(handles), per_row)
        rows = -(-len(handles) // ncols)
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=ncols, borderaxespad=0.2)
    ax.set_title(title, pad=4 + LEGEND_ROW * rows)


def _dots(ax: Axes, x: np.ndarray, y: np.ndarray, drifted: np.ndarray, marker: str, size: float, gid: str) -> None:
    """Grey dots, and red ones where `drifted`: two marker lines (one shape defined once and reused,
    the smallest SVG for many points), ids `gid` and `gid-drifted`."""
    for chosen, color, name in ((~drifted, CALM_COLOR, gid), (drifted, DRIFT_COLOR, f"{gid}-drifted")):
        if chosen.any():
            ax.plot(
                x[chosen],
                y[chosen],
                marker,
                linestyle="",
                color=color,
                markersize=size,
                markeredgewidth=0,
                alpha=0.85,
                zorder=3,  # above the hour windows' lines
                gid=name,
                rasterized=_dense(int(chosen.sum())),
            )


def _dense(count: int) -> bool:
    return count > DENSE


def version_colors(versions: list[str]) -> dict[str, str]:
    """A fixed colour per model version, in version order, for the charts that show versions."""
    ordered = sorted(versions, key=lambda v: (not str(v).isdigit(), int(v) if str(v).isdigit() else 0, str(v)))
    return {v: VERSION_COLORS[i % len(VERSION_COLORS)] for i, v in enumerate(ordered)}


def _versions(overview: Overview) -> dict[str, str]:
    found = {str(v) for v in overview.batches["model_version"].dropna()}
    found |= {str(v) for v in overview.daily["model_version"].dropna()}
    return version_colors(sorted(found))


# 1 ------------------------------------------------------------------------------------------------
def batches_chart(overview: Overview, span: tuple[datetime, datetime]) -> Chart:
    key, title = "batches", "Batches over time"
    caption = (
        "One bar per batch over its ride window: its height is the rides written, its colour its status "
        "(a failed batch is drawn at the rides it was asked for). Red bands are beat slots that never ran "
        "(missed slots: fill them with backfill). A black triangle marks a what-if batch (sent with "
        "--speed-factor or --fare-factor): it counts in the other charts' figures unless WHATIF_BATCHES=exclude."
    )
    batches = overview.batches
    if batches.empty and not overview.missed:
        return Chart(
            key,
            title,
            caption,
            None,
            "No batches in this period yet: beat sends one every slot, or "
            "run `python -m worker dispatch --rides 1000 --wait`.",
        )
    with _style():
        figure = Figure(figsize=(WIDTH, 3.4), layout="constrained")
        ax = figure.add_subplot()
        failed = (batches["status"] == "failed").to_numpy()
        heights = np.where(failed, batches["rides_requested"], batches["rows_written"]).astype(float)
        positive = heights[heights > 0]
        top = max(float(positive.max()) if len(positive) else 1.0, 1.0)
        # Night slots hold 20 rides, a rush-hour slot or a hand-sent batch thousands: on a linear axis the
        # small ones vanish, so a wide range gets a log axis.
        log = len(positive) > 0 and top / float(positive.min()) > 20
        floor = 0.7 if log else 0.0
        ceiling = top * (3.0 if log else 1.12)
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else ""))
        missed_at = _missed_ends(overview)
        if len(missed_at):
            ends = _num(missed_at)
            starts = ends - overview.interval_seconds / 86400
            ax.add_collection(
                PolyCollection(
                    _boxes(starts, ends, np.full(len(ends), floor), np.full(len(ends), ceiling)),
                    facecolors=DRIFT_COLOR,
                    alpha=0.2,
                    edgecolors="none",
                    gid=f"{key}-missed",
                    rasterized=_dense(len(ends)),
                )
            )
        legend = []
        for status in ("succeeded", "running", "retrying", "failed"):
            mask = (batches["status"] == status).to_numpy()
            if not mask.any():
                continue
            part = batches[mask]
            ax.add_collection(
                PolyCollection(
                    _boxes(_num(part["start"]), _num(part["at"]), np.full(len(part), floor), heights[mask]),
                    facecolors=STATUS_COLORS[status] if status != "failed" else "#f3c5ca",
                    edgecolors=STATUS_COLORS[status],
                    linewidths=0.5,
                    hatch="////" if status == "failed" else None,
                    gid=f"{key}-{status}",
                    rasterized=_dense(len(part)),
                )
            )
            shown = "failed (at rides asked)" if status == "failed" else status
            legend.append(
                Patch(
                    facecolor=STATUS_COLORS[status] if status != "failed" else "#f3c5ca",
                    edgecolor=STATUS_COLORS[status],
                    hatch="////" if status == "failed" else None,
                    label=f"{shown}: {int(mask.sum())}",
                )
            )
        if len(missed_at):
            legend.append(Patch(facecolor=DRIFT_COLOR, alpha=0.3, label=f"missed slot: {len(missed_at)}"))
        legend += _whatif_marks(ax, overview, heights, key)
        _model_events(ax, overview, span, key)
        legend += _event_handles(overview)
        ax.set_ylim(floor, ceiling)
        ax.set_ylabel("rides written per batch" + (" (log)" if log else ""))
        _time_axis(ax, span)
        _headline(
            ax,
            f"{len(batches)} batches, {int(batches['rows_written'].sum()):,} rides written; "
            f"{int(failed.sum())} failed, {len(overview.missed)} missed slots",
            legend,
        )
        svg = _svg(figure, key, title)
    return Chart(key, title, caption, svg, marks=len(batches) + len(overview.missed))


def _whatif_marks(ax: Axes, overview: Overview, heights: np.ndarray, key: str) -> list:
    """A black triangle over each what-if batch's bar (sent with a world knob), and its legend entry,
    which says whether they count in production figures."""
    knobs = whatif_knobs(overview.batches).to_numpy()
    mask = knobs != ""
    if not mask.any():
        return []
    part = overview.batches[mask]
    middle = _num(part["start"]) + (_num(part["at"]) - _num(part["start"])) / 2
    ax.scatter(middle, heights[mask] * (1.25 if ax.get_yscale() == "log" else 1.0), marker="v", s=22,
               color=WINDOW_COLOR, zorder=4, gid=f"{key}-whatif", clip_on=False)  # fmt: skip
    shown = "left out of figures" if overview.whatif_excluded else "counted in figures"
    return [
        Line2D([], [], marker="v", linestyle="none", color=WINDOW_COLOR, label=f"what-if ({shown}): {int(mask.sum())}")
    ]


# 2 ------------------------------------------------------------------------------------------------
def predictions_chart(overview: Overview, span: tuple[datetime, datetime]) -> Chart:
    key, title = "predictions", "Predictions over time"
    caption = (
        "The median predicted trip duration of each batch (line) and the middle 80 % of its predictions "
        "(band: 10th to 90th percentile). Scheduled slots form the line; ad-hoc and file batches are dots "
        "with whiskers. The line breaks where slots are missing."
    )
    batches = overview.counted.dropna(subset=["prediction_p50"]).sort_values("at")
    if batches.empty:
        return Chart(
            key,
            title,
            caption,
            None,
            "No monitored batch in this period yet: monitoring summarises "
            "each batch's predictions right after its rows are written.",
        )
    with _style():
        figure = Figure(figsize=(WIDTH, 3.2), layout="constrained")
        ax = figure.add_subplot()
        scheduled = batches[batches["trigger"] == "schedule"]
        others = batches[batches["trigger"] != "schedule"]
        handles = []
        if not scheduled.empty:
            x = _num(scheduled["at"])
            breaks = gaps(scheduled["at"], overview.interval_seconds)
            low = scheduled["prediction_p10"].to_numpy(dtype=float)
            mid = scheduled["prediction_p50"].to_numpy(dtype=float)
            high = scheduled["prediction_p90"].to_numpy(dtype=float)
            x, low, mid, high = _broken(x, breaks, low, mid, high)
            ax.fill_between(x, low, high, color="#4a7fb0", alpha=0.22, linewidth=0, gid=f"{key}-band")
            ax.plot(x, mid, color="#1f4e79", linewidth=1.6, gid=f"{key}-median")
            if len(scheduled) <= 400:  # a lone slot between gaps has no line: its dot shows it
                ax.plot(
                    _num(scheduled["at"]),
                    scheduled["prediction_p50"],
                    "o",
                    color="#1f4e79",
                    markersize=2.5,
                    gid=f"{key}-median-points",
                )
            handles += [
                Line2D([], [], color="#1f4e79", linewidth=1.6, label="median, scheduled slots"),
                Patch(facecolor="#4a7fb0", alpha=0.3, label="10th–90th percentile"),
            ]
        if not others.empty:
            x = _num(others["at"])
            mid = others["prediction_p50"].to_numpy(dtype=float)
            ax.vlines(
                x,
                others["prediction_p10"].to_numpy(dtype=float),
                others["prediction_p90"].to_numpy(dtype=float),
                color="#e07a1f",
                linewidth=1.4,
                gid=f"{key}-adhoc-range",
            )
            ax.plot(x, mid, "D", color="#e07a1f", markersize=4.5, gid=f"{key}-adhoc")
            handles.append(
                Line2D([], [], color="#e07a1f", marker="D", markersize=4, label="ad-hoc / file batch (10–90 %)")
            )
        _model_events(ax, overview, span, key)
        handles += _event_handles(overview)
        ax.set_ylabel("predicted trip minutes")
        ax.set_ylim(bottom=0)
        _time_axis(ax, span)
        latest = batches.iloc[-1]
        _headline(
            ax,
            f"latest median {latest['prediction_p50']:.1f} min "
            f"(10–90 %: {latest['prediction_p10']:.1f}–{latest['prediction_p90']:.1f} min) over {len(batches)} batches",
            handles,
            per_row=3,  # its entries are long: five in a row would run past the figure
        )
        svg = _svg(figure, key, title)
    return Chart(key, title, caption, svg, marks=len(batches))


def _broken(x: np.ndarray, breaks: np.ndarray, *series: np.ndarray) -> tuple[np.ndarray, ...]:
    """Insert a NaN before every break, so lines and bands stop there."""
    if not breaks.any():
        return (x, *series)
    at = np.flatnonzero(breaks)
    return tuple(np.insert(values.astype(float), at, np.nan) for values in (x, *series))


# 3 ------------------------------------------------------------------------------------------------
def drift_chart(overview: Overview, span: tuple[datetime, datetime]) -> Chart:
    key, title = "drift", "Drift per column, and when the dataset drifted"
    counted = len(DATASET_COLUMNS)
    needed = int(np.ceil(DRIFT_SHARE * counted))
    caption = (
        f"Top: how many of the {counted} counted columns drifted, per batch (dots) and per clock hour of "
        f"scheduled batches (line); the dataset drifts at {needed} or more (red). Below, one panel per column: "
        "the drift margin of each test, on a log scale. A distance test (Wasserstein, Jensen-Shannon: large "
        "samples) gives distance ÷ threshold, a p-value test (K-S, chi-square: small samples) threshold ÷ "
        "p-value, so either way above 1 means drifted (shaded). Red marks drifted; the black line is the hour "
        "window. The true duration (target drift) is shown but never counted."
    )
    drift = overview.column_drift.dropna(subset=["margin", "at"])
    batches = overview.counted.dropna(subset=["drifted_columns"])
    windows = overview.windows.dropna(subset=["drifted_columns"])
    if drift.empty and windows.empty:
        return Chart(
            key,
            title,
            caption,
            None,
            "No drift results in this period yet: batches are compared with "
            "the reference of the model version that scored them once they are written (a version "
            "without a reference gets none: `python -m worker reference --version N`).",
        )
    columns = [*DATASET_COLUMNS, TARGET]
    shown = [c for c in columns if c in set(drift["column_name"]) | set(overview.window_drift["column_name"])]
    rows = 1 + (len(shown) + 1) // 2
    with _style():
        figure = Figure(figsize=(WIDTH, 2.5 + 1.9 * (rows - 1)), layout="constrained")
        grid = figure.add_gridspec(rows, 2, height_ratios=[1.25] + [1] * (rows - 1))
        top = figure.add_subplot(grid[0, :])
        _model_events(top, overview, span, key)
        _dataset_panel(top, batches, windows, counted, needed, span, _event_handles(overview))
        axes = [figure.add_subplot(grid[1 + i // 2, i % 2], sharex=top) for i in range(len(shown))]
        margins = pd.concat([drift["margin"], overview.window_drift["margin"]]).dropna()
        low = max(float(margins.min()) * 0.7, 1 / MARGIN_CAP) if len(margins) else 0.01
        high = min(max(float(margins.max()) * 1.5, 3.0), MARGIN_CAP * 1.5) if len(margins) else 10.0
        for i, (ax, column) in enumerate(zip(axes, shown, strict=True)):
            _column_panel(ax, key, column, drift, overview.window_drift, (min(low, 0.5), high))
            _model_events(ax, overview, span, None)
            _time_axis(ax, span, label=False, ticks=i >= len(shown) - 2)
        figure.supxlabel(TIME_LABEL, fontsize=STYLE["font.size"], color=STYLE["axes.labelcolor"])
        marks = len(drift) + len(overview.window_drift)
        svg = _svg(figure, key, title)
    return Chart(key, title, caption, svg, marks=marks)


def _dataset_panel(
    ax: Axes,
    batches: pd.DataFrame,
    windows: pd.DataFrame,
    counted: int,
    needed: int,
    span: tuple[datetime, datetime],
    more: list,
) -> None:
    ax.axhspan(needed - 0.5, counted + 0.5, color=DRIFT_COLOR, alpha=0.08, linewidth=0)
    ax.axhline(needed - 0.5, color=DRIFT_COLOR, linewidth=0.8, linestyle="--")
    for _, window in windows[windows["dataset_drift"].eq(True)].iterrows():
        ax.axvspan(
            date2num(window["window_start"]), date2num(window["window_end"]), color=DRIFT_COLOR, alpha=0.12, linewidth=0
        )
    if not batches.empty:
        _dots(
            ax,
            _num(batches["at"]),
            batches["drifted_columns"].to_numpy(dtype=float),
            batches["dataset_drift"].eq(True).to_numpy(),
            "o",
            4.0,
            "drift-dataset-batches",
        )
    if not windows.empty:
        for version, part in windows.groupby("model_version"):
            part = part.sort_values("window_end")
            ax.hlines(
                part["drifted_columns"].astype(float),
                _num(part["window_start"]),
                _num(part["window_end"]),
                color=WINDOW_COLOR,
                linewidth=2.2,
                gid=f"drift-dataset-windows-v{version}",
            )
    ax.set_ylim(-0.5, counted + 0.5)
    ax.set_yticks(range(counted + 1))
    ax.set_ylabel("columns drifted")
    flagged = int(batches["dataset_drift"].eq(True).sum())
    hours = int(windows["dataset_drift"].eq(True).sum())
    _headline(
        ax,
        f"dataset drift: {flagged} of {len(batches)} batches, {hours} of {len(windows)} hour windows "
        f"(drifted when {needed}+ of {counted} columns drift)",
        [
            Line2D([], [], marker="o", linestyle="", color=CALM_COLOR, label="batch"),
            Line2D([], [], marker="o", linestyle="", color=DRIFT_COLOR, label="batch: dataset drift"),
            Line2D([], [], color=WINDOW_COLOR, linewidth=2.2, label="hour window"),
            Patch(facecolor=DRIFT_COLOR, alpha=0.2, label="hour window: dataset drift"),
            Line2D([], [], marker="o", linestyle="", color="#4a5560", label="panels: distance test"),
            Line2D([], [], marker="^", linestyle="", color="#4a5560", label="panels: p-value test"),
            *more,
        ],
        per_row=4,
    )
    _time_axis(ax, span, label=False)


def _column_panel(
    ax: Axes, key: str, column: str, drift: pd.DataFrame, window_drift: pd.DataFrame, limits: tuple[float, float]
) -> None:
    ax.set_yscale("log")
    ax.axhspan(1.0, limits[1], color=DRIFT_COLOR, alpha=0.07, linewidth=0)
    ax.axhline(1.0, color=DRIFT_COLOR, linewidth=0.8, linestyle="--")
    part = drift[drift["column_name"] == column]
    if not part.empty:
        drifted = part["drifted"].astype(bool).to_numpy()
        distance = part["method"].isin(("wasserstein", "jensenshannon")).to_numpy()
        for is_distance, marker in ((True, "o"), (False, "^")):
            chosen = distance == is_distance
            if not chosen.any():
                continue
            _dots(
                ax,
                _num(part["at"][chosen]),
                part["margin"].to_numpy(dtype=float)[chosen].clip(*limits),
                drifted[chosen],
                marker,
                3.8,
                f"{key}-{column}-{'distance' if is_distance else 'pvalue'}",
            )
    windows = window_drift[window_drift["column_name"] == column].dropna(subset=["margin"])
    for version, rows in windows.groupby("model_version"):
        rows = rows.sort_values("window_end")
        ax.hlines(
            rows["margin"].to_numpy(dtype=float).clip(*limits),
            _num(rows["window_start"]),
            _num(rows["window_end"]),
            color=WINDOW_COLOR,
            linewidth=2.0,
            gid=f"{key}-{column}-windows-v{version}",
        )
    ax.set_ylim(*limits)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.annotate(
        "drifted",
        xy=(0.995, 1.0),
        xycoords=("axes fraction", "data"),
        xytext=(0, 2),
        textcoords="offset points",
        ha="right",
        va="bottom",
        fontsize=7.5,
        color=DRIFT_COLOR,
    )
    methods = sorted(set(part["method"]) | set(windows["method"]))
    kind = "categorical" if column in CATEGORICAL else "numeric"
    ax.set_title(f"{COLUMN_TITLES.get(column, column)}  ·  {kind}: {', '.join(methods)}", fontsize=9)
    ax.set_ylabel("drift margin")


# 4 ------------------------------------------------------------------------------------------------
def accuracy_chart(overview: Overview, span: tuple[datetime, datetime]) -> Chart:
    key, title = "accuracy", "Live accuracy by model version"
    caption = (
        "Mean absolute error of the predictions whose true duration is known: per batch (dots, larger for more "
        "outcomes) and per Chicago day (thick steps), in the colour of the model version. Dashed: the "
        "version's MAE on held-out rides at training; dotted: the warning level, "
        f"{ACCURACY_MARGIN:.0%} above it. Grey: the always-the-median baseline on the same day's rides, "
        "which any useful model beats."
    )
    scored = overview.counted.dropna(subset=["mae"])
    scored = scored[scored["outcomes"].fillna(0) > 0]
    daily = overview.daily.dropna(subset=["mae"])
    if scored.empty and daily.empty:
        return Chart(
            key,
            title,
            caption,
            None,
            "No outcomes observed in this period yet: a trip's true duration "
            "is known only once it ended; the quality pass (every QUALITY_INTERVAL_SECONDS) fills live "
            "accuracy then, and `python -m worker outcomes FILE` loads real ones.",
        )
    colors = _versions(overview)
    with _style():
        figure = Figure(figsize=(WIDTH, 3.4), layout="constrained")
        ax = figure.add_subplot()
        x0, x1 = date2num(span[0]), date2num(span[1])
        handles = []
        for version, part in scored.groupby("model_version"):
            color = colors.get(str(version), CALM_COLOR)
            sizes = 6 + 40 * np.sqrt(part["outcomes"].to_numpy(dtype=float) / max(scored["outcomes"].max(), 1))
            ax.scatter(
                _num(part["at"]),
                part["mae"],
                s=sizes,
                color=color,
                alpha=0.5,
                linewidths=0,
                zorder=3,
                gid=f"{key}-batches-v{version}",
                rasterized=_dense(len(part)),
            )
        for version, part in daily.groupby("model_version"):
            color = colors.get(str(version), CALM_COLOR)
            part = part.sort_values("day")
            starts = date2num(pd.to_datetime(part["day"]).to_numpy())
            ax.hlines(
                part["mae"],
                np.clip(starts, x0, x1),
                np.clip(starts + 1, x0, x1),
                color=color,
                linewidth=2.4,
                gid=f"{key}-daily-v{version}",
            )
            ax.hlines(
                part["baseline_mae"],
                np.clip(starts, x0, x1),
                np.clip(starts + 1, x0, x1),
                color=CALM_COLOR,
                linewidth=1.6,
                linestyle=(0, (4, 2)),
                gid=f"{key}-baseline-v{version}",
            )
            heldout = part["heldout_mae"].dropna()
            if len(heldout):
                # Over the time the version served (its batches and days), not across every version's time.
                served = scored[scored["model_version"].astype(str) == str(version)]
                left = min([starts.min(), *_num(served["start"])])
                right = max([starts.max() + 1, *_num(served["at"])])
                left, right = max(left, x0), min(right, x1)
                promised = float(heldout.iloc[-1])
                ax.hlines(
                    promised, left, right, color=color, linewidth=1.2, linestyle="--", gid=f"{key}-heldout-v{version}"
                )
                ax.hlines(
                    promised * (1 + ACCURACY_MARGIN),
                    left,
                    right,
                    color=color,
                    linewidth=1.3,
                    linestyle=":",
                    gid=f"{key}-warning-v{version}",
                )
            label = f"v{version}"
            if len(heldout):
                label += f" (held-out {float(heldout.iloc[-1]):.2f} min)"
            handles.append(Line2D([], [], color=color, linewidth=3, label=label))
        for version in sorted(set(map(str, scored["model_version"])) - set(map(str, daily["model_version"]))):
            handles.append(
                Line2D([], [], color=colors.get(version, CALM_COLOR), marker="o", linestyle="", label=f"v{version}")
            )
        handles += [
            Line2D([], [], color="#4a5560", linestyle="--", label="held-out MAE"),
            Line2D([], [], color="#4a5560", linestyle=":", label=f"warning (+{ACCURACY_MARGIN:.0%})"),
            Line2D([], [], color=CALM_COLOR, linestyle=(0, (4, 2)), linewidth=1.6, label="always-the-median"),
            *_event_handles(overview),
        ]
        _model_events(ax, overview, span, key)
        ax.set_ylabel("MAE, minutes")
        ax.set_ylim(bottom=0)
        _time_axis(ax, span)
        outcomes = int(scored["outcomes"].sum())
        _headline(ax, f"{outcomes:,} outcomes observed in {len(scored)} batches", handles, per_row=4)
        svg = _svg(figure, key, title)
    return Chart(key, title, caption, svg, marks=len(scored) + len(daily))


# 5 ------------------------------------------------------------------------------------------------
def versions_chart(overview: Overview, span: tuple[datetime, datetime]) -> Chart:
    key, title = "versions", "Which model version served when"
    caption = (
        "One row per model version: a bar over each batch's ride window that the version scored. Every batch "
        "pins one version when it starts; hatched bars were pinned by fallback (the registry could not be "
        "asked, so the worker kept the version it had), dotted ones by a fixed MODEL_URI."
    )
    batches = overview.batches.dropna(subset=["model_version"])
    if batches.empty:
        return Chart(key, title, caption, None, "No batch in this period has a model version yet.")
    colors = _versions(overview)
    versions = list(colors)
    # Labelled model events need a strip above the rows, where their labels hide no bar (a row is 0.45 in, 32 pt).
    drawn = _drawn_events(overview)
    used = max(label_rows(_num(drawn["local"]), span), default=-1) + 1
    strip = (4 + LABEL_STEP * used) / 32 if used else 0.0
    with _style():
        figure = Figure(figsize=(WIDTH, 1.2 + 0.45 * (len(versions) + strip)), layout="constrained")
        ax = figure.add_subplot()
        for row, version in enumerate(versions):
            part = batches[batches["model_version"].astype(str) == version]
            for pinned, hatch in PINNED_STYLE.items():
                chosen = part[part["model_pinned_by"].fillna("alias") == pinned]
                if chosen.empty:
                    continue
                starts, ends = _num(chosen["start"]), _num(chosen["at"])
                ax.add_collection(
                    PolyCollection(
                        _boxes(starts, ends, np.full(len(starts), row - 0.32), np.full(len(starts), row + 0.32)),
                        facecolors=colors[version],
                        edgecolors=colors[version] if not hatch else "#1d2733",
                        linewidths=0.4,
                        hatch=hatch or None,
                        gid=f"{key}-v{version}-{pinned}",
                        rasterized=_dense(len(chosen)),
                    )
                )
        counts = batches["model_version"].astype(str).value_counts()
        ax.set_yticks(range(len(versions)), [f"v{v}\n{counts.get(v, 0)} batches" for v in versions])
        ax.set_ylim(-0.6, len(versions) - 0.4 + strip)
        ax.grid(axis="y", visible=False)
        _model_events(ax, overview, span, key)
        _time_axis(ax, span)
        pinned = batches["model_pinned_by"].fillna("alias")
        handles = [
            Patch(facecolor="#c9d3dc", edgecolor="#1d2733", hatch=hatch or None, label=f"pinned by {how}: {n}")
            for how, hatch in PINNED_STYLE.items()
            if (n := int((pinned == how).sum()))
        ] + _event_handles(overview)
        latest = batches.sort_values("at").iloc[-1]
        _headline(
            ax,
            f"latest batch scored by v{latest['model_version']} (pinned by {latest['model_pinned_by'] or 'alias'})",
            handles,
        )
        svg = _svg(figure, key, title)
    return Chart(key, title, caption, svg, marks=len(batches))


def all_charts(overview: Overview) -> list[Chart]:
    span = time_span(overview)
    return [
        batches_chart(overview, span),
        predictions_chart(overview, span),
        drift_chart(overview, span),
        accuracy_chart(overview, span),
        versions_chart(overview, span),
    ]
