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

from worker.cleaning import DataError
from worker.settings import Settings, SettingsError, get_settings

log = logging.getLogger("worker")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from worker.training import ForestParams, train_and_register

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
    from worker.evaluation import evaluate_production

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
    from worker.calibration import CALIBRATION_PATH, calibrate

    params = calibrate(args.data)
    print(f"fitted {CALIBRATION_PATH} from {params['source_rows']} cleaned trips ({args.data})")
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.LOG_LEVEL, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        return handler(args, settings)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
