"""Passwords never leave through a message: the one redaction function and the places that store text.

The end-to-end check, a whole stack whose passwords are marker strings with every output surface
searched for them, is tests/security/test_secrets_stay_hidden.py; these pin down each rule cheaply.
"""

from __future__ import annotations

import pytest

from tests.support import cli_with_only
from worker.settings import Settings, get_settings, redact

MARKER = "Marker-Pw-7c1e55"


def test_the_password_of_any_url_in_a_text_is_hidden():
    text = (
        "cannot reach redis://:s3cret-one@redis:6379/0, nor "
        "postgresql+psycopg2://taxi_app:s3cret-two@postgres:5432/taxi; "
        "API request to http://taxi-reader:s3cret-three@mlflow:5000/api/2.0 failed"
    )
    assert redact(text) == (
        "cannot reach redis://:***@redis:6379/0, nor "
        "postgresql+psycopg2://taxi_app:***@postgres:5432/taxi; "
        "API request to http://taxi-reader:***@mlflow:5000/api/2.0 failed"
    )
    assert redact("http://mlflow:5000/api and sqlite:///x.db") == "http://mlflow:5000/api and sqlite:///x.db"


def test_every_secret_the_settings_hold_is_hidden_wherever_it_appears():
    settings = Settings(
        DATABASE_URL="postgresql+psycopg2://taxi_app:db%2Fpw-0001@db:5432/taxi",
        CELERY_BROKER_URL="redis://worker:broker-pw-0002@redis:6379/0",
        MLFLOW_TRACKING_USERNAME="taxi-reader",
        MLFLOW_TRACKING_PASSWORD="reader-pw-0003",
        MLFLOW_AUTH_ADMIN_PASSWORD="admin-pw-0004",
        MLFLOW_TRAINER_PASSWORD="trainer-pw-0005",
        FLOWER_BASIC_AUTH="admin:flower-pw-0006,ops:flower-pw-0007",
    )
    text = "db/pw-0001 db%2Fpw-0001 broker-pw-0002 reader-pw-0003 admin-pw-0004 trainer-pw-0005 flower-pw-0006 flower-pw-0007"
    assert redact(text, settings) == " ".join(["***"] * 8)


@pytest.mark.parametrize("password", ["Pa/ssWord9", "Pa ssWord9"])
def test_a_database_password_with_a_slash_or_a_space_is_hidden(password):
    """SQLAlchemy connects with such a password (it reads up to the last @); status printed it whole."""
    settings = Settings(DATABASE_URL=f"postgresql+psycopg2://taxi_app:{password}@db:5432/taxi")
    url = "postgresql+psycopg2://taxi_app:***@db:5432/taxi"
    assert redact(settings.database_url, settings) == url
    assert redact(f"cannot reach {settings.database_url}: refused", settings) == f"cannot reach {url}: refused"
    if " " not in password:  # the URL pattern alone, for texts redacted without the settings
        assert redact(settings.database_url) == url


def test_a_malformed_url_setting_is_named_but_its_password_is_not_echoed(tmp_path):
    """Without a scheme nothing tells which part is the password, so the value is not shown at all."""
    done = cli_with_only({"LOCAL_DIR": str(tmp_path), "DATABASE_URL": f"taxi_app:{MARKER}@db:5432/taxi"}, "status")
    assert done.returncode == 2
    assert "invalid setting DATABASE_URL" in done.stderr and "not a URL" in done.stderr
    assert MARKER not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("name", "url", "why"),
    [
        # kombu reads the port from what follows the /: "Port could not be cast to integer value as 'Rds7'"
        ("CELERY_BROKER_URL", f"redis://:Rds7/{MARKER}@127.0.0.1:6379/0", "a '/', '?' or '#'"),
        ("CELERY_RESULT_BACKEND", f"redis://:Rds7#{MARKER}@127.0.0.1:6379/1", "a '/', '?' or '#'"),
        ("MLFLOW_TRACKING_URI", f"http://reader:Ml?{MARKER}@127.0.0.1:5000", "a '/', '?' or '#'"),
        # SQLAlchemy reads up to the first @: the rest became the host, shown in "could not translate host name"
        ("DATABASE_URL", f"postgresql+psycopg2://taxi_app:Db7@{MARKER}@127.0.0.1:5432/taxi", "an '@'"),
        ("CELERY_BROKER_URL", f"redis://:Rds7@{MARKER}@127.0.0.1:6379/0", "an '@'"),
    ],
)
def test_a_url_whose_password_its_client_would_misread_is_refused_naming_the_fix(tmp_path, name, url, why):
    done = cli_with_only({"LOCAL_DIR": str(tmp_path), name: url}, "status")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"invalid setting {name}: Value error, its password holds {why}" in done.stderr, done.stderr
    assert "percent-encode" in done.stderr and MARKER not in done.stdout + done.stderr


