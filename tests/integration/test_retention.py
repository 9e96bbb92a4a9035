"""`prune` on a day of Chicago-volume history (real PostgreSQL): exactly the old batches go, with every
row keyed by them, younger ones are untouched, and a day costs a few dozen commits, not three a batch
(each commit waits for the WAL to reach disk; with the statements each batch sent alone, that
was about half of a day's prune)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, text

from worker.cli.history_bench import fill_history
from worker.store import retention
from worker.store.database import get_engine

HALF_DAY = 0.5


@pytest.fixture
def day_of_history(fresh_pg_url):
    engine = get_engine(fresh_pg_url)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    end -= timedelta(minutes=end.minute % 5)
    fill_history(engine, 1, "ordered", end, lambda _line: None)
    yield engine
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
    engine = day_of_history
    now = datetime.now(UTC)
    old, old_rows, young_rows = old_and_young(engine, now - timedelta(days=HALF_DAY))
    assert len(old) > 100 and old_rows > 2 * retention.DELETE_ROWS  # several groups, many batches
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
    assert old_and_young(engine, now - timedelta(days=HALF_DAY)) == ([], 0, young_rows)  # younger untouched
    assert_nothing_orphaned(engine)
    # Per group of about DELETE_ROWS rows: its slices (at most two) and its batches' own rows; then the
    # windows and days. Before groups, each batch paid three commits of its own.
    assert len(commits) <= 3 * math.ceil(old_rows / retention.DELETE_ROWS) + 1, len(commits)


def test_batches_bigger_than_a_slice_go_alone_and_in_slices(day_of_history, monkeypatch):
    """With slices of 100 rows, a busy slot's batch (hundreds of rides) is a group of its own, deleted
    a slice per transaction; the night's small batches still share one."""
    engine = day_of_history
    monkeypatch.setattr(retention, "DELETE_ROWS", 100)
    now = datetime.now(UTC)
    old, old_rows, young_rows = old_and_young(engine, now - timedelta(days=HALF_DAY))
    groups = list(retention.groups_of(engine, old))
    assert [batch for group in groups for batch in group] == old  # every batch once, in order
    assert any(len(group) == 1 for group in groups) and any(len(group) > 1 for group in groups)
    counts = retention.prune(engine, older_than_days=HALF_DAY, now=now)
    assert counts["batch_runs"] == len(old) and counts["ride_predictions"] == counts["ride_outcomes"] == old_rows
    assert old_and_young(engine, now - timedelta(days=HALF_DAY)) == ([], 0, young_rows)
    assert_nothing_orphaned(engine)


def test_a_prune_out_of_time_leaves_every_batch_whole_for_the_next_one(day_of_history):
    """Its time is checked between groups: past it, nothing more starts, and what is left is counted."""
    engine = day_of_history
    now = datetime.now(UTC)
    old, old_rows, young_rows = old_and_young(engine, now - timedelta(days=HALF_DAY))
    counts = retention.delete_batches(engine, old, deadline=time.monotonic() - 1)
    assert dict(counts) == {"left": len(old)}
    assert old_and_young(engine, now - timedelta(days=HALF_DAY)) == (old, old_rows, young_rows)
    assert retention.prune(engine, older_than_days=HALF_DAY, now=now)["batch_runs"] == len(old)
    assert_nothing_orphaned(engine)
