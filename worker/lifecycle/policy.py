"""The model policy: after the world changes, retrain, try the challenger on live batches, promote it
when the paired evidence favours it, watch the promotion and undo it if it was wrong, and stop.

`MODEL_POLICY` says how: `off` (default: nothing), `advise` (record what it would do as
`policy_advice` events, do nothing) or `auto`. Beat runs one pass every POLICY_INTERVAL_SECONDS on
the `training` queue (worker.tasks.model_policy); `python -m worker models policy run` runs one by
hand. A pass holds a lease on the policy's row (worker/store/policy_state.py) so that two passes
(two beats, a slow pass) never both act. It only ever acts through the life-cycle commands'
functions (retrain, promote, retire, rollback), so every act is a `model_events` row with
`actor = policy`, its reason and its evidence.

The rules, in the order a pass applies them (`decide`, a pure function of the gathered facts):

0. paused by a person, or halted after its own rollback: nothing (`models policy resume`);
1. watching a version the policy promoted: roll it back when, over ROLLBACK_OUTCOMES outcomes
   since, the previous version errs ROLLBACK_MARGIN less on the same rides (it is shadow-scored as
   the `challenger` meanwhile, the guard), or, without paired rides, when its live MAE is
   ROLLBACK_MARGIN above the previous version's last figures; then halt. With CONFIRM_OUTCOMES
   outcomes and no such evidence, the promotion is confirmed and the guard retired;
2. a challenger: promote it when its paired evidence favours it (worker/monitor/paired.py: at least
   500 paired rides, interval below zero, 2 % better); retire it when it is not better after
   RETIRE_OUTCOMES paired rides, or has waited CHALLENGER_MAX_AGE; while production stays degraded,
   retrain again once the cooldown has passed and twice as many post-change rides are known;
3. no challenger and production degraded (worker/monitor/degradation.py, the alert's condition):
   find where the degradation began (per-batch live accuracy) and retrain on the rides from then,
   once MIN_RETRAIN_OUTCOMES of them are known and the cooldown has passed. The result is the
   challenger.

A person is called (the `attention` the exporter exports) when the policy retrained but production
is still degraded RECOVERY_SECONDS later, when it rolled back and halted, and when a version a
person promoted is worse than the one it replaced (not the policy's to undo).

The defaults come from `python -m worker lifecycle-check` (README, "The model policy").
"""

from __future__ import annotations

import logging
import socket
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from worker.lifecycle import promotion, retraining
from worker.lifecycle.moves import POLICY_ACTOR, move_alias, registry_aliases
from worker.model.reference import heldout_mae
from worker.model.registry import CHALLENGER_ALIAS, configure_mlflow, shadowed
from worker.monitor import degradation, paired
from worker.monitor.degradation import RecentAccuracy
from worker.rides.generator import CHICAGO
from worker.settings import Settings, redact
from worker.store import events, evidence, policy_state

log = logging.getLogger(__name__)

MODES = ("off", "advise", "auto")
MIN_RETRAIN_OUTCOMES = retraining.DEFAULT_MIN_OUTCOMES  # post-change rides with a known duration
ROLLBACK_OUTCOMES = 1_000  # outcomes since its own promotion before the policy judges it
ROLLBACK_MARGIN = 0.10  # the previous version must err this much less to undo the promotion
CONFIRM_OUTCOMES = 3_000  # a promotion with this many outcomes and no case against it stands
RETIRE_OUTCOMES = 3_000  # a challenger not better after this many paired rides is retired
CHALLENGER_MAX_AGE = timedelta(hours=12)  # ... or after waiting this long
RECOVERY_SECONDS = 3 * 3600  # retrained, yet still degraded this long after: a person is needed
KNOWN_WINDOW = timedelta(days=7)  # how far back retraining looks for known outcomes
# Why a person is needed (the exporter's taxi_policy_attention{reason}, the alerts on it).
ATTENTION_REASONS = ("recovery_failed", "halted_after_rollback", "hand_promotion_worse")
PRODUCTION_MOVES = ("promoted", "rolled_back", "converted", "moved_outside", "first_seen")


