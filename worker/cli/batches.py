"""`python -m worker batches`: the batch history as a table for people, or JSON for machines."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from worker.store.whatif import knobs_text

COLUMNS = ("batch", "trigger", "status", "rows", "model", "tries", "started (UTC)", "took", "error")
ERROR_CHARS = 60


def _took(row: dict[str, Any]) -> str:
    """How long the latest attempt took (a rerun hours later is not hours of work): as
    worker/store/history.py's attempt_started defines it for every reader."""
    started = row.get("attempt_started_at") or row["started_at"]
    if row["finished_at"] is None or started is None:
        return ""
    return f"{max(0.0, (row['finished_at'] - started).total_seconds()):.1f}s"


def _utc(moment: datetime | None) -> str:
    """A database timestamp in UTC (PostgreSQL hands it back in the session's time zone)."""
    if moment is None:
        return ""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _knobs(row: dict[str, Any]) -> str:
    """A what-if batch's mark after its id: it was sent with a world knob (WHATIF_BATCHES decides whether
    it counts in production figures)."""
    knobs = knobs_text(row["speed_factor"], row["fare_factor"])
    return f" [what-if {knobs}]" if knobs else ""


def with_marks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with `what_if`: their knobs as people read them ("fare ×1.25"), "" for a calibrated batch."""
    return [{**row, "what_if": knobs_text(row["speed_factor"], row["fare_factor"])} for row in rows]


def table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    out = []
    for row in rows:
        error = (row["error"] or "").splitlines()[0] if row["error"] else ""
        model = f"v{row['model_version']}" if row["model_version"] else ""
        if row.get("model_pinned_by") == "fallback":
            model += " (fallback)"
        out.append(
            (
                row["batch_id"] + _knobs(row),
                row["trigger"],
                row["status"],
                f"{row['rows_written']}/{row['rides_requested']}",
                model,
                str(row["attempts"]),
                _utc(row["started_at"]),
                _took(row),
                error if len(error) <= ERROR_CHARS else error[: ERROR_CHARS - 1] + "…",
            )
        )
    return out


def render_table(rows: list[dict[str, Any]]) -> str:
    lines = [COLUMNS, *table_rows(rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def render_json(rows: list[dict[str, Any]]) -> str:
    def plain(value: object) -> object:
        return value.isoformat() if isinstance(value, datetime) else value

    return json.dumps([{key: plain(value) for key, value in row.items()} for row in with_marks(rows)], indent=1)
