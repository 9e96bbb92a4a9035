"""The one way the project moves an alias: on the record first, then in the registry, then confirmed.

`train`, `init`, `convert-model`, `promote`, `rollback` and `retrain` all call `move_alias`. It
records the intended move as a `pending` event, asks the registry, and marks the event `done`, or
`failed` when the registry refused (after re-reading the alias: a request that timed out may still
have landed). A worker that finds an alias moved while such an event is pending treats it as the
project's own move (worker/store/events.py); one that finds it moved with no such event records a
`moved_outside` event, once (`observe`).

Detection is by polling: every worker asks the registry where the aliases point every
MODEL_REFRESH_SECONDS anyway (one request for all aliases), and compares with the record. MLflow
3.3+ can also call a webhook on `model_version_alias.created`, but it is experimental, needs a SQL
backend, carries no user, is not retried when the receiver is down and would need an HTTP endpoint
the workers do not have; polling catches every move within one refresh of a worker that looks.
"""

from __future__ import annotations

import getpass
import logging
import socket
from datetime import datetime
from typing import Any

from mlflow.tracking import MlflowClient
from sqlalchemy import Engine

from worker.model.registry import configure_mlflow, read_state
from worker.settings import Settings, redact
from worker.store import events

log = logging.getLogger(__name__)

POLICY_ACTOR = "policy"


def actor_of(settings: Settings) -> str:
    """Who is moving: the MLflow user this process authenticates as, else the OS user."""
    if settings.MLFLOW_TRACKING_USERNAME:
        return settings.MLFLOW_TRACKING_USERNAME
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"


def seen_by() -> str:
    return f"{socket.gethostname()}"


def registry_aliases(client: MlflowClient, settings: Settings) -> dict[str, str]:
    return read_state(client, f"models:/{settings.MODEL_NAME}@{settings.MODEL_ALIAS}").aliases


def move_alias(
    settings: Settings,
    engine: Engine,
    *,
    alias: str,
    to_version: str | None,
    action: str,
    reason: str,
    evidence: dict[str, Any] | None = None,
    actor: str | None = None,
    client: MlflowClient | None = None,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """Point `alias` of MODEL_NAME at `to_version` (None: remove the alias), on the record (at `now`,
    default the clock's: a simulation of days passes its own).

    Returns the event, or None when the alias already is there (nothing to move). Raises what the
    registry raised when the move did not happen; the event then says `failed`."""
    client = client or configure_mlflow(settings)
    name = settings.MODEL_NAME
    current = registry_aliases(client, settings).get(alias)
    # A move nobody recorded yet (the UI, another client) goes on the record before ours.
    events.observe(engine, name, alias, current, seen_by=f"{actor or actor_of(settings)} on {seen_by()}")
    if current == to_version:
        return None
    event_id = events.record(
        engine,
        model_name=name,
        alias=alias,
        action=action,
        from_version=current,
        to_version=to_version,
        actor=actor or actor_of(settings),
        reason=reason,
        evidence=evidence,
        status=events.PENDING,
        at=now,
    )
    try:
        if to_version is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, to_version)
    except Exception as exc:
        error = redact(f"{type(exc).__name__}: {exc}", settings)
        try:
            landed = registry_aliases(client, settings).get(alias) == to_version
        except Exception:  # the registry is gone altogether: the move cannot have been confirmed
            landed = False
        if landed:
            events.confirm(engine, event_id, note=f"the registry answered {error[:300]}, yet shows the move")
        else:
            events.fail(engine, event_id, error)
            raise
    else:
        events.confirm(engine, event_id)
    log.info("%s: @%s of %s moved from %s to %s (%s)", action, alias, name, current, to_version, reason)
    return next(e for e in events.history(engine, name, limit=20) if e["id"] == event_id)


def record_registered(
    settings: Settings,
    engine: Engine,
    version: str,
    reason: str,
    evidence: dict[str, Any],
    actor: str | None = None,
    now: datetime | None = None,
) -> None:
    """A new version exists (no alias moved by this)."""
    events.record(
        engine,
        model_name=settings.MODEL_NAME,
        action="registered",
        to_version=version,
        actor=actor or actor_of(settings),
        reason=reason,
        evidence=evidence,
        at=now,
    )


def observe(settings: Settings, engine: Engine, alias: str, version: str | None) -> dict[str, Any] | None:
    """A worker saw `alias` at `version`: record it if no move of the project's explains it."""
    return events.observe(engine, settings.MODEL_NAME, alias, version, seen_by=seen_by())