@dataclass(frozen=True)
class Facts:
    """What a pass knows when it decides."""

    now: datetime  # UTC
    paused: bool = False
    halted: bool = False
    note: str | None = None
    production: str | None = None
    recent: RecentAccuracy | None = None
    challenger: str | None = None
    challenger_since: datetime | None = None
    comparison: paired.PairedEvidence | None = None  # challenger against production, live
    watched: dict[str, Any] | None = None  # the policy's own promotion of production, not yet confirmed
    watched_outcomes: int = 0  # outcomes of production known since that promotion (uncapped)
    previous_mae: float | None = None  # the replaced version's last figures before that promotion
    hand_promoted_worse: str | None = None  # a person's promotion worse than what it replaced: why
    change_at: datetime | None = None  # Chicago local: where the degradation began
    post_change_outcomes: int = 0
    last_retrain_at: datetime | None = None
    last_retrain_rows: int | None = None
    degraded_since: datetime | None = None
    cooldown_seconds: float = 3600.0


@dataclass(frozen=True)
class Decision:
    action: str  # none, wait, retrain, promote, retire, rollback, confirm
    reason: str
    target: str | None = None  # the version acted on
    evidence: dict[str, Any] = field(default_factory=dict)
    attention: str | None = None  # why a person is needed now, if one is


def _pct(value: float) -> str:
    return f"{value:+.0%}"


def _cooldown_left(facts: Facts) -> float:
    """Seconds until the policy may retrain: a cooldown after its last retrain, and after the current
    challenger was set (by anyone: a person's challenger gets its chance before being replaced)."""
    started = [t for t in (facts.last_retrain_at, facts.challenger_since if facts.challenger else None) if t]
    if not started:
        return 0.0
    return max(0.0, facts.cooldown_seconds - (facts.now - max(started)).total_seconds())


def attention(facts: Facts) -> str | None:
    if facts.halted:
        return "halted_after_rollback"
    recent = facts.recent
    if (
        recent is not None
        and degradation.degraded(recent)
        and facts.last_retrain_at is not None
        and facts.degraded_since is not None
        and facts.last_retrain_at >= facts.degraded_since
        and (facts.now - facts.last_retrain_at).total_seconds() >= RECOVERY_SECONDS
    ):
        return "recovery_failed"
    if facts.hand_promoted_worse:
        return "hand_promotion_worse"
    return None


