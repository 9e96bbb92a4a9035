"""Reads bounded by what they show: every Grafana panel and annotation, over its dashboard's default
range, on a database with a day of Chicago-volume history, can be served without reading the whole
of a per-ride table.

The plans are asked for with sequential scans (and merge and hash joins, which on a small table
may walk a whole index) disabled: PostgreSQL then still reads a table whole only where no index can
serve the filter, which is what this test looks for (on a small table it might choose to anyway,
because it is cheaper there; that would hide nothing on a big one).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url

from tests.grafana import DASHBOARDS, annotation_queries, expand_sql, queries
from tests.stack import migrated_database
from worker.cli.history_bench import TRIP_START_INDEXED, fill_history
from worker.store.database import get_engine
from worker.store.snapshot import scrape_engine

PER_RIDE_TABLES = {"ride_predictions", "ride_outcomes", "shadow_predictions"}
# On a day of history the last day is the whole table, so reading it whole is the cheapest plan:
# a sequential scan, or a merge or hash join walking a whole index. Those are penalised, so the
# plan shows whether an index can bound each read; where none can, PostgreSQL still reads whole.
WHOLE_READS_OFF = "SET enable_seqscan = off; SET enable_mergejoin = off; SET enable_hashjoin = off"


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
    """Per-ride tables read whole: by a sequential scan, or by walking a whole index (an index scan
    with no condition on the index, which with sequential scans off is how such a read shows)."""
    found = []
    table = plan.get("Relation Name")
    if table in PER_RIDE_TABLES and (
        plan.get("Node Type") == "Seq Scan"
        or (plan.get("Node Type") in ("Index Scan", "Index Only Scan") and "Index Cond" not in plan)
    ):
        found.append(f"{table} ({plan['Node Type']}{' on ' + plan['Index Name'] if 'Index Name' in plan else ''})")
    for child in plan.get("Plans", []):
        found.extend(full_scans(child))
    return found


def plan_of(url: str, sql: str) -> dict[str, Any]:
    with get_engine(url).connect() as conn:
        conn.execute(text(WHOLE_READS_OFF))
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


def test_the_services_reads_are_not_compiled_by_jit(history_url):
    """The trip-start panel's day on 90 days of history is estimated above PostgreSQL's jit_above_cost
    (120,000 against 100,000), so by default each run first compiled it: 12.5 ms against 9.8 ms with
    JIT off. The service's connections turn JIT off (the threshold is lowered here so that a small
    database would compile too); a plain connection, the control, still compiles."""
    import psycopg2

    sql = "EXPLAIN (ANALYZE, FORMAT JSON) " + TRIP_START_INDEXED.replace(":since", "now() - interval '1 day'").replace(
        ":until", "now()"
    )
    plain = psycopg2.connect(make_url(history_url).set(drivername="postgresql").render_as_string(False))
    try:
        with plain.cursor() as cur:
            cur.execute("SET jit_above_cost = 0")
            cur.execute(sql)
            assert "JIT" in cur.fetchone()[0][0]  # this server compiles such a plan when asked
    finally:
        plain.close()
    with get_engine(history_url).connect() as conn:
        conn.execute(text("SET jit_above_cost = 0"))
        assert "JIT" not in conn.execute(text(sql)).scalar_one()[0]
    scrape = scrape_engine(history_url, 5)  # the exporter's own engine too
    with scrape.connect() as conn:
        assert conn.execute(text("SHOW jit")).scalar_one() == "off"
    scrape.dispose()


def test_options_a_database_url_gives_are_kept_and_win(history_url):
    """JIT off is a default the engine adds: what the URL itself asks for, once or several times, wins."""
    from worker.store.database import build_engine

    for query, timeout in (
        ("options=-c%20jit%3Don", "0"),
        ("options=-c%20jit%3Don&options=-c%20statement_timeout%3D60s", "1min"),
    ):
        engine = build_engine(f"{history_url}?{query}")
        with engine.connect() as conn:
            assert conn.execute(text("SHOW jit")).scalar_one() == "on"
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == timeout
        engine.dispose()


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


# Every statement the service's own readers send (the monitoring, live accuracy, the policy, the
# report, the exporter and `batches`) is recorded as it is sent, then planned with the very same
# parameters: a reader added later is held by the same test, without a list of queries to keep.
EXPLAINABLE = ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE")


@contextmanager
def statements_sent(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement that can be planned, with its parameters, as the driver got them (views and
    functions are expanded in the plan, so one that names no per-ride table is still checked)."""
    sent: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, executemany) -> None:
        first = statement.lstrip().split(None, 1)[0].upper()
        if not executemany and first in EXPLAINABLE:
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def whole_table_reads(engine: Engine, sent: list[tuple[str, Any]]) -> list[str]:
    """EXPLAIN (never ANALYZE: a write is planned, not run) of each statement, sequential scans off."""
    found = []
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(WHOLE_READS_OFF)
        for statement, parameters in sent:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
            scanned = full_scans(cursor.fetchone()[0][0]["Plan"])
            if scanned:
                found.append(f"{' '.join(statement.split())[:300]} reads all of {', '.join(scanned)}")
        raw.rollback()
    finally:
        raw.close()
    return found


@pytest.fixture(scope="module")
def history_lookups(trained_model):
    """The history names model 'history' v1, which no registry holds: monitoring reads it with a real
    registered version's reference and held-out MAE, so it does all it would do for a real one."""
    from worker.model.reference import ReferenceCache
    from worker.model.registry import configure_mlflow

    settings, result = trained_model
    cache = ReferenceCache(lambda: configure_mlflow(settings))
    reference = cache.get(settings.MODEL_NAME, result.version, time.monotonic())
    heldout = cache.heldout_mae(settings.MODEL_NAME, result.version)
    assert reference is not None and heldout is not None
    return (lambda _name, _version: reference), (lambda _name, _version: heldout)


