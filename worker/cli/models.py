"""`python -m worker models`: the versions, the record of alias moves, and the challenger's evidence,
as tables for people or JSON for machines."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from worker.lifecycle.versions import VersionView
from worker.model.registry import shadowed
from worker.monitor.paired import MIN_PAIRED_OUTCOMES, PROMOTE_MARGIN, PairedEvidence, verdict


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _mae(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _live(pair: tuple[int, float | None]) -> str:
    outcomes, mae = pair
    return f"{mae:.2f} ({outcomes:,})" if outcomes and mae is not None else "—"


def _utc(moment: datetime | None) -> str:
    if moment is None:
        return ""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def render_versions(views: list[VersionView]) -> str:
    if not views:
        return "no versions registered"
    header = (
        "version",
        "registered (UTC)",
        "aliases",
        "held-out MAE",
        "live MAE 24h (n)",
        "live MAE 7d (n)",
        "batches",
        "rows",
        "loadable",
        "trained on",
    )
    rows = [
        (
            f"v{view.version}",
            _utc(view.registered_at),
            ", ".join(view.aliases) or "—",
            _mae(view.heldout_mae),
            _live(view.live_day),
            _live(view.live_week),
            f"{view.batches:,}",
            f"{view.rows:,}",
            view.loadable if view.loadable in ("yes", "not checked") else f"NO: {view.loadable}",
            view.trained_on,
        )
        for view in views
    ]
    return (
        _table(header, rows)
        + "\nMAE in minutes; live figures from batches that finished in the last 24 hours / 7 days."
    )


def versions_json(views: list[VersionView]) -> str:
    return json.dumps([view.as_dict() for view in views], default=str)


def render_history(found: list[dict[str, Any]]) -> str:
    if not found:
        return "no model events on record"
    header = ("at (UTC)", "action", "alias", "from", "to", "actor", "status", "reason")
    rows = [
        (
            _utc(event["at"]),
            event["action"],
            event["alias"] or "",
            f"v{event['from_version']}" if event["from_version"] else "—",
            f"v{event['to_version']}" if event["to_version"] else "—",
            event["actor"],
            event["status"] + (f" ({event['error'][:60]})" if event["error"] and event["status"] != "done" else ""),
            event["reason"] or "",
        )
        for event in found
    ]
    return _table(header, rows)


def history_json(found: list[dict[str, Any]]) -> str:
    return json.dumps(found, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


def same_as_production(version: str) -> str:
    """A challenger alias on production's own version: workers shadow-score only another version, so
    no paired evidence will come (promote and rollback retire such an alias; else delete it in MLflow)."""
    return (
        f"challenger v{version} is production's own version: nothing is shadow-scored or compared "
        "(delete the challenger alias in MLflow, or `retrain` makes a new challenger)"
    )


def render_comparison(found: PairedEvidence | None, challenger: str | None, production: str | None) -> str:
    if challenger is None:
        return "no challenger: `python -m worker retrain --since 6h` makes one"
    if production is not None and shadowed(challenger, production) is None:
        return same_as_production(challenger)
    if found is None or found.outcomes == 0:
        return (
            f"challenger v{challenger} against production v{production}: no paired outcomes yet (batches since the "
            "challenger was set are shadow-scored; outcomes arrive as their trips end)"
        )
    lines = [
        f"challenger v{found.challenger_version} against production v{found.production_version}, on the same "
        f"{found.outcomes:,} rides with a known duration:",
        f"  production MAE  {found.production_mae:.3f} min",
        f"  challenger MAE  {found.challenger_mae:.3f} min",
        f"  difference      {found.mean_difference:+.3f} min per ride ({found.relative_difference:+.1%} of production's)",
    ]
    if found.ci_low is not None:
        lines.append(f"  95 % CI         {found.ci_low:+.3f} to {found.ci_high:+.3f} min (paired t-interval)")
    if found.wilcoxon_p is not None:
        p_value = f"{found.wilcoxon_p:.2g}" if found.wilcoxon_p > 0 else "< 1e-300"
        lines.append(f"  Wilcoxon        p = {p_value} (signed-rank, a check on the interval)")
    lines.append(
        f"  verdict         {verdict(found)} (better: CI below 0 and at least {PROMOTE_MARGIN:.0%} lower MAE, "
        f"from {MIN_PAIRED_OUTCOMES} paired rides)"
    )
    return "\n".join(lines)