def decide(facts: Facts) -> Decision:
    """What the policy should do now, and why (the rules of the module docstring, in order)."""
    called = attention(facts)
    if facts.paused:
        return Decision("none", f"paused: {facts.note or 'by a person'} (`models policy resume`)", attention=called)
    if facts.halted:
        return Decision("none", f"halted: {facts.note} (`models policy resume`)", attention=called)
    if facts.production is None or facts.recent is None:
        return Decision("none", "no production version to look after")
    recent = facts.recent
    numbers: dict[str, Any] = {"production": recent.as_dict()}
    if facts.comparison is not None:
        numbers["paired"] = facts.comparison.as_dict()

    if facts.watched is not None:
        previous = facts.watched["from_version"]
        guard = facts.comparison if facts.challenger == previous else None
        if (
            guard is not None
            and guard.outcomes >= ROLLBACK_OUTCOMES
            and paired.favours_challenger(guard, margin=ROLLBACK_MARGIN)
        ):
            return Decision(
                "rollback",
                f"v{previous} errs {_pct(-guard.relative_difference)} less than v{facts.production} on the same "
                f"{guard.outcomes} rides since the policy promoted v{facts.production} "
                f"(95 % CI {guard.ci_low:+.2f} to {guard.ci_high:+.2f} min)",
                target=previous,
                evidence=numbers,
            )
        unpaired = guard is None or guard.outcomes < ROLLBACK_OUTCOMES
        if (
            unpaired
            and recent.outcomes >= ROLLBACK_OUTCOMES
            and facts.previous_mae is not None
            and recent.mae is not None
            and recent.mae > (1 + ROLLBACK_MARGIN) * facts.previous_mae
        ):
            numbers["previous_mae"] = facts.previous_mae
            return Decision(
                "rollback",
                f"v{facts.production}'s live MAE {recent.mae:.2f} min over {recent.outcomes} outcomes is "
                f"{_pct(recent.mae / facts.previous_mae - 1)} against v{previous}'s {facts.previous_mae:.2f} before "
                "the policy promoted it",
                target=previous,
                evidence=numbers,
            )
        if facts.watched_outcomes >= CONFIRM_OUTCOMES:
            return Decision(
                "confirm",
                f"v{facts.production} holds up over {facts.watched_outcomes} outcomes since the policy promoted it "
                f"(MAE {recent.mae:.2f} min)",
                target=facts.production,
                evidence=numbers,
                attention=called,
            )
        return Decision(
            "wait",
            f"watching v{facts.production}, promoted by the policy: {recent.outcomes} of {ROLLBACK_OUTCOMES} "
            "outcomes before judging it",
            evidence=numbers,
            attention=called,
        )

    degraded = degradation.degraded(recent)
    state = (
        f"production v{facts.production}: live MAE {recent.mae:.2f} min over the {recent.outcomes} most recently "
        f"known outcomes, held-out {recent.heldout_mae:.2f}"
        if recent.mae is not None and recent.heldout_mae is not None
        else f"production v{facts.production}: {recent.outcomes} outcomes known recently"
    )
    if facts.challenger is not None:
        found = facts.comparison
        if found is not None and paired.favours_challenger(found):
            return Decision(
                "promote",
                f"challenger v{facts.challenger} errs {_pct(found.relative_difference)} against production on the "
                f"same {found.outcomes} rides (95 % CI {found.ci_low:+.2f} to {found.ci_high:+.2f} min)",
                target=facts.challenger,
                evidence=numbers,
                attention=called,
            )
        if found is not None and found.outcomes >= RETIRE_OUTCOMES:
            return Decision(
                "retire",
                f"challenger v{facts.challenger} is not better after {found.outcomes} paired rides "
                f"({paired.verdict(found)})",
                target=facts.challenger,
                evidence=numbers,
                attention=called,
            )
        if facts.challenger_since is not None and facts.now - facts.challenger_since > CHALLENGER_MAX_AGE:
            return Decision(
                "retire",
                f"challenger v{facts.challenger} waited {CHALLENGER_MAX_AGE} without winning "
                f"({paired.verdict(found) if found else 'no paired outcomes'})",
                target=facts.challenger,
                evidence=numbers,
                attention=called,
            )
        more = max(MIN_RETRAIN_OUTCOMES, 2 * (facts.last_retrain_rows or 0))
        if (
            degraded
            and facts.change_at is not None
            and not _cooldown_left(facts)
            and facts.post_change_outcomes >= more
        ):
            return Decision(
                "retrain",
                f"{state}: still degraded, and {facts.post_change_outcomes} rides since the change at "
                f"{facts.change_at:%Y-%m-%d %H:%M} (Chicago) are known, twice what the challenger learned from",
                evidence=numbers,
                attention=called,
            )
        waiting = found.outcomes if found else 0
        return Decision(
            "wait",
            f"challenger v{facts.challenger}: {waiting} paired rides so far "
            f"({paired.verdict(found) if found else 'none yet'}); {state}",
            evidence=numbers,
            attention=called,
        )

    if not degraded:
        note = f"; {facts.hand_promoted_worse}" if facts.hand_promoted_worse else ""
        return Decision("none", f"{state}: not degraded{note}", evidence=numbers, attention=called)
    if facts.change_at is None:
        return Decision("wait", f"{state}: degraded; no run of degraded batches found yet", evidence=numbers)
    numbers["change_at"] = facts.change_at.isoformat()
    if _cooldown_left(facts):
        return Decision(
            "wait", f"{state}: degraded; retrain cooldown for {_cooldown_left(facts):.0f} s more", evidence=numbers
        )
    if facts.post_change_outcomes < MIN_RETRAIN_OUTCOMES:
        return Decision(
            "wait",
            f"{state}: degraded since about {facts.change_at:%Y-%m-%d %H:%M} (Chicago); {facts.post_change_outcomes} "
            f"of {MIN_RETRAIN_OUTCOMES} rides since then known",
            evidence=numbers,
            attention=called,
        )
    return Decision(
        "retrain",
        f"{state}: degraded (more than {degradation.ACCURACY_MARGIN:.0%} above held-out) since about "
        f"{facts.change_at:%Y-%m-%d %H:%M} (Chicago); {facts.post_change_outcomes} rides since then known",
        evidence=numbers,
        attention=called,
    )


