"""`rerun` sends a failed or stuck batch once: a batch that is retrying (its worker's retry, or a
rerun sent a moment ago) is not sent again until its latest attempt is older than VISIBILITY_TIMEOUT.
On a SQLite database migrated like any other; the refusals come before anything is sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from worker.cli.errors import UsageError
from worker.cli.rerun import rerun_batch
from worker.settings import Settings
from worker.store import writes
from worker.store.database import build_engine, migrate
from worker.store.schema import batch_runs

NOW = datetime.now(UTC)


@pytest.fixture
def database(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    migrate(url)
    engine = build_engine(url)
    yield Settings(LOCAL_DIR=tmp_path, DATABASE_URL=url), engine
    engine.dispose()


def _batch(engine, status: str, attempt_started: datetime) -> str:
    batch_id = f"adhoc-{status}"
    with engine.begin() as conn:
        conn.execute(
            insert(batch_runs).values(
                batch_id=batch_id, trigger="adhoc", seed="1", rides_requested=10, status=status, error="boom",
                window_start=datetime(2026, 12, 1, 8), window_end=datetime(2026, 12, 1, 8, 5),
                started_at=attempt_started, attempt_started_at=attempt_started,
            )
        )  # fmt: skip
    return batch_id


def test_a_batch_its_worker_retries_is_not_sent_again(database):
    settings, engine = database
    batch_id = _batch(engine, "retrying", NOW - timedelta(seconds=40))
    with pytest.raises(UsageError, match=r"is retrying \(its latest attempt started 4\d s ago\); it is queued"):
        rerun_batch(settings, engine, batch_id, now=NOW)


def test_a_rerun_sent_a_moment_ago_is_not_sent_twice(database):
    settings, engine = database
    batch_id = _batch(engine, "failed", NOW - timedelta(hours=2))
    before = writes.reopen_batch(engine, batch_id, "rerun requested (was failed: boom)")  # what the first rerun does
    assert before is not None and before["status"] == "failed"
    with engine.connect() as conn:
        row = conn.execute(select(batch_runs).where(batch_runs.c.batch_id == batch_id)).mappings().one()
    assert (row["status"], row["attempts"]) == ("retrying", 2)
    with pytest.raises(UsageError, match=r"is retrying .* it is queued to run again"):
        rerun_batch(settings, engine, batch_id, now=datetime.now(UTC))
    # A send that failed puts the row back as it was, its attempt's start too (the old one: stuck).
    assert writes.undo_reopen(engine, batch_id, before)
    with engine.connect() as conn:
        restored = conn.execute(select(batch_runs).where(batch_runs.c.batch_id == batch_id)).mappings().one()
    assert (restored["status"], restored["attempts"], restored["error"]) == ("failed", 1, "boom")
    assert restored["attempt_started_at"] == before["attempt_started_at"]
