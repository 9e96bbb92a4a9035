"""`python -m worker report`: one self-contained HTML file with the charts of a period and the
warnings that need a look now.

Self-contained means it opens offline and from anywhere (a mail attachment, a CI artifact): the
charts are inline SVG, the styles inline CSS, and there is no script, font, image or link to fetch.
Every text taken from the database (batch ids, errors, actors and reasons of model events) is escaped.

Besides the charts: the challenger's stored paired comparison with production (what a promotion
would rest on) and the period's model events as a table, the same events the charts draw as
vertical lines.
"""

from __future__ import annotations

import html
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.cli.errors import UsageError
from worker.cli.status import fill_command
from worker.monitor.overview import (
    ACCURACY_MARGIN,
    DRIFT_BATCHES,
    DRIFT_SHARE,
    MIN_OUTCOMES,
    RECENT,
    WINDOW_FRESH,
    Alert,
    ChallengerView,
    ModelAliases,
    Overview,
    version_text,
    whatif_summary,
)
from worker.monitor.paired import CONFIDENCE, MIN_PAIRED_OUTCOMES, PROMOTE_MARGIN, PairedEvidence
from worker.settings import Settings, redact

if TYPE_CHECKING:  # matplotlib is imported only when a report is drawn, not by `make run` naming the command
    from worker.cli.charts import Chart

log = logging.getLogger(__name__)

KIND_LABELS = {
    "failed": "failed batches",
    "missed": "missed slots",
    "accuracy": "accuracy",
    "drift": "dataset drift",
    "monitoring": "monitoring",
    "outside": "moved outside",
    "challenger": "challenger",
}
STYLE = """
:root { color-scheme: light; --ink: #1d2733; --muted: #5b6772; --line: #d9dee3; --warn: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       color: var(--ink); background: #f4f6f8; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 20px 48px; }
header h1 { font-size: 24px; margin: 0 0 4px; }
header p { margin: 2px 0; color: var(--muted); }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px; margin: 18px 0; }
section h2 { font-size: 18px; margin: 0 0 4px; }
.caption { color: var(--muted); margin: 0 0 10px; font-size: 14px; }
.empty { padding: 18px; border: 1px dashed var(--line); border-radius: 6px; color: var(--muted); background: #fafbfc; }
svg { display: block; height: auto; }
#warnings ul { list-style: none; padding: 0; margin: 8px 0 0; }
#warnings li.alert { border-left: 4px solid var(--warn); padding: 6px 12px; margin: 8px 0; background: #fdf3f2; }
#warnings li.alert .kind { font-weight: 600; color: var(--warn); text-transform: uppercase; font-size: 12px;
                           letter-spacing: .04em; margin-right: 8px; }
#warnings li.alert ul { margin: 4px 0 0; font-size: 13px; color: var(--muted); }
#warnings li.alert ul li { margin: 0; }
#warnings .ok { border-left: 4px solid #2a9d8f; padding: 6px 12px; background: #eef8f6; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
#events tr[data-kind="production"] td:nth-child(2) { color: #6a3d9a; font-weight: 600; }
#events tr[data-status="failed"] td { color: var(--warn); }
#challenger table { width: auto; }
#challenger .verdict { font-weight: 600; }
code { font: 13px/1.4 "DejaVu Sans Mono", ui-monospace, monospace; background: #eef1f4; padding: 1px 4px;
       border-radius: 3px; }
footer { color: var(--muted); font-size: 13px; }
"""


