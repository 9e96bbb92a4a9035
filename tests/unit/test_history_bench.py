"""The history benchmark's refusals (its measurements run by hand: `bench --history`)."""

from __future__ import annotations

import pytest


def test_the_history_benchmark_refuses_a_database_that_is_not_postgresql(tmp_path):
    """Its subject is PostgreSQL's indexes as history grows; on SQLite it says so instead of failing
    somewhere in the fill."""
    from worker.cli.errors import UsageError
    from worker.cli.history_bench import run_history_bench
    from worker.settings import Settings

    settings = Settings(LOCAL_DIR=tmp_path, DATABASE_URL="")
    with pytest.raises(UsageError, match=r"needs DATABASE_URL to name a PostgreSQL server.*sqlite"):
        run_history_bench(settings, [1.0], repeat=1, big=1000, ids="ordered")
