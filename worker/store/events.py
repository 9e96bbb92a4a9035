"""The record of the model's life cycle: `model_events` (every alias move, intended, then done or
failed) and `model_aliases` (where the record says each alias points).

MLflow keeps no alias history (mlflow/mlflow#2169), so this is the history. A move is recorded
as `pending` before the registry is asked, and marked `done` (and the alias's row moved) only
once the registry did it, or `failed`. A worker that finds an alias somewhere the record does not
say asks `observe`, which tells the project's own move in flight from a move made elsewhere, and
records the latter once however many workers notice: the alias's row is read under its lock
(PostgreSQL's row lock; SQLite writes one at a time) and moved in the same transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from worker.store.schema import model_aliases, model_events
from worker.store.writes import stored_error

PENDING, DONE, FAILED = "pending", "done", "failed"
# A pending move older than this was abandoned (its process died between the registry and the
# record): the next observation settles it from what the registry shows.
STALE_PENDING = timedelta(minutes=5)
UNKNOWN_ACTOR = "unknown"
# Actions that put a version on an alias; `rolled_back` walks the production trail back.
ROLLED_BACK = "rolled_back"


def _now() -> datetime:
    return datetime.now(UTC)


def record(
    engine: Engine,
    *,
    model_name: str,
    action: str,
    actor: str,
    alias: str | None = None,
    from_version: str | None = None,
    to_version: str | None = None,
    reason: str | None = None,
    evidence: dict[str, Any] | None = None,
    status: str = DONE,
    at: datetime | None = None,
) -> int:
    """Add one event (done unless said otherwise), at `at` (default now, UTC); returns its id."""
    with engine.begin() as conn:
        return _insert_event(
            conn,
            at=at or _now(),
            model_name=model_name,
            action=action,
            actor=actor,
            alias=alias,
            from_version=from_version,
            to_version=to_version,
            reason=reason,
            evidence=evidence,
            status=status,
        )


def _insert_event(conn: Connection, **values: Any) -> int:
    values.setdefault("at", _now())
    if values["status"] != PENDING:
        values.setdefault("finished_at", values["at"])
    return conn.execute(insert(model_events).values(**values).returning(model_events.c.id)).scalar_one()


def _set_alias(conn: Connection, model_name: str, alias: str, version: str | None, event_id: int | None) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(model_aliases).values(
        model_name=model_name, alias=alias, version=version, event_id=event_id, updated_at=_now()
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["model_name", "alias"],
            set_={"version": version, "event_id": event_id, "updated_at": statement.excluded.updated_at},
        )
    )


def confirm(engine: Engine, event_id: int, note: str | None = None) -> None:
    """The registry did the move: mark it done and move the alias on the record."""
    with engine.begin() as conn:
        _confirm(conn, event_id, note)


def _confirm(conn: Connection, event_id: int, note: str | None = None) -> None:
    event = conn.execute(select(model_events).where(model_events.c.id == event_id)).mappings().one()
    values: dict[str, Any] = {"status": DONE, "finished_at": _now()}
    if note:
        values["error"] = note
    conn.execute(update(model_events).where(model_events.c.id == event_id).values(**values))
    if event["alias"]:
        _set_alias(conn, event["model_name"], event["alias"], event["to_version"], event_id)


def fail(engine: Engine, event_id: int, error: str) -> None:
    """The move did not happen: the record says so, and the alias stays where it was on the record."""
    with engine.begin() as conn:
        conn.execute(
            update(model_events)
            .where(model_events.c.id == event_id)
            .values(status=FAILED, error=stored_error(error), finished_at=_now())
        )


def alias_on_record(engine: Engine, model_name: str, alias: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            select(model_aliases.c.version).where(
                model_aliases.c.model_name == model_name, model_aliases.c.alias == alias
            )
        ).scalar_one_or_none()


def observe(
    engine: Engine, model_name: str, alias: str, version: str | None, seen_by: str, now: datetime | None = None
) -> dict[str, Any] | None:
    """A process saw `alias` at `version` in the registry. If no move of the project's explains it,
    record a `moved_outside` event (once: the alias row is moved in the same transaction) and return
    it; the first sighting of an alias ever is recorded as `first_seen`. Returns None otherwise."""
    now = now or _now()
    with engine.begin() as conn:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        # The first process ever to see this alias creates its row; the row's lock then orders the rest.
        created = conn.execute(
            dialect.insert(model_aliases)
            .values(model_name=model_name, alias=alias, version=version, updated_at=now)
            .on_conflict_do_nothing(index_elements=["model_name", "alias"])
        ).rowcount
        if created:
            if version is None:
                return None
            event_id = _insert_event(
                conn,
                model_name=model_name,
                alias=alias,
                action="first_seen",
                to_version=version,
                actor=UNKNOWN_ACTOR,
                reason=f"@{alias} found on version {version} when the record began",
                evidence={"seen_by": seen_by, "seen_at": now.isoformat()},
                status=DONE,
                at=now,
            )
            conn.execute(
                update(model_aliases)
                .where(model_aliases.c.model_name == model_name, model_aliases.c.alias == alias)
                .values(event_id=event_id)
            )
            return _event(conn, event_id)
        query = select(model_aliases.c.version).where(
            model_aliases.c.model_name == model_name, model_aliases.c.alias == alias
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        on_record = conn.execute(query).scalar_one()
        if on_record == version:
            return None
        pending = conn.execute(
            select(model_events)
            .where(
                model_events.c.model_name == model_name,
                model_events.c.alias == alias,
                model_events.c.status == PENDING,
            )
            .order_by(model_events.c.id)
        ).mappings()
        for event in pending:
            stale = now - _aware(event["at"]) > STALE_PENDING
            if event["to_version"] == version:
                if stale:  # the registry did it; the process that asked died before confirming
                    _confirm(conn, event["id"], note=f"confirmed by {seen_by}, which saw the alias there")
                return None  # the project's own move, in flight
            if event["from_version"] == on_record and not stale:
                return None
        event_id = _insert_event(
            conn,
            model_name=model_name,
            alias=alias,
            action="moved_outside",
            from_version=on_record,
            to_version=version,
            actor=UNKNOWN_ACTOR,
            reason=f"@{alias} found on {_version_text(version)}; the record had {_version_text(on_record)} "
            "and no command of this project moved it",
            evidence={"seen_by": seen_by, "seen_at": now.isoformat(), "on_record": on_record},
            status=DONE,
            at=now,
        )
        _set_alias(conn, model_name, alias, version, event_id)
        return _event(conn, event_id)


def settle_stale(engine: Engine, model_name: str, alias: str, registry_version: str | None, now: datetime) -> int:
    """Mark pending moves of this alias older than STALE_PENDING failed when the registry does not show
    their target (the move never happened); returns how many."""
    with engine.begin() as conn:
        stale = conn.execute(
            select(model_events.c.id, model_events.c.to_version).where(
                model_events.c.model_name == model_name,
                model_events.c.alias == alias,
                model_events.c.status == PENDING,
                model_events.c.at < now - STALE_PENDING,
            )
        ).all()
        settled = 0
        for event_id, to_version in stale:
            if to_version == registry_version:
                _confirm(conn, event_id, note="confirmed later: the registry shows the alias there")
            else:
                conn.execute(
                    update(model_events)
                    .where(model_events.c.id == event_id)
                    .values(status=FAILED, error="never confirmed, and the registry does not show it", finished_at=now)
                )
            settled += 1
        return settled


def _version_text(version: str | None) -> str:
    return "no version" if version is None else f"version {version}"


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _event(conn: Connection, event_id: int) -> dict[str, Any]:
    return dict(conn.execute(select(model_events).where(model_events.c.id == event_id)).mappings().one())


def latest(
    engine: Engine, model_name: str, alias: str | None = None, actions: tuple[str, ...] | None = None
) -> dict[str, Any] | None:
    """The newest done event of the model (of this alias, of these actions)."""
    query = select(model_events).where(model_events.c.model_name == model_name, model_events.c.status == DONE)
    if alias is not None:
        query = query.where(model_events.c.alias == alias)
    if actions is not None:
        query = query.where(model_events.c.action.in_(actions))
    with engine.connect() as conn:
        row = conn.execute(query.order_by(model_events.c.id.desc()).limit(1)).mappings().first()
    return dict(row) if row else None


def history(engine: Engine, model_name: str, limit: int | None = None, since: datetime | None = None) -> list[dict]:
    """The model's events, newest first."""
    query = select(model_events).where(model_events.c.model_name == model_name)
    if since is not None:
        query = query.where(model_events.c.at >= since)
    query = query.order_by(model_events.c.id.desc())
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def alias_trail(engine: Engine, model_name: str, alias: str) -> list[str | None]:
    """The versions `alias` served, oldest first, as a stack: each move pushes its version, each
    rollback pops the version it left. Its second-to-last entry is where a rollback goes. An alias
    deleted (outside the project) is pushed as None, so that a rollback restores the version it
    held; it is only ever the top entry: a version set after it takes its place."""
    query = (
        select(model_events.c.action, model_events.c.from_version, model_events.c.to_version)
        .where(
            model_events.c.model_name == model_name,
            model_events.c.alias == alias,
            model_events.c.status == DONE,
        )
        .order_by(model_events.c.id)
    )
    trail: list[str | None] = []
    with engine.connect() as conn:
        for action, from_version, to_version in conn.execute(query):
            if action == ROLLED_BACK and trail and trail[-1] == from_version:
                trail.pop()
            if to_version is not None and trail and trail[-1] is None:
                trail.pop()
            if trail and trail[-1] == to_version:
                continue
            if to_version is not None or trail:
                trail.append(to_version)
    return trail


def count_since(engine: Engine, model_name: str, actions: tuple[str, ...], since: datetime) -> dict[str, int]:
    """How many done events of each of these actions since `since` (for the exporter)."""
    query = (
        select(model_events.c.action, func.count())
        .where(
            model_events.c.model_name == model_name,
            model_events.c.action.in_(actions),
            model_events.c.status == DONE,
            model_events.c.at >= since,
        )
        .group_by(model_events.c.action)
    )
    with engine.connect() as conn:
        return {action: n for action, n in conn.execute(query)}
