"""`python -m worker lifecycle-check`: does the model policy recover from a change of the world, safely?

Simulated hours at Chicago's per-slot volumes, slot by slot, as the service would live them, in a
throwaway store of its own (SQLite and a local MLflow registry in a temporary folder): every
5-minute slot is generated, scored by the version the `production` alias points at (and shadow-
scored by the challenger), written with its outcomes (each known to the service when its trip ends,
on the simulation's clock), monitored, and its live accuracy updated; the policy runs a pass every
POLICY_INTERVAL_SECONDS of simulated time, as beat would run it, through the very function the
Celery task calls (which retrains, promotes, retires and rolls back on the record).

Each hour's live MAE is set beside two yardsticks computed on the same slots: the original model on
the same rides in the unchanged world (the pre-change level) and a model trained on 200,000 rides
of the true new world (what any retraining could reach at best).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from worker import batch
from worker.lifecycle import policy, promotion
from worker.lifecycle.moves import POLICY_ACTOR, move_alias
from worker.lifecycle.training import train_and_register
from worker.model.registry import (
    CHALLENGER_ALIAS,
    LoadedModel,
    Shadow,
    configure_mlflow,
    load_version,
    read_state,
    shadowed,
)
from worker.model.training import TARGET, ForestParams, fit_and_register, fit_pipeline
from worker.monitor import quality
from worker.monitor.batches import monitor_batch
from worker.rides.batch_rides import generated_chunk
from worker.rides.generator import CALIBRATED, CHICAGO, RIDE_COLUMNS, Window, World, expected_rides, generate_rides
from worker.settings import Settings
from worker.store import events, writes
from worker.store.database import get_engine, migrate

SLOT = timedelta(minutes=5)
OUTCOME_LAG = timedelta(hours=3)  # made-up trips last at most 3 hours: quality passes look this far back
START = datetime(2026, 3, 10, 8, 0, tzinfo=CHICAGO)  # a Tuesday morning; no clock change in the weeks after
BAD_FOREST = ForestParams(n_estimators=2, max_depth=3, min_samples_leaf=50)


@dataclass(frozen=True)
class Scenario:
    key: str
    name: str
    hours: float  # simulated in all
    change_at: float | None = None  # hours from the start when the world changes
    world: World = CALIBRATED
    hand_bad_at: float | None = None  # hours from the start: a person promotes a bad version
    hand_rollback_at: float | None = None  # ... and a person rolls it back (as the alert asks)
    policy_bad_at: float | None = None  # ... a bad promotion with the policy as actor (injected)
    registry_down: tuple[float, float] | None = None  # (from, to) hours from the start


SCENARIOS = {
    s.key: s
    for s in (
        Scenario("calibrated", "7 calibrated days", hours=7 * 24),
        Scenario("fares", "fares x 1.25", hours=6 + 27, change_at=6, world=World(fare_factor=1.25)),
        Scenario("traffic", "traffic x 0.7", hours=6 + 27, change_at=6, world=World(speed_factor=0.7)),
        Scenario("bad", "bad versions promoted", hours=12, hand_bad_at=3, hand_rollback_at=5, policy_bad_at=7),
        Scenario(
            "registry",
            "registry down an hour during recovery",
            hours=6 + 12,
            change_at=6,
            world=World(fare_factor=1.25),
            registry_down=(6.5, 7.5),
        ),
    )
}


@dataclass
class Hour:
    start: datetime  # Chicago local
    rides: int = 0
    production: set[str] = field(default_factory=set)
    error: float = 0.0  # sum of |production's prediction - truth|
    pre: float = 0.0  # sum of |the original model on the same rides of the unchanged world - truth|
    best: float = 0.0  # sum of |a model of the true world - truth|

    def mae(self) -> float:
        return self.error / self.rides

    def pre_change(self) -> float:
        return self.pre / self.rides

    def achievable(self) -> float:
        return self.best / self.rides


@dataclass
class Outcome:
    scenario: Scenario
    hours: list[Hour]
    acts: list[tuple[datetime, str, str]]  # (Chicago local, action, reason)
    called: list[tuple[datetime, str]]  # when a person was called, and why
    pass_seconds: list[float]
    pending_events: int  # moves left half-done (must be 0)
    aliases_agree: bool  # the registry's aliases are where the record says

    def count(self, action: str) -> int:
        return sum(1 for _, a, _ in self.acts if a == action)

    def _after_change(self) -> list[Hour]:
        change = (START + timedelta(hours=self.scenario.change_at or 0)).replace(tzinfo=None)
        return [h for h in self.hours if h.start >= change]

    def recovery_hours(self, limit: float = 0.10, yardstick: str = "pre") -> float | None:
        """Hours from the change to the end of the first hour within `limit` of the pre-change level
        (`pre`) or of what a model of the true new world scores (`best`)."""
        if self.scenario.change_at is None:
            return None
        change = (START + timedelta(hours=self.scenario.change_at)).replace(tzinfo=None)
        for hour in self._after_change():
            if hour.error <= (1 + limit) * getattr(hour, yardstick):
                return (hour.start - change).total_seconds() / 3600 + 1
        return None

    def ratio(self, hours: list[Hour], yardstick: str) -> float:
        rides = sum(h.rides for h in hours)
        return sum(h.error for h in hours) / sum(getattr(h, yardstick) for h in hours) if rides else float("nan")

    def settled_hours(self) -> float | None:
        """Hours until the service recovered: to the pre-change level, or, where the world changed for
        good (traffic slower for everyone), to what a model of the new world scores. The summary's
        "during" and "after 24 h" windows split there; on the pre-change level alone they were empty
        (nan) for a scenario that can never return to it."""
        return self.recovery_hours() or self.recovery_hours(yardstick="best")

    def after_recovery(self) -> list[Hour]:
        recovered = self.settled_hours()
        if recovered is None:
            return []
        change = (START + timedelta(hours=self.scenario.change_at or 0)).replace(tzinfo=None)
        return [h for h in self.hours if h.start >= change + timedelta(hours=recovered)][:24]


@contextlib.contextmanager
def registry_unreachable(settings: Settings) -> Iterator[Settings]:
    """The same settings pointing at a registry nobody answers, retried by no one."""
    saved = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield settings.model_copy(update={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = saved
        configure_mlflow(settings)


class Fleet:
    """What the workers hold: models by version and the aliases last read; a registry that is down
    changes nothing (they keep serving what they had)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, LoadedModel] = {}
        self.aliases: dict[str, str] = {}

    def refresh(self, settings: Settings) -> None:
        with contextlib.suppress(Exception):
            uri = f"models:/{self.settings.MODEL_NAME}@{self.settings.MODEL_ALIAS}"
            self.aliases = read_state(configure_mlflow(settings), uri).aliases

    def model(self, version: str) -> LoadedModel:
        if version not in self.models:
            self.models[version] = LoadedModel(load_version(self.settings.MODEL_NAME, version), "", version)
        return self.models[version]


