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

from worker.cli.backfill import MAX_SLOTS as MAX_BACKFILL_SLOTS
from worker.cli.errors import PortTaken, UsageError
from worker.cli.times import TIME_HELP
from worker.logs import redact_handlers
from worker.rides.cleaning import DataError
from worker.rides.generator import FACTOR_RANGE
from worker.rides.validation import BadRequest
from worker.settings import Settings, SettingsError, get_settings, redact

# Errors that mean a service is down or refusing, by class path, so that catching them does not
# import mlflow or SQLAlchemy into commands that never use them.
UNREACHABLE = {
    "kombu.exceptions.OperationalError",
    "mlflow.exceptions.MlflowException",
    "sqlalchemy.exc.DBAPIError",
    "worker.model.registry.ModelUnavailable",
    "worker.store.database.SchemaMissing",
    "builtins.ConnectionError",
    "builtins.TimeoutError",
}


def is_unreachable(exc: BaseException) -> bool:
    return any(f"{k.__module__}.{k.__qualname__}" in UNREACHABLE for k in type(exc).__mro__)


# A model version that is refused for good (unsafe or foreign artifact), or a conversion that did
# not check out: one line naming the version and the way forward, not a traceback.
REFUSED = {"worker.model.trust.ModelRefused", "worker.model.conversion.ConversionMismatch"}


def is_refused(exc: BaseException) -> bool:
    return any(f"{k.__module__}.{k.__qualname__}" in REFUSED for k in type(exc).__mro__)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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


def _factor(text: str) -> float:
    low, high = FACTOR_RANGE
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, got {text}")
    return value


def _world_options(parser: argparse.ArgumentParser) -> None:
    low, high = FACTOR_RANGE
    parser.add_argument(
        "--speed-factor",
        type=_factor,
        default=1.0,
        metavar="F",
        help=f"a world that changed: every generated speed x F ({low:g}..{high:g}; 0.7 = heavy traffic)",
    )
    parser.add_argument(
        "--fare-factor",
        type=_factor,
        default=1.0,
        metavar="F",
        help=f"a world that changed: meter rates x F ({low:g}..{high:g}; 1.25 = a 25%% fare increase)",
    )


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from worker.model.training import ForestParams, train_and_register

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


def cmd_convert_model(args: argparse.Namespace, settings: Settings) -> int:
    from worker.model.conversion import convert_to_skops

    print(
        "reading the pickle version once in this process (it runs the pickle's code: convert only "
        "versions you trust), then registering it again as skops"
    )
    result = convert_to_skops(settings, args.version)
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
    from worker.cli.dispatching import dispatch_batch, wait_for_batch

    check_request_size(args.rides, settings)
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
    from worker.cli.rerun import rerun_batch
    from worker.store.database import ensure_schema, get_engine

    engine = get_engine(settings.database_url)
    ensure_schema(engine)
    batch_id = rerun_batch(settings, engine, args.batch_id)
    print(f"batch {batch_id} sent again")
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
        )
        if not found["batch_runs"]:
            return 0
        if not sys.stdin.isatty() or input("delete them? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted (add --yes to delete without asking)")
            return 0
    removed = prune(engine, args.older_than, now)
    print("deleted " + (", ".join(f"{n} {table}" for table, n in removed.items()) if removed else "nothing"))
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
    for line in refresh_quality(settings, engine, load.batches):
        print(line)
    return 0


def cmd_reference(args: argparse.Namespace, settings: Settings) -> int:
    from worker.model.training import add_reference

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

    outcome = dispatch_file(settings, args.path, skip_invalid=args.skip_invalid)
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
                if k not in ("ok", "last_batch", "missed_slots_24h", "fill_command", "schema_problem")
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
            print("no finished batch yet")
        missed = report["database"].get("missed_slots_24h") or []
        if missed:
            shown = ", ".join(missed[:5]) + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
            print(f"missed slots in the last 24 h: {len(missed)} ({shown})")
            print(f"  fill them: {report['database']['fill_command']}")
        elif report["database"]["ok"]:
            print("missed slots in the last 24 h: none")
        for line in _monitoring_lines(report["monitoring"]):
            print(line)
    return 0 if report["ok"] else 1


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
    day = part.get("daily")
    if day is not None and day["heldout_mae"] is not None:
        lines.append(
            f"day {day['day']}: MAE {day['mae']:.2f} min, v{day['model_version']} promised {day['heldout_mae']:.2f} "
            f"(always-the-median {day['baseline_mae']:.2f})"
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


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.bench import run_bench

    run_bench(settings, args.sizes, args.repeat, args.latency_runs, with_worker=not args.no_worker)
    return 0


def cmd_exporter(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.exporter import serve

    return serve(settings, port=args.port)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.launcher import run_everything

    return run_everything(settings, first_model_rides=args.first_model_rides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description="Chicago taxi trip-duration batches.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model, register it, promote it if not worse")
    train.add_argument("--data", help="a real Chicago Taxi Trips export (CSV or Parquet); default: generated rides")
    train.add_argument("--rides", type=_positive_int, default=200_000, help="generated rides to train on")
    train.add_argument("--seed", type=int, default=42)
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
    convert.add_argument("--version", help="the version to convert; default: the one MODEL_URI points at")
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
        description="Send one run_batch per beat slot in [--from, --to), as beat would have sent it: "
        "slots already written are skipped, missed ones are filled. Times are " + TIME_HELP + ".",
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
    batches.add_argument("--status", choices=("running", "retrying", "succeeded", "failed"))
    batches.add_argument("--since", metavar="TIME", help="batches started at or after TIME (" + TIME_HELP + ")")
    batches.add_argument("--json", action="store_true")
    batches.set_defaults(handler=cmd_batches)

    rerun = sub.add_parser("rerun", help="send a failed (or stuck) batch again, exactly as planned")
    rerun.add_argument("batch_id")
    rerun.add_argument("--wait", action="store_true")
    rerun.add_argument("--timeout", type=_positive_float, default=600.0)
    rerun.set_defaults(handler=cmd_rerun)

    prune = sub.add_parser("prune", help="delete batches older than DAYS with all their rows")
    prune.add_argument("--older-than", type=_positive_float, required=True, metavar="DAYS")
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
    reference.add_argument("--version", required=True, help="the registered version of MODEL_NAME")
    reference.add_argument("--rides", type=_positive_int, default=50_000, help="generated rides it scores")
    reference.set_defaults(handler=cmd_reference)

    check = sub.add_parser(
        "monitor-check", help="measure false alarms, detection, live MAE and cost of the monitor on simulated days"
    )
    check.add_argument("--days", type=_positive_float, default=2.0, help="simulated days per world (at least 1/24)")
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
    bench.add_argument("--sizes", type=_positive_int, nargs="+", default=[1000, 100_000])
    bench.add_argument("--repeat", type=_positive_int, default=3)
    bench.add_argument("--latency-runs", type=_positive_int, default=5)
    bench.add_argument("--no-worker", action="store_true", help="only the in-process stages")
    bench.set_defaults(handler=cmd_bench)

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
    except Exception as exc:
        if is_refused(exc):
            print(f"error: {type(exc).__name__}: {redact(str(exc), settings)}", file=sys.stderr)
            return 1
        if not is_unreachable(exc):
            raise
        # A service is down or refuses: one line, and where to look.
        detail = redact((str(exc).strip().splitlines() or [""])[0][:400], settings)
        print(f"error: {type(exc).__name__}: {detail} (python -m worker status shows what is down)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
