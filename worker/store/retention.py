"""Deleting old batches with every row keyed by them, in small transactions.

At Chicago's volume ride_predictions grows by about 75,000 rows a day, in 288
scheduled batches of about 260 rides. Batches go in groups of at most
DELETE_ROWS rows (a bigger batch alone, in slices of DELETE_ROWS), a slice per
transaction, so a writer waits at most for one slice, and a day costs a few
dozen commits rather than three per batch (each commit waits for the WAL to
reach disk). A group's own rows in batch_runs go last, so an interrupted prune
leaves batches that the next prune finishes, never rows without their batch.

A group's first transaction claims its batches (status `pruning`, under the row
lock that `rerun` and `backfill` take to reopen one): a batch reopened before the
claim is left for a later prune, and once claimed no reopen, retry mark or chunk
write touches it, so a rerun never runs into a half-deleted batch.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, func, literal_column, select, text, update
from sqlalchemy.exc import DBAPIError

from worker.rides.generator import CHICAGO
from worker.store.history import batch_column
from worker.store.schema import (
    batch_chunks,
    batch_metrics,
    batch_runs,
    column_drift,
    daily_accuracy,
    ride_outcomes,
    ride_predictions,
    shadow_predictions,
    slot_refusals,
    window_column_drift,
    window_metrics,
)
from worker.store.writes import PRUNING

log = logging.getLogger(__name__)

DELETE_ROWS = 10_000
LOCK_SECONDS = 5  # at most this long waiting to resummarize BRIN ranges (see _resummarize)
SETTLE_SECONDS = 30  # at most this long waiting for transactions older than the deletes (see _settled)
FINISHED = ("succeeded", "failed")
PRUNABLE = (*FINISHED, PRUNING)  # pruning: claimed by a prune that was stopped before it finished


def old_batches(engine: Engine, cutoff: datetime) -> list[str]:
    """Finished batches started before `cutoff` (UTC), and any a stopped prune claimed; running ones
    are never pruned."""
    with engine.connect() as conn:
        query = select(batch_runs.c.batch_id).where(
            # A batch claimed by a prune that was stopped is half deleted: finished whatever its age.
            ((batch_runs.c.started_at < cutoff) & batch_runs.c.status.in_(FINISHED)) | (batch_runs.c.status == PRUNING)
        )
        return list(conn.execute(query.order_by(batch_runs.c.started_at)).scalars())


def groups_of(engine: Engine, batch_ids: list[str]) -> Iterator[list[str]]:
    """The batches in their order, in runs of at most DELETE_ROWS rows written (a bigger batch alone),
    so that a group's rows go in one slice."""
    written = batch_column(engine, batch_ids, "rows_written")
    group: list[str] = []
    rows = 0
    for batch_id in batch_ids:
        size = max(written.get(batch_id, 0), 1)
        if group and rows + size > DELETE_ROWS:
            yield group
            group, rows = [], 0
        group.append(batch_id)
        rows += size
    if group:
        yield group


def preview(engine: Engine, cutoff: datetime) -> dict[str, int]:
    """What prune would delete, without deleting it."""
    ids = old_batches(engine, cutoff)
    counts = Counter({"batch_runs": len(ids)})
    counts["claimed"] = sum(status == PRUNING for status in batch_column(engine, ids, "status").values())
    with engine.connect() as conn:
        for i in range(0, len(ids), 1000):
            part = ids[i : i + 1000]
            counts["ride_predictions"] += conn.execute(
                select(func.count()).where(ride_predictions.c.batch_id.in_(part))
            ).scalar_one()
    return dict(counts)


def _claim(conn: Connection, batch_ids: list[str], any_status: bool = False) -> list[str]:
    """Those of these batches still finished (or, with `any_status`, all), now marked `pruning`;
    one reopened since it was listed is not. A claim waits for writers that hold a batch's row
    (monitoring, outcome loads); the deletes after it then see what they wrote, each statement
    taking a snapshot of its own (READ COMMITTED, PostgreSQL's default and the service's)."""
    chosen = select(batch_runs.c.batch_id).where(batch_runs.c.batch_id.in_(batch_ids))
    if not any_status:
        chosen = chosen.where(batch_runs.c.status.in_(PRUNABLE))
    # Locked in batch_id order, as monitoring and outcome loads hold theirs: two lockers of several
    # rows in different orders can each wait for the other (a deadlock, one of them aborted).
    chosen = chosen.order_by(batch_runs.c.batch_id).with_for_update()
    query = update(batch_runs).where(batch_runs.c.batch_id.in_(chosen))
    return list(conn.execute(query.values(status=PRUNING).returning(batch_runs.c.batch_id)).scalars())


