"""Getting a database and a registry ready to serve: shared by `migrate`, `init` and `make run`."""

from __future__ import annotations

from worker.cli.errors import UsageError
from worker.settings import Settings, redact


def migrate_database(settings: Settings) -> None:
    from worker.store.database import get_engine, migrate
    from worker.store.readers import ReaderRoleMissing, grant_readers

    migrate(settings.database_url)
    print(f"database schema is up to date ({redact(settings.database_url, settings)})")
    if settings.DATABASE_READER_ROLE:
        try:
            granted = grant_readers(get_engine(settings.database_url), settings.DATABASE_READER_ROLE)
        except ReaderRoleMissing as exc:
            raise UsageError(str(exc)) from None
        if granted:
            print(f"read-only role {settings.DATABASE_READER_ROLE} may SELECT from: {', '.join(granted)}")


def initialize(settings: Settings, first_model_rides: int) -> None:
    """Migrate, and register a first model if the registry has none; safe to run again."""
    from worker.lifecycle.training import train_and_register
    from worker.model.registry import configure_mlflow, find_version

    migrate_database(settings)
    found = find_version(configure_mlflow(settings), settings.model_uri)
    if found is not None:
        print(f"registry already has {found[0]} version {found[1]} at {settings.model_uri}")
        return
    print(f"no model at {settings.model_uri}; training a first one on generated rides")
    result = train_and_register(settings, rides=first_model_rides)
    print(f"registered {settings.MODEL_NAME} version {result.version} (MAE {result.mae:.3f} min): {result.reason}")
