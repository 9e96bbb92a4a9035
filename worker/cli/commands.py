"""`python -m worker COMMAND`: the hand-held side of the service.

Errors a user can cause (bad data, bad settings, bad arguments) end in one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from worker.cli.backfill import MAX_SLOTS as MAX_BACKFILL_SLOTS
from worker.cli.errors import PortTaken, SendBroken, UsageError
from worker.cli.times import TIME_HELP
from worker.logs import redact_handlers
from worker.rides.cleaning import DataError
from worker.rides.generator import FACTOR_RANGE
from worker.rides.validation import BadRequest
from worker.settings import CENTURY_DAYS, Settings, SettingsError, get_settings, redact

# Errors that mean a service is down or refusing, by class path, so that catching them does not
# import mlflow or SQLAlchemy into commands that never use them.
UNREACHABLE = {
    "kombu.exceptions.OperationalError",
    "mlflow.exceptions.MlflowException",
    # Not every DBAPIError: a value out of a column's range (DataError) or a broken constraint is no
    # service down, but a bug to report with its traceback; a role without the right is a refusal.
    "sqlalchemy.exc.OperationalError",
    "sqlalchemy.exc.InterfaceError",
    "psycopg2.errors.InsufficientPrivilege",
    "worker.model.registry.ModelUnavailable",
    "worker.store.database.SchemaMissing",
    "builtins.ConnectionError",
    "builtins.TimeoutError",
    "redis.exceptions.ConnectionError",
    "redis.exceptions.TimeoutError",
}


def unreachable_cause(exc: BaseException) -> BaseException | None:
    """The error in `exc`'s chain that says a service is down, if any: Celery raises a RuntimeError
    from Redis's ConnectionError when its result backend cannot reconnect."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if any(f"{k.__module__}.{k.__qualname__}" in UNREACHABLE for k in type(link).__mro__):
            return link
        seen.add(id(link))
        link = link.__cause__
    return None


# A model version that is refused for good (unsafe or foreign artifact), or a conversion that did
# not check out: one line naming the version and the way forward, not a traceback.
REFUSED = {"worker.model.trust.ModelRefused", "worker.model.conversion.ConversionMismatch"}
# A life-cycle command that would do the wrong thing (unknown version, too few outcomes, ...): one line, exit 2.
LIFECYCLE_REFUSED = "worker.lifecycle.promotion.LifecycleRefused"


def is_lifecycle_refusal(exc: BaseException) -> bool:
    return any(f"{k.__module__}.{k.__qualname__}" == LIFECYCLE_REFUSED for k in type(exc).__mro__)


def is_refused(exc: BaseException) -> bool:
    return any(f"{k.__module__}.{k.__qualname__}" in REFUSED for k in type(exc).__mro__)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    if value >= 2**63:  # the database's bigint: beyond it a query failed as if the database were down
        raise argparse.ArgumentTypeError(f"must be below 2**63, got {text}")
    return value


def _version(text: str) -> str:
    """A registered version: MLflow numbers them 1, 2, 3 (as text)."""
    value = text.strip()
    if not value.isascii() or not value.isdigit() or not 0 < int(value) < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not a model version (a whole number from 1, e.g. 3)")
    return str(int(value))


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**63-1, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be from 1 to 65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _at_most(parse: Callable[[str], Any], most: float, why: str) -> Callable[[str], Any]:
    """`parse`, then refused above `most` (e.g. `--hours 1e9` ran a simulation until it was killed)."""

    def checked(text: str) -> Any:
        value = parse(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:,} ({why}), got {text}")
        return value

    return checked


def _days(text: str) -> float:
    value = _positive_float(text)
    if value > CENTURY_DAYS:  # beyond it, now minus DAYS overflowed the calendar
        raise argparse.ArgumentTypeError(f"must be at most {CENTURY_DAYS} days, got {text}")
    return value


def _factor(text: str) -> float:
    low, high = FACTOR_RANGE
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, got {text}")
    return value


# What a what-if batch does to production figures, said in both commands' --help.
WHATIF_HELP = (
    "a batch with a knob not 1 is a what-if batch: marked in `batches`, the report and the dashboards, and "
    "counted in production figures (live accuracy, drift, alerts, retraining) unless WHATIF_BATCHES=exclude"
)


def _world_options(parser: argparse.ArgumentParser) -> None:
    low, high = FACTOR_RANGE
    parser.add_argument(
        "--speed-factor",
        type=_factor,
        default=1.0,
        metavar="F",
        help=f"a world that changed: every generated speed x F ({low:g}..{high:g}; 0.7 = heavy traffic); "
        + WHATIF_HELP,
    )
    parser.add_argument(
        "--fare-factor",
        type=_factor,
        default=1.0,
        metavar="F",
        help=f"a world that changed: meter rates x F ({low:g}..{high:g}; 1.25 = a 25%% fare increase); " + WHATIF_HELP,
    )


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from worker.lifecycle.training import train_and_register
    from worker.model.training import ForestParams

    params = ForestParams(n_estimators=args.trees, max_depth=args.max_depth, min_samples_leaf=args.min_samples_leaf)
    result = train_and_register(
        settings, data=args.data, rides=args.rides, seed=args.seed, force=args.force, params=params
    )
    verdict = "promoted to" if result.promoted else "NOT promoted to"
    print(
        f"registered {settings.MODEL_NAME} version {result.version}: "
        f"MAE {result.mae:.3f} min, RMSE {result.rmse:.3f} min on held-out rides"
    )
    print(f"{verdict} @{settings.MODEL_ALIAS}: {result.reason}")
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from worker.model.evaluation import evaluate_production

    result = evaluate_production(settings, args.data)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"model {settings.model_uri} = version {result.model_version}")
    print(f"real trips: {result.rows_evaluated} of {result.rows_read} kept by the cleaning rules")
    print(
        f"MAE {result.mae_minutes:.2f} min (always-the-median baseline: {result.median_baseline_mae_minutes:.2f} min)"
    )
    print(f"logged model {result.model_megabytes:.1f} MB, loads in {result.load_seconds:.2f} s")
    return 0


