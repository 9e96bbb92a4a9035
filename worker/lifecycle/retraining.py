"""Retraining on what the service observed: the way out after the world changed.

`train` learns from the calibrated generator (or a file), so after a tariff rise it would learn
the old fare-to-duration relation again. The rides the service scored and whose true duration it
later learned (`ride_predictions` joined with `ride_outcomes`) are the only data that know the new
world, but right after a change they cover a few hours of the week, and a forest trained on them
alone serves the other hours from the nearest hours it saw.

The training set (measured against the alternatives on the next, unseen hours of a changed world:
README, "Retraining on what the service observed"):

- every observed ride of the window except the held-out part, as it is;
- plus rides generated for every hour of the week in the world the observed rides came from,
  estimated from them (worker/rides/world_fit.py: speeds and meter rates, like for like). Old or
  calibrated rides would teach the relation that changed (after a 25 % fare rise, a model trained
  on observed plus calibrated rides kept most of the old error); rides of the estimated world teach
  what did not change (routes, demand, how speed varies through the day) in the new prices and speeds.

Validation is by time: the batches whose rides became known last are held out whole (a random
split would put rides of one slot on both sides), and the production version is scored on the
very same rides: both MAEs, the paired difference and its confidence interval go to the run, the
version's tags and the event that makes it the challenger.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from worker.lifecycle.moves import move_alias, record_registered, registry_aliases
from worker.lifecycle.promotion import LifecycleRefused, check_alias_uri, retire_challenger
from worker.model.reference import build_reference
from worker.model.registry import CHALLENGER_ALIAS, configure_mlflow, load_version
from worker.model.training import DEFAULT_FOREST, TARGET, ForestParams, fit_pipeline, register_version
from worker.monitor import paired
from worker.rides.generator import RIDE_COLUMNS, World, generate_rides
from worker.rides.world_fit import estimate_world
from worker.settings import Settings
from worker.store import evidence

log = logging.getLogger(__name__)

DEFAULT_MIN_OUTCOMES = 3_000  # about an hour of Chicago's daytime rides; holds out 600 (> MIN_PAIRED_OUTCOMES)
HOLDOUT_SHARE = 0.2
MAX_OBSERVED = 200_000  # the most recently known rides of a longer window
GENERATED_RIDES = 100_000  # rides of the estimated world, spread over the week
DESIGNS = ("world", "observed", "calibrated")  # the training sets compared in the README; `world` serves


@dataclass(frozen=True)
class RetrainResult:
    version: str
    run_id: str
    window: tuple[datetime, datetime]
    rows_train: int
    rows_holdout: int
    rows_generated: int
    world: World | None
    evidence: paired.PairedEvidence  # on the held-out rides: this version against production
    production_version: str
    alias: str  # where the new version went: challenger, or production with --promote/--force
    reason: str
    fit_seconds: float
    promised_mae: float | None = None  # its `mae_minutes`: on generated rides of every hour of its world

    def as_evidence(self) -> dict[str, Any]:
        return {
            "window": [self.window[0].isoformat(), self.window[1].isoformat()],
            "rows_train": self.rows_train,
            "rows_holdout": self.rows_holdout,
            "rows_generated": self.rows_generated,
            "world": None if self.world is None else self.world.__dict__,
            "holdout": self.evidence.as_dict(),
            "promised_mae": self.promised_mae,
        }


def check_window(start: datetime, end: datetime, now: datetime) -> None:
    if end > now + timedelta(seconds=1):
        raise LifecycleRefused(f"the window ends at {end.isoformat()}, in the future (now {now.isoformat()})")
    if start >= end:
        raise LifecycleRefused(f"the window is empty or inverted: {start.isoformat()} to {end.isoformat()}")


def split_by_time(rows: pd.DataFrame, share: float = HOLDOUT_SHARE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out the batches whose rides became known last, whole, until `share` of the rows. Where
    those whole batches would be more than twice `share` (one 1,000,000-ride dispatch after small
    batches held out 99.7 % and trained on 541 rides), or there is one batch, split by trip start."""
    newest = rows.groupby("batch_id")["known_at"].max().sort_values()
    if len(newest) >= 2:
        sizes = rows.groupby("batch_id").size().reindex(newest.index[::-1])
        held = sizes.index[: int(np.searchsorted(sizes.cumsum().to_numpy(), share * len(rows))) + 1]
        if len(held) < len(newest) and sizes[held].sum() <= 2 * share * len(rows):
            mask = rows["batch_id"].isin(held)
            return rows[~mask], rows[mask]
    cut = rows["trip_start_timestamp"].quantile(1 - share)
    return rows[rows["trip_start_timestamp"] < cut], rows[rows["trip_start_timestamp"] >= cut]


