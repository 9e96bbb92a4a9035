"""What `status`, the report and the exporter show of the model's life cycle, computed once: the
challenger with its stored paired evidence, challenger failures, and the newest model event."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from worker.model.registry import shadowed
from worker.monitor import paired
from worker.store import events, evidence, policy_state
from worker.store.monitoring import RECENT


def _event_view(event: dict[str, Any]) -> dict[str, Any]:
    at = event["at"]
    return {
        "at": (at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)).isoformat(),
        "action": event["action"],
        "alias": event["alias"],
        "from_version": event["from_version"],
        "to_version": event["to_version"],
        "actor": event["actor"],
        "status": event["status"],
        "reason": event["reason"],
    }


def _utc_text(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)).isoformat()


def policy_summary(engine: Engine, model_name: str, mode: str) -> dict[str, Any]:
    """What the model policy last did and why, and whether a person is needed."""
    state = policy_state.read(engine, model_name)
    return {
        "mode": mode,
        "paused": bool(state["paused"]),
        "halted": bool(state["halted"]),
        "note": state["note"],
        "last_pass_at": _utc_text(state["last_pass_at"]),
        "last_action": state["last_action"],
        "last_reason": state["last_reason"],
        "last_retrain_at": _utc_text(state["last_retrain_at"]),
        "attention": state["attention"],
    }


def lifecycle_summary(
    engine: Engine,
    model_name: str,
    challenger: str | None,
    production: str | None,
    now: datetime | None = None,
    policy_mode: str = "off",
) -> dict[str, Any]:
    """`challenger` and `production` are where the registry's aliases point now."""
    now = now or datetime.now(UTC)
    found = None
    if shadowed(challenger, production) is not None:
        found = paired.stored(evidence.comparison(engine, challenger, production))
    newest = events.history(engine, model_name, limit=1)
    return {
        "challenger": None
        if challenger is None
        else {"version": challenger, "against": production, "evidence": found.as_dict() if found else None},
        "shadow_failures_last_hour": evidence.shadow_failures(engine, now - RECENT),
        "last_event": _event_view(newest[0]) if newest else None,
        "policy": policy_summary(engine, model_name, policy_mode),
    }
