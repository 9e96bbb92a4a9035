"""Numbers the ride generator draws from, fitted once from real trips.

`python -m worker calibrate --data PATH` refits them from a Chicago Taxi Trips
export and rewrites `calibration.json`; the committed file was fitted from the
shared 2013-2014 sample. Only these summary tables are committed, never trips.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from worker.rides.cleaning import DataError, clean_trips, read_table
from worker.rides.geography import N_AREAS, centroid_distance_miles
from worker.rides.meter import FLAG_PULL, PER_MILE, PER_MINUTE

CALIBRATION_PATH = Path(__file__).with_name("calibration.json")
# Demand by hour of the week and the area-to-area routes are fitted per cell: fewer trips than this
# leave most hours empty (the shipped calibration came from about 6,000 cleaned trips).
MIN_CALIBRATION_TRIPS = 2_000

# Speed (mph) at which a taxi is assumed to crawl while the meter charges time.
CRAWL_SPEED_MPH = 3.0
# A row whose fare exceeds distance-plus-time pricing by this factor recorded too few miles.
UNDER_RECORDED_PHI = 1.05


def waiting_share(frame: pd.DataFrame) -> pd.Series:
    """Share of a trip's minutes the meter charged as waiting time (phi), implied by its fare.

    Solves fare = flag + PER_MILE * (miles - crawl * phi * t) + PER_MINUTE * phi * t for phi.
    """
    minutes = frame["trip_minutes"]
    crawl_per_minute = CRAWL_SPEED_MPH / 60.0
    excess = frame["fare"] - FLAG_PULL - PER_MILE * frame["trip_miles"]
    return excess / (minutes * (PER_MINUTE - PER_MILE * crawl_per_minute))


def _quantiles(values: pd.Series, qs: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in np.quantile(values, qs)]


def fit(trips: pd.DataFrame) -> dict[str, Any]:
    """Fit every generator parameter from cleaned trips (see cleaning.clean_trips)."""
    t = trips.copy()
    t["phi"] = waiting_share(t)
    t["speed"] = t["trip_miles"] / (t["trip_minutes"] / 60.0)
    consistent = t[t["phi"] <= UNDER_RECORDED_PHI]
    ts = t["trip_start_timestamp"]

    pickup_counts = np.bincount(t["pickup_community_area"], minlength=N_AREAS + 1)[1:]
    od = t.groupby(["pickup_community_area", "dropoff_community_area"]).size()
    hour_of_week = np.bincount(ts.dt.day_of_week * 24 + ts.dt.hour, minlength=168)

    same = consistent["pickup_community_area"] == consistent["dropoff_community_area"]
    intra = np.log(consistent.loc[same, "trip_miles"])
    inter = consistent[~same]
    cd = centroid_distance_miles(inter["pickup_community_area"], inter["dropoff_community_area"])
    log_ratio = np.log(inter["trip_miles"].to_numpy() / cd)
    circuity = np.polyfit(np.log(cd), log_ratio, 1)
    circuity_sigma = float(np.std(log_ratio - np.polyval(circuity, np.log(cd))))

    hours = consistent["trip_start_timestamp"].dt.hour.to_numpy()
    log_miles = np.log(consistent["trip_miles"].to_numpy())
    design = np.column_stack([log_miles] + [(hours == h).astype(float) for h in range(24)])
    log_speed = np.log(consistent["speed"].to_numpy())
    coef, *_ = np.linalg.lstsq(design, log_speed, rcond=None)
    speed_sigma = float(np.std(log_speed - design @ coef))

    inside = consistent[(consistent["phi"] > 0.02) & (consistent["phi"] < 0.98)]
    phi = inside["phi"].to_numpy()
    logit = np.log(phi / (1 - phi))
    meter_coef = np.polyfit(np.log(inside["speed"]), logit, 1)
    meter_sigma = float(np.std(logit - np.polyval(meter_coef, np.log(inside["speed"]))))

    under = t[t["phi"] > UNDER_RECORDED_PHI]
    # How much of the true distance an under-recording meter kept: true miles from the fare
    # at the trip's own speed are unknown, so use the ratio to the distance-only fare.
    kept_share = (under["trip_miles"] * PER_MILE / (under["fare"] - FLAG_PULL)).clip(0.01, 1.0)

    payment = t["payment_type"].fillna("Unknown") if "payment_type" in t else pd.Series(["Cash"] * len(t))
    payment_share = payment.value_counts(normalize=True)
    payment_share = payment_share[payment_share >= 0.001]
    tips = t["tips"].fillna(0.0) if "tips" in t else pd.Series(0.0, index=t.index)
    tipped_by_payment = {str(kind): round(float((tips[payment == kind] > 0).mean()), 4) for kind in payment_share.index}
    card = (payment == "Credit Card") & (tips > 0)
    qs = np.linspace(0.05, 0.95, 19)

    return {
        "source_rows": len(trips),
        "years": sorted({int(y) for y in ts.dt.year.unique()}),
        "pickup_counts": pickup_counts.tolist(),
        "od_counts": [[int(p), int(d), int(n)] for (p, d), n in od.items()],
        "hour_of_week_counts": hour_of_week.tolist(),
        "intra_area_log_miles": [round(float(intra.mean()), 4), round(float(intra.std()), 4)],
        "circuity_log_ratio": [round(float(c), 4) for c in circuity] + [round(circuity_sigma, 4)],
        "speed_log_miles_slope": round(float(coef[0]), 4),
        "speed_hour_intercepts": [round(float(c), 4) for c in coef[1:]],
        "speed_sigma": round(speed_sigma, 4),
        "crawl_speed_mph": CRAWL_SPEED_MPH,
        "waiting_logit_vs_log_speed": [round(float(c), 4) for c in meter_coef] + [round(meter_sigma, 4)],
        "under_recorded_share": round(len(under) / len(t), 4),
        "under_recorded_kept_quantiles": _quantiles(kept_share, qs),
        "payment_share": {str(k): round(float(v), 4) for k, v in payment_share.items()},
        "tipped_share_by_payment": tipped_by_payment,
        "card_tip_pct_quantiles": _quantiles(tips[card] / t.loc[card, "fare"], qs),
        "quantile_levels": [round(float(q), 4) for q in qs],
    }


def calibrate(path: str | Path, out: Path = CALIBRATION_PATH) -> dict[str, Any]:
    trips, _ = clean_trips(read_table(path), source=str(path))
    if len(trips) < MIN_CALIBRATION_TRIPS:
        raise DataError(
            f"{path}: {len(trips):,} trips left after cleaning; calibrating needs at least {MIN_CALIBRATION_TRIPS:,} "
            f"({out.name} was not changed)"
        )
    params = fit(trips)
    out.write_text(json.dumps(params, indent=1) + "\n")
    load_calibration.cache_clear()
    return params


@lru_cache(maxsize=1)
def load_calibration() -> dict[str, Any]:
    return json.loads(CALIBRATION_PATH.read_text())