def test_the_monitoring_reads_a_batch_and_its_hour_through_indexes(history_url, history_lookups):
    from worker.monitor.batches import monitor_batch
    from worker.rides.generator import chicago_now

    engine = get_engine(history_url)
    with engine.connect() as conn:
        newest = conn.execute(
            # Not a slot at minute 5: the first of its clock hour (start, end] is alone in it until the next
            # slot, so the hour would hold just its rows (this failed in a CI run at 01:07).
            text(
                "SELECT batch_id FROM batch_runs WHERE trigger = 'schedule' "
                "AND EXTRACT(MINUTE FROM slot AT TIME ZONE 'UTC') <> 5 ORDER BY slot DESC LIMIT 1"
            )
        ).scalar_one()
    with statements_sent(engine) as sent:
        report = monitor_batch(engine, newest, history_lookups[0], chicago_now(), 5000)
    assert report.status == "ok" and report.window is not None, report
    with engine.connect() as conn:
        hour = conn.execute(
            text(
                "SELECT rows FROM window_metrics WHERE window_minutes = 60 AND window_end >= :slot "
                "ORDER BY window_end LIMIT 1"
            ),
            {"slot": report.window[0]},
        ).scalar_one()
    assert hour > report.rows  # the hour's drift was read from its batches' rides, not the batch's alone
    assert not whole_table_reads(engine, sent)


def test_live_accuracy_and_the_sweep_read_through_indexes(history_url, history_lookups):
    from worker.monitor import quality
    from worker.rides.generator import chicago_now

    engine = get_engine(history_url)
    references, heldout = history_lookups
    now = datetime.now(UTC)
    with statements_sent(engine) as sent:
        swept = quality.sweep_unmonitored(engine, references, chicago_now(), now, 5000)["swept"]
        passed = quality.update_quality(engine, chicago_now(), heldout, references, now_utc=now, sample_rows=5000)
    with engine.connect() as conn:
        monitored = conn.execute(text("SELECT count(*) FROM batch_metrics WHERE monitor_status = 'ok'")).scalar_one()
        accurate = conn.execute(text("SELECT count(*) FROM batch_metrics WHERE mae IS NOT NULL")).scalar_one()
    assert swept > 0 and monitored >= swept + 1, (swept, monitored)  # the sweep monitored them, none failed
    assert accurate > 0, passed  # and the pass read their outcomes
    assert not whole_table_reads(engine, sent)


def test_the_policy_reads_through_indexes(history_url):
    """What a policy pass asks the database (policy.gather), for the history's version with a
    challenger that shadowed its last twelve batches: recent accuracy, the change point, the paired
    evidence (its sums and its sample), the counts."""
    from worker.lifecycle.policy import _local
    from worker.monitor import degradation, paired
    from worker.store import evidence

    engine = get_engine(history_url)
    shadow_newest(engine)
    now = datetime.now(UTC)
    with statements_sent(engine) as sent:
        recent = degradation.recent_accuracy(engine, "1", 1.0, 1000, now)
        degradation.change_point(engine, "1", 1.0, _local(now))
        evidence.rides_known_since(engine, _local(now - timedelta(hours=6)), now)
        evidence.outcomes_known(engine, "1", now, since=now - timedelta(hours=6))
        compared = paired.live(engine, "2", "1", _local(now))
    assert recent.outcomes == 1000, recent
    assert compared.outcomes > 100, compared  # the sums found pairs, so the sample was read too
    assert not whole_table_reads(engine, sent)


def shadow_newest(engine: Engine) -> None:
    """Version 2 shadow-scored the newest twelve scheduled batches (once per module's history)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO shadow_predictions (trip_id, model_version, batch_id, predicted_duration, created_at) "
                "SELECT p.trip_id, '2', p.batch_id, p.predicted_duration * 1.1, p.created_at FROM ride_predictions p "
                "WHERE p.batch_id IN (SELECT batch_id FROM batch_runs ORDER BY slot DESC LIMIT 12) "
                "ON CONFLICT DO NOTHING"
            )
        )
        conn.execute(
            text(
                "UPDATE batch_runs SET challenger_version = '2' WHERE challenger_version IS NULL "
                "AND batch_id IN (SELECT DISTINCT batch_id FROM shadow_predictions)"
            )
        )


def test_the_report_the_exporter_and_batches_read_through_indexes(history_url):
    """With version 1 on record as production and 2 as its challenger, so that they read live
    accuracy and the paired evidence too."""
    from worker.cli.exporter import read_database
    from worker.monitor.overview import ModelAliases, collect
    from worker.settings import Settings
    from worker.store.history import list_batches, settled_until

    engine = get_engine(history_url)
    shadow_newest(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_aliases (model_name, alias, version) VALUES "
                "('history', 'production', '1'), ('history', 'challenger', '2') ON CONFLICT DO NOTHING"
            )
        )
    settings = Settings(DATABASE_URL=history_url, MODEL_NAME="history")
    now = datetime.now(UTC)
    with statements_sent(engine) as sent:
        reading = read_database(settings, engine)
        list_batches(engine, last=20)
        overview = collect(
            engine,
            now,
            timedelta(days=7),
            300,
            settled_until(now, 300),
            ModelAliases("history", "production", "challenger"),
        )
    assert len(overview.batches) == 288, len(overview.batches)
    per_ride = [statement for statement, _ in sent if any(table in statement for table in PER_RIDE_TABLES)]
    assert len(per_ride) >= 2, (reading, per_ride)  # live accuracy and the paired evidence, at least
    assert not whole_table_reads(engine, sent)
