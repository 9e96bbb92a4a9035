"""The model policy on a real stack (Redis, PostgreSQL, MLflow server, a scoring worker, a trainer on the
`training` queue, beat), in accelerated time: past slots of a world whose fares rose are backfilled,
and the policy task is run between them as beat would run it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.support import wait_until
from worker.lifecycle.policy import ROLLBACK_OUTCOMES

pytestmark = pytest.mark.integration

POLICY = "worker.tasks.model_policy"
INTERVAL = 10  # beat's interval in this test


def _ok(result) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _events(stack, *actions: str) -> list:
    return stack.sql(
        "SELECT * FROM model_events WHERE model_name = :m AND action = ANY(:a) ORDER BY id",
        m=stack.env["MODEL_NAME"],
        a=list(actions),
    )


def _settings(stack):
    from worker.settings import Settings

    return Settings(
        MLFLOW_TRACKING_URI=stack.env["MLFLOW_TRACKING_URI"],
        MODEL_NAME=stack.env["MODEL_NAME"],
        DATABASE_URL=stack.db_url,
        LOCAL_DIR=stack.logs,
    )


class Past:
    """Consecutive past 5-minute slots, handed out oldest first, so that backfills never overlap."""

    def __init__(self, hours_back: float) -> None:
        now = datetime.now(UTC)
        self.next = now.replace(minute=now.minute - now.minute % 5, second=0, microsecond=0) - timedelta(
            hours=hours_back
        )

    def backfill(self, stack, slots: int, *knobs: str) -> list[str]:
        start, self.next = self.next, self.next + timedelta(minutes=5 * slots)
        _ok(
            stack.cli(
                "backfill", "--from", start.isoformat(), "--to", self.next.isoformat(), "--rides", "250", *knobs,
                "--wait", timeout=600,
            )
        )  # fmt: skip
        ids = [f"schedule-{(start + timedelta(minutes=5 * k)).isoformat()}" for k in range(slots)]
        # Monitored, then the quality pass (what beat's update_quality does every minute) fills their accuracy.
        wait_until(
            "the backfilled batches monitored",
            lambda: stack.sql("SELECT count(*) FROM batch_metrics WHERE batch_id = ANY(:b)", b=ids)[0][0] == slots,
            120,
        )
        stack.client().send_task("worker.tasks.update_quality").get(timeout=120)
        return ids


def _mae(stack, ids: list[str]) -> float:
    return stack.sql("SELECT sum(mae * outcomes) / sum(outcomes) FROM batch_metrics WHERE batch_id = ANY(:b)", b=ids)[
        0
    ][0]


def _pass(stack, **kwargs) -> dict:
    # A plain client knows no routes: name the queue, as worker.celery_app's task_routes would.
    return stack.client().send_task(POLICY, kwargs=kwargs, queue="training").get(timeout=600)


def test_the_policy_recovers_from_a_fare_rise_and_undoes_its_own_bad_promotion(new_stack):
    stack = new_stack(
        MODEL_NAME=f"policy-{datetime.now(UTC):%H%M%S%f}",
        MODEL_POLICY="off",
        BATCH_INTERVAL_SECONDS=str(INTERVAL),
        RIDES_PER_BATCH="50",
        POLICY_RETRAIN_COOLDOWN_SECONDS="0",
    )
    _ok(stack.cli("train", "--rides", "40000", "--trees", "10", "--max-depth", "10", "--seed", "1"))
    stack.start_worker("score", concurrency=2, queues="celery,monitoring")
    stack.start_worker("trainer", concurrency=2, queues="training")
    past = Past(hours_back=8)
    calm = past.backfill(stack, 2)
    before = _mae(stack, calm)

    # The fares rise by a quarter: sixteen slots of the changed world, their trips over.
    past.backfill(stack, 16, "--fare-factor", "1.25")
    off = _pass(stack)
    assert off["acted"] is False and off["note"] == "MODEL_POLICY is off"
    # Off acts never: only v1's registration and first promotion are on the record.
    assert [e.action for e in _events(stack, "registered", "challenger_set", "policy_advice")] == ["registered"]

    # Two passes at once (two beats, say), while beat's own slots go on: one retrains, on the trainer.
    beat = stack.start("beat", "--loglevel=INFO", f"--schedule={stack.logs / 'beat-schedule'}", name="beat")
    wait_until(
        "beat's first slot", lambda: stack.sql("SELECT 1 FROM batch_runs WHERE slot > now() - interval '1 minute'"), 60
    )
    started = datetime.now(UTC)
    results = [stack.client().send_task(POLICY, kwargs={"mode": "auto"}, queue="training") for _ in range(2)]
    done = [r.get(timeout=600) for r in results]
    finished = datetime.now(UTC)
    # Beat's slots while the retrain ran (and the one just before it, whose batch overlapped it).
    query = (
        "SELECT batch_id, status, extract(epoch FROM finished_at - slot) AS late FROM batch_runs "
        "WHERE slot BETWEEN :a AND :b AND trigger = 'schedule'"
    )
    during = wait_until(
        "beat's slots of the retrain's time to finish",
        lambda: (
            (rows := stack.sql(query, a=started - timedelta(seconds=INTERVAL), b=finished))
            and all(row.status in ("succeeded", "failed") for row in rows)
            and rows
        ),
        60,
    )
    stack.stop(beat)
    acted = [d for d in done if d["acted"]]
    assert len(acted) == 1 and acted[0]["decision"]["action"] == "retrain", done
    assert len(_events(stack, "challenger_set")) == 1 and len(_events(stack, "registered")) == 2
    set_event = _events(stack, "challenger_set")[0]
    assert set_event.actor == "policy" and set_event.to_version == "2"
    # The training ran on the trainer (the `training` queue), never on the scoring worker.
    assert f"Task {POLICY}[" in stack.log_text("worker-trainer")
    assert f"Task {POLICY}[" not in stack.log_text("worker-score")
    # Beat's slots during the retrain finished on time: the scoring worker never waited for the trainer.
    assert len(during) >= int((finished - started).total_seconds() / INTERVAL), (started, finished, during)
    assert all(row.status == "succeeded" and row.late < INTERVAL for row in during), during
    print(
        f"retrain took {(finished - started).total_seconds():.0f} s; {len(during)} beat slots meanwhile, latest {max(r.late for r in during):.2f} s after its slot"
    )

    # Shadow-scored on the next slots; the paired evidence favours it; the policy promotes it.
    past.backfill(stack, 4, "--fare-factor", "1.25")
    promoted = _pass(stack, mode="auto")
    assert promoted["acted"] and promoted["decision"]["action"] == "promote", promoted
    event = _events(stack, "promoted")[-1]
    assert (event.actor, event.from_version, event.to_version) == ("policy", "1", "2")
    assert event.evidence["paired"]["verdict"] == "challenger better"
    guard = _events(stack, "challenger_set")[-1]
    assert (guard.to_version, guard.actor) == ("1", "policy")  # the replaced version, shadow-scored to judge it

    # The following slots: live MAE back near its level before the fares rose.
    after = _mae(stack, past.backfill(stack, 4, "--fare-factor", "1.25"))
    print(f"live MAE before the rise {before:.2f}, after the policy's promotion {after:.2f}")
    assert after < 1.25 * before, (before, after)

    # A bad version promoted with the policy as actor (injected) is rolled back, and the policy stops.
    from worker.lifecycle.promotion import promote
    from worker.model.training import ForestParams, fit_and_register
    from worker.store.database import get_engine

    settings = _settings(stack)
    engine = get_engine(stack.db_url)
    # Registered only (fit_and_register moves no alias: `train` would promote it past a production
    # of another world), then promoted as the policy would have.
    bad = fit_and_register(settings, rides=2000, seed=9, params=ForestParams(n_estimators=2, max_depth=3))
    promote(settings, engine, bad.version, "injected: a wrong promotion", force=True, actor="policy")
    waited = _pass(stack, mode="auto")
    assert waited["decision"]["action"] == "wait" and f"of {ROLLBACK_OUTCOMES} outcomes" in waited["decision"]["reason"]
    past.backfill(stack, 5, "--fare-factor", "1.25")
    undone = _pass(stack, mode="auto")
    assert undone["acted"] and undone["decision"]["action"] == "rollback", undone
    back = _events(stack, "rolled_back")[-1]
    assert (back.actor, back.from_version, back.to_version) == ("policy", bad.version, "2")
    halted = _pass(stack, mode="auto")
    assert halted["acted"] is False and halted["decision"]["reason"].startswith("halted: rolled back")
    status = _ok(stack.cli("models", "policy", "status"))
    assert "halted" in status and "a person is needed: halted_after_rollback" in status
    _ok(stack.cli("models", "policy", "resume", "--reason", "checked"))
    assert _events(stack, "policy_resumed")[-1].actor != "policy"
