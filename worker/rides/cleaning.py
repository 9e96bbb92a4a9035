"""Loading a real Chicago Taxi Trips export and cleaning its known defects.

The rules are the documented contract for `train --data` and for the quality
figures in the README; a row is dropped, never repaired, so that what is left
is data the city actually recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REQUIRED_COLUMNS = (
    "trip_start_timestamp",
    "trip_seconds",
    "trip_miles",
    "pickup_community_area",
    "dropoff_community_area",
    "fare",
)

MIN_SECONDS, MAX_SECONDS = 60, 3 * 3600
MAX_MILES = 100.0
MIN_FARE, MAX_FARE = 3.25, 500.0  # below the flag pull no meter ran; above is a typo
MIN_SPEED_MPH, MAX_SPEED_MPH = 0.5, 70.0

CLEANING_RULES: tuple[tuple[str, str], ...] = (
    ("unparseable", "timestamp, seconds, miles or fare missing or not a number"),
    ("missing_area", "pickup or dropoff community area missing or outside 1..77"),
    ("seconds_out_of_range", f"trip_seconds below {MIN_SECONDS} or above {MAX_SECONDS}"),
    ("miles_out_of_range", f"trip_miles 0 (distance not recorded) or above {MAX_MILES:g}"),
    ("fare_out_of_range", f"fare below the ${MIN_FARE} flag pull or above ${MAX_FARE:g}"),
    ("speed_out_of_range", f"average speed below {MIN_SPEED_MPH} or above {MAX_SPEED_MPH:g} mph"),
)


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class CleaningReport:
    rows_read: int
    rows_kept: int
    dropped: dict[str, int]


def readable_file(path: str | Path) -> tuple[Path, str]:
    """The path and its kind ("csv" or "parquet"), or a DataError naming why it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a CSV or Parquet file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return path, "parquet"
    if suffix in (".csv", ".txt", ""):
        return path, "csv"
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, turning every way it can be unusable into a DataError."""
    path, kind = readable_file(path)
    try:
        frame = pd.read_parquet(path) if kind == "parquet" else pd.read_csv(path, low_memory=False)
    except DataError:
        raise
    except Exception as exc:  # pandas raises many types for unreadable files
        raise DataError(f"{path}: cannot be read as {kind}: {exc}") from exc
    if frame.empty:
        raise DataError(f"{path}: has a header but no rows")
    return frame


def require_columns(frame: pd.DataFrame, required: tuple[str, ...], source: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}")


def clean_trips(frame: pd.DataFrame, source: str = "data") -> tuple[pd.DataFrame, CleaningReport]:
    """Apply CLEANING_RULES in order; returns the kept rows with a `trip_minutes` target."""
    require_columns(frame, REQUIRED_COLUMNS, source)
    out = pd.DataFrame(
        {
            "trip_start_timestamp": pd.to_datetime(frame["trip_start_timestamp"], errors="coerce"),
            "trip_seconds": pd.to_numeric(frame["trip_seconds"], errors="coerce"),
            "trip_miles": pd.to_numeric(frame["trip_miles"], errors="coerce"),
            "pickup_community_area": pd.to_numeric(frame["pickup_community_area"], errors="coerce"),
            "dropoff_community_area": pd.to_numeric(frame["dropoff_community_area"], errors="coerce"),
            "fare": pd.to_numeric(frame["fare"], errors="coerce"),
        }
    )
    if "tips" in frame.columns:
        tips = pd.to_numeric(frame["tips"], errors="coerce").fillna(0.0)
    else:
        tips = pd.Series(0.0, index=frame.index)
    if "trip_total" in frame.columns:
        out["trip_total"] = pd.to_numeric(frame["trip_total"], errors="coerce")
    else:
        # The sample has no trip_total; fare + tips is the part of it that was recorded.
        out["trip_total"] = out["fare"] + tips
    for extra in ("payment_type", "tips"):
        if extra in frame.columns:
            out[extra] = frame[extra]

    speed = out["trip_miles"] / (out["trip_seconds"] / 3600.0)
    checks = {
        "unparseable": out[["trip_start_timestamp", "trip_seconds", "trip_miles", "fare"]].isna().any(axis=1),
        "missing_area": ~(out["pickup_community_area"].between(1, 77) & out["dropoff_community_area"].between(1, 77)),
        "seconds_out_of_range": ~out["trip_seconds"].between(MIN_SECONDS, MAX_SECONDS),
        "miles_out_of_range": ~((out["trip_miles"] > 0) & (out["trip_miles"] <= MAX_MILES)),
        "fare_out_of_range": ~out["fare"].between(MIN_FARE, MAX_FARE),
        "speed_out_of_range": ~speed.between(MIN_SPEED_MPH, MAX_SPEED_MPH),
    }
    keep = pd.Series(True, index=out.index)
    dropped: dict[str, int] = {}
    for name, bad in checks.items():
        hit = keep & bad
        dropped[name] = int(hit.sum())
        keep &= ~bad
    kept = out[keep].copy()
    kept["pickup_community_area"] = kept["pickup_community_area"].astype("int64")
    kept["dropoff_community_area"] = kept["dropoff_community_area"].astype("int64")
    kept["trip_minutes"] = kept["trip_seconds"] / 60.0
    report = CleaningReport(rows_read=len(frame), rows_kept=len(kept), dropped=dropped)
    if kept.empty:
        reasons = ", ".join(f"{k}={v}" for k, v in dropped.items() if v)
        raise DataError(f"{source}: no usable rows after cleaning ({report.rows_read} read; dropped {reasons})")
    return kept.reset_index(drop=True), report


def load_real_trips(path: str | Path) -> tuple[pd.DataFrame, CleaningReport]:
    return clean_trips(read_table(path), source=str(path))
