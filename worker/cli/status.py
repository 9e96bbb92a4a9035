"""`python -m worker status`: is every part reachable, and what did the last batch do?

The JSON keys are part of the interface (see the README).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from worker.settings import Settings, redact

if TYPE_CHECKING:
    from sqlalchemy import Engine


def _check(settings: Settings, probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return {"ok": True, **probe()}
    except Exception as exc:  # any failure here means "down", with its reason
        return {"ok": False, "error": redact(f"{type(exc).__name__}: {exc}", settings)[:500]}


def missed_in_last_day(settings: Settings, engine: Engine) -> list[datetime]:
    """Beat slots of the last 24 hours that never ran (the current slot and the one before it are
    still beat's and the workers': worker/store/history.py's one cut-off)."""
    from worker.store import history

    return history.missed_in_last_day(engine, settings.BATCH_INTERVAL_SECONDS, datetime.now(UTC))


def fill_command(missed: list[datetime], interval: float) -> str:
    """The backfill that fills `missed` (it skips the slots in between that were written); past the
    most one run takes (a year of slots), the one that fills the newest year of them, which
    `backfill` accepts (the whole range it refuses), with `--to` moved back for the rest."""
    from worker.cli.backfill import MAX_SLOTS, MAX_SLOTS_EVER

    end = missed[-1] + timedelta(seconds=interval)
    start = max(missed[0], end - timedelta(seconds=MAX_SLOTS_EVER * interval))
    slots = round((end - start).total_seconds() / interval)
    more = " --yes" if slots > MAX_SLOTS else ""
    return f"python -m worker backfill --from {start.isoformat()} --to {end.isoformat()} --wait{more}"


def collect_status(settings: Settings) -> dict[str, Any]:
    from sqlalchemy import text

    from worker.cli.dispatching import queue_lengths
    from worker.model.registry import CHALLENGER_ALIAS, configure_mlflow, read_state, resolve_version
    from worker.store import history, writes
    from worker.store.database import get_engine, schema_problem, schema_ready

    def broker() -> dict[str, Any]:
        lengths = queue_lengths()
        return {
            "url": redact(settings.CELERY_BROKER_URL, settings),
            "queue_length": sum(lengths.values()),
            "queues": lengths,
        }

    def database() -> dict[str, Any]:
        engine = get_engine(settings.database_url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        problem = schema_problem(engine)
        ready = problem is None
        last = writes.last_finished_batch(engine) if ready else None
        failed = writes.last_finished_batch(engine, "failed") if ready else None
        if failed is not None and last is not None and failed["finished_at"] <= last["finished_at"]:
            failed = None  # a failure older than the last success is history (`batches --status failed`)
        missed = missed_in_last_day(settings, engine) if ready else []
        refused = history.refusals(engine, missed) if missed else {}
        return {
            "url": redact(settings.database_url, settings),
            "schema_ready": ready,
            **({} if ready else {"schema_problem": problem}),
            "missed_slots_24h": [slot.isoformat() for slot in missed],
            "refused_slots_24h": {slot.isoformat(): why for slot, why in refused.items()},
            "fill_command": fill_command(missed, settings.BATCH_INTERVAL_SECONDS) if missed else None,
            "last_batch": None
            if last is None
            else {
                "batch_id": last["batch_id"],
                "finished_at": last["finished_at"].isoformat() if last["finished_at"] else None,
                "rows_written": last["rows_written"],
                "model_version": last["model_version"],
            },
            # Newer than the last success: status said "no finished batch yet" while only failures came.
            "last_failure": None
            if failed is None
            else {
                "batch_id": failed["batch_id"],
                "finished_at": failed["finished_at"].isoformat(),
                "error": redact(failed["error"] or "", settings),
            },
        }

    aliases: dict[str, str] = {}
    promised: dict[str, float | None] = {}  # the registry's held-out MAE of the served version, when it answers

    def registry() -> dict[str, Any]:
        from worker.model.reference import heldout_mae

        client = configure_mlflow(settings)
        state = read_state(client, settings.model_uri)
        if state.version is None:
            resolve_version(client, settings.model_uri)  # raises, naming the URI and the fix
        aliases.update(state.aliases)
        promised[state.version] = heldout_mae(client, state.name, state.version)
        return {
            "uri": redact(settings.tracking_uri, settings),
            "model_uri": settings.model_uri,
            "model_name": state.name,
            "model_version": state.version,
            "challenger_version": state.aliases.get(CHALLENGER_ALIAS),
        }

    def monitoring() -> dict[str, Any]:
        from worker.monitor.degradation import production_recent
        from worker.store.events import alias_on_record
        from worker.store.monitoring import latest_summary

        engine = get_engine(settings.database_url)
        if not schema_ready(engine):
            return {"last_batch": None, "live_mae": None, "daily": None, "production_recent": None}
        # The figure of TaxiLiveMaeWorseThanHeldout, the report's warning and the policy (one rule).
        version = alias_on_record(engine, settings.MODEL_NAME, settings.MODEL_ALIAS)
        recent = production_recent(
            engine,
            settings.MODEL_NAME,
            settings.MODEL_ALIAS,
            settings.POLICY_WINDOW_OUTCOMES,
            datetime.now(UTC),
            promised.get(version) if version else None,
        )
        return {**latest_summary(engine), "production_recent": recent.as_dict() if recent else None}

    report = {
        part: _check(settings, probe)
        for part, probe in (("broker", broker), ("database", database), ("registry", registry))
    }
    # A database reachable but without the code's tables is no use to any command: not ok either.
    report["ok"] = all(part["ok"] for part in report.values()) and report["database"].get("schema_ready", True)
    # Monitoring is information, not health: a monitoring part that cannot be read does not make status fail.
    report["monitoring"] = _check(settings, monitoring)

    def lifecycle() -> dict[str, Any]:
        from worker.monitor.lifecycle_view import lifecycle_summary

        engine = get_engine(settings.database_url)
        if not schema_ready(engine):
            return {"challenger": None, "shadow_failures_last_hour": None, "last_event": None, "policy": None}
        return lifecycle_summary(
            engine,
            settings.MODEL_NAME,
            aliases.get(CHALLENGER_ALIAS),
            report["registry"].get("model_version"),
            policy_mode=settings.MODEL_POLICY,
        )

    report["lifecycle"] = _check(settings, lifecycle)
    return report
