"""Settings are documented and validated; the beat schedule names registered tasks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT, cli_with_only
from worker.settings import Settings


def test_every_setting_is_in_the_readme_table_and_env_example():
    readme = (REPO_ROOT / "README.md").read_text()
    example = (REPO_ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"| `{name}` |" in readme, f"{name} missing from the README configuration table"
        assert f"{name}=" in example, f"{name} missing from .env.example"


def test_beat_schedule_names_registered_tasks():
    from beat_schedule import beat_schedule
    from worker import app

    app.loader.import_default_modules()  # what a worker does at start: import the `include` modules
    assert beat_schedule, "the schedule is empty"
    for name, entry in beat_schedule.items():
        assert entry["task"] in app.tasks, f"{name} names unregistered task {entry['task']}"
    assert beat_schedule["run-batch"]["task"] == "worker.tasks.run_batch"
    assert beat_schedule["run-batch"]["schedule"].run_every.total_seconds() == 300


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCH_INTERVAL_SECONDS", "five"),
        # inf and 1e308 crashed celery_app's schedule with an OverflowError traceback; nan was accepted
        ("BATCH_INTERVAL_SECONDS", "inf"),
        ("BATCH_INTERVAL_SECONDS", "1e308"),
        ("MODEL_REFRESH_SECONDS", "nan"),
        ("RETENTION_DAYS", "inf"),
        ("DATABASE_URL", "not a url"),
        # urlsplit sees a scheme "postgres" in it; SQLAlchemy then raised ArgumentError with a traceback
        ("DATABASE_URL", "postgres:S3cretPw@host/db"),
        ("MAX_RIDES_PER_REQUEST", "-1"),
        ("WHATIF_BATCHES", "sometimes"),
        # each was accepted at start and failed later: every slot refused, a bigint overflow in the
        # report, an OverflowError in backfill, a NotADirectoryError traceback
        ("RIDES_PER_BATCH", "2000000"),
        ("RIDES_PER_BATCH", "1e23"),
        ("POLICY_WINDOW_OUTCOMES", "99999999999999999999999"),
        ("MONITOR_SAMPLE_ROWS", "99999999999999999999"),
        ("SHADOW_SAMPLE_ROWS", "99999999999999999999"),
        ("BATCH_INTERVAL_SECONDS", "1e-300"),
        ("QUALITY_INTERVAL_SECONDS", "1e-300"),
        ("LOCAL_DIR", "/etc/passwd"),
        ("LOCAL_DIR", "/etc/passwd/local"),
    ],
)
def test_malformed_setting_stops_the_cli_naming_the_variable(variable, value, tmp_path):
    done = cli_with_only({"LOCAL_DIR": str(tmp_path), variable: value}, "status")
    assert done.returncode == 2
    assert variable in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "S3cretPw" not in done.stderr


def test_whatif_batches_is_include_or_exclude_and_a_bad_value_names_the_variable(monkeypatch):
    from worker.settings import SettingsError, get_settings

    assert Settings().WHATIF_BATCHES == "include"  # what-if batches count, like the world they stand for
    assert Settings(WHATIF_BATCHES="exclude").WHATIF_BATCHES == "exclude"
    monkeypatch.setenv("WHATIF_BATCHES", "Exclude ")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match=r"^invalid setting WHATIF_BATCHES: .*'include' or 'exclude'"):
            get_settings()
    finally:
        monkeypatch.delenv("WHATIF_BATCHES")
        get_settings.cache_clear()


@pytest.mark.parametrize(("variable", "floor"), [("SHADOW_SAMPLE_ROWS", 1_000), ("MONITOR_SAMPLE_ROWS", 2_000)])
def test_a_sample_smaller_than_its_floor_is_refused_naming_the_variable(variable, floor, monkeypatch):
    """Fewer rows than the floor would leave a chunk's paired comparison or drift test too few to mean anything."""
    from worker.settings import SettingsError, get_settings

    assert getattr(Settings(**{variable: floor}), variable) == floor
    monkeypatch.setenv(variable, str(floor - 1))
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match=rf"^invalid setting {variable}: .*greater than or equal to {floor}"):
            get_settings()
    finally:
        monkeypatch.delenv(variable)
        get_settings.cache_clear()


def test_soft_limit_must_stay_below_hard_limit_and_visibility_timeout():
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT must exceed TASK_TIME_LIMIT"):
        Settings(TASK_TIME_LIMIT=1000, TASK_SOFT_TIME_LIMIT=900, VISIBILITY_TIMEOUT=900)
    with pytest.raises(ValueError, match="TASK_SOFT_TIME_LIMIT must be below"):
        Settings(TASK_TIME_LIMIT=100, TASK_SOFT_TIME_LIMIT=100)


