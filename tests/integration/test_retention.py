"""`prune` on a day of Chicago-volume history (real PostgreSQL): exactly the old batches go, with every
row keyed by them, younger ones are untouched, and a day costs a few dozen commits, not three a batch
(each commit waits for the WAL to reach disk; with the statements each batch sent alone, that
was about half of a day's prune).

The history ends at the last 12:00 UTC, whatever the time the tests run: its old half is then
Chicago's day from 6 in the morning (7 in summer) to 6 in the evening, from the early morning's
slots of a few dozen rides to the day's of hundreds (25-67 at least and 308-464 at most, by weekday)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from tests.support import wait_until
from worker.cli.history_bench import fill_history
from worker.store import retention, writes
from worker.store.database import get_engine

HALF_DAY = 0.5


@pytest.fixture
def day_of_history(fresh_pg_url):
    """The engine, and the history's end (the `now` its prunes are asked at)."""
    engine = get_engine(fresh_pg_url)
    end = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    if end > datetime.now(UTC):
        end -= timedelta(days=1)
    fill_history(engine, 1, "ordered", end, lambda _line: None)
    yield engine, end
    engine.dispose()


def old_and_young(engine, cutoff: datetime) -> tuple[list[str], int, int]:
    """The old batches, their predictions, and the young batches' predictions."""
    with engine.connect() as conn:
        old = list(
            conn.execute(
                text("SELECT batch_id FROM batch_runs WHERE started_at < :c ORDER BY started_at"), {"c": cutoff}
            ).scalars()
        )
        old_rows, young_rows = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE b.started_at < :c), count(*) FILTER (WHERE b.started_at >= :c) "
                "FROM ride_predictions p JOIN batch_runs b USING (batch_id)"
            ),
            {"c": cutoff},
        ).one()
    return old, old_rows, young_rows


def assert_nothing_orphaned(engine) -> None:
    with engine.connect() as conn:
        orphans = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM ride_predictions p WHERE NOT EXISTS "
                "         (SELECT 1 FROM batch_runs b WHERE b.batch_id = p.batch_id)), "
                "       (SELECT count(*) FROM ride_outcomes o WHERE NOT EXISTS "
                "         (SELECT 1 FROM ride_predictions p WHERE p.trip_id = o.trip_id)), "
                "       (SELECT count(*) FROM batch_chunks c WHERE NOT EXISTS "
                "         (SELECT 1 FROM batch_runs b WHERE b.batch_id = c.batch_id))"
            )
        ).one()
    assert tuple(orphans) == (0, 0, 0)


def test_prune_of_half_a_day_deletes_its_batches_whole_in_few_commits(day_of_history):
    engine, now = day_of_history
    cutoff = now - timedelta(days=HALF_DAY)
    old, old_rows, young_rows = old_and_young(engine, cutoff)
    assert len(old) == 144 and old_rows > retention.DELETE_ROWS  # several groups of many batches
    groups = list(retention.groups_of(engine, old))
    assert [batch for group in groups for batch in group] == old  # every batch once, in order
    assert len(groups) <= 2 * math.ceil(old_rows / retention.DELETE_ROWS)  # groups are full enough
    with engine.begin() as conn:  # why two slots had no batch: one refused before the cut-off, one after
        conn.execute(
            text(
                "INSERT INTO slot_refusals (batch_id, slot, error, refused_at) VALUES "
                "('schedule-old', :old, 'expired', :old), ('schedule-young', :young, 'expired', :young)"
            ),
            {"old": cutoff - timedelta(minutes=1), "young": cutoff + timedelta(minutes=1)},
        )
    commits = []

    def committed(_conn) -> None:
        commits.append(1)

    event.listen(engine, "commit", committed)
    try:
        counts = retention.prune(engine, older_than_days=HALF_DAY, now=now)
    finally:
        event.remove(engine, "commit", committed)
    assert counts["batch_runs"] == counts["batch_chunks"] == len(old)
    assert counts["ride_predictions"] == counts["ride_outcomes"] == old_rows
    assert old_and_young(engine, cutoff) == ([], 0, young_rows)  # younger untouched
    assert_nothing_orphaned(engine)
    assert counts["slot_refusals"] == 1
    with engine.connect() as conn:
        assert list(conn.execute(text("SELECT batch_id FROM slot_refusals")).scalars()) == ["schedule-young"]
    # A group's rows in one slice (a second, empty one if they were exactly DELETE_ROWS), then its
    # batches' own rows; then the windows and days. Before groups, each batch paid three commits.
    assert len(commits) <= 3 * len(groups) + 1, (len(commits), len(groups))