def _delete_rows_of(
    engine: Engine, group: list[str], counts: Counter, blocks: set[int], any_status: bool = False
) -> list[str]:
    """Claim the group (in its first slice's transaction) and delete the claimed batches' rows;
    returns the claimed batches. `blocks` gathers the heap blocks their predictions were in."""
    batch_ids: list[str] | None = None
    while True:
        with engine.begin() as conn:
            if batch_ids is None:
                batch_ids = _claim(conn, group, any_status)
                if not batch_ids:
                    return []
            trip_ids = list(
                conn.execute(
                    select(ride_predictions.c.trip_id)
                    .where(ride_predictions.c.batch_id.in_(batch_ids))
                    .limit(DELETE_ROWS)
                ).scalars()
            )
            if not trip_ids:
                return batch_ids
            counts["ride_outcomes"] += conn.execute(
                delete(ride_outcomes).where(ride_outcomes.c.trip_id.in_(trip_ids))
            ).rowcount
            counts["shadow_predictions"] += conn.execute(
                delete(shadow_predictions).where(shadow_predictions.c.trip_id.in_(trip_ids))
            ).rowcount
            deleted, held = _delete_predictions(conn, trip_ids)
            counts["ride_predictions"] += deleted
            blocks.update(held)
        if len(trip_ids) < DELETE_ROWS:
            return batch_ids  # the group's last slice: no need to ask again


def _delete_predictions(conn: Connection, trip_ids: list) -> tuple[int, set[int]]:
    """Delete these predictions; on PostgreSQL also say which heap blocks held them (for _resummarize)."""
    if conn.dialect.name != "postgresql":
        return conn.execute(delete(ride_predictions).where(ride_predictions.c.trip_id.in_(trip_ids))).rowcount, set()
    gone = (
        delete(ride_predictions)
        .where(ride_predictions.c.trip_id.in_(trip_ids))
        .returning(literal_column("(ctid::text::point)[0]::bigint"))
    )
    blocks = list(conn.execute(gone).scalars())
    return len(blocks), {int(block) for block in blocks}