def test_database_waits_must_end_before_the_soft_time_limit():
    # Otherwise a wait ends in a kill and a requeue (reject_on_worker_lost), not in a retry with backoff.
    limits = {"TASK_SOFT_TIME_LIMIT": 20, "TASK_TIME_LIMIT": 25, "VISIBILITY_TIMEOUT": 30}
    for name, other in (
        ("DATABASE_STATEMENT_TIMEOUT", "DATABASE_LOCK_TIMEOUT"),
        ("DATABASE_LOCK_TIMEOUT", "DATABASE_STATEMENT_TIMEOUT"),
    ):
        with pytest.raises(ValueError, match=f"{name} must be below TASK_SOFT_TIME_LIMIT"):
            Settings(**limits, **{name: 20, other: 5})
    settings = Settings(
        TASK_SOFT_TIME_LIMIT=20, TASK_TIME_LIMIT=25, VISIBILITY_TIMEOUT=30,
        DATABASE_STATEMENT_TIMEOUT=8, DATABASE_LOCK_TIMEOUT=5,
    )  # fmt: skip
    assert (settings.DATABASE_STATEMENT_TIMEOUT, settings.DATABASE_LOCK_TIMEOUT) == (8, 5)


def test_every_test_the_readme_cites_exists():
    """The README's reliability table names tests; each name (or name prefix ending in *) must exist."""
    import re

    readme = (REPO_ROOT / "README.md").read_text()
    defined = set()
    for path in (REPO_ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
    cited = set(re.findall(r"(test_\w+\*?)`", readme))
    assert cited, "the README cites no tests"
    for name in cited:
        if name.endswith("*"):
            assert any(d.startswith(name[:-1]) for d in defined), f"README cites {name}, no such test"
        else:
            assert name in defined, f"README cites {name}, no such test"


@pytest.mark.parametrize("command", ["worker", "beat", "flower"])
def test_malformed_setting_stops_celery_naming_the_variable(command, tmp_path):
    done = subprocess.run(
        [str(Path(sys.executable).parent / "celery"), "-A", "worker", command],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path), "FLOWER_PORT": "99999"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "invalid setting FLOWER_PORT" in done.stderr


def test_flower_config_follows_the_settings(tmp_path):
    """flowerconfig.py (Flower loads it from the working directory) carries address, port and auth."""
    script = "import runpy; c = runpy.run_path('flowerconfig.py'); print(c['address'], c['port'], c.get('basic_auth'))"
    base = {"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path)}
    default = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=base, capture_output=True, text=True)
    assert default.stdout.split() == ["127.0.0.1", "5555", "None"], default.stderr
    env = {**base, "FLOWER_BASIC_AUTH": "ops:pw1,viewer:pw2", "FLOWER_PORT": "5601"}
    secured = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert secured.stdout.strip() == "127.0.0.1 5601 ['ops:pw1', 'viewer:pw2']", secured.stderr


def test_mlflow_client_retries_are_bounded_unless_the_user_set_them(tmp_path):
    """README: MLflow's ~4-minute retry of an unreachable server is cut to 2 tries, 20 s each,
    unless MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT are set."""
    script = (
        "import os; from worker.model.registry import configure_mlflow; from worker.settings import Settings; "
        "configure_mlflow(Settings()); "
        "print(os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES'], os.environ['MLFLOW_HTTP_REQUEST_TIMEOUT'])"
    )
    base = {"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path)}
    ours = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=base, capture_output=True, text=True)
    assert ours.stdout.split() == ["2", "20"], ours.stderr
    env = {**base, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5"}
    theirs = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert theirs.stdout.split() == ["5", "20"], theirs.stderr


def test_the_schedule_follows_monitoring_and_retention_settings(tmp_path):
    """update_quality runs every QUALITY_INTERVAL_SECONDS unless MONITORING is off; prune only with RETENTION_DAYS."""
    script = (
        "from worker import app; from beat_schedule import beat_schedule as s; app.loader.import_default_modules(); "
        "print(sorted(s)); print(all(e['task'] in app.tasks for e in s.values())); "
        "print(s.get('update-quality', {}).get('schedule')); print(s.get('prune-old-batches', {}).get('kwargs'))"
    )
    base = {"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path)}

    def schedule(**env: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO_ROOT, env={**base, **env}, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    assert schedule() == ["['run-batch', 'update-quality']", "True", "60.0", "None"]
    assert schedule(QUALITY_INTERVAL_SECONDS="5", RETENTION_DAYS="30") == [
        "['prune-old-batches', 'run-batch', 'update-quality']",
        "True",
        "5.0",
        "{'older_than_days': 30.0}",
    ]
    assert schedule(MONITORING="false")[0] == "['run-batch']"


def test_mlflow_credentials_come_in_pairs_and_reach_mlflows_client(tmp_path, monkeypatch):
    """MLflow's client reads credentials from os.environ only; the settings (which may come from
    .env) are put there, and unset ones removed, so a stale shell value cannot win."""
    import os

    from worker.model.registry import configure_mlflow

    with pytest.raises(ValueError, match="MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD must be set together"):
        Settings(MLFLOW_TRACKING_USERNAME="taxi-reader", MLFLOW_TRACKING_PASSWORD="")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    local = {"LOCAL_DIR": tmp_path, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    configure_mlflow(
        Settings(**local, MLFLOW_TRACKING_USERNAME="taxi-reader", MLFLOW_TRACKING_PASSWORD="pw-123456789012")
    )
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == (
        "taxi-reader",
        "pw-123456789012",
    )
    configure_mlflow(Settings(**local, MLFLOW_TRACKING_USERNAME="", MLFLOW_TRACKING_PASSWORD=""))
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ and "MLFLOW_TRACKING_PASSWORD" not in os.environ


def test_allow_pickle_models_is_off_unless_set_and_must_be_a_boolean():
    assert Settings().ALLOW_PICKLE_MODELS is False
    assert Settings(ALLOW_PICKLE_MODELS="true").ALLOW_PICKLE_MODELS is True
    with pytest.raises(ValueError, match="ALLOW_PICKLE_MODELS"):
        Settings(ALLOW_PICKLE_MODELS="maybe")


def test_mlflow_passwords_are_masked_in_messages():
    from worker.settings import redact

    settings = Settings(
        MLFLOW_TRACKING_USERNAME="taxi-reader",
        MLFLOW_TRACKING_PASSWORD="reader-pw-0001",
        MLFLOW_AUTH_ADMIN_PASSWORD="admin-pw-0002",
        MLFLOW_TRAINER_PASSWORD="trainer-pw-0003",
    )
    text = "reader-pw-0001 admin-pw-0002 trainer-pw-0003"
    assert redact(text, settings) == "*** *** ***"


def test_registry_users_needs_a_server_and_every_password(tmp_path):
    base = {"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path)}
    local = subprocess.run(
        [sys.executable, "-m", "worker", "registry-users"],
        cwd=REPO_ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert local.returncode == 2 and "needs an MLflow server" in local.stderr and "Traceback" not in local.stderr
    server = {**base, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_READER_PASSWORD": "reader-pw-000001"}
    missing = subprocess.run(
        [sys.executable, "-m", "worker", "registry-users"],
        cwd=REPO_ROOT,
        env=server,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: registry-users needs MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_TRAINER_PASSWORD"


@pytest.mark.parametrize(
    ("slot", "window"),
    [
        ("2026-11-26T16:00:00+00:00", ("2026-11-26T09:55:00", "2026-11-26T10:00:00")),
        # Spring forward: 02:00 local does not exist; the slot covers the real five minutes before it.
        ("2026-03-08T08:00:00+00:00", ("2026-03-08T01:55:00", "2026-03-08T02:00:00")),
        ("2026-03-08T08:05:00+00:00", ("2026-03-08T03:00:00", "2026-03-08T03:05:00")),
        # Fall back: 01:00-02:00 local happens twice; neither slot's window is inverted or an hour long.
        ("2026-11-01T07:00:00+00:00", ("2026-11-01T01:55:00", "2026-11-01T02:00:00")),
        ("2026-11-01T07:05:00+00:00", ("2026-11-01T01:00:00", "2026-11-01T01:05:00")),
    ],
)
def test_a_slots_window_is_its_interval_in_chicago_local_time_across_daylight_saving(slot, window):
    from worker.beat import slot_window

    start, end = slot_window(slot, 300)
    assert (start.isoformat(), end.isoformat()) == window
    assert start.tzinfo is None and end.tzinfo is None and start.fold == 0
    assert (end - start).total_seconds() == 300


def test_a_local_dir_under_a_folder_this_user_cannot_look_into_is_left_to_the_first_write(monkeypatch, tmp_path):
    """Path.exists raises PermissionError (not False) under such a folder; settings must not crash on
    it. Root is never refused here, so the refusal is simulated (the one stand-in in this file)."""
    from pathlib import Path

    real = Path.exists

    def denied(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "locked")):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", denied)
    wanted = tmp_path / "locked" / "local"
    settings = Settings(LOCAL_DIR=wanted)
    assert wanted == settings.LOCAL_DIR
