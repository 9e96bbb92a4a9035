"""Promote a version by hand, and roll back, with the checks a person would want before either.

Each refusal is one line that names the problem, and nothing is moved: an unknown version, one
the workers would refuse to load (checked by loading it as a worker would, before the move, not
discovered by the first batch), the version already serving, a MODEL_URI that does not follow the
alias, and (for `promote`, unless forced) a version whose live paired evidence says it is worse
than production. `rollback` goes to the version production served before the current one on the
record (model_events), and a second rollback goes one step further back, it does not toggle.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from sqlalchemy import Engine

from worker.lifecycle.moves import move_alias, registry_aliases
from worker.model.registry import CHALLENGER_ALIAS, configure_mlflow, loadable, parse_model_uri
from worker.monitor import paired
from worker.rides.generator import CHICAGO, chicago_now
from worker.settings import Settings
from worker.store import events


class LifecycleRefused(Exception):
    """A life-cycle command that would do the wrong thing; the message says why. Nothing moved."""


def check_alias_uri(settings: Settings) -> None:
    """Workers follow MODEL_URI; a move of MODEL_ALIAS changes what they serve only if it names the alias."""
    if not settings.MODEL_URI:
        return
    name, kind, ref = parse_model_uri(settings.MODEL_URI)
    if kind == "alias" and ref == settings.MODEL_ALIAS and name == settings.MODEL_NAME:
        return
    what = {"version": "a fixed version", "stage": "a stage"}.get(kind, f"another alias or model ({name}@{ref})")
    raise LifecycleRefused(
        f"MODEL_URI={settings.MODEL_URI} names {what}, so workers do not follow @{settings.MODEL_ALIAS} and moving "
        f"it would change nothing they serve: unset MODEL_URI (or set models:/{settings.MODEL_NAME}@"
        f"{settings.MODEL_ALIAS}) first"
    )


def existing_versions(client, settings: Settings) -> list[str]:
    found = client.search_model_versions(f"name='{settings.MODEL_NAME}'")
    return sorted((str(v.version) for v in found), key=lambda v: (len(v), v))


def check_version(client, settings: Settings, version: str) -> None:
    try:
        client.get_model_version(settings.MODEL_NAME, version)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        known = existing_versions(client, settings)
        raise LifecycleRefused(
            f"{settings.MODEL_NAME} has no version {version} (versions: {', '.join(known) or 'none'})"
        ) from None


def check_loadable(settings: Settings, version: str) -> None:
    why = loadable(settings.MODEL_NAME, version, load=True)
    if why is not None:
        raise LifecycleRefused(f"workers would refuse to load version {version}: {why}")


def live_evidence(
    engine: Engine, challenger: str, production: str | None, now: datetime | None = None
) -> paired.PairedEvidence | None:
    if production is None:
        return None
    known_by = chicago_now() if now is None else now.astimezone(CHICAGO).replace(tzinfo=None)
    return paired.live(engine, challenger, production, known_by)


def promote(
    settings: Settings,
    engine: Engine,
    version: str,
    reason: str,
    force: bool = False,
    actor: str | None = None,
    extra_evidence: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Point MODEL_ALIAS at `version` after the checks; a promoted challenger gives up its alias."""
    check_alias_uri(settings)
    client = configure_mlflow(settings)
    check_version(client, settings, version)
    aliases = registry_aliases(client, settings)
    current = aliases.get(settings.MODEL_ALIAS)
    if current == version:
        raise LifecycleRefused(f"version {version} already serves @{settings.MODEL_ALIAS}; nothing to promote")
    check_loadable(settings, version)
    found = live_evidence(engine, version, current, now)
    numbers: dict[str, Any] = {"live": found.as_dict() if found else None, "forced": force, **(extra_evidence or {})}
    if found is not None and paired.says_worse(found) and not force:
        raise LifecycleRefused(
            f"live evidence says version {version} is worse than production v{current}: MAE "
            f"{found.challenger_mae:.3f} vs {found.production_mae:.3f} min over {found.outcomes} paired rides, "
            f"{found.mean_difference:+.3f} min per ride (95 % CI {found.ci_low:+.3f} to {found.ci_high:+.3f}); "
            "--force promotes it anyway"
        )
    event = move_alias(
        settings,
        engine,
        alias=settings.MODEL_ALIAS,
        to_version=version,
        action="promoted",
        reason=reason,
        evidence=numbers,
        actor=actor,
        client=client,
        now=now,
    )
    if aliases.get(CHALLENGER_ALIAS) == version:
        retire_challenger(
            settings, engine, f"promoted to @{settings.MODEL_ALIAS}", numbers, actor=actor, now=now, client=client
        )
    assert event is not None
    return event


def rollback(
    settings: Settings,
    engine: Engine,
    reason: str | None = None,
    actor: str | None = None,
    evidence: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Point MODEL_ALIAS back at the version it served before the current one, on the record."""
    check_alias_uri(settings)
    client = configure_mlflow(settings)
    aliases = registry_aliases(client, settings)
    current = aliases.get(settings.MODEL_ALIAS)
    # A move nobody recorded yet goes on the record first, so the trail ends where the alias is.
    events.observe(engine, settings.MODEL_NAME, settings.MODEL_ALIAS, current, seen_by="rollback")
    trail = events.alias_trail(engine, settings.MODEL_NAME, settings.MODEL_ALIAS)
    if len(trail) < 2:
        on_record = f"only version {trail[0]}" if trail else "no version"
        raise LifecycleRefused(
            f"no earlier @{settings.MODEL_ALIAS} version on record to roll back to (model_events has {on_record} "
            "serving it); `promote VERSION` moves it to any version"
        )
    target = trail[-2]
    check_loadable(settings, target)
    challenger = aliases.get(CHALLENGER_ALIAS)
    event = move_alias(
        settings,
        engine,
        alias=settings.MODEL_ALIAS,
        to_version=target,
        action=events.ROLLED_BACK,
        reason=reason or f"rollback from version {current}",
        evidence={"trail": trail, "from": current, **(evidence or {})},
        actor=actor,
        client=client,
        now=now,
    )
    if challenger == target:  # as a promoted challenger does: no shadow-scoring of production against itself
        retire_challenger(
            settings, engine, f"rolled back to @{settings.MODEL_ALIAS}", actor=actor, now=now, client=client
        )
    assert event is not None
    return event


def retire_challenger(
    settings: Settings,
    engine: Engine,
    reason: str,
    evidence: dict[str, Any] | None = None,
    actor: str | None = None,
    now: datetime | None = None,
    client=None,
) -> dict[str, Any] | None:
    """Remove the challenger alias (the version stays registered); None if there is none."""
    return move_alias(
        settings,
        engine,
        alias=CHALLENGER_ALIAS,
        to_version=None,
        action="challenger_retired",
        reason=reason,
        evidence=evidence,
        actor=actor,
        now=now,
        client=client,
    )
