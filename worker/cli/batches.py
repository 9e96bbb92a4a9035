"""`python -m worker batches`: the batch history as a table for people, or JSON for machines."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

COLUMNS = ("batch", "trigger", "status", "rows", "model", "tries", "started (UTC)", "took", "error")
ERROR_CHARS = 60


def _took(row: dict[str, Any]) -> str:
    if row["finished_at"] is None or row["started_at"] is None:
        return ""
    return f"{(row['finished_at'] - row['started_at']).total_seconds():.1f}s"


def _knobs(row: dict[str, Any]) -> str:
    parts = [
        f"{name}={row[key]:g}" for name, key in (("speed", "speed_factor"), ("fare", "fare_factor")) if row[key] != 1
    ]
    return f" [{', '.join(parts)}]" if parts else ""


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
                row["started_at"].strftime("%Y-%m-%d %H:%M:%S") if row["started_at"] else "",
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

    return json.dumps([{key: plain(value) for key, value in row.items()} for row in rows], indent=1)