def _settled(engine: Engine, seconds: float) -> bool:
    """Whether every transaction that was open when the deletes had committed has ended, and every
    snapshot older than them is gone, waiting at most `seconds`: till then PostgreSQL keeps the
    deleted rows ('recently dead'), and a summary taken then still covers them. Any transaction with
    an id on the server counts (one open in another database held the summaries back too); of the
    snapshots, those of this database's sessions that this role may see (a role without
    pg_read_all_stats sees no other role's: Grafana's reads are short)."""
    with engine.connect() as conn:
        mark = conn.execute(
            text("SELECT CAST(CAST(pg_snapshot_xmax(pg_current_snapshot()) AS text) AS bigint)")
        ).scalar_one()
    ended = text(
        "SELECT CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text) AS bigint) >= :mark "
        "AND NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        "AND age(backend_xmin) > age(CAST(CAST(:mark32 AS text) AS xid)))"
    )
    deadline = time.monotonic() + seconds
    while True:
        with engine.connect() as conn:
            if conn.execute(ended, {"mark": mark, "mark32": mark & 0xFFFFFFFF}).scalar_one():
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _resummarize(engine: Engine, blocks: set[int]) -> None:
    """Summarize afresh the BRIN block ranges that held rows just deleted.

    A BRIN summary only ever widens: a range that held the oldest day keeps claiming it after the
    rows are gone, and once the freed pages take new rows it claims every day in between, so reads
    of those days read it in vain. Desummarized and summarized again after the deletes' commits, it
    covers only the rows still there (rows a reader older than a commit may still see stay in it).
    Not a condition of the prune: if the lock it takes (VACUUM's, which writers do not wait on) is
    not had within LOCK_SECONDS, the summaries stay as they were, and so if a transaction older
    than the deletes is still open after SETTLE_SECONDS (summarized then, they would keep the rows)."""
    if not _settled(engine, SETTLE_SECONDS):
        log.warning(
            "left the BRIN summaries of %d pruned heap blocks as they were: transactions older than the "
            "deletes were still open after %s s",
            len(blocks),
            SETTLE_SECONDS,
        )
        return
    try:
        with engine.begin() as conn:
            indexes = conn.execute(
                text(
                    "SELECT CAST(i.indexrelid AS regclass)::text AS name, coalesce((SELECT CAST(option_value AS int) "
                    "FROM pg_options_to_table(c.reloptions) WHERE option_name = 'pages_per_range'), 128) AS pages "
                    "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                    "WHERE i.indrelid = CAST('ride_predictions' AS regclass) AND a.amname = 'brin'"
                )
            ).all()
            conn.execute(text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": str(LOCK_SECONDS * 1000)})
            for index in indexes:
                # One block a range: each call for a block of an already redone range would redo it.
                ranges = sorted({block // index.pages * index.pages for block in blocks})
                for step in ("brin_desummarize_range", "brin_summarize_range"):
                    conn.execute(
                        text(
                            f"SELECT count({step}(CAST(:index AS regclass), r)) "
                            "FROM unnest(CAST(:ranges AS bigint[])) AS r"
                        ),
                        {"index": index.name, "ranges": ranges},
                    )
    except DBAPIError as exc:
        log.warning("left the BRIN summaries of %d pruned heap blocks as they were: %s", len(blocks), exc.orig)


def delete_batches(
    engine: Engine,
    batch_ids: list[str],
    counts: Counter | None = None,
    deadline: float | None = None,
    any_status: bool = False,
) -> Counter:
    """Delete these batches with every row keyed by them (their own batch_runs rows last), stopping
    between groups once time.monotonic() passes `deadline` (`counts["left"]` says how many remain).
    Only finished ones (`counts["skipped"]` counts the others), unless `any_status`: the caller owns
    them all (the benchmark's own batches)."""
    counts = Counter() if counts is None else counts
    done = 0
    blocks: set[int] = set()
    for group in groups_of(engine, batch_ids):
        if deadline is not None and time.monotonic() > deadline:
            counts["left"] += len(batch_ids) - done
            break
        claimed = _delete_rows_of(engine, group, counts, blocks, any_status)
        if claimed:
            with engine.begin() as conn:
                # Only rows still claimed: one that code from before the claim (0011) took back keeps its row.
                gone = list(
                    conn.execute(
                        delete(batch_runs)
                        .where(batch_runs.c.batch_id.in_(claimed), batch_runs.c.status == PRUNING)
                        .returning(batch_runs.c.batch_id)
                    ).scalars()
                )
                counts["batch_runs"] += len(gone)
                for table in (column_drift, batch_metrics, batch_chunks):
                    counts[table.name] += conn.execute(delete(table).where(table.c.batch_id.in_(gone))).rowcount
        counts["skipped"] += len(group) - len(claimed)  # reopened (or deleted by another prune) since listed
        done += len(group)
    if blocks:
        _resummarize(engine, blocks)
    return counts


def prune(engine: Engine, older_than_days: float, now: datetime, seconds: float | None = None) -> dict[str, int]:
    """Delete batches started more than `older_than_days` before `now` (UTC), and their rows, for at
    most `seconds` (the rest is left for the next run; `left` in the result says how many)."""
    cutoff = now - timedelta(days=older_than_days)
    deadline = None if seconds is None else time.monotonic() + seconds
    counts = delete_batches(engine, old_batches(engine, cutoff), deadline=deadline)
    # Hour windows are keyed by UTC instants, days by Chicago-local dates; a day's margin keeps the
    # windows of batches that were not old enough to go.
    margin = cutoff - timedelta(days=1)
    local_cutoff = margin.astimezone(CHICAGO).replace(tzinfo=None)
    with engine.begin() as conn:
        for table in (window_column_drift, window_metrics):
            counts[table.name] += conn.execute(delete(table).where(table.c.window_end < margin)).rowcount
        counts["slot_refusals"] += conn.execute(
            delete(slot_refusals).where(slot_refusals.c.refused_at < cutoff)
        ).rowcount
        counts["daily_accuracy"] += conn.execute(
            delete(daily_accuracy).where(daily_accuracy.c.day < local_cutoff.date())
        ).rowcount
    log.debug("pruned batches started before %s: %s", cutoff.isoformat(), dict(counts))
    return {name: n for name, n in counts.items() if n}