def cmd_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    from worker.rides.calibration import CALIBRATION_PATH, calibrate

    params = calibrate(args.data)
    print(f"fitted {CALIBRATION_PATH} from {params['source_rows']} cleaned trips ({args.data})")
    return 0


def _known_version(settings: Settings, version: str | None):
    """The registry client, once `version` (if given) is known to exist: an unknown one is refused in one
    line naming the versions that do, not reported as a service that is down."""
    from worker.lifecycle.promotion import check_version
    from worker.model.registry import configure_mlflow

    client = configure_mlflow(settings)
    if version is not None:
        check_version(client, settings, version)
    return client


def cmd_convert_model(args: argparse.Namespace, settings: Settings) -> int:
    from worker.lifecycle.training import convert_model

    _known_version(settings, args.version)
    result = convert_model(settings, args.version)
    if result.version is not None:
        print(f"registered {result.name} version {result.version}: skops copy of version {result.source_version}")
    print(result.reason)
    return 0


def cmd_registry_users(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.registry_access import provision_registry_access

    for line in provision_registry_access(settings):
        print(line)
    return 0


def cmd_compose_env(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from worker.cli.compose_env import COMPOSE_SECRETS, check_environment, kept_env, new_env

    if args.check:
        found = check_environment()
        for problem in found:
            print(f"error: {problem}", file=sys.stderr)
        if found:
            print(
                "error: generate real secrets with `python -m worker compose-env` (README, docker-compose)",
                file=sys.stderr,
            )
            return 2
        print(f"compose secrets: all {len(COMPOSE_SECRETS)} set, none a published placeholder")
        return 0
    sys.stdout.write(kept_env(Path(args.keep)) if args.keep else new_env())
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.preparation import migrate_database

    migrate_database(settings)
    return 0


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.preparation import initialize

    initialize(settings, first_model_rides=args.rides)
    return 0


def check_request_size(rides: int, settings: Settings) -> None:
    if rides > settings.MAX_RIDES_PER_REQUEST:
        raise UsageError(f"--rides {rides} is over MAX_RIDES_PER_REQUEST={settings.MAX_RIDES_PER_REQUEST}")


def cmd_dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.dispatching import database_answers, dispatch_batch, wait_for_batch

    check_request_size(args.rides, settings)
    if args.wait:  # --wait reads the database: with it down, send nothing rather than a batch nobody follows
        database_answers(settings)
    task_id, batch_id = dispatch_batch(args.rides, args.seed, _world(args))
    print(f"task {task_id}")
    print(f"batch {batch_id}")
    if not args.wait:
        return 0
    return wait_for_batch(settings, batch_id, task_id, timeout=args.timeout)


def _world(args: argparse.Namespace):
    from worker.rides.generator import World

    return World(speed_factor=args.speed_factor, fare_factor=args.fare_factor)


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.backfill import run_backfill
    from worker.cli.times import parse_time
    from worker.store.database import ensure_schema, get_engine

    start, end = parse_time(args.start, "--from"), parse_time(args.end, "--to")
    if args.rides is not None:
        check_request_size(args.rides, settings)
    engine = get_engine(settings.database_url)
    ensure_schema(engine)
    return run_backfill(
        settings,
        engine,
        start,
        end,
        rides=args.rides,
        world=_world(args),
        wait=args.wait,
        allow_many=args.yes,
        timeout=args.timeout,
        max_queued=args.max_queued,
    )


def cmd_batches(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.batches import render_json, render_table
    from worker.cli.times import parse_time
    from worker.store.database import ensure_schema, get_engine
    from worker.store.history import list_batches

    since = parse_time(args.since, "--since") if args.since else None
    engine = get_engine(settings.database_url)
    ensure_schema(engine)
    rows = list_batches(engine, last=args.last, status=args.status, since=since)
    print(render_json(rows) if args.json else render_table(rows))
    return 0


def cmd_rerun(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.dispatching import wait_for_batch
    from worker.cli.rerun import CONVERTED, REPINNED, rerun_batch
    from worker.store.database import ensure_schema, get_engine
    from worker.store.writes import get_batch

    engine = get_engine(settings.database_url)
    ensure_schema(engine)
    batch_id = rerun_batch(settings, engine, args.batch_id, repin=args.repin)
    row = get_batch(engine, args.batch_id) or {}
    moved = (
        f", to be scored by version {row['model_version']} ({row['model_pinned_by']})"
        if row.get("model_pinned_by") in (CONVERTED, REPINNED)
        else ""
    )
    print(f"batch {batch_id} sent again{moved}")
    if not args.wait:
        return 0
    return wait_for_batch(settings, batch_id, None, timeout=args.timeout)


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime, timedelta

    from worker.store.database import ensure_schema, get_engine
    from worker.store.retention import preview, prune

    engine = get_engine(settings.database_url)
    ensure_schema(engine)
    now = datetime.now(UTC)
    cutoff = now - timedelta(days=args.older_than)
    if not args.yes:
        found = preview(engine, cutoff)
        print(
            f"{found['batch_runs']} batches started before {cutoff:%Y-%m-%d %H:%M} UTC, "
            f"with {found.get('ride_predictions', 0)} predictions, would be deleted"
            + (
                f" ({found['claimed']} of them, of any age, left half deleted by a prune that was stopped)"
                if found.get("claimed")
                else ""
            )
        )
        if not found["batch_runs"]:
            return 0
        if not sys.stdin.isatty() or input("delete them? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted (add --yes to delete without asking)")
            return 0
    removed = prune(engine, args.older_than, now)
    skipped = removed.pop("skipped", 0)
    print("deleted " + (", ".join(f"{n} {table}" for table, n in removed.items()) if removed else "nothing"))
    if skipped:
        print(
            f"kept {skipped} batches no longer finished when their turn came (rerun or backfilled since, or deleted by another prune)"
        )
    return 0


def cmd_outcomes(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.outcomes import load_outcomes_file, refresh_quality
    from worker.store.database import ensure_schema, get_engine

    engine = get_engine(settings.database_url)
    ensure_schema(engine)
    load = load_outcomes_file(settings, engine, args.path, skip_invalid=args.skip_invalid)
    for row, reason in load.errors_shown:
        print(f"row {row}: {reason}", file=sys.stderr)
    if load.refused:
        print(
            f"error: {args.path}: {load.invalid} of {load.total} rows invalid; file refused, nothing written "
            "(use --skip-invalid to load the valid rows)",
            file=sys.stderr,
        )
        return 2
    if load.invalid:
        print(f"skipped {load.invalid} invalid rows", file=sys.stderr)
    print(
        f"{load.written} outcomes written, {load.already_known} already known, "
        f"{load.unknown} with trip ids never predicted here (not stored)"
    )
    if load.disagreeing:
        shown = "; ".join(
            f"trip {t}: stored {old:.2f} min, file {new:.2f} min" for t, old, new in load.disagreeing_shown
        )
        print(
            f"warning: {load.disagreeing} of the already known outcomes have another duration in {args.path}; the "
            f"stored ones are kept (an outcome is not corrected): {shown}",
            file=sys.stderr,
        )
    for line in refresh_quality(settings, engine, load.batches):
        print(line)
    return 0


def cmd_reference(args: argparse.Namespace, settings: Settings) -> int:
    from worker.model.reference import has_reference
    from worker.model.training import add_reference

    client = _known_version(settings, args.version)
    if has_reference(client, settings.MODEL_NAME, args.version) and not args.replace:
        raise UsageError(
            f"version {args.version} already has a drift reference (held-out rides of its training); "
            "--replace logs one of generated rides instead (running workers keep the old one until they restart)"
        )
    rows = add_reference(settings, args.version, rides=args.rides)
    print(f"logged a reference of {rows} rows for {settings.MODEL_NAME} version {args.version}")
    return 0


def cmd_monitor_check(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.monitor_check import run_trial

    if args.days < 1 / 24:
        raise UsageError(f"--days {args.days:g} is less than one hour; the hour windows need at least 1/24")
    run_trial(settings, days=args.days, seed=args.seed)
    return 0


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.dispatching import dispatch_file, wait_for_batch

    outcome = dispatch_file(settings, args.path, skip_invalid=args.skip_invalid, wait=args.wait)
    for row, reason in outcome.errors_shown:
        print(f"row {row}: {reason}", file=sys.stderr)
    if outcome.refused:
        print(
            f"error: {args.path}: {outcome.invalid} of {outcome.total} rows invalid; file refused, nothing written "
            "(use --skip-invalid to write the valid rows)",
            file=sys.stderr,
        )
        return 2
    if outcome.invalid:
        print(f"skipped {outcome.invalid} invalid rows", file=sys.stderr)
    print(f"batch {outcome.batch_id}: {outcome.sent} rides sent in {outcome.chunks} task(s)")
    if not args.wait or not outcome.sent:
        return 0
    return wait_for_batch(settings, outcome.batch_id, None, timeout=args.timeout)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.status import collect_status

    report = collect_status(settings)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        for part in ("broker", "database", "registry"):
            info = report[part]
            state = "up" if info["ok"] else "DOWN"
            detail = info.get("error") or ", ".join(
                f"{k}={v}"
                for k, v in info.items()
                if k
                not in (
                    "ok",
                    "last_batch",
                    "last_failure",
                    "missed_slots_24h",
                    "refused_slots_24h",
                    "fill_command",
                    "schema_problem",
                )
            )
            print(f"{part:9} {state:5} {detail}")
        if report["database"].get("schema_problem"):
            print(f"schema    {report['database']['schema_problem']}")
        last = report["database"].get("last_batch")
        if last:
            print(
                f"last batch {last['batch_id']} finished {last['finished_at']}: {last['rows_written']} rows, model v{last['model_version']}"
            )
        elif report["database"]["ok"]:
            print("no batch succeeded yet")
        failure = report["database"].get("last_failure")
        if failure:
            error = (failure["error"].strip().splitlines() or [""])[0][:200]
            print(
                f"last batch FAILED: {failure['batch_id']} at {failure['finished_at']}: {error} "
                "(batches --status failed lists them)"
            )
        missed = report["database"].get("missed_slots_24h") or []
        if missed:
            shown = ", ".join(missed[:5]) + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
            print(f"missed slots in the last 24 h: {len(missed)} ({shown})")
            refused = report["database"].get("refused_slots_24h") or {}
            if refused:
                slot, why = max(refused.items())
                print(
                    f"  {len(refused)} of them refused by a worker before it recorded a batch; the latest, {slot}: {why}"
                )
            print(f"  fill them: {report['database']['fill_command']}")
        elif report["database"]["ok"]:
            print("missed slots in the last 24 h: none")
        for line in _monitoring_lines(report["monitoring"]):
            print(line)
        for line in _lifecycle_lines(report["lifecycle"]):
            print(line)
    return 0 if report["ok"] else 1


def _lifecycle_lines(part: dict) -> list[str]:
    if not part["ok"]:
        return [f"model life cycle unknown: {part['error']}"]
    lines = []
    challenger = part.get("challenger")
    if challenger is None:
        lines.append("challenger: none")
    else:
        found = challenger["evidence"]
        if challenger["version"] == challenger["against"]:
            from worker.cli.models import same_as_production

            lines.append(same_as_production(challenger["version"]))
        elif found is None or not found["outcomes"]:
            lines.append(f"challenger v{challenger['version']}: no paired outcomes yet")
        else:
            lines.append(
                f"challenger v{challenger['version']} vs production v{challenger['against']}: MAE "
                f"{found['challenger_mae']:.2f} vs {found['production_mae']:.2f} min over {found['outcomes']} paired "
                f"rides ({found['verdict']})"
            )
    if part.get("shadow_failures_last_hour"):
        lines.append(f"challenger failed to score {part['shadow_failures_last_hour']} batches in the last hour")
    event = part.get("last_event")
    if event is not None:
        moved = f"v{event['from_version'] or '-'} -> v{event['to_version'] or '-'}"
        lines.append(
            f"last model event {event['at']}: {event['action']} {event['alias'] or ''} {moved} by {event['actor']} "
            f"({event['status']}): {event['reason']}"
        )
    policy = part.get("policy")
    if policy is not None:
        state = "halted" if policy["halted"] else "paused" if policy["paused"] else "running"
        last = (
            f"last pass {policy['last_pass_at']}: {policy['last_action']}: {policy['last_reason']}"
            if policy["last_pass_at"]
            else "no pass yet"
        )
        lines.append(f"model policy {policy['mode']} ({state}): {last}")
        if policy["attention"]:
            lines.append(f"model policy needs a person: {policy['attention']}")
    return lines


def _monitoring_lines(part: dict) -> list[str]:
    if not part["ok"]:
        return [f"monitoring unknown: {part['error']}"]
    lines = []
    last = part.get("last_batch")
    if last is None:
        lines.append("monitoring: no batch monitored yet")
    elif last["monitor_status"] != "ok":
        detail = f": {last['error']}" if last["error"] else ""
        lines.append(f"monitoring of {last['batch_id']}: {last['monitor_status']}{detail}")
    else:
        verdict = "DATASET DRIFT" if last["dataset_drift"] else "no dataset drift"
        lines.append(
            f"monitoring of {last['batch_id']}: {verdict} ({last['drifted_columns']} of {last['columns_checked']} "
            f"columns drifted, against {last['reference']})"
        )
    live = part.get("live_mae")
    if live is not None:
        lines.append(
            f"live MAE {live['mae']:.2f} min over {live['outcomes']} outcomes of {live['batch_id']} "
            f"(model v{live['model_version']})"
        )
    recent = part.get("production_recent")
    if recent is not None:
        from worker.monitor.degradation import describe

        lines.append(describe(recent))
    day = part.get("daily")
    if day is not None and day["heldout_mae"] is not None:
        baseline = f" (always-the-median {day['baseline_mae']:.2f})" if day["baseline_mae"] is not None else ""
        lines.append(
            f"day {day['day']}: MAE {day['mae']:.2f} min, v{day['model_version']} promised {day['heldout_mae']:.2f}"
            + baseline
        )
    return lines


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from worker.cli.report import default_output, make_report
    from worker.cli.times import parse_duration

    period = parse_duration(args.since, "--since")
    written = make_report(settings, period, Path(args.output) if args.output else default_output(settings))
    warnings = f"{written.alerts} warning{'s' if written.alerts != 1 else ''}" if written.alerts else "no warnings"
    print(
        f"wrote {written.path.resolve()} ({written.size / 1024:.0f} KB; {written.charts_with_data} of 5 charts with data, {warnings})"
    )
    return 0


def _lifecycle_engine(settings: Settings):
    from worker.store.database import ensure_schema, get_engine

    engine = get_engine(settings.database_url)
    ensure_schema(engine)
    return engine


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli import models as shown

    engine = _lifecycle_engine(settings)
    if args.history:
        from worker.store.events import history

        found = history(engine, settings.MODEL_NAME, limit=args.last)
        print(shown.history_json(found) if args.json else shown.render_history(found))
        return 0
    if args.compare:
        from worker.lifecycle.moves import registry_aliases
        from worker.model.registry import CHALLENGER_ALIAS, configure_mlflow, shadowed
        from worker.monitor import paired
        from worker.rides.generator import chicago_now

        aliases = registry_aliases(configure_mlflow(settings), settings)
        challenger, production = aliases.get(CHALLENGER_ALIAS), aliases.get(settings.MODEL_ALIAS)
        found = None
        if shadowed(challenger, production) is not None:
            found = paired.refresh(engine, settings.MODEL_NAME, challenger, production, chicago_now())
        if args.json:
            print(
                json.dumps(
                    {"challenger": challenger, "production": production, "evidence": found.as_dict() if found else None}
                )
            )
        else:
            print(shown.render_comparison(found, challenger, production))
        return 0
    from worker.lifecycle.versions import list_versions

    views = list_versions(settings, engine, check=not args.no_check)
    print(shown.versions_json(views) if args.json else shown.render_versions(views))
    return 0


def cmd_policy(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict
    from datetime import UTC, datetime

    from worker.lifecycle import policy
    from worker.lifecycle.moves import actor_of
    from worker.store import policy_state

    engine = _lifecycle_engine(settings)
    if args.what == "pause":
        policy.pause(settings, engine, args.reason or "no reason given", actor_of(settings))
        print("model policy paused: it acts on nothing until `python -m worker models policy resume`")
        return 0
    if args.what == "resume":
        policy.resume(settings, engine, args.reason or "no reason given", actor_of(settings))
        print(f"model policy resumed (MODEL_POLICY={settings.MODEL_POLICY})")
        return 0
    if args.what == "run":
        mode = args.mode or settings.MODEL_POLICY
        if mode == "off":
            print("MODEL_POLICY is off: nothing to do (`--mode advise` or `--mode auto` runs one pass anyway)")
            return 0
        result = policy.run_pass(settings, engine, mode=mode)
        if args.json:
            print(json.dumps(result.as_dict(), default=str))
        elif result.decision is None:
            print(f"policy ({mode}): {result.note}")
        else:
            did = "did" if result.acted else "would" if mode == "advise" else "decided"
            print(f"policy ({mode}) {did} {result.decision.action}: {result.decision.reason}")
        return 0
    state = policy_state.read(engine, settings.MODEL_NAME)
    now = datetime.now(UTC)
    try:
        decision = policy.decide(policy.gather(settings, engine, now, state))
        now_text = f"{decision.action}: {decision.reason}"
    except Exception as exc:  # the registry may be down; the stored state is still worth showing
        decision, now_text = None, f"unknown ({type(exc).__name__}: {redact(str(exc), settings)[:200]})"
    shown = {
        "mode": settings.MODEL_POLICY,
        "paused": state["paused"],
        "halted": state["halted"],
        "note": state["note"],
        "last_pass_at": state["last_pass_at"],
        "last_action": state["last_action"],
        "last_reason": state["last_reason"],
        "attention": state["attention"],
        "last_retrain_at": state["last_retrain_at"],
        "now": None if decision is None else asdict(decision),
    }
    if args.json:
        print(json.dumps(shown, default=str))
        return 0
    status = "halted" if state["halted"] else "paused" if state["paused"] else "running"
    print(
        f"model policy: MODEL_POLICY={settings.MODEL_POLICY}, {status}{': ' + state['note'] if state['note'] else ''}"
    )
    if state["last_pass_at"] is not None:
        print(
            f"last pass {state['last_pass_at']:%Y-%m-%d %H:%M:%S} UTC: {state['last_action']}: {state['last_reason']}"
        )
    else:
        print("no pass has run yet")
    if state["attention"]:
        print(f"a person is needed: {state['attention']}")
    print(f"now it would: {now_text}")
    return 0


def move_line(alias: str, moved: str, event: dict) -> str:
    """What promote and rollback print: an alias that held nothing (deleted in MLflow) is "no version"."""

    def version(value: str | None) -> str:
        return f"v{value}" if value is not None else "no version"

    return (
        f"@{alias} {moved} from {version(event['from_version'])} to {version(event['to_version'])} "
        f"by {event['actor']} (event {event['id']}): {event['reason']}"
    )


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    from worker.lifecycle.promotion import promote

    event = promote(settings, _lifecycle_engine(settings), args.version, args.reason, force=args.force)
    print(move_line(settings.MODEL_ALIAS, "moved", event))
    return 0


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from worker.lifecycle.promotion import rollback

    event = rollback(settings, _lifecycle_engine(settings), args.reason)
    print(move_line(settings.MODEL_ALIAS, "rolled back", event))
    return 0


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from worker.cli.times import parse_duration, parse_time
    from worker.lifecycle.retraining import retrain
    from worker.model.training import ForestParams

    now = datetime.now(UTC)
    end = parse_time(args.until, "--until") if args.until else now
    start = end - parse_duration(args.since, "--since")
    params = ForestParams(n_estimators=args.trees, max_depth=args.max_depth, min_samples_leaf=args.min_samples_leaf)
    result = retrain(
        settings,
        _lifecycle_engine(settings),
        start,
        end,
        min_outcomes=args.min_outcomes,
        promote=args.promote,
        force=args.force,
        design=args.design,
        params=params,
        now=now,
    )
    found = result.evidence
    world = (
        f", generated {result.rows_generated:,} more in a world of speed ×{result.world.speed_factor:g}, fare "
        f"×{result.world.fare_factor:g}"
        if result.world
        else ""
    )
    print(
        f"registered {settings.MODEL_NAME} version {result.version}: trained on {result.rows_train:,} observed rides"
        f"{world} ({result.fit_seconds:.1f} s)"
    )
    print(
        f"held out the {result.rows_holdout:,} most recently known rides: MAE {found.challenger_mae:.3f} min, "
        f"production v{result.production_version} {found.production_mae:.3f} min on the same rides, "
        f"{found.mean_difference:+.3f} min per ride (95 % CI {found.ci_low:+.3f} to {found.ci_high:+.3f})"
    )
    print(f"version {result.version} is now @{result.alias}: {result.reason}")
    return 0


def cmd_retrain_check(args: argparse.Namespace, settings: Settings) -> int:
    from worker.lifecycle.design_trial import compare_designs

    print(f"simulating {args.hours:g} observed hours of each changed world (a few minutes)...", flush=True)
    baseline, scores = compare_designs(observed_hours=args.hours, seed=args.seed)
    print(f"production before the change, the next calibrated day: MAE {baseline['calibrated_day']:.3f} min")
    print(
        f"{'world':<28} {'training set':<22} {'observed':>9} {'next hour':>10} {'next 24 h':>10} {'fit s':>6}  estimate"
    )
    for score in scores:
        world = f"speed x{score.world.speed_factor:g}, fare x{score.world.fare_factor:g}"
        estimate = (
            f"speed x{score.estimated.speed_factor:g}, fare x{score.estimated.fare_factor:g}" if score.estimated else ""
        )
        print(
            f"{world:<28} {score.design:<22} {score.observed_rides:>9,} {score.next_hour_mae:>10.3f} "
            f"{score.next_day_mae:>10.3f} {score.fit_seconds:>6.1f}  {estimate}"
        )
    for name, value in baseline.items():
        if name.startswith("production_next_day"):
            print(f"production (not retrained), next 24 h, {name.split(' ', 1)[1]}: MAE {value:.3f} min")
    return 0


def cmd_lifecycle_check(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.lifecycle_check import SCENARIOS, report, run_check

    keys = args.scenario or list(SCENARIOS)
    print(f"scenarios: {', '.join(SCENARIOS[k].name for k in keys)} (this takes a while)", flush=True)
    outcomes = run_check(settings, keys, args.seed, lambda text: print(text, flush=True))
    for line in report(outcomes):
        print(line)
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    if args.backfill:
        from worker.cli.backfill_bench import run_backfill_bench

        results = run_backfill_bench(settings, args.backfill)
        return 0 if all(not r.failed and r.written == r.slots for r in results) else 1
    if args.history:
        from worker.cli.history_bench import run_history_bench

        run_history_bench(settings, args.history, args.repeat, max(args.sizes), args.history_ids)
        return 0
    from worker.cli.bench import run_bench

    run_bench(settings, args.sizes, args.repeat, args.latency_runs, with_worker=not args.no_worker)
    return 0


def cmd_exporter(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.exporter import serve

    return serve(settings, port=args.port)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.launcher import run_everything

    return run_everything(settings, first_model_rides=args.first_model_rides)


class OneLineParser(argparse.ArgumentParser):
    """A bad argument is one line naming it, like every other refusal (argparse printed its usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m worker", description="Chicago taxi trip-duration batches.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model, register it, promote it if not worse")
    train.add_argument("--data", help="a real Chicago Taxi Trips export (CSV or Parquet); default: generated rides")
    train.add_argument("--rides", type=_positive_int, default=200_000, help="generated rides to train on")
    train.add_argument("--seed", type=_seed, default=42, help="0 to 2**63-1")
    train.add_argument("--force", action="store_true", help="promote even if worse than production")
    train.add_argument("--trees", type=_positive_int, default=30)
    train.add_argument("--max-depth", type=_positive_int, default=12)
    train.add_argument("--min-samples-leaf", type=_positive_int, default=10)
    train.set_defaults(handler=cmd_train)

    evaluate = sub.add_parser("evaluate", help="MAE, size and load time of the production model on real trips")
    evaluate.add_argument("--data", required=True, help="a real Chicago Taxi Trips export (CSV or Parquet)")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=cmd_evaluate)

    calibrate = sub.add_parser("calibrate", help="refit the ride generator's tables from a real export")
    calibrate.add_argument("--data", required=True)
    calibrate.set_defaults(handler=cmd_calibrate)

    convert = sub.add_parser(
        "convert-model", help="register a pickle model version again as skops (the workers refuse pickle)"
    )
    convert.add_argument(
        "--version", type=_version, help="the version to convert; default: the one MODEL_URI points at"
    )
    convert.set_defaults(handler=cmd_convert_model)

    users = sub.add_parser(
        "registry-users", help="as the MLflow admin: create the read-only and the training user with their permissions"
    )
    users.set_defaults(handler=cmd_registry_users)

    compose_env = sub.add_parser(
        "compose-env",
        help="print a .env for docker compose with strong random secrets",
        description="Print a .env for docker-compose.yaml with a fresh random value for every secret: "
        "(umask 077 && python -m worker compose-env > .env)",
    )
    compose_env.add_argument("--keep", metavar="FILE", help="print FILE as it is, adding only the secrets it lacks")
    compose_env.add_argument(
        "--check", action="store_true", help="check the environment's secrets (set, not a placeholder); exit 2 if not"
    )
    compose_env.set_defaults(handler=cmd_compose_env)

    migrate = sub.add_parser("migrate", help="create or upgrade the database tables")
    migrate.set_defaults(handler=cmd_migrate)

    init = sub.add_parser("init", help="migrate, and register a first model if the registry has none")
    init.add_argument("--rides", type=_positive_int, default=200_000, help="generated rides for a first model")
    init.set_defaults(handler=cmd_init)

    dispatch = sub.add_parser("dispatch", help="enqueue a batch of generated rides")
    dispatch.add_argument("--rides", type=_positive_int, required=True)
    dispatch.add_argument("--seed", type=_seed, help="0 to 2**63-1; the same seed gives the same rides")
    dispatch.add_argument("--wait", action="store_true", help="show progress and the result")
    dispatch.add_argument("--timeout", type=_positive_float, default=600.0, help="seconds --wait waits")
    _world_options(dispatch)
    dispatch.set_defaults(handler=cmd_dispatch)

    backfill = sub.add_parser(
        "backfill",
        help="send the beat slots of a past range, with the ids beat would have used",
        description="Send the beat slots in [--from, --to), each with the batch id beat would have used, one "
        "run_slots message per clock hour of slots (each slot still its own batch): slots already written are "
        "skipped, missed and failed ones are filled. Times are " + TIME_HELP + ".",
    )
    backfill.add_argument("--from", dest="start", required=True, metavar="TIME", help=TIME_HELP)
    backfill.add_argument("--to", dest="end", required=True, metavar="TIME", help="end of the range (not included)")
    backfill.add_argument(
        "--rides", type=_positive_int, help="rides per slot (default: RIDES_PER_BATCH, else Chicago's volume)"
    )
    backfill.add_argument("--wait", action="store_true", help="wait for every slot and print a summary")
    backfill.add_argument("--timeout", type=_positive_float, default=3600.0, help="seconds --wait waits")
    backfill.add_argument("--yes", action="store_true", help=f"allow more than {MAX_BACKFILL_SLOTS} slots")
    backfill.add_argument(
        "--max-queued", type=_positive_int, default=10, help="send only while fewer messages wait in the queue"
    )
    _world_options(backfill)
    backfill.set_defaults(handler=cmd_backfill)

    batches = sub.add_parser("batches", help="the batch history (newest first)")
    batches.add_argument("--last", type=_positive_int, default=20, help="how many batches")
    batches.add_argument("--status", choices=("running", "retrying", "succeeded", "failed", "pruning"))
    batches.add_argument("--since", metavar="TIME", help="batches started at or after TIME (" + TIME_HELP + ")")
    batches.add_argument("--json", action="store_true")
    batches.set_defaults(handler=cmd_batches)

    rerun = sub.add_parser("rerun", help="send a failed (or stuck) batch again, exactly as planned")
    rerun.add_argument("batch_id")
    rerun.add_argument(
        "--repin",
        action="store_true",
        help="a batch pinned to a version the workers refuse or the registry lost: score it with MODEL_URI's version",
    )
    rerun.add_argument("--wait", action="store_true")
    rerun.add_argument("--timeout", type=_positive_float, default=600.0)
    rerun.set_defaults(handler=cmd_rerun)

    prune = sub.add_parser("prune", help="delete batches older than DAYS with all their rows")
    prune.add_argument("--older-than", type=_days, required=True, metavar="DAYS")
    prune.add_argument("--yes", action="store_true", help="delete without asking")
    prune.set_defaults(handler=cmd_prune)

    score = sub.add_parser("score", help="score the rides in a CSV or Parquet file")
    score.add_argument("path")
    score.add_argument("--skip-invalid", action="store_true", help="write the valid rows, report the rest")
    score.add_argument("--wait", action="store_true")
    score.add_argument("--timeout", type=_positive_float, default=600.0)
    score.set_defaults(handler=cmd_score)

    outcomes = sub.add_parser("outcomes", help="load real trip durations (trip_id, trip_seconds) for live accuracy")
    outcomes.add_argument("path", help="CSV or Parquet with trip_id and trip_seconds, as in the city's export")
    outcomes.add_argument("--skip-invalid", action="store_true", help="load the valid rows, report the rest")
    outcomes.set_defaults(handler=cmd_outcomes)

    reference = sub.add_parser(
        "reference", help="log a drift reference for a model version registered without one (training credentials)"
    )
    reference.add_argument("--version", type=_version, required=True, help="the registered version of MODEL_NAME")
    reference.add_argument("--rides", type=_positive_int, default=50_000, help="generated rides it scores")
    reference.add_argument("--replace", action="store_true", help="replace the reference the version has")
    reference.set_defaults(handler=cmd_reference)

    check = sub.add_parser(
        "monitor-check", help="measure false alarms, detection, live MAE and cost of the monitor on simulated days"
    )
    check.add_argument(
        "--days",
        type=_at_most(_positive_float, 30, "a month of simulated batches"),
        default=2.0,
        help="simulated days per world (1/24 to 30)",
    )
    check.add_argument("--seed", type=_seed, default=0, help="0 to 2**63-1")
    check.set_defaults(handler=cmd_monitor_check)

    status = sub.add_parser("status", help="broker, database and registry reachability; last batch")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    report = sub.add_parser(
        "report", help="one self-contained HTML file: batches, predictions, drift, live accuracy, warnings"
    )
    report.add_argument(
        "--since", default="24h", metavar="DURATION", help="how far back: 90m, 6h, 2d, 1w (default 24h)"
    )
    report.add_argument("-o", "--output", metavar="FILE", help="where to write it (default LOCAL_DIR/report.html)")
    report.set_defaults(handler=cmd_report)

    bench = sub.add_parser("bench", help="throughput and latency against the configured broker and database")
    bench.add_argument(
        "--sizes", type=_at_most(_positive_int, 1 << 24, "the largest batch"), nargs="+", default=[1000, 100_000]
    )
    bench.add_argument("--repeat", type=_positive_int, default=3)
    bench.add_argument("--latency-runs", type=_positive_int, default=5)
    bench.add_argument("--no-worker", action="store_true", help="only the in-process stages")
    bench.add_argument(
        "--history",
        type=_at_most(_positive_float, 366, "a year of history"),
        nargs="+",
        metavar="DAYS",
        help="instead: writes and reads on an empty database and on ones holding DAYS of Chicago-volume "
        "history, side by side (throwaway databases on the configured PostgreSQL server)",
    )
    bench.add_argument(
        "--backfill",
        type=_positive_float,
        metavar="DAYS",
        help="instead: DAYS of past slots backfilled through a scoring and a monitoring worker, a message "
        "per slot and an hour per message, side by side (throwaway databases; the broker must be the bench's alone)",
    )
    bench.add_argument(
        "--history-ids",
        choices=("ordered", "random"),
        default="ordered",
        help="the history's trip ids: as the workers write them, or random (a database from before ordered ids)",
    )
    bench.set_defaults(handler=cmd_bench)

    models = sub.add_parser(
        "models",
        help="every model version (held-out and live MAE, use, aliases, loadable); --history, --compare",
        description="Every version of MODEL_NAME, newest first. --history lists the record of alias moves "
        "(model_events); --compare shows the challenger's paired evidence against production on live rides.",
    )
    shown = models.add_mutually_exclusive_group()
    shown.add_argument("--history", action="store_true", help="the model events, newest first")
    shown.add_argument("--compare", action="store_true", help="challenger against production on the same live rides")
    models.add_argument("--last", type=_positive_int, default=50, help="events --history shows")
    models.add_argument("--no-check", action="store_true", help="skip the workers' trust check of each version")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler=cmd_models)
    models_sub = models.add_subparsers(dest="models_command")
    policy = models_sub.add_parser(
        "policy",
        help="the model policy: status (default), pause, resume, or run one pass now",
        description="status: what the policy last did and why, and what it would do now; pause and resume "
        "(resume also clears the halt after its own rollback); run: one pass now, as beat would "
        "(--mode advise or auto overrides MODEL_POLICY for this pass).",
    )
    policy.add_argument("what", nargs="?", choices=("status", "pause", "resume", "run"), default="status")
    policy.add_argument("--reason", help="why, for the record (pause, resume)")
    policy.add_argument("--mode", choices=("advise", "auto"), help="run: this pass's mode")
    policy.add_argument("--json", action="store_true")
    policy.set_defaults(handler=cmd_policy)

    promote = sub.add_parser(
        "promote",
        help="point the production alias at a version (checked first; on the record)",
        description="Refused, with nothing moved: an unknown version, one workers would refuse to load, the "
        "version already serving, a MODEL_URI naming a fixed version or a stage, and (unless --force) a version "
        "whose live paired evidence says it is worse than production. Needs the training credentials.",
    )
    promote.add_argument("version", type=_version)
    promote.add_argument("--reason", required=True, help="why, for the record (model_events)")
    promote.add_argument("--force", action="store_true", help="promote even if live evidence says it is worse")
    promote.set_defaults(handler=cmd_promote)

    rollback = sub.add_parser(
        "rollback",
        help="point the production alias back at the version it served before (from model_events)",
        description="Goes to the version production pointed at before the current one on the record; a second "
        "rollback goes one step further back. Refused when no earlier version is on record.",
    )
    rollback.add_argument("--reason", help="why, for the record")
    rollback.set_defaults(handler=cmd_rollback)

    retrain = sub.add_parser(
        "retrain",
        help="train on the service's own observed rides; the new version becomes the challenger",
        description="Trains on rides in ride_predictions whose true duration (ride_outcomes) became known in the "
        "window, plus rides generated for every hour in the world estimated from them; holds out the most recently "
        "known batches and scores production on the same rides. The new version gets the alias `challenger` "
        "(production only with --promote, when the held-out evidence favours it, or --force).",
    )
    retrain.add_argument("--since", required=True, metavar="DURATION", help="how far back from --until: 90m, 6h, 2d")
    retrain.add_argument("--until", metavar="TIME", help="end of the window (default now; " + TIME_HELP + ")")
    retrain.add_argument(
        "--min-outcomes", type=_positive_int, default=3000, help="refuse with fewer known rides (default 3000)"
    )
    retrain.add_argument("--promote", action="store_true", help="promote if the held-out evidence favours it")
    retrain.add_argument("--force", action="store_true", help="promote whatever the evidence")
    retrain.add_argument(
        "--design",
        choices=("world", "observed", "calibrated"),
        default="world",
        help="training set: observed + estimated world (default), observed only, observed + calibrated",
    )
    retrain.add_argument("--trees", type=_positive_int, default=30)
    retrain.add_argument("--max-depth", type=_positive_int, default=12)
    retrain.add_argument("--min-samples-leaf", type=_positive_int, default=10)
    retrain.set_defaults(handler=cmd_retrain)

    design = sub.add_parser(
        "retrain-check",
        help="measure retrain's training set against the alternatives on simulated hours of a changed world",
    )
    design.add_argument(
        "--hours",
        type=_at_most(_positive_float, 7 * 24, "a week of observed slots"),
        default=3.0,
        help="hours of the changed world observed (at most a week)",
    )
    design.add_argument("--seed", type=_seed, default=0, help="0 to 2**63-1")
    design.set_defaults(handler=cmd_retrain_check)

    lifecycle = sub.add_parser(
        "lifecycle-check",
        help="measure how the model policy recovers from a changed world, on simulated days (no services)",
    )
    lifecycle.add_argument(
        "--scenario",
        action="append",
        choices=("calibrated", "fares", "traffic", "bad", "registry"),
        help="run only these (repeatable); default all",
    )
    lifecycle.add_argument("--seed", type=_seed, default=0, help="0 to 2**63-1")
    lifecycle.set_defaults(handler=cmd_lifecycle_check)

    exporter = sub.add_parser("exporter", help="serve batch, drift, accuracy and worker metrics for Prometheus")
    exporter.add_argument("--port", type=_port, help="default: EXPORTER_PORT")
    exporter.set_defaults(handler=cmd_exporter)

    run = sub.add_parser("run", help="init, then a worker, beat and Flower, and a first batch at once")
    run.add_argument("--first-model-rides", type=_positive_int, default=200_000, help="if the registry has no model")
    run.set_defaults(handler=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.LOG_LEVEL, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact_handlers(logging.getLogger(), settings)
    # Alembic's INFO lines and urllib3's retry warnings would drown the command's own output.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        return handler(args, settings)
    except (DataError, UsageError, BadRequest, PortTaken) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SendBroken as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if is_lifecycle_refusal(exc):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if is_refused(exc):
            print(f"error: {type(exc).__name__}: {redact(str(exc), settings)}", file=sys.stderr)
            return 1
        down = unreachable_cause(exc)
        if down is None:  # a bug to report: its traceback, redacted like every other output
            import traceback

            print(redact("".join(traceback.format_exception(exc)), settings), end="", file=sys.stderr)
            return 1
        # A service is down or refuses: one line, and where to look (masked before it is cut).
        detail = (redact(str(down), settings).strip().splitlines() or [""])[0][:400]
        print(f"error: {type(down).__name__}: {detail} (python -m worker status shows what is down)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
