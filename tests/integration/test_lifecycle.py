"""The model's life cycle with real Redis, PostgreSQL, MLflow server and worker processes: promotion and
rollback on the record, a move behind the service's back, refusals, retraining on the service's own
history after a fare rise, and a challenger shadow-scored on live batches."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import mlflow
import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from tests.support import registry_client, wait_until
from worker.model.features import feature_pipeline
from worker.model.registry import configure_mlflow
from worker.rides.generator import RIDE_COLUMNS, generate_rides

pytestmark = pytest.mark.integration

SMALL_TRAIN = ("--rides", "20000", "--trees", "10", "--max-depth", "10")


def _events(stack, *actions: str) -> list:
    query = "SELECT * FROM model_events WHERE model_name = :m"
    if actions:
        query += " AND action = ANY(:a)"
    return stack.sql(query + " ORDER BY id", m=stack.env["MODEL_NAME"], a=list(actions))


def _alias(stack, alias: str = "production") -> str | None:
    client = configure_mlflow(_settings(stack))
    return client.get_registered_model(stack.env["MODEL_NAME"]).aliases.get(alias)


def _settings(stack):
    from worker.settings import Settings

    return Settings(
        MLFLOW_TRACKING_URI=stack.env["MLFLOW_TRACKING_URI"],
        MODEL_NAME=stack.env["MODEL_NAME"],
        DATABASE_URL=stack.db_url,
        LOCAL_DIR=stack.logs,
    )


def _ok(result) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _batch_version(stack, rides: int = 30) -> str:
    out = _ok(stack.cli("dispatch", "--rides", str(rides), "--wait", "--timeout", "120"))
    batch_id = next(line.split()[1] for line in out.splitlines() if line.startswith("batch "))
    return stack.sql("SELECT model_version FROM batch_runs WHERE batch_id = :b", b=batch_id)[0].model_version


def _next_batches_use(stack, version: str) -> None:
    """The alias moved: within a refresh (1 s in test stacks) new batches pin `version`."""
    wait_until(f"a batch pinned to version {version}", lambda: _batch_version(stack) == version, 90, every=0.5)
    assert _batch_version(stack) == version


def test_promote_rollback_promote_are_on_the_record_and_batches_follow(new_stack):
    stack = new_stack(MODEL_NAME=f"lifecycle-{datetime.now(UTC):%H%M%S%f}")
    _ok(stack.cli("train", *SMALL_TRAIN, "--seed", "1"))
    # Worse on purpose (tiny forest): registered, not promoted.
    _ok(stack.cli("train", "--rides", "3000", "--trees", "2", "--max-depth", "3", "--seed", "2"))
    stack.start_worker("life", concurrency=2)
    assert _batch_version(stack) == "1"

    _ok(stack.cli("promote", "2", "--reason", "try the small one"))
    _next_batches_use(stack, "2")
    out = _ok(stack.cli("rollback", "--reason", "it is worse"))
    assert "rolled back from v2 to v1" in out
    _next_batches_use(stack, "1")
    _ok(stack.cli("promote", "2", "--reason", "once more"))
    _next_batches_use(stack, "2")

    moves = [
        (e.action, e.from_version, e.to_version, e.reason, e.status) for e in _events(stack, "promoted", "rolled_back")
    ]
    assert moves == [
        ("promoted", None, "1", moves[0][3], "done"),
        ("promoted", "1", "2", "try the small one", "done"),
        ("rolled_back", "2", "1", "it is worse", "done"),
        ("promoted", "1", "2", "once more", "done"),
    ]
    assert moves[0][3].startswith("train: nothing at models:/")
    actors = {e.actor for e in _events(stack, "promoted", "rolled_back")}
    assert len(actors) == 1 and actors != {"unknown"}  # the OS user (no MLflow auth here)
    registered = [(e.to_version, e.alias) for e in _events(stack, "registered")]
    assert registered == [("1", None), ("2", None)]
    # The project's own moves, seen by the worker's processes while they ran, are not "outside" moves.
    assert _events(stack, "moved_outside") == []

    # A second rollback walks further back; it does not toggle.
    _ok(stack.cli("train", *SMALL_TRAIN, "--seed", "3", "--force"))  # v3 serves
    assert _alias(stack) == "3"
    assert "from v3 to v2" in _ok(stack.cli("rollback"))
    assert "from v2 to v1" in _ok(stack.cli("rollback"))
    refused = stack.cli("rollback")
    assert refused.returncode == 2
    assert "no earlier @production version on record to roll back to" in refused.stderr
    assert _alias(stack) == "1"

    history = _ok(stack.cli("models", "--history"))
    assert "rolled_back" in history and "once more" in history
    listed = json.loads(_ok(stack.cli("models", "--json")))
    assert [v["version"] for v in listed] == ["3", "2", "1"]
    by_version = {v["version"]: v for v in listed}
    assert by_version["1"]["aliases"] == ["production"]
    assert by_version["2"]["batches"] >= 2 and by_version["1"]["batches"] >= 2
    assert all(v["loadable"] == "yes" for v in listed)
    assert by_version["1"]["trained_on"].startswith("generated: 16,000 rides")
    assert by_version["3"]["heldout_mae"] > 0


def test_an_alias_moved_behind_the_services_back_is_recorded_once(new_stack):
    stack = new_stack(MODEL_NAME=f"outside-{datetime.now(UTC):%H%M%S%f}")
    _ok(stack.cli("train", *SMALL_TRAIN, "--seed", "1"))
    _ok(stack.cli("train", *SMALL_TRAIN, "--seed", "2", "--force"))
    _ok(stack.cli("promote", "1", "--reason", "back to the first"))
    stack.start_worker("a", concurrency=2)
    stack.start_worker("b", concurrency=2)
    _next_batches_use(stack, "1")

    # Someone moves the alias with MLflow's own client: no command of the project did it.
    registry_client(stack.env["MLFLOW_TRACKING_URI"]).set_registered_model_alias(
        stack.env["MODEL_NAME"], "production", "2"
    )
    client = stack.client()
    results = [client.send_task("worker.tasks.run_batch", kwargs={"rides": 20}) for _ in range(12)]
    for result in results:
        result.get(timeout=120)
    _next_batches_use(stack, "2")
    for result in [client.send_task("worker.tasks.run_batch", kwargs={"rides": 20}) for _ in range(8)]:
        result.get(timeout=120)
    outside = _events(stack, "moved_outside")
    assert [(e.alias, e.from_version, e.to_version, e.actor) for e in outside] == [("production", "1", "2", "unknown")]
    assert outside[0].evidence["seen_by"]  # which host noticed, and when
    assert "no command of this project moved it" in outside[0].reason
    # Rollback knows where production was before the outside move.
    assert "from v2 to v1" in _ok(stack.cli("rollback", "--reason", "undo the outside move"))

    # Someone deletes @production in MLflow: rollback restores the version it held (it went to v2, the
    # version before that, printing "from vNone").
    registry = registry_client(stack.env["MLFLOW_TRACKING_URI"])
    registry.delete_registered_model_alias(stack.env["MODEL_NAME"], "production")
    assert "rolled back from no version to v1" in _ok(stack.cli("rollback", "--reason", "alias gone"))
    # A challenger on v2, set in MLflow: status and models --compare say it is no challenger once it
    # is production's version, and a rollback onto it retires it, as a promotion does.
    registry.set_registered_model_alias(stack.env["MODEL_NAME"], "challenger", "2")
    assert "from v1 to v2" in _ok(stack.cli("rollback", "--reason", "walk back"))
    assert _alias(stack, "challenger") is None
    retired = _events(stack, "challenger_retired")
    assert [(e.from_version, e.reason) for e in retired] == [("2", "rolled back to @production")]
    registry.set_registered_model_alias(stack.env["MODEL_NAME"], "challenger", "2")
    compared = _ok(stack.cli("models", "--compare"))
    assert "challenger v2 is production's own version: nothing is shadow-scored or compared" in compared
    assert stack.sql("SELECT count(*) AS n FROM shadow_comparisons")[0].n == 0
    assert "challenger v2 is production's own version" in _ok(stack.cli("status"))


def test_promote_refuses_unknown_hostile_and_serving_versions_and_a_fixed_model_uri(new_stack, tmp_path):
    from tests.security.test_model_artifacts import CreatesFile, register_pickle

    stack = new_stack(MODEL_NAME=f"refuse-{datetime.now(UTC):%H%M%S%f}")
    _ok(stack.cli("train", *SMALL_TRAIN, "--seed", "1"))
    marker = tmp_path / "pwned"
    hostile = register_pickle(_settings(stack), CreatesFile(marker))
    events_before = len(_events(stack))

    for args, expected in (
        (("promote", "99", "--reason", "x"), f"{stack.env['MODEL_NAME']} has no version 99 (versions: 1, 2)"),
        (("promote", hostile, "--reason", "x"), f"workers would refuse to load version {hostile}: it is a cloudpickle"),
        (("promote", "1", "--reason", "x"), "version 1 already serves @production; nothing to promote"),
    ):
        refused = stack.cli(*args)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert expected in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    fixed = stack.cli("promote", "1", "--reason", "x", extra_env={"MODEL_URI": f"models:/{stack.env['MODEL_NAME']}/1"})
    assert fixed.returncode == 2 and "names a fixed version" in fixed.stderr
    stage = stack.cli("rollback", extra_env={"MODEL_URI": f"models:/{stack.env['MODEL_NAME']}/Production"})
    assert stage.returncode == 2 and "names a stage" in stage.stderr
    assert not marker.exists(), "the hostile version was deserialized"
    assert _alias(stack) == "1"
    assert len(_events(stack)) == events_before  # nothing moved, nothing recorded as moved
    listed = {v["version"]: v for v in json.loads(_ok(stack.cli("models", "--json")))}
    assert listed[hostile]["loadable"].startswith("it is a cloudpickle artifact")
    assert not marker.exists()


def test_retrain_with_too_few_outcomes_or_a_bad_window_is_refused_and_the_registry_untouched(new_stack):
    stack = new_stack(MODEL_NAME=f"few-{datetime.now(UTC):%H%M%S%f}")
    _ok(stack.cli("train", *SMALL_TRAIN, "--seed", "1"))
    stack.start_worker("few", concurrency=1)
    _batch_version(stack, rides=200)  # some outcomes, far fewer than asked for
    registry = configure_mlflow(_settings(stack))
    versions = len(registry.search_model_versions(f"name='{stack.env['MODEL_NAME']}'"))
    events_before = len(_events(stack))
    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    for args, expected in (
        (("retrain", "--since", "1h"), "retrain needs at least 3000 (--min-outcomes)"),
        (("retrain", "--since", "1h", "--min-outcomes", "500"), "retrain needs at least 500"),
        (("retrain", "--since", "1h", "--until", future), "in the future"),
        (("retrain", "--since", "soon"), "--since 'soon' is not a duration"),
    ):
        refused = stack.cli(*args)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert expected in refused.stderr, refused.stderr
    assert len(registry.search_model_versions(f"name='{stack.env['MODEL_NAME']}'")) == versions
    assert len(_events(stack)) == events_before
    assert _alias(stack, "challenger") is None


def _register_broken(settings) -> str:
    """A version of the project's pipeline whose forest was fitted on one feature too few: trusted types,
    the right shape, and a ValueError on every predict."""
    rides = generate_rides(500, seed=3)
    forest = RandomForestRegressor(n_estimators=2, max_depth=3, random_state=0)
    pipeline = feature_pipeline(forest)
    features = pipeline.named_steps["features"].transform(rides[list(RIDE_COLUMNS)])
    forest.fit(features[:, :-1], rides["trip_seconds"] / 60.0)
    from worker.model.training import model_signature
    from worker.model.trust import trusted_types

    configure_mlflow(settings)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=model_signature(np.zeros(5)),
            registered_model_name=settings.MODEL_NAME,
            serialization_format="skops",
            skops_trusted_types=list(trusted_types()),
            pip_requirements=["scikit-learn"],
        )
    return str(info.registered_model_version)


def test_a_challenger_that_fails_to_predict_never_fails_a_batch(new_stack):
    """The broken version fails on every ride; the workers find that out once, when they load it (it is
    tried on sample rides then), and every batch is written all the same with the failure recorded."""
    stack = new_stack(MODEL_NAME=f"broken-{datetime.now(UTC):%H%M%S%f}")
    _ok(stack.cli("train", *SMALL_TRAIN, "--seed", "1"))
    settings = _settings(stack)
    broken = _register_broken(settings)
    configure_mlflow(settings).set_registered_model_alias(settings.MODEL_NAME, "challenger", broken)
    stack.start_worker("shadow", concurrency=1)
    for _ in range(2):
        out = _ok(stack.cli("dispatch", "--rides", "300", "--wait", "--timeout", "120"))
        batch_id = next(line.split()[1] for line in out.splitlines() if line.startswith("batch "))
        row = stack.sql("SELECT * FROM batch_runs WHERE batch_id = :b", b=batch_id)[0]
        assert (row.status, row.rows_written, row.challenger_version) == ("succeeded", 300, broken)
        assert f"challenger v{broken} could not be loaded: ModelRefused" in row.shadow_error
        assert "fails on sample rides (ValueError: X has 15 features" in row.shadow_error
        assert stack.sql("SELECT count(*) FROM shadow_predictions WHERE batch_id = :b", b=batch_id)[0][0] == 0
        assert stack.sql("SELECT count(*) FROM ride_predictions WHERE batch_id = :b", b=batch_id)[0][0] == 300
    status = json.loads(_ok(stack.cli("status", "--json")))
    assert status["lifecycle"]["challenger"]["version"] == broken
    assert status["lifecycle"]["shadow_failures_last_hour"] >= 2


def test_retrain_after_a_fare_rise_makes_a_better_challenger_shadow_scored_once_per_ride(new_stack):
    stack = new_stack(MODEL_NAME=f"retrain-{datetime.now(UTC):%H%M%S%f}")
    _ok(stack.cli("train", *SMALL_TRAIN, "--seed", "1"))
    stack.start_worker("retrain", concurrency=2)
    now = datetime.now(UTC)
    slot = now.replace(minute=now.minute - now.minute % 5, second=0, microsecond=0)
    # Two hours of past slots in a world whose fares rose by a quarter; their trips have ended.
    _ok(
        stack.cli(
            "backfill",
            "--from", (slot - timedelta(hours=3)).isoformat(),
            "--to", (slot - timedelta(hours=1)).isoformat(),
            "--rides", "250", "--fare-factor", "1.25", "--wait",
            timeout=600,
        )
    )  # fmt: skip
    out = _ok(stack.cli("retrain", "--since", "30m", "--trees", "10", "--max-depth", "10", timeout=600))
    assert "is now @challenger" in out, out
    challenger = _alias(stack, "challenger")
    assert challenger == "2" and _alias(stack) == "1"
    event = _events(stack, "challenger_set")[-1]
    holdout = event.evidence["holdout"]
    assert holdout["challenger_mae"] < 0.6 * holdout["production_mae"], holdout  # far better on the new world
    assert holdout["ci_high"] < 0
    assert abs(event.evidence["world"]["fare_factor"] - 1.25) < 0.03, event.evidence["world"]
    print(f"held-out after a 25 % fare rise: {holdout}")

    # The next batches are shadow-scored by the challenger, exactly once per ride.
    _ok(
        stack.cli(
            "backfill",
            "--from", (slot - timedelta(hours=5)).isoformat(),
            "--to", (slot - timedelta(hours=4)).isoformat(),
            "--rides", "250", "--fare-factor", "1.25", "--wait",
            timeout=600,
        )
    )  # fmt: skip
    shadowed = stack.sql(
        "SELECT r.batch_id, r.rows_written, r.challenger_version, count(s.trip_id) AS shadow, "
        "count(DISTINCT s.trip_id) AS distinct_trips "
        "FROM batch_runs r LEFT JOIN shadow_predictions s ON s.batch_id = r.batch_id "
        "WHERE r.started_at > :t GROUP BY 1, 2, 3",
        t=now + timedelta(seconds=1),
    )
    later = [row for row in shadowed if row.challenger_version == challenger]
    assert len(later) == 12, shadowed
    assert all(row.shadow == row.distinct_trips == row.rows_written == 250 for row in later)
    orphans = stack.sql(
        "SELECT count(*) FROM shadow_predictions s LEFT JOIN ride_predictions p ON p.trip_id = s.trip_id "
        "WHERE p.trip_id IS NULL"
    )
    assert orphans[0][0] == 0

    compared = json.loads(_ok(stack.cli("models", "--compare", "--json")))
    found = compared["evidence"]
    assert compared["challenger"] == challenger and compared["production"] == "1"
    assert found["outcomes"] >= 12 * 250 * 0.9  # the shadowed rides whose trips have ended
    assert found["ci_high"] < 0 and found["verdict"] == "challenger better", found
    text = _ok(stack.cli("models", "--compare"))
    assert "verdict         challenger better" in text
    print(text)
    print(_ok(stack.cli("models")))

    # What promote sees: the evidence favours the challenger, which then serves; its alias is retired.
    _ok(stack.cli("promote", challenger, "--reason", "won on live rides"))
    assert _alias(stack) == challenger and _alias(stack, "challenger") is None
    assert [e.action for e in _events(stack)][-2:] == ["promoted", "challenger_retired"]
    print(_ok(stack.cli("models", "--history")))


def test_observe_records_an_outside_move_once_under_concurrency(fresh_pg_url):
    """Twenty sightings at once (as twenty workers would make), on real PostgreSQL: one event."""
    from sqlalchemy import create_engine

    from worker.store import events

    engine = create_engine(fresh_pg_url, pool_size=20)
    try:
        first = events.observe(engine, "m", "production", "1", seen_by="w0")
        assert first is not None and first["action"] == "first_seen"
        pending = events.record(
            engine, model_name="m", alias="production", action="promoted", from_version="1", to_version="2",
            actor="me", status=events.PENDING,
        )  # fmt: skip
        # While the project's own move is pending, neither side of it is an outside move.
        assert events.observe(engine, "m", "production", "2", seen_by="w1") is None
        assert events.observe(engine, "m", "production", "1", seen_by="w1") is None
        events.confirm(engine, pending)
        assert events.alias_on_record(engine, "m", "production") == "2"

        found: list = []
        barrier = threading.Barrier(20)

        def sight(k: int) -> None:
            barrier.wait()
            found.append(events.observe(engine, "m", "production", "7", seen_by=f"w{k}"))

        threads = [threading.Thread(target=sight, args=(k,)) for k in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        recorded = [event for event in found if event is not None]
        assert len(recorded) == 1 and recorded[0]["action"] == "moved_outside"
        assert (recorded[0]["from_version"], recorded[0]["to_version"]) == ("2", "7")
        assert events.alias_trail(engine, "m", "production") == ["1", "2", "7"]
        # A failed move leaves the record where it was, marked failed, never done.
        failed = events.record(
            engine, model_name="m", alias="production", action="promoted", from_version="7", to_version="8",
            actor="me", status=events.PENDING,
        )  # fmt: skip
        events.fail(engine, failed, "MlflowException: 403 Permission denied")
        assert events.alias_on_record(engine, "m", "production") == "7"
        assert events.history(engine, "m", limit=1)[0]["status"] == "failed"
    finally:
        engine.dispose()
