"""The model policy's rules, as a pure function of what a pass knows: each rule fires on its condition
and on nothing less (the processes around it are tested in tests/integration/test_policy.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worker.lifecycle.policy import (
    CHALLENGER_MAX_AGE,
    CONFIRM_OUTCOMES,
    MIN_RETRAIN_OUTCOMES,
    RECOVERY_SECONDS,
    RETIRE_OUTCOMES,
    ROLLBACK_OUTCOMES,
    Facts,
    decide,
)
from worker.monitor.degradation import ACCURACY_MARGIN, MIN_OUTCOMES, RecentAccuracy
from worker.monitor.paired import MIN_PAIRED_OUTCOMES, PairedEvidence

NOW = datetime(2026, 12, 2, 18, tzinfo=UTC)
CHANGE = datetime(2026, 12, 2, 9, 0)  # Chicago local


def recent(mae: float, outcomes: int = 1000, heldout: float = 2.0, version: str = "1") -> RecentAccuracy:
    return RecentAccuracy(version, outcomes, mae, heldout, NOW - timedelta(minutes=30))


def paired(challenger_mae: float, production_mae: float, n: int, half: float = 0.05, c: str = "2", p: str = "1"):
    d = challenger_mae - production_mae
    return PairedEvidence(c, p, n, production_mae, challenger_mae, d, d - half, d + half, 0.001)


HEALTHY = Facts(now=NOW, production="1", recent=recent(2.1))
DEGRADED = Facts(
    now=NOW, production="1", recent=recent(2.0 * (1 + ACCURACY_MARGIN) + 0.1), change_at=CHANGE,
    post_change_outcomes=MIN_RETRAIN_OUTCOMES,
)  # fmt: skip


def test_a_healthy_production_is_left_alone_and_a_paused_or_halted_policy_does_nothing() -> None:
    assert decide(HEALTHY).action == "none"
    for stopped in (Facts(**{**DEGRADED.__dict__, "paused": True}), Facts(**{**DEGRADED.__dict__, "halted": True})):
        assert decide(stopped).action == "none"


def test_retrain_needs_the_alerts_condition_enough_post_change_rides_and_no_cooldown() -> None:
    assert decide(DEGRADED).action == "retrain"
    # The alert's count: fewer outcomes are too few to call it degraded.
    assert decide(Facts(**{**DEGRADED.__dict__, "recent": recent(9.0, outcomes=MIN_OUTCOMES - 1)})).action == "none"
    # Exactly at the margin is not above it.
    assert decide(Facts(**{**DEGRADED.__dict__, "recent": recent(2.0 * (1 + ACCURACY_MARGIN))})).action == "none"
    waiting = decide(Facts(**{**DEGRADED.__dict__, "post_change_outcomes": MIN_RETRAIN_OUTCOMES - 1}))
    assert waiting.action == "wait" and f"of {MIN_RETRAIN_OUTCOMES} rides since then known" in waiting.reason
    cooling = Facts(**{**DEGRADED.__dict__, "last_retrain_at": NOW - timedelta(minutes=10), "cooldown_seconds": 3600})
    assert decide(cooling).action == "wait" and "cooldown" in decide(cooling).reason
    assert decide(Facts(**{**DEGRADED.__dict__, "change_at": None})).action == "wait"


def test_a_challenger_is_promoted_on_favourable_paired_evidence_and_retired_otherwise() -> None:
    base = {**DEGRADED.__dict__, "challenger": "2", "challenger_since": NOW - timedelta(minutes=30)}
    better = decide(Facts(**{**base, "comparison": paired(1.9, 4.0, MIN_PAIRED_OUTCOMES)}))
    assert better.action == "promote" and better.target == "2"
    assert decide(Facts(**{**base, "comparison": paired(1.9, 4.0, MIN_PAIRED_OUTCOMES - 1)})).action == "wait"
    unsure = paired(3.95, 4.0, RETIRE_OUTCOMES, half=0.2)  # the interval straddles zero
    assert decide(Facts(**{**base, "comparison": unsure})).action == "retire"
    old = Facts(**{**base, "comparison": None, "challenger_since": NOW - CHALLENGER_MAX_AGE - timedelta(minutes=1)})
    assert decide(old).action == "retire"
    # Still degraded with a losing challenger: retrain again only with twice the rides it learned from.
    again = {
        **base,
        "comparison": paired(3.9, 4.0, 100),
        "challenger_since": NOW - timedelta(hours=2),
        "last_retrain_at": NOW - timedelta(hours=2),
        "last_retrain_rows": 4000,
    }
    assert decide(Facts(**{**again, "post_change_outcomes": 7999})).action == "wait"
    assert decide(Facts(**{**again, "post_change_outcomes": 8000})).action == "retrain"


def test_the_policys_own_promotion_is_rolled_back_on_evidence_and_confirmed_without() -> None:
    watched = {"from_version": "1", "to_version": "2", "actor": "policy", "action": "promoted"}
    base = {**HEALTHY.__dict__, "production": "2", "watched": watched, "challenger": "1"}
    # The guard (the replaced version, shadow-scored) errs 20 % less on the same rides: undo.
    guard_better = paired(1.6, 2.0, ROLLBACK_OUTCOMES, c="1", p="2")
    undo = decide(Facts(**{**base, "recent": recent(2.0, version="2"), "comparison": guard_better}))
    assert undo.action == "rollback" and undo.target == "1"
    # Without paired rides: against the replaced version's last figures.
    alone = {**base, "challenger": None, "previous_mae": 2.0}
    assert decide(Facts(**{**alone, "recent": recent(2.3, ROLLBACK_OUTCOMES, version="2")})).action == "rollback"
    assert decide(Facts(**{**alone, "recent": recent(2.1, ROLLBACK_OUTCOMES, version="2")})).action == "wait"
    assert decide(Facts(**{**alone, "recent": recent(2.9, ROLLBACK_OUTCOMES - 1, version="2")})).action == "wait"
    assert (
        decide(
            Facts(**{**alone, "recent": recent(2.1, 1000, version="2"), "watched_outcomes": CONFIRM_OUTCOMES - 1})
        ).action
        == "wait"
    )
    confirmed = decide(
        Facts(**{**alone, "recent": recent(2.1, 1000, version="2"), "watched_outcomes": CONFIRM_OUTCOMES})
    )
    assert confirmed.action == "confirm" and confirmed.target == "2"


def test_a_person_is_called_when_recovery_failed() -> None:
    retrained = NOW - timedelta(seconds=RECOVERY_SECONDS + 1)
    stuck = Facts(
        **{**DEGRADED.__dict__, "last_retrain_at": retrained, "degraded_since": retrained - timedelta(hours=1)}
    )
    assert decide(stuck).attention == "recovery_failed"
    early = Facts(**{**stuck.__dict__, "last_retrain_at": NOW - timedelta(seconds=RECOVERY_SECONDS - 60)})
    assert decide(early).attention is None
