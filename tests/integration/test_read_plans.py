"""Reads bounded by what they show: every Grafana panel and annotation, over its dashboard's default
range, on a database with a day of Chicago-volume history, can be served without reading the whole
of a per-ride table.

The plans are asked for with sequential scans disabled: PostgreSQL then still chooses one only
where no index can serve the filter, which is what this test looks for (on a small table it might
choose a sequential scan anyway, because it is cheaper there; that would hide nothing on a big one).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.grafana import DASHBOARDS, annotation_queries, expand_sql, queries
from tests.stack import migrated_database
from worker.cli.history_bench import fill_history
from worker.store.database import get_engine

PER_RIDE_TABLES = {"ride_predictions", "ride_outcomes", "shadow_predictions"}


@pytest.fixture(scope="module")
def history_url():
    with migrated_database() as url:
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        end -= timedelta(minutes=end.minute % 5)
        rows = fill_history(get_engine(url), 1, "ordered", end, lambda _line: None)
        assert rows > 50_000  # a Chicago day: tens of thousands of rides
        yield url


def default_range(dashboard: str) -> timedelta:
    spec = json.loads((DASHBOARDS / dashboard).read_text())["time"]
    assert spec["to"] == "now" and spec["from"].startswith("now-"), spec
    amount, unit = int(spec["from"][4:-1]), spec["from"][-1]
    return timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: amount})


def full_scans(plan: dict[str, Any]) -> list[str]:
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in PER_RIDE_TABLES:
        found.append(plan["Relation Name"])
    for child in plan.get("Plans", []):
        found.extend(full_scans(child))
    return found


def plan_of(url: str, sql: str) -> dict[str, Any]:
    with get_engine(url).connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        return conn.execute(text(f"EXPLAIN (FORMAT JSON) {sql}")).scalar_one()[0]["Plan"]


def test_the_history_filler_writes_what_a_day_of_slots_would(history_url):
    """The benchmark's history: 288 scheduled batches, one outcome per prediction, ids ordered by time."""
    with get_engine(history_url).connect() as conn:
        batches, rows, outcomes = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM batch_runs WHERE status = 'succeeded'), "
                "(SELECT count(*) FROM ride_predictions), (SELECT count(*) FROM ride_outcomes)"
            )
        ).one()
        written = conn.execute(text("SELECT sum(rows_written) FROM batch_runs")).scalar_one()
        disorder = conn.execute(
            text(
                "SELECT count(*) FROM (SELECT trip_id, lag(trip_id) OVER (ORDER BY created_at, trip_id) AS before "
                "FROM ride_predictions) t WHERE trip_id < before"
            )
        ).scalar_one()
    assert batches == 288 and rows == outcomes == written
    assert disorder == 0  # a later batch's ids sort after an earlier one's


@pytest.mark.parametrize("query", queries("sql"), ids=lambda q: q.label)
def test_every_panel_filter_can_use_an_index(history_url, query):
    now = datetime.now(UTC)
    sql = expand_sql(query.target["rawSql"], now - default_range(query.dashboard), now, "1m")
    assert not full_scans(plan_of(history_url, sql)), f"{query.label} reads a whole per-ride table"


@pytest.mark.parametrize("annotation", annotation_queries(), ids=lambda a: a.label)
def test_every_annotation_filter_can_use_an_index(history_url, annotation):
    now = datetime.now(UTC)
    sql = expand_sql(annotation.target["rawSql"], now - default_range(annotation.dashboard), now, "1m")
    assert not full_scans(plan_of(history_url, sql)), f"{annotation.label} reads a whole per-ride table"


def test_the_history_benchmark_names_a_database_it_may_not_create():
    """A role without CREATEDB: one line that names the throwaway database, nothing left behind."""
    import uuid

    from worker.cli.errors import UsageError
    from worker.cli.history_bench import throwaway_database

    role = f"ctb_nocreate_{uuid.uuid4().hex[:8]}"
    admin = get_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN NOCREATEDB'))
    try:
        url = f"postgresql+psycopg2://{role}@127.0.0.1:5432/postgres"
        with (
            pytest.raises(
                UsageError, match=rf"could not create a throwaway database {role}_probe: .*permission denied"
            ),
            throwaway_database(url, f"{role}_probe"),
        ):
            pass
        get_engine(url).dispose()
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP ROLE "{role}"'))
            assert not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": f"{role}_probe"}).all()


def test_the_history_benchmark_prints_its_table_and_leaves_no_database_behind(stack):
    """The command the README's table comes from, end to end on a small history (a real registry
    model, throwaway databases beside the stack's own)."""
    done = stack.cli("bench", "--history", "0.05", "--repeat", "1", "--sizes", "2000", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in (
        "history: predictions (and as many outcomes)",
        "2,000-ride batch: against empty (aim: within 15 %)",
        "bare COPY of 2,000 prediction rows, PK only",
        "trip-start panel: filter on the column itself, ms",
        "an exporter scrape's database reads",
        "`batches` (the newest 20), ms",
        "`report --since 7d`, whole (reads, charts, page), ms",
        "an update_quality pass (sweep, live accuracy), ms",
        "monitoring the newest slot's batch (and its hour), ms",
    ):
        assert line in done.stdout, done.stdout
    own = make_url(stack.env["DATABASE_URL"]).database
    admin = get_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    with admin.connect() as conn:
        left = conn.execute(
            text("SELECT datname FROM pg_database WHERE datname LIKE :p"), {"p": f"{own}_history_%"}
        ).all()
    assert not left
