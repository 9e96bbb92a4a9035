"""The Alembic history builds exactly the tables worker/store/schema.py describes, on PostgreSQL and SQLite."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from tests.stack import migrated_database
from worker.store.database import migrate, revisions
from worker.store.schema import metadata

pytestmark = pytest.mark.integration


def _differences(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()


def test_postgres_schema_after_all_migrations_matches_the_models() -> None:
    with migrated_database() as url:
        assert _differences(url) == []


def test_sqlite_schema_after_all_migrations_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    migrate(url)
    # SQLite keeps no column comments; every other difference counts.
    assert [d for d in _differences(url) if not (isinstance(d, list) and d[0][0] == "modify_comment")] == []


def test_upgrading_a_0001_database_keeps_its_batches_and_fills_their_slot() -> None:
    from sqlalchemy import text

    from tests.stack import create_database, drop_database

    name, url = create_database()
    try:
        migrate(url, "0001")
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO batch_runs (batch_id, trigger, rides_requested, status) VALUES "
                    "('schedule-2026-11-26T16:00:00+00:00', 'schedule', 10, 'succeeded'), "
                    "('adhoc-1', 'adhoc', 5, 'failed')"
                )
            )
        migrate(url)
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT batch_id, slot, speed_factor, fare_factor FROM batch_runs ORDER BY batch_id")
            ).all()
        engine.dispose()
        assert [(r.batch_id, r.slot, r.speed_factor, r.fare_factor) for r in rows] == [
            ("adhoc-1", None, 1.0, 1.0),
            ("schedule-2026-11-26T16:00:00+00:00", datetime(2026, 11, 26, 16, tzinfo=UTC), 1.0, 1.0),
        ]
    finally:
        drop_database(name)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_upgrading_to_utc_windows_keeps_each_hour_at_its_instant(backend: str, tmp_path: Path) -> None:
    """0008: hour windows stored by Chicago wall time become the UTC instants those wall times were
    (a summer and a winter hour, so both offsets), and their column tests move with them. Two old keys
    that name one instant (02:00 of March's change does not exist: it and 03:00 are both 08:00 UTC)
    do not stop the upgrade: the window of more rides is kept, with its column tests."""
    from sqlalchemy import text

    from tests.stack import create_database, drop_database

    name, url = create_database() if backend == "postgresql" else (None, f"sqlite:///{tmp_path / 'p.db'}")
    stored = [  # (end, start, rows): Chicago wall times, as 0007 stored them
        ("2026-07-01 14:00:00", "2026-07-01 13:00:00", 900),
        ("2026-12-01 14:00:00", "2026-12-01 13:00:00", 900),
        ("2026-03-08 02:00:00", "2026-03-08 01:00:00", 700),
        ("2026-03-08 03:00:00", "2026-03-08 02:00:00", 40),
    ]
    try:
        migrate(url, "0007")
        engine = create_engine(url)
        with engine.begin() as conn:
            for end, start, rows in stored:
                conn.execute(
                    text(
                        "INSERT INTO window_metrics (window_end, window_minutes, model_version, window_start, "
                        "batches, rows) VALUES (:e, 60, '1', :s, 12, :r)"
                    ),
                    {"e": end, "s": start, "r": rows},
                )
                conn.execute(
                    text(
                        "INSERT INTO window_column_drift (window_end, window_minutes, model_version, column_name, "
                        "method, score, threshold, drifted) VALUES (:e, 60, '1', 'fare', 'wasserstein', :r, 0.1, true)"
                    ),
                    {"e": end, "r": rows / 1000},
                )
        migrate(url)
        with engine.connect() as conn:
            windows = conn.execute(text("SELECT window_start, window_end, rows FROM window_metrics ORDER BY 2")).all()
            drift = conn.execute(text("SELECT window_end, score FROM window_column_drift ORDER BY 1")).all()
        engine.dispose()
        as_utc = lambda v: (  # noqa: E731  (SQLite: naive UTC text, as SQLAlchemy gives it back)
            datetime.fromisoformat(str(v)).replace(tzinfo=UTC)
            if not isinstance(v, datetime) or v.tzinfo is None
            else v.astimezone(UTC)
        )
        march, summer, winter = (datetime(2026, 3, 8, 8, tzinfo=UTC), datetime(2026, 7, 1, 19, tzinfo=UTC),
                                 datetime(2026, 12, 1, 20, tzinfo=UTC))  # fmt: skip
        assert [(as_utc(end), rows) for _, end, rows in windows] == [(march, 700), (summer, 900), (winter, 900)]
        assert [as_utc(start) for start, _, _ in windows] == [
            datetime(2026, 3, 8, 7, tzinfo=UTC),
            datetime(2026, 7, 1, 18, tzinfo=UTC),
            datetime(2026, 12, 1, 19, tzinfo=UTC),
        ]
        assert [(as_utc(end), score) for end, score in drift] == [(march, 0.7), (summer, 0.9), (winter, 0.9)]
    finally:
        if name:
            drop_database(name)


def test_a_database_behind_the_code_is_refused_naming_the_revision_and_the_fix(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.stack import create_database, drop_database
    from tests.support import REPO_ROOT

    name, url = create_database()
    try:
        migrate(url, "0001")
        env = {"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path), "DATABASE_URL": url}

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "worker", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True
            )

        listed = cli("batches")
        assert listed.returncode == 1, listed.stdout + listed.stderr
        head = revisions()[0]
        assert f"is at schema revision 0001, this code needs {head}: run `python -m worker migrate`" in listed.stderr
        status = json.loads(cli("status", "--json").stdout)["database"]
        assert status["schema_ready"] is False and "revision 0001" in status["schema_problem"]
        assert cli("migrate").returncode == 0
        assert cli("batches").returncode == 0
    finally:
        drop_database(name)


def _index_methods(url: str) -> dict[str, tuple[str, bool]]:
    """ride_predictions' indexes: name -> (access method, valid)."""
    from sqlalchemy import text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT c.relname, a.amname, i.indisvalid FROM pg_index i "
                    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                    "WHERE i.indrelid = 'ride_predictions'::regclass"
                )
            ).all()
    finally:
        engine.dispose()
    return {name: (method, valid) for name, method, valid in rows}