def test_an_unexpected_error_is_shown_with_its_traceback_redacted(monkeypatch, capsys, tmp_path):
    """An error that is neither bad input nor a service down keeps its traceback (it is a bug to
    report), but its text goes through redaction like every other output."""
    from worker.cli import commands

    monkeypatch.setenv("LOCAL_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg2://taxi_app:{MARKER}@127.0.0.1:1/taxi")
    get_settings.cache_clear()

    def broken(args, settings):
        raise RuntimeError(f"something odd with {settings.database_url} and {MARKER}")

    monkeypatch.setattr(commands, "cmd_batches", broken)
    try:
        assert commands.main(["batches"]) == 1
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: something odd with" in err
    assert MARKER not in err and "taxi_app:***@127.0.0.1" in err


@pytest.fixture
def marked_settings(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """Settings whose database and broker passwords are the marker, read the way every process reads them."""
    monkeypatch.setenv("LOCAL_DIR", str(tmp_path))
    monkeypatch.setenv("CELERY_BROKER_URL", f"redis://worker:{MARKER}@127.0.0.1:1/0")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_errors_stored_on_a_batch_and_its_monitoring_are_redacted(marked_settings, tmp_path):
    """What the tasks store reaches `batches`, the report and Grafana: it goes in redacted."""
    from worker.monitor.batches import record_failure
    from worker.store import writes
    from worker.store.database import build_engine, migrate

    url = f"sqlite:///{tmp_path / 'p.db'}"
    migrate(url)
    engine = build_engine(url)
    writes.start_batch(
        engine, batch_id="b1", trigger="adhoc", rides_requested=1, chunks_total=1, task_id=None, seed=1,
        window=None, attempt=1,
    )  # fmt: skip
    raw = f"OperationalError: Error 111 connecting to redis://worker:{MARKER}@127.0.0.1:1/0 ({MARKER})"
    writes.mark_batch(engine, "b1", "retrying", raw)
    record_failure(engine, "b1", "waiting", raw)
    writes.reopen_batch(engine, "b1", f"rerun after http://u:{MARKER}@mlflow:5000 was down")
    with engine.connect() as conn:
        from sqlalchemy import text

        stored = conn.execute(text("SELECT error FROM batch_runs")).scalars().all()
        stored += conn.execute(text("SELECT monitor_error FROM batch_metrics")).scalars().all()
    assert len(stored) == 2 and all(stored)
    assert not any(MARKER in value for value in stored), stored
    writes.mark_batch(engine, "b1", "failed", raw)
    with engine.connect() as conn:
        error = conn.execute(text("SELECT error FROM batch_runs")).scalar_one()
    assert error == "OperationalError: Error 111 connecting to redis://worker:***@127.0.0.1:1/0 (***)"
    # Why a slot was refused (status, the report and the exporter's role read it) goes in redacted too.
    from datetime import UTC, datetime

    slot = datetime(2026, 11, 26, 16, 5, tzinfo=UTC)
    assert writes.record_refusal(engine, f"schedule-{slot.isoformat()}", slot, raw, "beat")
    with engine.connect() as conn:
        refusal = conn.execute(text("SELECT error FROM slot_refusals")).scalar_one()
    assert refusal == "OperationalError: Error 111 connecting to redis://worker:***@127.0.0.1:1/0 (***)"


def test_log_lines_and_their_tracebacks_are_redacted(marked_settings):
    import io
    import logging

    from worker.logs import redact_handlers

    stream = io.StringIO()
    logger = logging.getLogger("ctb-test-redaction")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        redact_handlers(logger, marked_settings)
        redact_handlers(logger, marked_settings)  # twice: wrapped once
        try:
            raise ConnectionError(f"Error 111 connecting to redis://worker:{MARKER}@127.0.0.1:1/0")
        except ConnectionError:
            logger.exception("Retry in 2s: %s", f"password={MARKER}")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "Retry in 2s: password=***" in written
    assert "Traceback" in written and "redis://worker:***@127.0.0.1:1/0" in written
    assert MARKER not in written
