"""Least privilege in PostgreSQL (issues 13, 18): the compose stack's init script, run on our own throwaway server.

The script is deploy/postgres-init/10-roles-and-databases.sh, run the way the postgres image
runs it (as POSTGRES_USER over the Unix socket, with the compose file's environment), on a
cluster that checks passwords over TCP (scram-sha-256), as the image's does. The machine's
shared PostgreSQL is never touched: no role is created there.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg2
import pytest
from psycopg2 import errors
from sqlalchemy import text as sa_text

from tests.grafana import annotation_queries, expand_sql, queries
from tests.reliability.services import PostgresServer
from tests.support import REPO_ROOT
from worker import batch
from worker.model.registry import LoadedModel
from worker.model.training import ForestParams, fit_pipeline, training_frame
from worker.rides.generator import Window
from worker.store import writes
from worker.store.database import get_engine, migrate
from worker.store.history import settled_until
from worker.store.readers import READ_TABLES
from worker.store.snapshot import read_accuracy, read_batches, read_drift, read_lifecycle, scrape_engine

pytestmark = pytest.mark.integration

SCRIPT = REPO_ROOT / "deploy" / "postgres-init" / "10-roles-and-databases.sh"
DB = "taxi"
APP_PASSWORD = "app-secret-7f3a9c"
MLFLOW_PASSWORD = "mlflow-secret-2b8d41"
READER_PASSWORD = "reader-secret-5e0c73"
SUPERUSER_PASSWORD = "superuser-secret-91ad2e"
APP_TABLES = {"ride_predictions", "batch_runs", "batch_chunks", "alembic_version"}
WINDOW = Window(pd.Timestamp("2026-11-27 10:00").to_pydatetime(), pd.Timestamp("2026-11-27 10:05").to_pydatetime())


@contextmanager
def password_checking_postgres(log_statements: bool = False) -> Iterator[PostgresServer]:
    """Our own cluster: trust on its Unix socket (the superuser, like the image's init), scram over TCP.
    With `log_statements`, the server logs every statement it receives (log_statement = all)."""
    pg = PostgresServer(database=DB)
    try:
        pg.init()
        (pg.data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        if log_statements:
            with open(pg.data / "postgresql.conf", "a") as conf:
                conf.write("\nlog_statement = 'all'\nlog_min_error_statement = info\n")
        pg.start()
        yield pg
    finally:
        pg.__exit__(None, None, None)


def superuser(pg: PostgresServer, dbname: str = "postgres"):
    conn = psycopg2.connect(host=str(pg.root), port=pg.port, user="postgres", dbname=dbname)
    conn.autocommit = True
    return conn


def superuser_url(pg: PostgresServer, dbname: str) -> str:
    return f"postgresql+psycopg2://postgres@/{dbname}?host={pg.root}&port={pg.port}"


def role_url(pg: PostgresServer, role: str, password: str, dbname: str) -> str:
    return f"postgresql+psycopg2://{role}:{password}@127.0.0.1:{pg.port}/{dbname}"


def connect(pg: PostgresServer, role: str, password: str, dbname: str):
    conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user=role, password=password, dbname=dbname)
    conn.autocommit = True
    return conn


def run_init_script(pg: PostgresServer, path: str | None = None) -> subprocess.CompletedProcess:
    """As the image's entrypoint does: POSTGRES_* in the environment, psql on the local socket."""
    env = {
        "PATH": path or os.environ["PATH"],
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": DB,
        "POSTGRES_PASSWORD": SUPERUSER_PASSWORD,
        "POSTGRES_APP_PASSWORD": APP_PASSWORD,
        "POSTGRES_MLFLOW_PASSWORD": MLFLOW_PASSWORD,
        "POSTGRES_READER_PASSWORD": READER_PASSWORD,
        "PGHOST": str(pg.root),
        "PGPORT": str(pg.port),
    }
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def query(conn, sql: str, *params) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def fails(conn, sql: str, error: type[Exception], text: str) -> None:
    with pytest.raises(error) as raised:
        query(conn, sql)
    assert text in str(raised.value), raised.value


def create_mlflow_tables(url: str) -> None:
    """MLflow's own migrations, as its server runs them on its first start."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(url, "/tmp/unused-artifacts")
    store.create_experiment(f"exp-{os.getpid()}-{len(store.search_experiments())}")
    store.engine.dispose()


@pytest.fixture(scope="module")
def tiny_model() -> LoadedModel:
    frame, _, _ = training_frame(None, 2000, 1)
    return LoadedModel(fit_pipeline(frame, ForestParams(n_estimators=2, max_depth=4), 1), "m", "1")


def write_batch(url: str, model: LoadedModel, batch_id: str, rides: int, given_ids: bool) -> int:
    """A batch as a worker writes it: the COPY path (new ids) or the temp-table path (given ids)."""
    engine = get_engine(url)
    writes.start_batch(
        engine, batch_id=batch_id, trigger="adhoc", rides_requested=rides, chunks_total=1, task_id=None,
        seed=1, window=(WINDOW.start, WINDOW.end), attempt=1,
    )  # fmt: skip
    frame = batch.generated_chunk(batch_id, 1, 0, rides, WINDOW)
    result = batch.predict_and_write(engine, model, batch_id, 0, frame, {}, ids_are_new=not given_ids)
    return result.write.rows_written


def owners(pg: PostgresServer, dbname: str, names: set[str]) -> dict[str, tuple[str, str]]:
    conn = superuser(pg, dbname)
    try:
        rows = query(
            conn, "SELECT tablename, schemaname, tableowner FROM pg_tables WHERE tablename = ANY(%s)", list(names)
        )
    finally:
        conn.close()
    return {name: (schema, owner) for name, schema, owner in rows}


def assert_roles_are_least_privilege(pg: PostgresServer) -> None:
    """What each role can and cannot do, once the script has run and both services made their tables."""
    app = connect(pg, "taxi_app", APP_PASSWORD, DB)
    try:
        assert query(app, "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user") == [
            (False, False, False)
        ]
        fails(app, "CREATE ROLE intruder LOGIN", errors.InsufficientPrivilege, "permission denied to create role")
        fails(app, "CREATE DATABASE intruder", errors.InsufficientPrivilege, "permission denied to create database")
        fails(app, "CREATE SCHEMA intruder", errors.InsufficientPrivilege, "permission denied for database")
        fails(
            app,
            "CREATE TABLE public.intruder (x int)",
            errors.InsufficientPrivilege,
            "permission denied for schema public",
        )
        assert query(app, "SHOW search_path") == [("predictions",)]
    finally:
        app.close()

    # Neither service can even connect to the other's database ...
    with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
        connect(pg, "taxi_app", APP_PASSWORD, "mlflow")
    with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
        connect(pg, "mlflow", MLFLOW_PASSWORD, DB)

    # ... and were CONNECT granted by mistake, neither could read the other's tables.
    admin = superuser(pg)
    try:
        query(admin, f"GRANT CONNECT ON DATABASE {DB} TO mlflow")
        query(admin, "GRANT CONNECT ON DATABASE mlflow TO taxi_app")
        ml = connect(pg, "mlflow", MLFLOW_PASSWORD, DB)
        try:
            fails(
                ml,
                "SELECT count(*) FROM predictions.ride_predictions",
                errors.InsufficientPrivilege,
                "permission denied for schema predictions",
            )
        finally:
            ml.close()
        app = connect(pg, "taxi_app", APP_PASSWORD, "mlflow")
        try:
            fails(
                app,
                "SELECT count(*) FROM public.experiments",
                errors.InsufficientPrivilege,
                "permission denied for table experiments",
            )
            fails(
                app,
                "SELECT count(*) FROM public.registered_models",
                errors.InsufficientPrivilege,
                "permission denied for table registered_models",
            )
        finally:
            app.close()
    finally:
        query(admin, f"REVOKE CONNECT ON DATABASE {DB} FROM mlflow")
        query(admin, "REVOKE CONNECT ON DATABASE mlflow FROM taxi_app")
        admin.close()

    # The passwords are the ones from .env: a wrong one is refused over TCP.
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect(pg, "taxi_app", "not-the-password", DB)


def test_new_volume_app_role_migrates_and_writes_but_cannot_reach_mlflow(tiny_model):
    with password_checking_postgres() as pg:
        admin = superuser(pg)
        query(admin, f"CREATE DATABASE {DB}")  # what the image does for POSTGRES_DB before the init scripts
        admin.close()
        run_init_script(pg)
        run_init_script(pg)  # idempotent: the same command serves existing deployments

        app_url = role_url(pg, "taxi_app", APP_PASSWORD, DB)
        migrate(app_url)
        assert owners(pg, DB, APP_TABLES) == {name: ("predictions", "taxi_app") for name in APP_TABLES}
        assert write_batch(app_url, tiny_model, "new-copy", 300, given_ids=False) == 300
        assert write_batch(app_url, tiny_model, "new-given-ids", 200, given_ids=True) == 200
        app = connect(pg, "taxi_app", APP_PASSWORD, DB)
        assert query(app, "SELECT count(*) FROM ride_predictions") == [(500,)]
        app.close()

        create_mlflow_tables(role_url(pg, "mlflow", MLFLOW_PASSWORD, "mlflow"))
        assert set(owners(pg, "mlflow", {"experiments", "registered_models"}).values()) == {("public", "mlflow")}
        assert_roles_are_least_privilege(pg)


def test_existing_deployment_is_brought_to_the_same_roles_by_the_same_command(tiny_model):
    """Before: the app migrated as the superuser into `public`, MLflow's tables owned by the superuser."""
    with password_checking_postgres() as pg:
        admin = superuser(pg)
        query(admin, f"CREATE DATABASE {DB}")
        query(admin, "CREATE DATABASE mlflow")  # the old 10-create-mlflow-db.sql
        admin.close()
        old_url = superuser_url(pg, DB)
        migrate(old_url)
        assert write_batch(old_url, tiny_model, "before", 250, given_ids=False) == 250
        create_mlflow_tables(superuser_url(pg, "mlflow"))
        assert owners(pg, DB, {"ride_predictions"}) == {"ride_predictions": ("public", "postgres")}

        run_init_script(pg)

        assert owners(pg, DB, APP_TABLES) == {name: ("predictions", "taxi_app") for name in APP_TABLES}
        mlflow_tables = owners(pg, "mlflow", {"experiments", "registered_models", "alembic_version"})
        assert set(mlflow_tables.values()) == {("public", "mlflow")}, mlflow_tables
        app_url = role_url(pg, "taxi_app", APP_PASSWORD, DB)
        migrate(app_url)  # already at head: finds its alembic_version in `predictions`
        assert write_batch(app_url, tiny_model, "after", 100, given_ids=True) == 100
        app = connect(pg, "taxi_app", APP_PASSWORD, DB)
        assert dict(query(app, "SELECT batch_id, count(*) FROM ride_predictions GROUP BY batch_id")) == {
            "before": 250,
            "after": 100,
        }
        app.close()
        create_mlflow_tables(role_url(pg, "mlflow", MLFLOW_PASSWORD, "mlflow"))  # MLflow keeps working as its role
        assert_roles_are_least_privilege(pg)


def test_init_script_refuses_to_run_without_its_passwords(tmp_path: Path):
    env = {"PATH": os.environ["PATH"], "POSTGRES_USER": "postgres", "POSTGRES_DB": DB, "POSTGRES_APP_PASSWORD": "x"}
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode != 0
    assert "POSTGRES_MLFLOW_PASSWORD" in done.stderr
    env |= {"POSTGRES_MLFLOW_PASSWORD": "y"}
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode != 0
    assert "POSTGRES_READER_PASSWORD" in done.stderr


# ------------------------------------------------- no password in a process list or a statement


def test_the_init_script_passes_no_password_in_argv_nor_in_the_sql_the_server_receives(tmp_path: Path):
    """Every psql the script starts is recorded with its arguments (a wrapper first on PATH), and the
    server logs every statement it receives: no password in either, and every role still logs in."""
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    calls = tmp_path / "psql-calls"
    real = subprocess.run(["bash", "-c", "command -v psql"], capture_output=True, text=True, check=True).stdout.strip()
    wrapper = wrappers / "psql"
    wrapper.write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" >> {calls}\nprintf "\\n" >> {calls}\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    with password_checking_postgres(log_statements=True) as pg:
        admin = superuser(pg)
        query(admin, f"CREATE DATABASE {DB}")
        admin.close()
        run_init_script(pg, path=f"{wrappers}:{os.environ['PATH']}")
        argv = calls.read_text()
        server_log = pg.log.read_text()
        assert argv.count("\n") >= 3, argv  # the wrapper saw the script's psql calls
        assert "ALTER ROLE" in server_log or "ALTER USER" in server_log, server_log[-2000:]
        for password in (APP_PASSWORD, MLFLOW_PASSWORD, READER_PASSWORD, SUPERUSER_PASSWORD):
            assert password not in argv, f"a psql argument held a password: {argv}"
            assert password not in server_log, "the server received a password in a statement's text"
        for role, password in (
            ("taxi_app", APP_PASSWORD),
            ("mlflow", MLFLOW_PASSWORD),
            ("taxi_reader", READER_PASSWORD),
        ):
            connect(pg, role, password, DB if role != "mlflow" else "mlflow").close()


# ------------------------------------------------- the read-only role of Grafana and the exporter


def migrate_with_grants(pg: PostgresServer) -> subprocess.CompletedProcess:
    """`python -m worker migrate` as the application role, as compose's `init` runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "worker", "migrate"],
        cwd=REPO_ROOT,
        env={
            "PATH": os.environ["PATH"],
            "LOCAL_DIR": str(pg.root / "local"),
            "DATABASE_URL": role_url(pg, "taxi_app", APP_PASSWORD, DB),
            "DATABASE_READER_ROLE": "taxi_reader",
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def what_the_readers_run(url: str) -> list[str]:
    """Every panel's SQL and the exporter's three reads, as the role of `url`; the failures, by label."""
    failed = []
    now = datetime.now(UTC)
    engine = get_engine(url)
    try:
        with engine.connect() as conn:
            for panel in queries("sql"):
                try:
                    conn.execute(sa_text(expand_sql(panel.target["rawSql"], now - timedelta(days=2), now, "1m")))
                except Exception as exc:
                    failed.append(f"{panel.label}: {str(exc).splitlines()[0]}")
                    conn.rollback()
            for annotation in annotation_queries():
                try:
                    conn.execute(sa_text(expand_sql(annotation.target["rawSql"], now - timedelta(days=2), now, "1m")))
                except Exception as exc:
                    failed.append(f"{annotation.label}: {str(exc).splitlines()[0]}")
                    conn.rollback()
    finally:
        engine.dispose()
    scrape = scrape_engine(url, 5)
    try:
        for name, read in (
            ("read_batches", lambda: read_batches(scrape, now, 300)),
            ("read_drift", lambda: read_drift(scrape, now)),
            ("read_accuracy", lambda: read_accuracy(scrape, now)),
            ("read_lifecycle", lambda: read_lifecycle(scrape, now, "chicago-taxi-duration", "production")),
        ):
            try:
                read()
            except Exception as exc:
                failed.append(f"exporter {name}: {str(exc).splitlines()[0]}")
    finally:
        scrape.dispose()
    return failed


def test_the_read_only_role_reads_every_panel_and_the_exporter_and_cannot_write_drop_or_create(tiny_model):
    with password_checking_postgres() as pg:
        admin = superuser(pg)
        query(admin, f"CREATE DATABASE {DB}")
        admin.close()
        run_init_script(pg)
        done = migrate_with_grants(pg)
        assert "taxi_reader" in done.stdout
        app_url = role_url(pg, "taxi_app", APP_PASSWORD, DB)
        assert write_batch(app_url, tiny_model, "seen-by-grafana", 50, given_ids=False) == 50
        # Production on the record, so that the exporter reads its recent outcomes too.
        app = get_engine(app_url)
        with app.begin() as conn:
            conn.execute(
                sa_text(
                    "INSERT INTO model_aliases (model_name, alias, version) VALUES ('chicago-taxi-duration', 'production', '1')"
                )
            )
            # Beat's slots with two missing between them, so that the exporter reads why slots were missed too.
            settled = settled_until(datetime.now(UTC), 300)
            for k in (4, 1):
                slot = settled - timedelta(seconds=300 * k)
                conn.execute(
                    sa_text(
                        "INSERT INTO batch_runs (batch_id, trigger, rides_requested, status, slot, started_at, sent_by) "
                        "VALUES (:b, 'schedule', 1, 'succeeded', :s, :t, 'beat')"
                    ),
                    {"b": f"schedule-{slot.isoformat()}", "s": slot, "t": slot + timedelta(seconds=1)},
                )

        reader_url = role_url(pg, "taxi_reader", READER_PASSWORD, DB)
        assert what_the_readers_run(reader_url) == []
        reader = connect(pg, "taxi_reader", READER_PASSWORD, DB)
        try:
            assert query(
                reader, "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
            ) == [(False, False, False)]
            assert query(reader, "SELECT count(*) FROM ride_predictions") == [(50,)]
            granted = query(
                reader,
                "SELECT table_name, privilege_type FROM information_schema.role_table_grants WHERE grantee = 'taxi_reader'",
            )
            assert sorted(granted) == sorted((table, "SELECT") for table in READ_TABLES)
            # Read-only by its privileges, not only by its default: a read-write transaction is refused too.
            query(reader, "SET default_transaction_read_only = off")
            for statement, words in (
                ("INSERT INTO batch_runs (batch_id) VALUES ('x')", "permission denied for table batch_runs"),
                ("UPDATE batch_runs SET status = 'failed'", "permission denied for table batch_runs"),
                ("DELETE FROM ride_predictions", "permission denied for table ride_predictions"),
                ("TRUNCATE ride_predictions", "permission denied for table ride_predictions"),
                ("DROP TABLE ride_predictions", "must be owner of table ride_predictions"),
                ("ALTER TABLE batch_runs ADD COLUMN x int", "must be owner of table batch_runs"),
                ("CREATE TABLE predictions.intruder (x int)", "permission denied for schema predictions"),
                ("CREATE TABLE public.intruder (x int)", "permission denied for schema public"),
                ("CREATE TEMP TABLE intruder (x int)", "permission denied to create temporary tables"),
                ("CREATE SCHEMA intruder", "permission denied for database"),
                ("SELECT count(*) FROM batch_chunks", "permission denied for table batch_chunks"),
                ("SELECT count(*) FROM shadow_predictions", "permission denied for table shadow_predictions"),
            ):
                fails(reader, statement, errors.InsufficientPrivilege, words)
            assert query(reader, "SHOW statement_timeout") == [("1min",)]
            assert query(reader, "SHOW jit") == [("off",)]  # Grafana's panels are not compiled
        finally:
            reader.close()
        with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
            connect(pg, "taxi_reader", READER_PASSWORD, "mlflow")

        # Exactly what they read: take any one grant away and some panel or exporter read fails.
        admin = superuser(pg, DB)
        try:
            for table in READ_TABLES:
                query(admin, f"REVOKE SELECT ON predictions.{table} FROM taxi_reader")
                assert what_the_readers_run(reader_url), f"nothing reads {table}: it should not be granted"
                query(admin, f"GRANT SELECT ON predictions.{table} TO taxi_reader")
        finally:
            admin.close()
        migrate_with_grants(pg)  # idempotent: run on every `docker compose up`
        assert what_the_readers_run(reader_url) == []


def test_migrate_names_a_reader_role_that_does_not_exist(tmp_path: Path):
    with password_checking_postgres() as pg:
        admin = superuser(pg)
        query(admin, f"CREATE DATABASE {DB}")
        admin.close()
        run_init_script(pg)
        done = subprocess.run(
            [sys.executable, "-m", "worker", "migrate"],
            cwd=REPO_ROOT,
            env={
                "PATH": os.environ["PATH"],
                "LOCAL_DIR": str(tmp_path),
                "DATABASE_URL": role_url(pg, "taxi_app", APP_PASSWORD, DB),
                "DATABASE_READER_ROLE": "no_such_reader",
            },
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: DATABASE_READER_ROLE=no_such_reader")
    assert "Traceback" not in done.stderr