@dataclass(frozen=True)
class Written:
    path: Path
    size: int
    alerts: int
    charts_with_data: int


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _prose(text: object) -> str:
    """Our own sentences: escaped, with `commands` set as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))


def _alert_item(alert: Alert, overview: Overview) -> str:
    detail = "".join(f"<li>{_e(item)}</li>" for item in alert.items)
    if alert.kind == "missed" and overview.missed:
        command = fill_command(overview.missed, overview.interval_seconds)
        detail += f"<li>fill them: <code>{_e(command)}</code></li>"
    return (
        f'<li class="alert" data-kind="{_e(alert.kind)}"><span class="kind">{_e(KIND_LABELS.get(alert.kind, alert.kind))}'
        f"</span>{_prose(alert.text)}" + (f"<ul>{detail}</ul>" if detail else "") + "</li>"
    )


def _warnings(overview: Overview) -> str:
    if overview.alerts:
        items = "".join(_alert_item(alert, overview) for alert in overview.alerts)
        body = f"<ul>{items}</ul>"
    else:
        body = (
            '<p class="ok">Nothing needs a look: no failed batch, no missed slot, no alias moved outside the '
            "project, no recent dataset drift, no version worse than it promised, no batch the challenger "
            "failed to score.</p>"
        )
    rules = (
        f"Warnings follow the alert rules: accuracy when production's MAE over its most recently known outcomes "
        f"is more than {ACCURACY_MARGIN:.0%} above its held-out MAE on at least {MIN_OUTCOMES}; drift when at least "
        f"{DRIFT_BATCHES} and {DRIFT_SHARE:.0%} of the batches of the last {RECENT.total_seconds() / 3600:g} h drifted, "
        f"or the last ended hour window did (at most {WINDOW_FRESH.total_seconds() / 60:.0f} minutes ago)."
    )
    return (
        f'<section id="warnings" data-alerts="{len(overview.alerts)}"><h2>Warnings</h2>'
        f'<p class="caption">{_e(rules)}</p>{body}</section>'
    )


def _event_row(event: Any) -> str:
    """One row of the events table (`event` is a row of Overview.events); a failed move shows its error."""
    reason = _e(event.reason or "")
    if event.status != "done" and event.error:
        reason += f"<br><small>{_e(event.error)}</small>"
    return (
        f'<tr data-action="{_e(event.action)}" data-status="{_e(event.status)}" data-kind="{_e(event.kind or "")}">'
        f"<td>{event.local:%Y-%m-%d %H:%M:%S}</td><td>{_e(event.action)}</td><td>{_e(event.alias or '')}</td>"
        f"<td>{_e(version_text(event.from_version))} → {_e(version_text(event.to_version))}</td><td>{_e(event.actor)}</td>"
        f"<td>{_e(event.status)}</td><td>{reason}</td></tr>"
    )


def _events(overview: Overview) -> str:
    """The period's model events, oldest first: the record behind the charts' vertical lines."""
    found = overview.events
    moves = int((found["kind"] == "production").sum())
    caption = (
        "Every alias move and registration of the period from `model_events`, in Chicago local time. The "
        "charts draw each done move of production (promoted, rolled back, converted, moved outside) as a solid "
        "purple line and each change of the challenger as a dashed grey one; failed moves moved nothing and are "
        "only listed here. `python -m worker models --history` lists them all."
    )
    if found.empty:
        body = (
            '<p class="empty">No model events in this period: no version was registered, promoted or rolled back.</p>'
        )
    else:
        header = "".join(
            f"<th>{name}</th>" for name in ("Chicago time", "action", "alias", "from → to", "actor", "status", "reason")
        )
        rows = "".join(_event_row(event) for event in found.itertuples())
        body = f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"
    return (
        f'<section id="events" data-events="{len(found)}" data-moves="{moves}"><h2>Model events</h2>'
        f'<p class="caption">{_prose(caption)}</p>{body}</section>'
    )


def _minutes(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.3f} min" if signed else f"{value:.3f} min"


def _p_value(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2g}" if value > 0 else "< 1e-300"


def _comparison_table(found: PairedEvidence, verdict: str | None) -> str:
    interval = (
        f"{found.ci_low:+.3f} to {found.ci_high:+.3f} min"
        if found.ci_low is not None and found.ci_high is not None
        else "—"
    )
    relative = (
        f" ({found.relative_difference:+.1%} of production's MAE)" if found.relative_difference is not None else ""
    )
    rows = (
        (f"production v{found.production_version}: MAE", _minutes(found.production_mae)),
        (f"challenger v{found.challenger_version}: MAE", _minutes(found.challenger_mae)),
        ("mean difference, challenger − production", _minutes(found.mean_difference, signed=True) + relative),
        (f"{CONFIDENCE:.0%} confidence interval (paired t)", interval),
        ("paired rides with a known duration (n)", f"{found.outcomes:,}"),
        ("Wilcoxon signed-rank p", _p_value(found.wilcoxon_p)),
    )
    cells = "".join(f'<tr><th>{_e(name)}</th><td class="number">{_e(value)}</td></tr>' for name, value in rows)
    shown = f'<tr><th>verdict</th><td class="verdict">{_e(verdict)}</td></tr>'
    return f"<table>{cells}{shown}</table>"


def _challenger_text(view: ChallengerView) -> str:
    if view.challenger is None:
        return "No challenger on record and no comparison stored: `python -m worker retrain --since 6h` makes one."
    if view.evidence is None or view.evidence.outcomes == 0:
        return (
            f"Challenger v{view.challenger} against production {version_text(view.production)}: no paired outcomes yet "
            "(batches since the challenger was set are shadow-scored; outcomes arrive as their trips end)."
        )
    when = f" Computed {view.computed_at:%Y-%m-%d %H:%M} UTC." if view.computed_at else ""
    if view.current:
        return f"Challenger v{view.challenger}, shadow-scored beside production on the same live rides.{when}"
    return (
        f"No challenger on record now; the latest stored comparison, of v{view.challenger} against "
        f"v{view.production}, is shown.{when}"
    )


def _challenger(overview: Overview) -> str:
    """The challenger's stored paired comparison (worker/monitor/paired.py), as `models --compare` shows it."""
    view = overview.challenger
    found = view.evidence
    rule = (
        f"The comparison is ride by ride on rides both versions scored. The challenger is better when the "
        f"{CONFIDENCE:.0%} interval of the mean difference lies below 0 and its MAE is at least {PROMOTE_MARGIN:.0%} "
        f"lower, worse when the interval lies above 0, over at least {MIN_PAIRED_OUTCOMES} paired rides; the quality "
        "pass recomputes it and `python -m worker models --compare` shows it now."
    )
    table = _comparison_table(found, view.verdict) if found is not None and found.outcomes > 0 else ""
    attributes = (
        f'data-challenger="{_e(view.challenger or "")}" data-production="{_e(view.production or "")}" '
        f'data-current="{str(view.current).lower()}" data-outcomes="{found.outcomes if found else 0}" '
        f'data-verdict="{_e(view.verdict or "")}"'
    )
    return (
        f'<section id="challenger" {attributes}><h2>Challenger</h2><p class="caption">{_e(rule)}</p>'
        f"<p>{_prose(_challenger_text(view))}</p>{table}</section>"
    )