def test_0013_makes_the_trip_start_index_brin_without_blocking_a_writer_and_downgrades_to_a_btree() -> None:
    """The upgrade builds the BRIN index CONCURRENTLY: while it waits for a writer's open transaction,
    another writer inserts at once (a one-second lock_timeout would fail it otherwise)."""
    import threading

    import psycopg2
    from alembic import command
    from sqlalchemy import text

    from tests.stack import create_database, drop_database
    from worker.store.database import _config

    insert = (
        "INSERT INTO ride_predictions (trip_id, trip_start_timestamp, fare, trip_miles, predicted_duration, "
        "model_name, model_version, batch_id) VALUES (gen_random_uuid(), now(), 10, 2, 12, 'm', '1', 'b')"
    )
    name, url = create_database()
    dsn = url.replace("postgresql+psycopg2://", "postgresql://")
    holder = writer = None
    try:
        migrate(url, "0012")
        before = _index_methods(url)
        assert before["ix_ride_predictions_trip_start_timestamp"] == ("btree", True)
        holder = psycopg2.connect(dsn)  # a writer's open transaction, which CONCURRENTLY waits out
        with holder.cursor() as cur:
            cur.execute(insert)
        errors: list[BaseException] = []

        def upgrade() -> None:
            try:
                migrate(url)
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        thread = threading.Thread(target=upgrade)
        thread.start()
        watcher = psycopg2.connect(dsn)
        watcher.autocommit = True
        with watcher.cursor() as cur:
            for _ in range(600):  # the build has started and is waiting for the holder's transaction
                cur.execute(
                    "SELECT count(*) FROM pg_stat_progress_create_index WHERE relid = 'ride_predictions'::regclass"
                )
                if cur.fetchone()[0]:
                    break
                thread.join(0.05)
            else:
                raise AssertionError(
                    "no index build began while a writer held its transaction open (a plain CREATE INDEX waits for its lock)"
                )
        watcher.close()
        writer = psycopg2.connect(dsn)
        with writer.cursor() as cur:
            cur.execute("SET lock_timeout = '1s'")
            cur.execute(insert)  # not blocked by the build
        writer.commit()
        holder.commit()
        thread.join(120)
        assert not thread.is_alive() and not errors, errors
        after = _index_methods(url)
        assert after["ix_ride_predictions_created_at"] == ("btree", True)
        assert after["ix_ride_predictions_trip_start_timestamp"] == ("brin", True)
        assert set(after) == set(before)  # renamed into place: no index left under a temporary name
        engine = create_engine(url)
        with engine.connect() as conn:
            definitions = conn.execute(
                text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'ix_ride_predictions_%' AND indexdef LIKE '%brin%'"
                )
            ).scalars()
            assert [d.split("USING brin ")[1] for d in definitions] == [
                "(trip_start_timestamp timestamp_minmax_multi_ops) WITH (autosummarize='on')",
            ]
        engine.dispose()
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM ride_predictions")).scalar() == 2
        engine.dispose()
        config = _config()
        downgrade_engine = create_engine(url)
        with downgrade_engine.connect() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0012")
            connection.commit()
        downgrade_engine.dispose()
        assert _index_methods(url) == before
    finally:
        for conn in (holder, writer):
            if conn is not None:
                conn.close()
        drop_database(name)


def test_0014_fills_known_at_of_outcomes_loaded_from_a_file_before_the_load_set_it() -> None:
    """Such rows were never seen by the readers that go by known_at (the rolling live accuracy, its
    alert, the policy); the upgrade gives them the later of the trip's end and their arrival."""
    from sqlalchemy import text

    from tests.stack import create_database, drop_database

    name, url = create_database()
    try:
        migrate(url, "0013")
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO ride_outcomes (trip_id, actual_duration, observed_at, source, loaded_at, known_at) "
                    "VALUES (gen_random_uuid(), 10, '2013-05-01 10:10', 'file', '2026-12-01 12:00+00', NULL), "
                    "(gen_random_uuid(), 10, '2026-12-01 10:10', 'file', '2026-12-01 12:00+00', NULL), "
                    "(gen_random_uuid(), 10, '2026-12-01 05:10', 'generated', '2026-12-01 12:00+00', "
                    "'2026-12-01 11:10+00')"
                )
            )
        migrate(url)
        with engine.connect() as conn:
            known = conn.execute(
                text("SELECT observed_at, known_at AT TIME ZONE 'UTC' FROM ride_outcomes ORDER BY observed_at")
            ).all()
        engine.dispose()
        assert [str(k) for _, k in known] == [
            "2026-12-01 12:00:00",  # ended long before it arrived: its arrival
            "2026-12-01 11:10:00",  # a row that had it keeps it
            "2026-12-01 16:10:00",  # ended (10:10 Chicago = 16:10 UTC) after its arrival: its end
        ]
    finally:
        drop_database(name)
