"""The prune's claim on the embedded store (SQLite, no row locks): a reopen that read a batch before a
prune claimed it does not take it back, and the benchmark's own cleanup still deletes unfinished batches."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import event, insert, select

from worker.store import retention, writes
from worker.store.database import build_engine, migrate
from worker.store.schema import batch_runs


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'claim.db'}"
    migrate(url)
    engine = build_engine(url)
    yield engine
    engine.dispose()


def _status(engine, batch_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(batch_runs.c.status).where(batch_runs.c.batch_id == batch_id)).scalar()


def _batch(engine, batch_id: str, status: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(batch_runs).values(
                batch_id=batch_id, trigger="adhoc", seed="1", rides_requested=1, status=status, attempts=1
            )
        )


def test_a_reopen_that_read_the_batch_before_a_prune_claimed_it_is_refused(engine):
    """The reopen reads `failed`; a prune claims the batch from another connection before the reopen
    writes (SQLite takes no lock for a read): the reopen is refused and the claim stands."""
    _batch(engine, "old", "failed")
    prune_engine = build_engine(str(engine.url))
    claimed: list[str] = []

    def claim_first(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.startswith("UPDATE batch_runs SET status") and not claimed:
            with prune_engine.begin() as other:
                claimed.extend(retention._claim(other, ["old"]))

    event.listen(engine, "before_cursor_execute", claim_first)
    try:
        with pytest.raises(writes.BatchPruned, match="batch old is being deleted by prune"):
            writes.reopen_batch(engine, "old", "rerun requested")
    finally:
        event.remove(engine, "before_cursor_execute", claim_first)
        prune_engine.dispose()
    assert claimed == ["old"] and _status(engine, "old") == "pruning"


def test_a_prune_deletes_only_finished_batches_and_the_benchmark_its_own_whatever_their_status(engine):
    for batch_id, status in (("done", "succeeded"), ("busy", "running"), ("again", "retrying")):
        _batch(engine, batch_id, status)
    counts = retention.delete_batches(engine, ["done", "busy", "again"])
    assert (counts["batch_runs"], counts["skipped"]) == (1, 2)
    assert [_status(engine, b) for b in ("done", "busy", "again")] == [None, "running", "retrying"]
    counts = retention.delete_batches(engine, ["busy", "again"], Counter(), any_status=True)
    assert (counts["batch_runs"], counts["skipped"]) == (2, 0)
    assert [_status(engine, b) for b in ("busy", "again")] == [None, None]


def test_a_refusal_that_cannot_be_recorded_leaves_the_other_slots_of_the_run_marked(tmp_path, monkeypatch, caplog):
    """A worker on this code against a database still at 0011 (no slot_refusals): the run's failure is
    still marked on every slot that has a batch, and the refusal that cannot be stored is only logged."""
    from worker.beat import RUN_SLOTS
    from worker.settings import get_settings
    from worker.tasks import mark

    url = f"sqlite:///{tmp_path / 'at-0011.db'}"
    migrate(url, "0011")
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        engine = build_engine(url)
        slots = ["2026-11-26T16:05:00+00:00", "2026-11-26T16:10:00+00:00", "2026-11-26T16:15:00+00:00"]
        for slot in (slots[0], slots[2]):
            _batch(engine, f"schedule-{slot}", "running")
        mark(RUN_SLOTS, {"slots": slots, "interval": 300.0, "sent_by": "backfill"}, "t1", "failed", "OSError: gone")
        assert [_status(engine, f"schedule-{slot}") for slot in slots] == ["failed", None, "failed"]
        assert "could not record why slot 2026-11-26T16:10:00+00:00 was refused" in caplog.text
        engine.dispose()
    finally:
        get_settings.cache_clear()
