"""`python -m worker registry-users`: who may do what on an MLflow server run with `--app-name basic-auth`.

Run as the MLflow admin (MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD). It creates two users, or resets
their passwords to the configured ones, so rotating a password is: change .env, run it again.

- the reader (MLFLOW_READER_*): READ on the experiment and the registered model. Workers, beat
  and Flower use it: they can load any version, but neither register one nor move the alias.
- the trainer (MLFLOW_TRAINER_*): EDIT on both. `init` and `train` use it to log runs, register
  versions and move the alias. EDIT, not MANAGE: it cannot delete the model or grant rights.

The experiment and the registered model are created here, by the admin, if they are missing:
on a server whose default permission is NO_PERMISSIONS (deploy/mlflow/basic_auth.ini), any
authenticated user may create a model, and whoever creates it manages it. Creating it first
keeps the model name in the admin's hands, not in the first user's who asks.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from worker.cli.errors import UsageError
from worker.settings import Settings

READ = "READ"
EDIT = "EDIT"


@contextmanager
def admin_credentials(settings: Settings) -> Iterator[None]:
    """MLflow's clients read credentials from os.environ only: the admin's, for this block alone."""
    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"] = settings.MLFLOW_AUTH_ADMIN_USERNAME
    os.environ["MLFLOW_TRACKING_PASSWORD"] = settings.MLFLOW_AUTH_ADMIN_PASSWORD
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_settings(settings: Settings) -> None:
    if not settings.tracking_uri.startswith(("http://", "https://")):
        raise UsageError(
            f"registry-users needs an MLflow server (MLFLOW_TRACKING_URI=http://...), got {settings.tracking_uri}"
        )
    missing = [
        name
        for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_READER_PASSWORD", "MLFLOW_TRAINER_PASSWORD")
        if not getattr(settings, name)
    ]
    if missing:
        raise UsageError(f"registry-users needs {', '.join(missing)}")
    names = {settings.MLFLOW_AUTH_ADMIN_USERNAME, settings.MLFLOW_READER_USERNAME, settings.MLFLOW_TRAINER_USERNAME}
    if len(names) != 3 or "" in names:
        raise UsageError("MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_READER_USERNAME and MLFLOW_TRAINER_USERNAME must differ")


def provision_registry_access(settings: Settings) -> list[str]:
    """Create or update the reader and trainer and their grants; returns what was done, line by line."""
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
    from mlflow.tracking import MlflowClient

    with warnings.catch_warnings():
        # The auth client imports MLflow's server app, whose own import of a deprecated Starlette
        # module warns; nothing a user of this command could act on.
        warnings.filterwarnings("ignore", message=r"starlette\.middleware\.wsgi is deprecated")
        from mlflow.server.auth.client import AuthServiceClient

    check_settings(settings)
    uri = settings.tracking_uri
    done: list[str] = []
    with admin_credentials(settings):
        auth = AuthServiceClient(uri)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)

        for username, password in (
            (settings.MLFLOW_READER_USERNAME, settings.MLFLOW_READER_PASSWORD),
            (settings.MLFLOW_TRAINER_USERNAME, settings.MLFLOW_TRAINER_PASSWORD),
        ):
            try:
                auth.create_user(username, password)
                done.append(f"created user {username}")
            except RestException as exc:
                if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                auth.update_user_password(username, password)
                done.append(f"user {username} exists; password set to the configured one")

        experiment = client.get_experiment_by_name(settings.MLFLOW_EXPERIMENT)
        if experiment is None:
            experiment_id = client.create_experiment(settings.MLFLOW_EXPERIMENT)
            done.append(f"created experiment {settings.MLFLOW_EXPERIMENT}")
        else:
            experiment_id = experiment.experiment_id
        try:
            client.get_registered_model(settings.MODEL_NAME)
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
            client.create_registered_model(settings.MODEL_NAME)
            done.append(f"created registered model {settings.MODEL_NAME}")

        for username, permission in ((settings.MLFLOW_READER_USERNAME, READ), (settings.MLFLOW_TRAINER_USERNAME, EDIT)):
            for resource_type, resource_id in (
                ("experiment", experiment_id),
                ("registered_model", settings.MODEL_NAME),
            ):
                _grant(auth, username, resource_type, resource_id, permission)
            done.append(
                f"{username}: {permission} on experiment {settings.MLFLOW_EXPERIMENT} and model {settings.MODEL_NAME}"
            )
    return done


def _grant(auth, username: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Grant, or set an existing grant to `permission`: the command runs again on every `docker
    compose up` and after each password rotation, and MLflow refuses a second grant outright."""
    from mlflow.exceptions import RestException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        auth.grant_user_permission(username, resource_type, resource_id, permission)
        return
    except RestException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    held = auth.get_user_permission(username, resource_type, resource_id).permission
    if held == permission:
        return
    # MLflow's auth client has no update for a user's grant: take the old one back, give the right one.
    auth.revoke_user_permission(username, resource_type, resource_id)
    auth.grant_user_permission(username, resource_type, resource_id, permission)
