"""`python -m worker status`: is every part reachable, and what did the last batch do?

The JSON keys are part of the interface (see the README).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.settings import Settings, hide_passwords, redact


def _check(settings: Settings, probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return {"ok": True, **probe()}
    except Exception as exc:  # any failure here means "down", with its reason
        return {"ok": False, "error": hide_passwords(f"{type(exc).__name__}: {exc}", settings)[:500]}


def collect_status(settings: Settings) -> dict[str, Any]:
    from sqlalchemy import text

    from worker.celery_app import app
    from worker.model.registry import configure_mlflow, resolve_version
    from worker.store import writes
    from worker.store.database import get_engine, schema_ready

    def broker() -> dict[str, Any]:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
            queue = conn.default_channel.queue_declare("celery", passive=False)
            return {"url": redact(settings.CELERY_BROKER_URL), "queue_length": queue.message_count}

    def database() -> dict[str, Any]:
        engine = get_engine(settings.database_url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        ready = schema_ready(engine)
        last = writes.last_finished_batch(engine) if ready else None
        return {
            "url": redact(settings.database_url),
            "schema_ready": ready,
            "last_batch": None
            if last is None
            else {
                "batch_id": last["batch_id"],
                "finished_at": last["finished_at"].isoformat() if last["finished_at"] else None,
                "rows_written": last["rows_written"],
                "model_version": last["model_version"],
            },
        }

    def registry() -> dict[str, Any]:
        client = configure_mlflow(settings)
        name, version = resolve_version(client, settings.model_uri)
        return {
            "uri": settings.tracking_uri,
            "model_uri": settings.model_uri,
            "model_name": name,
            "model_version": version,
        }

    report = {
        part: _check(settings, probe)
        for part, probe in (("broker", broker), ("database", database), ("registry", registry))
    }
    report["ok"] = all(part["ok"] for part in report.values())
    return report