def _local(moment: datetime) -> datetime:
    return moment.astimezone(CHICAGO).replace(tzinfo=None)


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def gather(settings: Settings, engine: Engine, now: datetime, state: dict[str, Any]) -> Facts:
    """Read the registry (aliases, held-out MAE) and the database (recent accuracy, paired evidence,
    the record). Registry errors propagate: a pass that cannot see the registry decides nothing."""
    client = configure_mlflow(settings)
    aliases = registry_aliases(client, settings)
    production = aliases.get(settings.MODEL_ALIAS)
    base = Facts(
        now=now,
        paused=bool(state["paused"]),
        halted=bool(state["halted"]),
        note=state["note"],
        production=production,
        last_retrain_at=_aware(state["last_retrain_at"]),
        last_retrain_rows=state["last_retrain_rows"],
        degraded_since=_aware(state["degraded_since"]),
        cooldown_seconds=settings.POLICY_RETRAIN_COOLDOWN_SECONDS,
    )
    if production is None:
        return base
    promised = heldout_mae(client, settings.MODEL_NAME, production)
    window = settings.POLICY_WINDOW_OUTCOMES
    recent = degradation.recent_accuracy(engine, production, promised, window, now)
    challenger = shadowed(aliases.get(CHALLENGER_ALIAS), production)
    comparison = paired.live(engine, challenger, production, _local(now)) if challenger else None
    challenger_since = None
    if challenger is not None:
        set_at = events.latest(engine, settings.MODEL_NAME, alias=CHALLENGER_ALIAS)
        if set_at is not None and set_at["to_version"] == challenger:
            challenger_since = _aware(set_at["at"])
    moved = events.latest(engine, settings.MODEL_NAME, alias=settings.MODEL_ALIAS, actions=PRODUCTION_MOVES)
    watched = previous_mae = None
    watched_outcomes = 0
    hand_worse = None
    if moved is not None and moved["to_version"] == production and moved["from_version"]:
        previous = moved["from_version"]
        previous_heldout = heldout_mae(client, settings.MODEL_NAME, previous)
        before = degradation.recent_accuracy(engine, previous, previous_heldout, window, _aware(moved["at"]))
        previous_mae = before.mae if before.outcomes >= degradation.MIN_OUTCOMES else None
        if moved["actor"] == POLICY_ACTOR and moved["action"] == "promoted":
            if state["confirmed_version"] != production:
                watched = moved
                watched_outcomes = evidence.outcomes_known(engine, production, now, since=_aware(moved["at"]))
        elif (
            moved["action"] == "promoted"
            and previous_mae is not None
            and recent.mae is not None
            and recent.outcomes >= ROLLBACK_OUTCOMES
            and recent.mae > (1 + ROLLBACK_MARGIN) * previous_mae
        ):
            hand_worse = (
                f"v{production}, promoted by {moved['actor']}, errs {_pct(recent.mae / previous_mae - 1)} against "
                f"v{previous}'s last figures ({recent.mae:.2f} vs {previous_mae:.2f} min): not the policy's to undo, "
                "`python -m worker rollback` does"
            )
    change_at = None
    post_change = 0
    if degradation.degraded(recent) and promised is not None:
        change_at = degradation.change_point(engine, production, promised, _local(now))
        if change_at is not None:
            post_change = evidence.rides_known_since(engine, change_at, now)
    return Facts(
        **{
            **asdict(base),
            "recent": recent,
            "challenger": challenger,
            "challenger_since": challenger_since,
            "comparison": comparison,
            "watched": watched,
            "watched_outcomes": watched_outcomes,
            "previous_mae": previous_mae,
            "hand_promoted_worse": hand_worse,
            "change_at": change_at,
            "post_change_outcomes": post_change,
        }
    )