def test_batches_bigger_than_a_slice_go_alone_and_in_slices(day_of_history, monkeypatch):
    """With slices of half the busiest batch, a busy slot's batch (hundreds of rides) is a group of
    its own, deleted a slice per transaction; the early morning's small batches (a few dozen rides,
    a fifth of the busiest or less) still share one."""
    engine, now = day_of_history
    cutoff = now - timedelta(days=HALF_DAY)
    old, old_rows, young_rows = old_and_young(engine, cutoff)
    with engine.connect() as conn:
        busiest = conn.execute(text("SELECT max(rows_written) FROM batch_runs WHERE started_at < :c"), {"c": cutoff})
        monkeypatch.setattr(retention, "DELETE_ROWS", busiest.scalar_one() // 2)
    groups = list(retention.groups_of(engine, old))
    assert [batch for group in groups for batch in group] == old
    assert any(len(group) == 1 for group in groups) and any(len(group) > 1 for group in groups)
    counts = retention.prune(engine, older_than_days=HALF_DAY, now=now)
    assert counts["batch_runs"] == len(old) and counts["ride_predictions"] == counts["ride_outcomes"] == old_rows
    assert old_and_young(engine, cutoff) == ([], 0, young_rows)
    assert_nothing_orphaned(engine)


def test_a_prune_out_of_time_stops_between_groups_and_leaves_the_rest_whole(day_of_history, monkeypatch):
    """Its time runs out after the first group (the clock it reads jumps past the deadline): that
    group is gone whole, every other batch is untouched and counted as left, and the next prune
    finishes them."""
    engine, now = day_of_history
    cutoff = now - timedelta(days=HALF_DAY)
    old, old_rows, young_rows = old_and_young(engine, cutoff)
    first = next(retention.groups_of(engine, old))
    readings = iter([0.0])  # the check before the first group; every later one reads 10.0
    monkeypatch.setattr(retention, "time", SimpleNamespace(monotonic=lambda: next(readings, 10.0)))
    counts = retention.delete_batches(engine, old, deadline=5.0)
    assert counts["batch_runs"] == len(first) and counts["left"] == len(old) - len(first)
    rest, rest_rows, _ = old_and_young(engine, cutoff)
    assert rest == old[len(first) :] and 0 < rest_rows < old_rows
    assert counts["ride_predictions"] == old_rows - rest_rows
    assert_nothing_orphaned(engine)
    monkeypatch.undo()
    assert retention.prune(engine, older_than_days=HALF_DAY, now=now)["batch_runs"] == len(rest)
    assert old_and_young(engine, cutoff) == ([], 0, young_rows)
    assert_nothing_orphaned(engine)


def _batch_rows(engine, batch_id: str) -> tuple:
    """(status, rows_written, predictions, outcomes, ledger rows) of a batch, or None if it is gone."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT b.status, b.rows_written, "
                "(SELECT count(*) FROM ride_predictions p WHERE p.batch_id = b.batch_id), "
                "(SELECT count(*) FROM ride_outcomes o JOIN ride_predictions p USING (trip_id) "
                " WHERE p.batch_id = b.batch_id), "
                "(SELECT count(*) FROM batch_chunks c WHERE c.batch_id = b.batch_id) "
                "FROM batch_runs b WHERE b.batch_id = :b"
            ),
            {"b": batch_id},
        ).one_or_none()


def test_a_failed_batch_reopened_during_a_prune_is_refused_once_claimed_and_kept_whole_before(
    day_of_history, monkeypatch
):
    """`rerun` (or `backfill`) reopens an old failed batch while a prune that listed it is deleting.
    Its group already claimed: the reopen is refused (its rows are half gone; a rerun would write
    the rest beside a ledger that says they are there) and the batch goes whole. Its group not yet
    claimed: the prune keeps it, whole and reopened, and says so. Before the claim, the prune deleted
    both, the first under a rerun that then found its ledger gone."""
    engine, now = day_of_history
    cutoff = now - timedelta(days=HALF_DAY)
    old, old_rows, young_rows = old_and_young(engine, cutoff)
    groups = list(retention.groups_of(engine, old))
    assert len(groups) >= 3
    claimed_first, reopened_early = groups[0][-1], groups[1][0]
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE batch_runs SET status = 'failed', error = 'x' WHERE batch_id = ANY(:ids)"),
            {"ids": [claimed_first, reopened_early]},
        )
    kept_before = _batch_rows(engine, reopened_early)
    assert kept_before[0] == "failed" and kept_before[2] == kept_before[3] == kept_before[1] > 0

    delete_rows = retention._delete_rows_of
    calls, refused = [], []

    def then_reopen(engine_, group, counts, blocks, any_status=False):
        """After the first group's rows are gone (before its batch_runs rows go), both are reopened."""
        claimed = delete_rows(engine_, group, counts, blocks, any_status)
        calls.append(group)
        if len(calls) == 1:
            try:
                writes.reopen_batch(engine, claimed_first, "rerun requested")
            except writes.BatchPruned as exc:
                refused.append(str(exc))
            assert writes.reopen_batch(engine, reopened_early, "rerun requested")["status"] == "failed"
        return claimed

    monkeypatch.setattr(retention, "_delete_rows_of", then_reopen)
    counts = retention.prune(engine, older_than_days=HALF_DAY, now=now)

    assert refused and "being deleted by prune" in refused[0] and claimed_first in refused[0]
    assert _batch_rows(engine, claimed_first) is None  # gone whole: rows, ledger and its own row
    status, written, predictions, outcomes, ledger = _batch_rows(engine, reopened_early)
    assert (status, written, predictions, outcomes, ledger) == ("retrying", *kept_before[1:])
    assert counts["skipped"] == 1 and counts["batch_runs"] == len(old) - 1
    assert counts["ride_predictions"] == old_rows - written
    assert old_and_young(engine, cutoff) == ([reopened_early], written, young_rows)
    assert_nothing_orphaned(engine)


def test_a_prune_stopped_after_its_claim_is_finished_by_the_next_one(day_of_history, monkeypatch):
    """A prune that dies between claiming a group and deleting its last rows leaves `pruning`
    batches: no rerun revives them, and the next prune finishes them, even one asked to keep more
    days than they are old (it leaves every other batch alone), so none stays half deleted."""
    engine, now = day_of_history
    cutoff = now - timedelta(days=HALF_DAY)
    old, _, young_rows = old_and_young(engine, cutoff)
    first = next(retention.groups_of(engine, old))

    def dies(engine_, group, counts, blocks, any_status=False):
        with engine_.begin() as conn:
            retention._claim(conn, group)
        raise ConnectionError("the prune's process was killed")

    monkeypatch.setattr(retention, "_delete_rows_of", dies)
    with pytest.raises(ConnectionError):
        retention.prune(engine, older_than_days=HALF_DAY, now=now)
    monkeypatch.undo()
    with engine.connect() as conn:
        pruning = conn.execute(text("SELECT batch_id FROM batch_runs WHERE status = 'pruning' ORDER BY started_at"))
        assert list(pruning.scalars()) == first
    with pytest.raises(writes.BatchPruned):
        writes.reopen_batch(engine, first[0], "rerun requested")
    shown = retention.preview(engine, now - timedelta(days=30))  # what `prune` without --yes says
    assert (shown["batch_runs"], shown["claimed"]) == (len(first), len(first))
    assert retention.prune(engine, older_than_days=30, now=now)["batch_runs"] == len(first)
    assert old_and_young(engine, cutoff)[0] == old[len(first) :]
    assert retention.prune(engine, older_than_days=HALF_DAY, now=now)["batch_runs"] == len(old) - len(first)
    assert old_and_young(engine, cutoff) == ([], 0, young_rows)
    assert_nothing_orphaned(engine)


def _pages_read(engine, since: datetime, until: datetime) -> int:
    """Heap pages a read of the rides that started in [since, until) takes through the BRIN index."""
    with engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off; SET max_parallel_workers_per_gather = 0"))
        plan = conn.execute(
            text(
                "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM ride_predictions WHERE trip_start_timestamp "
                "BETWEEN (CAST(:since AS timestamptz) AT TIME ZONE 'America/Chicago') "
                "AND (CAST(:until AS timestamptz) AT TIME ZONE 'America/Chicago')"
            ),
            {"since": since, "until": until},
        ).scalar_one()
    nodes, pages = [plan[0]["Plan"]], 0
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if node["Node Type"] == "Bitmap Heap Scan":
            pages += node.get("Exact Heap Blocks", 0) + node.get("Lossy Heap Blocks", 0)
    return pages


def test_prune_summarizes_afresh_the_brin_ranges_it_emptied(day_of_history):
    """Once the old half is pruned, a read of its hours reads no more pages than a read of a day the
    table never held (the table's last block range, not yet summarized, is read by any range read):
    the BRIN ranges that held the old half were summarized again over what is left. Before, they
    still claimed the pruned hours, and the read went through every one of their pages."""
    engine, now = day_of_history
    cutoff = now - timedelta(days=HALF_DAY)
    first_half = (now - timedelta(days=1), cutoff - timedelta(hours=1))
    never_held = (now - timedelta(days=3), now - timedelta(days=2))
    before = _pages_read(engine, *first_half)
    retention.prune(engine, older_than_days=HALF_DAY, now=now)
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM ride_predictions WHERE created_at < :c"), {"c": cutoff})
        assert left.scalar_one() == 0
    baseline = _pages_read(engine, *never_held)
    assert before > baseline + 500, (before, baseline)  # the old half's pages
    assert _pages_read(engine, *first_half) == baseline


def _hold_a_transaction_elsewhere(url: str):
    """A transaction with an id of its own, open in another database of the same server (as MLflow's,
    or a worker's write in another deployment, would be): until it ends, rows deleted after it began
    are still 'recently dead' to PostgreSQL, and a summary taken then still counts them."""
    import psycopg2

    other = psycopg2.connect(make_url(url).set(drivername="postgresql", database="postgres").render_as_string(False))
    with other.cursor() as cur:
        cur.execute("SELECT txid_current()")
    return other


def _hold_a_snapshot_here(url: str):
    """A read-only transaction of this database that took its snapshot before the deletes (a long
    report, say): it has no transaction id, yet the deleted rows are kept for it all the same."""
    import psycopg2

    reader = psycopg2.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    reader.set_session(isolation_level="REPEATABLE READ")
    with reader.cursor() as cur:
        cur.execute("SELECT count(*) FROM batch_runs")
    return reader


def test_prune_summarizes_only_once_the_transactions_older_than_its_deletes_have_ended(day_of_history):
    """Summarized while an older transaction was open anywhere on the server, a range kept the pruned
    rows and the read of the pruned hours went through 669 pages instead of 29, whatever the prune's
    own care. Now the prune waits for such transactions to end (here: ended once its deletes are done),
    then summarizes."""
    import threading

    engine, now = day_of_history
    cutoff = now - timedelta(days=HALF_DAY)
    first_half = (now - timedelta(days=1), cutoff - timedelta(hours=1))
    never_held = (now - timedelta(days=3), now - timedelta(days=2))
    other = _hold_a_transaction_elsewhere(engine.url.render_as_string(False))
    result: dict = {}
    pruning = threading.Thread(
        target=lambda: result.update(counts=retention.prune(engine, older_than_days=HALF_DAY, now=now)), daemon=True
    )
    try:
        pruning.start()
        wait_until(
            "the prune's deletes, or its end",
            lambda: not pruning.is_alive() or old_and_young(engine, cutoff)[:2] == ([], 0),
            60,
            every=0.05,
        )
    finally:
        other.rollback()
        other.close()
    pruning.join(60)
    assert result["counts"]["batch_runs"] == 144
    assert _pages_read(engine, *first_half) == _pages_read(engine, *never_held)


def _hold_the_summaries_lock(url: str):
    """The lock resummarizing takes (VACUUM's), held as a long VACUUM or an index build would hold it."""
    import psycopg2

    holder = psycopg2.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE ride_predictions IN SHARE UPDATE EXCLUSIVE MODE")
    return holder


@pytest.mark.parametrize(
    ("hold", "waited", "says"),
    [
        (_hold_the_summaries_lock, "LOCK_SECONDS", "lock timeout"),
        (_hold_a_transaction_elsewhere, "SETTLE_SECONDS", "older than the deletes"),
        (_hold_a_snapshot_here, "SETTLE_SECONDS", "older than the deletes"),
    ],
    ids=["lock", "xid", "snapshot"],
)
def test_a_prune_that_cannot_summarize_its_ranges_afresh_still_prunes_and_says_so(
    day_of_history, monkeypatch, caplog, hold, waited, says
):
    """Held past what the prune waits for (`waited`): the lock resummarizing takes (a long VACUUM, an
    index build), or a transaction or snapshot older than the deletes (summarized then, the ranges
    would keep the pruned rows anyway). The prune is done all the same, the summaries are left as they
    were, and it says why."""
    import logging

    engine, now = day_of_history
    cutoff = now - timedelta(days=HALF_DAY)
    old, old_rows, young_rows = old_and_young(engine, cutoff)
    first_half = (now - timedelta(days=1), cutoff - timedelta(hours=1))
    never_held = (now - timedelta(days=3), now - timedelta(days=2))
    monkeypatch.setattr(retention, waited, 1)
    other = hold(engine.url.render_as_string(False))
    try:
        with caplog.at_level(logging.WARNING, logger="worker.store.retention"):
            counts = retention.prune(engine, older_than_days=HALF_DAY, now=now)
    finally:
        other.rollback()
        other.close()
    assert counts["batch_runs"] == len(old) and counts["ride_predictions"] == old_rows
    assert old_and_young(engine, cutoff) == ([], 0, young_rows)
    assert "left the BRIN summaries of" in caplog.text and says in caplog.text
    assert _pages_read(engine, *first_half) > _pages_read(engine, *never_held) + 500  # left as they were