def true_world_model(world: World, seed: int):
    rides = generate_rides(200_000, [seed, 77], world=world)
    rides[TARGET] = rides["trip_seconds"] / 60.0
    return fit_pipeline(rides, ForestParams(), seed)


def _inject(settings: Settings, engine, seed: int, now: datetime, actor: str) -> str:
    """Register a clearly worse (but loadable) version and promote it as `actor` would."""
    trained = fit_and_register(settings, rides=2000, seed=seed, params=BAD_FOREST)  # registered, no alias moved
    promotion.promote(settings, engine, trained.version, f"lifecycle-check: bad version promoted by {actor}",
                      force=True, actor=actor, now=now)  # fmt: skip
    return trained.version


def run_scenario(
    base: Settings, root: Path, scenario: Scenario, origin: tuple[str, str, dict], seed: int, say: Callable[[str], None]
) -> Outcome:
    settings = base.model_copy(
        update={"DATABASE_URL": f"sqlite:///{root / (scenario.key + '.db')}", "MODEL_NAME": f"trial-{scenario.key}"}
    )
    migrate(settings.database_url)
    engine = get_engine(settings.database_url)
    client = configure_mlflow(settings)
    source, run_id, tags = origin
    client.create_registered_model(settings.MODEL_NAME)
    first = client.create_model_version(settings.MODEL_NAME, source, run_id=run_id, tags=tags).version
    start = START.astimezone(UTC)
    move_alias(settings, engine, alias=settings.MODEL_ALIAS, to_version=str(first), action="promoted",
               reason="lifecycle-check: the original model", now=start)  # fmt: skip
    fleet = Fleet(settings)
    original = fleet.model(str(first)).model
    best = true_world_model(scenario.world, seed) if scenario.change_at is not None else original
    hours: dict[datetime, Hour] = {}
    acts: list[tuple[datetime, str, str]] = []
    called: list[tuple[datetime, str]] = []
    seconds: list[float] = []
    recent: list[str] = []
    every = max(1, round(base.POLICY_INTERVAL_SECONDS / SLOT.total_seconds()))
    last_call = None
    for k in range(int(scenario.hours * 3600 / SLOT.total_seconds())):
        now = start + SLOT * (k + 1)
        local = now.astimezone(CHICAGO).replace(tzinfo=None)
        elapsed = (k + 1) * SLOT.total_seconds() / 3600
        down = scenario.registry_down is not None and scenario.registry_down[0] <= elapsed < scenario.registry_down[1]
        changed = scenario.change_at is not None and elapsed > scenario.change_at
        with registry_unreachable(settings) if down else contextlib.nullcontext(settings) as current:
            fleet.refresh(current)
            for at, actor in ((scenario.hand_bad_at, "operator"), (scenario.policy_bad_at, POLICY_ACTOR)):
                if at is not None and k == round(at * 12):
                    version = _inject(settings, engine, seed + k, now, actor)
                    acts.append((local, f"bad v{version} promoted by {actor} (injected)", ""))
                    say(f"  {local:%a %H:%M} bad v{version} promoted by {actor} (injected)")
                    fleet.refresh(current)
            if scenario.hand_rollback_at is not None and k == round(scenario.hand_rollback_at * 12):
                event = promotion.rollback(settings, engine, "lifecycle-check: a person undoes the bad promotion",
                                           actor="operator", now=now)  # fmt: skip
                acts.append((local, f"rolled back by operator to v{event['to_version']}", ""))
                fleet.refresh(current)
            production = fleet.aliases[settings.MODEL_ALIAS]
            challenger = shadowed(fleet.aliases.get(CHALLENGER_ALIAS), production)
            window = Window(local - SLOT, local)
            batch_id = f"schedule-{now.isoformat()}"
            rides = expected_rides(window.start, SLOT.total_seconds() / 60)
            writes.start_batch(engine, batch_id=batch_id, trigger="schedule", rides_requested=rides, chunks_total=1,
                               task_id=None, seed=k, window=(window.start, window.end), attempt=1, slot=now)  # fmt: skip
            writes.pin_model(engine, batch_id, settings.MODEL_NAME, production, "alias", challenger=challenger)
            frame = generated_chunk(
                batch_id, seed * 100_003 + k, 0, rides, window, scenario.world if changed else World()
            )
            shadow = None
            if challenger is not None:
                try:
                    shadow = Shadow(challenger, fleet.model(challenger))
                except Exception as exc:  # as a worker would: the batch goes on without it
                    shadow = Shadow(challenger, None, f"{type(exc).__name__}: {exc}")
            served = fleet.model(production)
            batch.predict_and_write(engine, served, batch_id, 0, frame, {}, ids_are_new=True, shadow=shadow, now=now)
            truth = frame["trip_seconds"].to_numpy() / 60.0
            inputs = frame[list(RIDE_COLUMNS)]
            calm = generated_chunk(batch_id, seed * 100_003 + k, 0, rides, window, World())
            hour = hours.setdefault(window.start.replace(minute=0), Hour(window.start.replace(minute=0)))
            hour.rides += rides
            hour.production.add(production)
            hour.error += float(np.abs(batch.predict_minutes(served, frame) - truth).sum())
            hour.pre += float(np.abs(original.predict(calm[list(RIDE_COLUMNS)]) - calm["trip_seconds"] / 60.0).sum())
            hour.best += float(np.abs((best if changed else original).predict(inputs) - truth).sum())
            monitor_batch(engine, batch_id, lambda *_: None, local)
            recent = [*recent, batch_id][-int(OUTCOME_LAG / SLOT) - 1 :]
            quality.update_quality(engine, local, lambda *_: None, None, batch_ids=recent, now_utc=now)
            if (k + 1) % every:
                continue
            started = time.perf_counter()
            result = policy.run_pass(current, engine, now=now, mode="auto")
            seconds.append(time.perf_counter() - started)
            if result.acted and result.decision is not None:
                acts.append((local, result.decision.action, result.decision.reason))
                say(f"  {local:%a %H:%M} {result.decision.action}: {result.decision.reason[:150]}")
                fleet.refresh(current)
            elif result.decision is None and down:
                acts.append((local, "pass without the registry", result.note[:120]))
            call = result.decision.attention if result.decision else None
            if call and call != last_call:
                called.append((local, call))
                say(f"  {local:%a %H:%M} a person is needed: {call}")
            last_call = call
    record = events.history(engine, settings.MODEL_NAME)
    aliases = read_state(configure_mlflow(settings), f"models:/{settings.MODEL_NAME}@{settings.MODEL_ALIAS}").aliases
    agree = all(
        aliases.get(alias) == events.alias_on_record(engine, settings.MODEL_NAME, alias)
        for alias in (settings.MODEL_ALIAS, CHALLENGER_ALIAS)
    )
    pending = sum(1 for event in record if event["status"] == events.PENDING)
    engine.dispose()
    return Outcome(scenario, [hours[h] for h in sorted(hours)], acts, called, seconds, pending, agree)


