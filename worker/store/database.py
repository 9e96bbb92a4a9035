"""One SQLAlchemy engine per process, and the schema migrations.

The engine is created on first use in the process that uses it: connection
pools must not cross a fork, so a Celery pool child builds its own
(`reset_engines` runs in `worker_process_init`). pool_pre_ping replaces
connections a restarted PostgreSQL has closed.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).with_name("migrations")
_ENGINES: dict[str, Engine] = {}
# JIT off for every connection of the service's: each of its reads is short, yet a day's range on a
# big table is estimated above jit_above_cost, and compiling it cost more than running it (the
# trip-start panel's day on 90 days: 12.5 ms with JIT, 9.8 ms without, on a pooled connection).
NO_JIT = "-c jit=off"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers don't block the writing worker
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def build_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, pool_pre_ping=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    given = parsed.query.get("options", ())
    given = [given] if isinstance(given, str) else list(given)
    options = " ".join([NO_JIT, *given])  # a URL's own options come last, so they win
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_recycle=1800, connect_args={"options": options}
    )


def get_engine(url: str) -> Engine:
    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = build_engine(url)
    return engine


def reset_engines() -> None:
    """Forget the parent's pools in a forked child (without closing the parent's sockets)."""
    for engine in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade to `revision`, one transaction per revision (Alembic's own), so that a revision may
    build an index CONCURRENTLY outside any transaction."""
    config = _config()
    with get_engine(url).connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()


_CHECKED: set[str] = set()  # URLs whose schema was found at this code's revision


class SchemaMissing(RuntimeError):
    """The tables are missing or older than this code; workers never migrate on their own."""


def revisions() -> tuple[str, set[str]]:
    """This code's head revision, and every revision it knows."""
    scripts = ScriptDirectory.from_config(_config())
    return scripts.get_current_head(), {script.revision for script in scripts.walk_revisions()}


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_problem(engine: Engine) -> str | None:
    """Why this code cannot use the database's tables, or None if it can. A revision this code does
    not know is newer (a later release migrated it) and is accepted: migrations only add."""
    head, known = revisions()
    current = current_revision(engine)
    if current is None:
        return (
            f"database {engine.url.render_as_string()} has no ride_predictions tables: run `python -m worker migrate`"
        )
    if current != head and current in known:
        return (
            f"database {engine.url.render_as_string()} is at schema revision {current}, this code needs {head}: "
            "run `python -m worker migrate`"
        )
    return None


def schema_ready(engine: Engine) -> bool:
    return schema_problem(engine) is None


def ensure_schema(engine: Engine) -> None:
    """Once per engine: fail clearly if the migrations have not been run (or not all of them)."""
    url = engine.url.render_as_string(hide_password=False)
    if url in _CHECKED:
        return
    problem = schema_problem(engine)
    if problem is not None:
        raise SchemaMissing(problem)
    _CHECKED.add(url)
