"""Where `rollback` goes: the trail of versions an alias served, read from `model_events` on a SQLite
database migrated like any other. An alias deleted outside the project is a served state of its own:
rolling back restores the version it held, and a second rollback goes further back (no toggle)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import insert

from worker.store import events
from worker.store.database import build_engine, migrate
from worker.store.schema import model_events


@pytest.fixture
def engine(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'events.db'}"
    migrate(url)
    engine = build_engine(url)
    yield engine
    engine.dispose()


def _moves(engine, *moves: tuple[str, str | None, str | None]) -> None:
    with engine.begin() as conn:
        for action, before, after in moves:
            conn.execute(
                insert(model_events).values(
                    model_name="m", alias="production", action=action, from_version=before, to_version=after,
                    actor="alice", status="done",
                )
            )  # fmt: skip


def test_an_alias_deleted_outside_is_rolled_back_to_the_version_it_held(engine):
    _moves(engine, ("first_seen", None, "1"), ("promoted", "1", "2"), ("promoted", "2", "4"))
    _moves(engine, ("moved_outside", "4", None))  # someone deleted @production in MLflow
    trail = events.alias_trail(engine, "m", "production")
    assert trail == ["1", "2", "4", None] and trail[-2] == "4"  # rollback restores v4, not v2
    _moves(engine, ("rolled_back", None, "4"))
    assert events.alias_trail(engine, "m", "production") == ["1", "2", "4"]
    _moves(engine, ("rolled_back", "4", "2"))  # the next one goes further back ...
    assert events.alias_trail(engine, "m", "production") == ["1", "2"]
    _moves(engine, ("rolled_back", "2", "1"))  # ... and further: it never swings back to v4
    assert events.alias_trail(engine, "m", "production") == ["1"]


def test_a_deleted_alias_that_is_set_again_leaves_no_gap_to_roll_back_to(engine):
    _moves(engine, ("first_seen", None, "1"), ("promoted", "1", "2"), ("moved_outside", "2", None))
    _moves(engine, ("promoted", None, "5"))
    trail = events.alias_trail(engine, "m", "production")
    assert trail == ["1", "2", "5"]  # rollback from v5 goes to v2, never to "no version"


def test_a_move_from_a_deleted_alias_prints_no_version():
    from worker.cli.commands import move_line

    event = {"from_version": None, "to_version": "4", "actor": "alice", "id": 20, "reason": "alias gone"}
    line = move_line("production", "rolled back", event)
    assert line == "@production rolled back from no version to v4 by alice (event 20): alias gone"
