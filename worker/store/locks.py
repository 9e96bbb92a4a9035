"""Locks for work that must not run twice at once: PostgreSQL advisory locks, named.

`pass_lock` is for passes (a beat-sent pass whose predecessor still runs skips itself);
`window_lock` serialises the recomputation of one hour window, so that concurrent monitors of one
hour's batches cannot leave it computed from a subset (the last writer would win). SQLite writes
one transaction at a time in one process (the embedded mode): no lock is taken there.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text


def _key(name: str) -> int:
    return zlib.crc32(name.encode()) - 2**31  # a stable signed 32-bit key per name


@contextmanager
def pass_lock(engine: Engine, name: str) -> Iterator[bool]:
    """Yields True if this process now holds the lock `name` (released on exit), False if another does."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    with engine.connect() as conn:
        held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _key(name)}).scalar())
        conn.commit()
        try:
            yield held
        finally:
            if held:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(name)})
                conn.commit()


@contextmanager
def window_lock(engine: Engine, name: str) -> Iterator[None]:
    """Wait for, and hold while inside, the lock `name`."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _key(name)})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(name)})
            conn.commit()
