"""`python -m worker monitor-check`: the monitor's trial on simulated days, with the production
version and its reference, printed as the table the README shows."""

from __future__ import annotations

import time
from datetime import datetime

from worker.model.reference import ReferenceCache
from worker.model.registry import configure_mlflow, load_version, resolve_version
from worker.monitor.trial import monitoring_cost, simulate
from worker.rides.generator import RIDE_COLUMNS, World
from worker.settings import Settings

WORLDS = (("calibrated", World()), ("fare x1.25", World(1.0, 1.25)), ("speed x0.7", World(0.7, 1.0)))


def run_trial(settings: Settings, days: float, seed: int) -> None:
    client = configure_mlflow(settings)
    name, version = resolve_version(client, settings.model_uri)
    cache = ReferenceCache(lambda: client)
    reference = cache.get(name, version, time.monotonic())
    if reference is None:
        raise SystemExit(
            f"error: {name} version {version} has no reference; run `python -m worker reference --version {version}`"
        )
    model = load_version(name, version)
    heldout = cache.heldout_mae(name, version)

    def predict(rides):
        return model.predict(rides[list(RIDE_COLUMNS)])

    start = datetime(2026, 11, 16)  # a Monday: the days run Monday onwards
    print(f"model {name} v{version}, held-out MAE {heldout if heldout is not None else float('nan'):.3f} min")
    print(f"{days:g} simulated days of 5-minute slots at Chicago's volume per world (seed {seed})")
    print(
        f"  {'world':12} {'slots':>6} {'flagged':>8} {'hours':>6} {'flagged':>8} {'pred. drift':>11} "
        f"{'live MAE':>9} {'vs held-out':>11}"
    )
    for label, world in WORLDS:
        started = time.perf_counter()
        r = simulate(predict, reference, world, start, days, seed)
        ratio = f"{(r.mae / heldout - 1) * 100:+.1f} %" if heldout else "n/a"
        print(
            f"  {label:12} {r.slots:>6} {r.slot_share:>8.1%} {r.hours:>6} {r.hour_share:>8.1%} "
            f"{r.hours_prediction_drift / r.hours:>11.1%} {r.mae:>9.3f} {ratio:>11}"
            f"   ({time.perf_counter() - started:.0f} s; hour columns drifted: {r.column_flags})"
        )
    cost = monitoring_cost(predict, reference)
    print(f"monitoring a 2,000-ride batch (summary + drift tests): {cost * 1000:.0f} ms")