def run_check(settings: Settings, keys: list[str], seed: int, say: Callable[[str], None]) -> list[Outcome]:
    """Every scenario in `keys`, each in its own database, one local registry for all (in a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="lifecycle-check-") as tmp:
        root = Path(tmp)
        base = settings.model_copy(
            update={
                "LOCAL_DIR": root,
                "MLFLOW_TRACKING_URI": "",
                "MLFLOW_TRACKING_USERNAME": "",
                "MLFLOW_TRACKING_PASSWORD": "",
                "MODEL_URI": "",
                "MODEL_ALIAS": "production",
                "MODEL_POLICY": "auto",
            }
        )
        say("training the original model on 200,000 calibrated rides ...")
        holder = base.model_copy(update={"DATABASE_URL": f"sqlite:///{root / 'origin.db'}", "MODEL_NAME": "origin"})
        migrate(holder.database_url)
        trained = train_and_register(holder, rides=200_000, seed=seed + 42)
        version = configure_mlflow(holder).get_model_version("origin", trained.version)
        tags = {k: v for k, v in (version.tags or {}).items() if k in ("mae_minutes", "reference", "trained_on")}
        origin = (version.source, version.run_id, tags)
        return [run_scenario(base, root, SCENARIOS[key], origin, seed, say) for key in keys]


def _hours(recovered: float | None, change: datetime | None) -> str:
    if change is None:
        return "—"
    return "not" if recovered is None else f"{recovered:.0f} h"


def report(outcomes: list[Outcome]) -> list[str]:
    lines: list[str] = []
    for outcome in outcomes:
        s = outcome.scenario
        lines.append(f"== {s.name}: {s.hours:g} simulated hours from {START:%a %Y-%m-%d %H:%M} (Chicago)")
        lines.append(
            f"   {'hour':<10} {'rides':>6} {'served by':>9} {'live MAE':>9} {'pre-change':>10} {'achievable':>10}"
        )
        for hour in outcome.hours:
            if s.key == "calibrated" and hour.start.hour % 6:
                continue  # a week of hours: every sixth is enough to read
            lines.append(
                f"   {hour.start:%a %H:%M} {hour.rides:>6} {'v' + '/v'.join(sorted(hour.production)):>9} "
                f"{hour.mae():>9.2f} {hour.pre_change():>10.2f} {hour.achievable():>10.2f}"
            )
        for at, action, reason in outcome.acts:
            lines.append(f"   {at:%a %H:%M} {action}{': ' + reason[:170] if reason else ''}")
        for at, why in outcome.called:
            lines.append(f"   {at:%a %H:%M} a person is needed: {why}")
    lines.append("")
    lines.append("summary")
    header = (
        f"   {'scenario':<38} {'retrains':>8} {'promotions':>10} {'rollbacks':>9} {'recovered after':>15} "
        f"{'(vs achievable)':>15} "
        f"{'MAE before':>10} {'during':>7} {'after 24 h':>10} {'vs pre-change':>13} {'vs achievable':>13}"
    )
    lines.append(header)
    for o in outcomes:
        change = (
            None
            if o.scenario.change_at is None
            else (START + timedelta(hours=o.scenario.change_at)).replace(tzinfo=None)
        )
        before = [h for h in o.hours if change is None or h.start < change]
        recovered = o.recovery_hours()
        after = o.after_recovery() if change is not None else o.hours
        during = [
            h
            for h in o.hours
            if change is not None and change <= h.start < change + timedelta(hours=o.settled_hours() or 0)
        ]
        mae = lambda hs: sum(h.error for h in hs) / sum(h.rides for h in hs) if hs else float("nan")  # noqa: E731
        lines.append(
            f"   {o.scenario.name:<38} {o.count('retrain'):>8} {o.count('promote'):>10} {o.count('rollback'):>9} "
            f"{_hours(recovered, change):>15} {_hours(o.recovery_hours(yardstick='best'), change):>15} "
            f"{mae(before):>10.2f} {mae(during):>7.2f} {mae(after):>10.2f} "
            f"{o.ratio(after, 'pre') - 1 if after else float('nan'):>+13.1%} {o.ratio(after, 'best') - 1 if after else float('nan'):>+13.1%}"
        )
        if o.pending_events or not o.aliases_agree:
            lines.append(f"   !! {o.pending_events} half-done moves; registry and record agree: {o.aliases_agree}")
    cost = [s for o in outcomes for s in o.pass_seconds]
    if cost:
        lines.append(
            f"a policy pass: median {statistics.median(cost) * 1000:.0f} ms, max {max(cost):.1f} s (with a retrain) "
            f"over {len(cost)} passes"
        )
    return lines