def training_set(observed: pd.DataFrame, design: str, seed: int) -> tuple[pd.DataFrame, World | None, int]:
    """The rows a retrained model learns from (RIDE_COLUMNS + TARGET), the world they were generated
    in, and how many were generated."""
    frame = observed[list(RIDE_COLUMNS)].copy()
    frame[TARGET] = observed["actual_duration"].to_numpy(dtype=float)
    if design == "observed":
        return frame, None, 0
    world = estimate_world(observed, seed=seed) if design == "world" else World()
    generated = generate_rides(GENERATED_RIDES, [seed, 7], world=world)
    generated[TARGET] = generated["trip_seconds"] / 60.0
    return pd.concat([frame, generated[[*RIDE_COLUMNS, TARGET]]], ignore_index=True), world, GENERATED_RIDES


def retrain(
    settings: Settings,
    engine: Engine,
    start: datetime,
    end: datetime,
    *,
    min_outcomes: int = DEFAULT_MIN_OUTCOMES,
    promote: bool = False,
    force: bool = False,
    design: str = "world",
    params: ForestParams = DEFAULT_FOREST,
    seed: int = 0,
    actor: str | None = None,
    now: datetime | None = None,
    rides_from_local: datetime | None = None,
) -> RetrainResult:
    """Train on the rides whose outcome became known in [start, end) (UTC) and register the result as
    the challenger (as production with `promote` when the held-out evidence favours it, or `force`).
    `rides_from_local` (Chicago local) keeps only rides that started then or later: the policy's
    "after the change". Refused, with the registry untouched, for a window in the future or
    inverted, or too few rides."""
    now = now or datetime.now(UTC)
    check_window(start, end, now)
    if design not in DESIGNS:
        raise LifecycleRefused(f"unknown training set design {design!r} (one of {', '.join(DESIGNS)})")
    if promote or force:
        check_alias_uri(settings)
    found = evidence.count_observed(engine, start, end, rides_from_local)
    if found < min_outcomes:
        started = (
            "" if rides_from_local is None else f" of rides started from {rides_from_local:%Y-%m-%d %H:%M} (Chicago)"
        )
        raise LifecycleRefused(
            f"only {found} rides with a known duration{started} became known between {start.isoformat()} and "
            f"{end.isoformat()}; retrain needs at least {min_outcomes} (--min-outcomes)"
        )
    client = configure_mlflow(settings)
    aliases = registry_aliases(client, settings)
    production = aliases.get(settings.MODEL_ALIAS)
    if production is None:
        raise LifecycleRefused(
            f"{settings.MODEL_NAME} has no @{settings.MODEL_ALIAS} version to compare with: `train` or `init` first"
        )
    rows = evidence.observed_rides(engine, start, end, limit=MAX_OBSERVED, rides_from_local=rides_from_local)
    train, holdout = split_by_time(rows)
    learn, world, generated = training_set(train, design, seed)
    started = time.perf_counter()
    pipeline = fit_pipeline(learn, params, seed)
    fit_seconds = time.perf_counter() - started

    truth = holdout["actual_duration"].to_numpy(dtype=float)
    inputs = holdout[list(RIDE_COLUMNS)]
    challenger_prediction = np.asarray(pipeline.predict(inputs), dtype=float)
    production_model = load_version(settings.MODEL_NAME, production)
    production_prediction = np.asarray(production_model.predict(inputs), dtype=float)
    found_evidence = paired.from_errors(
        production_prediction - truth, challenger_prediction - truth, challenger="new", production=production
    )
    reference_rides = generate_rides(20_000, [seed, 8], world=world or World())
    reference_rides[TARGET] = reference_rides["trip_seconds"] / 60.0
    reference_inputs = pd.concat([reference_rides[list(RIDE_COLUMNS)], inputs], ignore_index=True)
    reference_truth = np.concatenate([reference_rides[TARGET].to_numpy(), truth])
    reference_predictions = np.asarray(pipeline.predict(reference_inputs), dtype=float)
    reference = build_reference(reference_inputs, reference_predictions, reference_truth, seed)
    # What the version promises (its `mae_minutes`, which live accuracy is judged against): its MAE on
    # rides of every hour of the world it was trained for. The held-out observed rides are the fair
    # ground for comparing it with production, but not for a promise: right after a change the rides
    # whose outcome is known first are the short ones (a long trip ends later), and their MAE is low.
    generated_mae = float(np.mean(np.abs(reference_predictions[: len(reference_rides)] - reference_rides[TARGET])))
    promised = generated_mae if world is not None else (found_evidence.challenger_mae or 0.0)

    window_text = f"{start:%Y-%m-%d %H:%M}–{end:%Y-%m-%d %H:%M} UTC"
    trained_on = f"history: {len(train):,} rides known {window_text}"
    if world is not None:
        trained_on += (
            f" + {generated:,} generated (speed ×{world.speed_factor:g}, fare ×{world.fare_factor:g}, "
            f"{'estimated' if design == 'world' else 'calibrated'})"
        )
    metrics = {
        "mae_minutes": promised,
        "holdout_mae_minutes": found_evidence.challenger_mae or 0.0,
        "production_mae_minutes_same_data": found_evidence.production_mae or 0.0,
        "paired_mean_difference_minutes": found_evidence.mean_difference or 0.0,
        "fit_seconds": fit_seconds,
    }
    if found_evidence.ci_low is not None:
        metrics.update(paired_ci_low_minutes=found_evidence.ci_low, paired_ci_high_minutes=found_evidence.ci_high)
    version, run_id = register_version(
        settings,
        client,
        pipeline,
        params={
            **params.__dict__,
            "source": f"history:{start.isoformat()}/{end.isoformat()}",
            "design": design,
            "rows_train": len(train),
            "rows_test": len(holdout),
            "rows_generated": generated,
            "speed_factor_estimate": world.speed_factor if world else "",
            "fare_factor_estimate": world.fare_factor if world else "",
            "production_version": production,
            "seed": seed,
        },
        metrics=metrics,
        test=holdout,
        reference=reference,
        trained_on=trained_on,
        tags={"retrained_from": production},
    )
    found_evidence = paired.PairedEvidence(**{**found_evidence.__dict__, "challenger_version": version})
    result = RetrainResult(
        version=version,
        run_id=run_id,
        window=(start, end),
        rows_train=len(train),
        rows_holdout=len(holdout),
        rows_generated=generated,
        world=world,
        evidence=found_evidence,
        production_version=production,
        alias=CHALLENGER_ALIAS,
        reason="",
        fit_seconds=fit_seconds,
        promised_mae=promised,
    )
    numbers = result.as_evidence()
    record_registered(
        settings, engine, version, f"retrained on the service's history, {window_text}", numbers, actor, now=now
    )
    favoured = paired.favours_challenger(found_evidence)
    if force or (promote and favoured):
        why = "forced" if force and not favoured else "held-out evidence favours it"
        move_alias(
            settings,
            engine,
            alias=settings.MODEL_ALIAS,
            to_version=version,
            action="promoted",
            reason=f"retrain --{'force' if force else 'promote'}: {why} ({paired.verdict(found_evidence)})",
            evidence=numbers,
            actor=actor,
            client=client,
            now=now,
        )
        if aliases.get(CHALLENGER_ALIAS) is not None:
            retire_challenger(
                settings, engine, f"version {version} was promoted directly by retrain", numbers, actor, now, client
            )
        return RetrainResult(**{**result.__dict__, "alias": settings.MODEL_ALIAS, "reason": why})
    previous = aliases.get(CHALLENGER_ALIAS)
    why = f"retrained on {window_text}; held-out: {paired.verdict(found_evidence)}"
    if promote:
        why += " (not promoted: --promote needs the held-out evidence to favour it)"
    if previous is not None:
        why += f"; replaces challenger v{previous}"
    move_alias(
        settings,
        engine,
        alias=CHALLENGER_ALIAS,
        to_version=version,
        action="challenger_set",
        reason=why,
        evidence=numbers,
        actor=actor,
        client=client,
        now=now,
    )
    return RetrainResult(**{**result.__dict__, "reason": why})
