"""Hour windows keyed by UTC instants, so that daylight saving's repeated hour is two windows.

`window_metrics.window_end`/`window_start` and `window_column_drift.window_end` held naive Chicago
time: the two 01:00-02:00 hours of the November change were one row. They become `timestamptz`;
an existing value is read as Chicago time (the repeated November hour's old key could not tell its
two hours apart: it becomes one of them; two old keys naming one instant keep the window of more
rides, see PG_DROP_TWINS). On PostgreSQL each table is rewritten under an ACCESS
EXCLUSIVE lock: the tables hold one row per hour and version (and per column for the drift), some
thousands of rows a year, rewritten in milliseconds; the ride tables are not touched.
On SQLite (no time zones) the values are rewritten as naive UTC, which is how it stores UTC.

Revision ID: 0008
Revises: 0007
"""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

CHICAGO = "America/Chicago"
COLUMNS = {"window_metrics": ("window_end", "window_start"), "window_column_drift": ("window_end",)}
SQLITE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores a DateTime in SQLite
COMMENTS = {"window_end": "UTC instant the clock hour ends", "window_start": "UTC instant the clock hour starts"}


def upgrade() -> None:
    _convert(to_utc=True)


def downgrade() -> None:
    _convert(to_utc=False)


# Two old keys can name one hour: the wall time 02:00 of March's change does not exist, so an hour
# keyed 02:00 and one keyed 03:00 are both the instant 08:00 UTC (and back down, the two 01:00 hours
# of November are one wall time). Hour windows are derived (the next monitor of one of their batches
# computes them again), so of each such pair the one computed from more rides is kept, with its
# column tests, and the other dropped; an upgrade must never stop on them.
PG_DROP_TWINS = f"""
WITH gone AS (
    DELETE FROM window_metrics w USING window_metrics o
    WHERE w.window_minutes = o.window_minutes AND w.model_version = o.model_version
      AND w.window_end <> o.window_end
      AND (w.window_end AT TIME ZONE '{CHICAGO}') = (o.window_end AT TIME ZONE '{CHICAGO}')
      AND (w.rows < o.rows OR (w.rows = o.rows AND w.window_end < o.window_end))
    RETURNING w.window_end, w.window_minutes, w.model_version
)
DELETE FROM window_column_drift d USING gone g
WHERE d.window_end = g.window_end AND d.window_minutes = g.window_minutes AND d.model_version = g.model_version
"""


def _moved(value, to_utc: bool, chicago: ZoneInfo) -> datetime:
    wall = datetime.fromisoformat(str(value))
    if to_utc:
        return wall.replace(tzinfo=chicago).astimezone(UTC).replace(tzinfo=None)
    return wall.replace(tzinfo=UTC).astimezone(chicago).replace(tzinfo=None)


def _drop_twins_sqlite(bind, to_utc: bool, chicago: ZoneInfo) -> None:
    windows = sa.table(
        "window_metrics", sa.column("window_end"), sa.column("window_minutes"), sa.column("model_version"),
        sa.column("rows"),
    )  # fmt: skip
    drift = sa.table(
        "window_column_drift", sa.column("window_end"), sa.column("window_minutes"), sa.column("model_version")
    )
    kept: dict[tuple, tuple] = {}
    losers = []
    for row in bind.execute(sa.select(windows)).all():
        key = (_moved(row.window_end, to_utc, chicago), row.window_minutes, row.model_version)
        rank = (row.rows, datetime.fromisoformat(str(row.window_end)))
        if key in kept:
            loser = min(kept[key], (rank, row), key=lambda pair: pair[0])
            losers.append(loser[1])
            kept[key] = max(kept[key], (rank, row), key=lambda pair: pair[0])
        else:
            kept[key] = (rank, row)
    for row in losers:
        for table in (drift, windows):
            bind.execute(
                sa.delete(table).where(
                    table.c.window_end == row.window_end,
                    table.c.window_minutes == row.window_minutes,
                    table.c.model_version == row.model_version,
                )
            )


def _convert(to_utc: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(PG_DROP_TWINS)
        # timestamp AT TIME ZONE gives the instant of a Chicago wall time; timestamptz AT TIME ZONE
        # gives the Chicago wall time of an instant: the same expression both ways.
        kind = "timestamptz" if to_utc else "timestamp"
        for table, columns in COLUMNS.items():
            changes = ", ".join(f"ALTER COLUMN {c} TYPE {kind} USING {c} AT TIME ZONE '{CHICAGO}'" for c in columns)
            op.execute(f"ALTER TABLE {table} {changes}")
            for column in columns:
                comment = COMMENTS[column] if to_utc else "Chicago local"
                op.execute(f"COMMENT ON COLUMN {table}.{column} IS '{comment}'")
        return
    chicago = ZoneInfo(CHICAGO)
    _drop_twins_sqlite(bind, to_utc, chicago)
    for table, columns in COLUMNS.items():
        # The stored text as it is (SQLAlchemy's own format, or whatever else wrote it), rewritten in
        # SQLAlchemy's format.
        keyed = sa.table(table, *(sa.column(c) for c in columns))
        for column in columns:
            stored = bind.execute(sa.select(keyed.c[column]).distinct()).scalars().all()
            moves = []
            for old in stored:
                if old is None:
                    continue
                wall = datetime.fromisoformat(str(old))
                moves.append((wall, old, _moved(old, to_utc, chicago).strftime(SQLITE_FORMAT)))
            # Each value moves by the same few hours; moving the latest first (to UTC: later) or the
            # earliest first (back to Chicago: earlier) never lands on a value not yet moved.
            for _, old, new in sorted(moves, reverse=to_utc):
                bind.execute(sa.update(keyed).where(keyed.c[column] == old).values({column: new}))
