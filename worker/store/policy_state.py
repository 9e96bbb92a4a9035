"""The model policy's state row, and the lease that lets only one pass act at a time.

The lease is a conditional UPDATE (`lease_until` in the past or empty, then set ahead): atomic on
PostgreSQL and SQLite alike, so two beats, or a pass that overran its interval, never both retrain.
A pass that dies keeps the lease only until it expires (longer than the training time limit).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from worker.store.schema import model_policy


def _ensure(conn, model_name: str) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(model_policy).values(model_name=model_name).on_conflict_do_nothing(index_elements=["model_name"])
    )


def read(engine: Engine, model_name: str) -> dict[str, Any]:
    with engine.begin() as conn:
        _ensure(conn, model_name)
        return dict(conn.execute(select(model_policy).where(model_policy.c.model_name == model_name)).mappings().one())


def take_lease(engine: Engine, model_name: str, owner: str, now: datetime, seconds: float) -> bool:
    """True if this pass now holds the policy until `now + seconds`; False if another pass does."""
    with engine.begin() as conn:
        _ensure(conn, model_name)
        taken = conn.execute(
            update(model_policy)
            .where(
                model_policy.c.model_name == model_name,
                or_(model_policy.c.lease_until.is_(None), model_policy.c.lease_until < now),
            )
            .values(lease_until=now + timedelta(seconds=seconds), lease_owner=owner)
        ).rowcount
    return bool(taken)


def release_lease(engine: Engine, model_name: str, owner: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(model_policy)
            .where(model_policy.c.model_name == model_name, model_policy.c.lease_owner == owner)
            .values(lease_until=None, lease_owner=None)
        )


def save(engine: Engine, model_name: str, **values: Any) -> None:
    """Set these columns of the model's row."""
    with engine.begin() as conn:
        _ensure(conn, model_name)
        conn.execute(update(model_policy).where(model_policy.c.model_name == model_name).values(**values))