def _chart(number: int, chart: Chart) -> str:
    body = chart.svg if chart.svg is not None else f'<p class="empty">{_prose(chart.empty)}</p>'
    return (
        f'<section class="chart" id="chart-{chart.key}" data-empty="{str(chart.svg is None).lower()}" '
        f'data-marks="{chart.marks}"><h2>{number}. {_e(chart.title)}</h2>'
        f'<p class="caption">{_e(chart.caption)}</p>{body}</section>'
    )


def render_html(overview: Overview, charts: list[Chart], source: str) -> str:
    """The whole page; `source` says which database it was read from (password masked)."""
    since, now = overview.since_local, overview.generated_local
    title = f"Chicago Taxi Batch report, {since:%Y-%m-%d %H:%M} to {now:%Y-%m-%d %H:%M} Chicago time"
    batches = overview.batches
    summary = (
        f"{len(batches)} batches, {int(batches['rows_written'].sum()):,} rides written"
        if len(batches)
        else "no batches in this period"
    )
    whatif = whatif_summary(overview)
    if whatif:
        summary += f"; {whatif}"
    sections = "".join(_chart(i, chart) for i, chart in enumerate(charts, start=1))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body><main>"
        f"<header><h1>Chicago Taxi Batch: are today's predictions any good?</h1>"
        f"<p>{_e(f'{since:%Y-%m-%d %H:%M} to {now:%Y-%m-%d %H:%M} Chicago time')} "
        f"({_e(f'{overview.since:%Y-%m-%d %H:%M} to {overview.generated_at:%Y-%m-%d %H:%M} UTC')}): "
        f"{_e(summary)}.</p>"
        f"<p>Read from <code>{_e(source)}</code>. Times on every chart are Chicago local time, the time the "
        "rides happen in (the database keeps ride windows that way and converts bookkeeping times from UTC)."
        "</p></header>"
        f"{_warnings(overview)}{_challenger(overview)}{sections}{_events(overview)}"
        "<footer><p>Made by <code>python -m worker report</code>. Drift tests and thresholds are Evidently's "
        "defaults (worker/monitor/drift.py); the warning rules are in worker/monitor/overview.py.</p></footer>"
        "</main></body></html>\n"
    )


def write_atomically(path: Path, text: str) -> int:
    """Write the file whole or not at all (a reader never sees half a report); returns its size in bytes."""
    data = text.encode("utf-8")
    directory = path.parent
    if not directory.is_dir():
        raise UsageError(f"-o {path}: folder {directory} does not exist")
    try:
        fd, temporary = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=directory)
    except OSError as exc:  # a folder that takes no new file: no permission, read-only, /proc
        raise UsageError(f"-o {path}: cannot write there: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:  # a full disk, or the name taken by something that cannot be replaced
        Path(temporary).unlink(missing_ok=True)
        raise UsageError(f"-o {path}: cannot write there: {exc.strerror}") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return len(data)


def default_output(settings: Settings) -> Path:
    return settings.LOCAL_DIR / "report.html"


def make_report(settings: Settings, period: timedelta, output: Path, now: datetime | None = None) -> Written:
    """Read the period before `now` from the configured database, draw it, and write `output`."""
    from worker.cli.charts import all_charts
    from worker.model.registry import CHALLENGER_ALIAS
    from worker.monitor.overview import collect
    from worker.store.database import ensure_schema, get_engine
    from worker.store.history import settled_until

    if output.is_dir():
        raise UsageError(f"-o {output} is a folder; give a file name, e.g. {output / 'report.html'}")
    if not output.parent.is_dir():
        raise UsageError(f"-o {output}: folder {output.parent} does not exist")
    now = now or datetime.now(UTC)
    engine = get_engine(settings.database_url)
    ensure_schema(engine)
    overview = collect(
        engine,
        now,
        period,
        settings.BATCH_INTERVAL_SECONDS,
        settled_until(now, settings.BATCH_INTERVAL_SECONDS),
        ModelAliases(settings.MODEL_NAME, settings.MODEL_ALIAS, CHALLENGER_ALIAS),
        settings.POLICY_WINDOW_OUTCOMES,
    )
    charts = all_charts(overview)
    size = write_atomically(output, render_html(overview, charts, redact(settings.database_url, settings)))
    log.debug("report of %d batches written to %s (%d bytes)", len(overview.batches), output, size)
    return Written(output, size, len(overview.alerts), sum(chart.svg is not None for chart in charts))