@dataclass(frozen=True)
class PassResult:
    mode: str
    decision: Decision | None
    acted: bool
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        decided = None if self.decision is None else asdict(self.decision)
        return {"mode": self.mode, "decision": decided, "acted": self.acted, "note": self.note}


def lease_seconds(settings: Settings) -> float:
    return settings.TRAINING_TIME_LIMIT + 60.0


def run_pass(settings: Settings, engine: Engine, now: datetime | None = None, mode: str | None = None) -> PassResult:
    """One pass: gather, decide, and (in `auto`) act; safe to run twice at once."""
    mode = mode or settings.MODEL_POLICY
    now = now or datetime.now(UTC)
    if mode == "off":
        return PassResult(mode, None, False, "MODEL_POLICY is off")
    owner = f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
    if not policy_state.take_lease(engine, settings.MODEL_NAME, owner, now, lease_seconds(settings)):
        return PassResult(mode, None, False, "another pass holds the policy's lease; this one does nothing")
    try:
        state = policy_state.read(engine, settings.MODEL_NAME)
        try:
            facts = gather(settings, engine, now, state)
        except Exception as exc:  # the registry (or database) cannot be read: decide nothing
            why = redact(f"cannot see the registry or the record now: {type(exc).__name__}: {exc}", settings)
            policy_state.save(engine, settings.MODEL_NAME, last_pass_at=now, last_action="none", last_reason=why[:2000])
            log.warning("model policy: %s", why)
            return PassResult(mode, None, False, why)
        decision = decide(facts)
        degraded_since = state["degraded_since"]
        if facts.recent is not None and degradation.degraded(facts.recent):
            degraded_since = degraded_since or now
        elif facts.recent is not None and facts.recent.outcomes >= degradation.MIN_OUTCOMES:
            degraded_since = None
        policy_state.save(
            engine,
            settings.MODEL_NAME,
            last_pass_at=now,
            degraded_since=degraded_since,
            attention=decision.attention,
        )
        if mode == "advise":
            _advise(settings, engine, decision, state, now)
            return PassResult(mode, decision, False)
        acted = _act(settings, engine, decision, facts, now)
        return PassResult(mode, decision, acted)
    finally:
        policy_state.release_lease(engine, settings.MODEL_NAME, owner)


def _advise(settings: Settings, engine: Engine, decision: Decision, state: dict[str, Any], now: datetime) -> None:
    """Record what the policy would do, once per change of advice (not every pass)."""
    acting = decision.action not in ("none", "wait")
    said = f"{decision.action}:{decision.target}"
    if acting and state["last_action"] != f"advise {said}":
        events.record(
            engine,
            model_name=settings.MODEL_NAME,
            action="policy_advice",
            actor=POLICY_ACTOR,
            to_version=decision.target,
            reason=f"would {decision.action}: {decision.reason}",
            evidence=decision.evidence,
            at=now,
        )
    policy_state.save(
        engine,
        settings.MODEL_NAME,
        last_action=f"advise {said}" if acting else decision.action,
        last_reason=decision.reason,
        last_evidence=decision.evidence,
    )


def _act(settings: Settings, engine: Engine, decision: Decision, facts: Facts, now: datetime) -> bool:
    name = settings.MODEL_NAME
    if decision.action in ("none", "wait"):
        policy_state.save(engine, name, last_action=decision.action, last_reason=decision.reason)
        return False
    try:
        if decision.action == "retrain":
            assert facts.change_at is not None
            result = retraining.retrain(
                settings,
                engine,
                now - KNOWN_WINDOW,
                now,
                min_outcomes=MIN_RETRAIN_OUTCOMES,
                actor=POLICY_ACTOR,
                now=now,
                rides_from_local=facts.change_at,
            )
            policy_state.save(
                engine,
                name,
                last_retrain_at=now,
                last_retrain_rows=result.rows_train + result.rows_holdout,
                challenger_since=now,
            )
            reason = f"{decision.reason}; retrained: v{result.version} is the challenger ({result.reason})"
        elif decision.action == "promote":
            assert decision.target is not None and facts.production is not None
            promotion.promote(
                settings, engine, decision.target, f"policy: {decision.reason}", actor=POLICY_ACTOR,
                extra_evidence=decision.evidence, now=now,
            )  # fmt: skip
            # The replaced version is shadow-scored as the guard, so that the promotion is judged on paired rides.
            move_alias(
                settings,
                engine,
                alias=CHALLENGER_ALIAS,
                to_version=facts.production,
                action="challenger_set",
                reason=f"policy: guard, v{facts.production} shadow-scored to judge the promotion of v{decision.target}",
                actor=POLICY_ACTOR,
                now=now,
            )
            policy_state.save(engine, name, challenger_since=now)
            reason = decision.reason
        elif decision.action == "retire":
            promotion.retire_challenger(
                settings, engine, f"policy: {decision.reason}", decision.evidence, actor=POLICY_ACTOR, now=now
            )
            reason = decision.reason
        elif decision.action == "confirm":
            if facts.challenger is not None and facts.watched and facts.challenger == facts.watched["from_version"]:
                promotion.retire_challenger(
                    settings, engine, f"policy: guard retired, {decision.reason}", decision.evidence,
                    actor=POLICY_ACTOR, now=now,
                )  # fmt: skip
            policy_state.save(engine, name, confirmed_version=decision.target)
            reason = decision.reason
        elif decision.action == "rollback":
            promotion.rollback(
                settings, engine, f"policy: {decision.reason}", actor=POLICY_ACTOR, evidence=decision.evidence, now=now
            )
            if facts.challenger is not None and facts.challenger == decision.target:
                promotion.retire_challenger(
                    settings, engine, "policy: the guard serves again after the rollback", actor=POLICY_ACTOR, now=now
                )
            note = f"rolled back v{facts.production} to v{decision.target} at {now:%Y-%m-%d %H:%M} UTC"
            policy_state.save(engine, name, halted=True, note=note, attention="halted_after_rollback")
            reason = f"{decision.reason}; the policy halts until `models policy resume`"
        else:
            raise ValueError(f"unknown policy action {decision.action!r}")
    except promotion.LifecycleRefused as exc:
        policy_state.save(engine, name, last_action="refused", last_reason=f"{decision.action} refused: {exc}")
        log.warning("model policy: %s refused: %s", decision.action, exc)
        return False
    except Exception as exc:  # the registry or the database failed mid-act: the record says what happened
        why = redact(f"{decision.action} failed: {type(exc).__name__}: {exc}", settings)
        policy_state.save(engine, name, last_action="failed", last_reason=why[:2000])
        log.warning("model policy: %s", why)
        return False
    policy_state.save(
        engine, name, last_action=decision.action, last_reason=reason[:4000], last_evidence=decision.evidence
    )
    log.info("model policy: %s: %s", decision.action, reason)
    return True


def pause(settings: Settings, engine: Engine, reason: str, actor: str) -> None:
    policy_state.save(engine, settings.MODEL_NAME, paused=True, note=f"paused by {actor}: {reason}")
    events.record(engine, model_name=settings.MODEL_NAME, action="policy_paused", actor=actor, reason=reason)


def resume(settings: Settings, engine: Engine, reason: str, actor: str) -> None:
    """Clears a pause and a halt after the policy's own rollback."""
    state = policy_state.read(engine, settings.MODEL_NAME)
    policy_state.save(engine, settings.MODEL_NAME, paused=False, halted=False, note=None, attention=None)
    was = "halted" if state["halted"] else "paused" if state["paused"] else "running"
    events.record(
        engine, model_name=settings.MODEL_NAME, action="policy_resumed", actor=actor, reason=f"{reason} (was {was})"
    )
