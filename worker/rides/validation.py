"""Validating rides that users bring (a file, or the `rides` list of score_rides).

Every row is checked before anything is written, and each refused row is
reported with its row number and reasons.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from worker.rides.geography import N_AREAS

REQUIRED = ("pickup_community_area", "dropoff_community_area", "trip_start_timestamp", "fare", "trip_miles")
# Values no meter shows: above them a value is a typo or an overflow (1e39 does not fit the forest's
# float32 and would fail the batch in the worker, after other chunks were written). Far wider than
# training's cleaning rules (worker/rides/cleaning.py): a real ride's odd $700 fare is still scored.
LARGEST_AMOUNT = {"fare": 100_000.0, "trip_miles": 10_000.0, "trip_total": 100_000.0}
# Trip starts a ride can have: pandas' nanosecond times end in 1677 and 2262, and the city's data in 2013.
FIRST_YEAR, LAST_YEAR = 1900, 2199


class BadRequest(ValueError):
    """Arguments or rides that can never succeed; never retried."""


@dataclass
class Validation:
    valid: pd.DataFrame
    errors: list[tuple[int, str]] = field(default_factory=list)  # (1-based row number, reasons)


def _uuid_or_none(value: object) -> str | None:
    try:
        if isinstance(value, bytes | bytearray):  # Parquet's UUID type: 16 bytes
            return uuid.UUID(bytes=bytes(value)).hex if len(value) == 16 else None
        return uuid.UUID(str(value)).hex
    except ValueError:
        return None


def _binary(raw: pd.Series) -> pd.Series:
    return raw.map(lambda v: isinstance(v, bytes | bytearray)).astype(bool)


def refuse_binary(frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """A Parquet binary column holds bytes, which no number, time or area is read from (pandas would
    decode them as UTF-8 on the way and fail): the file is refused naming the column. A trip_id may be
    16 bytes, Parquet's UUID type."""
    for column in columns:
        if column not in frame.columns or frame[column].dtype != object:
            continue
        binary = _binary(frame[column])
        if column == "trip_id":
            binary &= frame[column].map(lambda v: not isinstance(v, bytes | bytearray) or len(v) != 16).astype(bool)
        if binary.any():
            raise BadRequest(
                f"column {column} holds binary data (bytes), not text or numbers"
                + (" (a trip_id may be 16 bytes, a UUID)" if column == "trip_id" else "")
            )


def _blank(raw: pd.Series) -> pd.Series:
    """Missing, or text of spaces only (no other type is read as text: bytes are not decoded here)."""
    return raw.isna() | raw.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)


_OFFSET = r"(?:Z|[+-]\d{2}:?\d{2})$"


def _in_chicago(parsed: pd.Series) -> pd.Series:
    """Naive Chicago time: a value that carried a zone (an offset, or a word such as UTC) is moved to it."""
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        return parsed.dt.tz_convert("America/Chicago").dt.tz_localize(None)
    return parsed


def _one_time(value: str, utc: bool) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT
    if stamp.tz is None and utc:
        stamp = stamp.tz_localize("UTC")
    return stamp.tz_convert("America/Chicago").tz_localize(None) if stamp.tz is not None else stamp


def _parse_times(text: pd.Series, utc: bool) -> pd.Series:
    # At the resolution pandas infers (seconds or microseconds): year 9999 does not fit nanoseconds.
    try:
        return _in_chicago(pd.to_datetime(text, errors="coerce", format="mixed", utc=utc))
    except (ValueError, TypeError, OverflowError):  # e.g. "… UTC" beside naive values: "Mixed timezones"
        return pd.to_datetime(pd.Series([_one_time(v, utc) for v in text], index=text.index, dtype=object))


@dataclass
class ParsedTimes:
    stamps: pd.Series  # naive Chicago-local datetimes; NaT where `problem` says why
    problem: pd.Series  # "" or the reason the value is refused


def parse_chicago_times(raw: pd.Series) -> ParsedTimes:
    """Naive Chicago-local datetimes. Values with a UTC offset or zone (either side of a DST change,
    or mixed with naive ones) are converted to Chicago time; naive values are taken as Chicago time,
    as the city's data writes them, and one the clocks skip in spring is refused. One the clocks repeat
    in autumn is kept as written: it is a local time, as the city's own rows in that hour are (the
    CLI's `cli/times.py` refuses it, because a command's time must name one instant)."""
    text = raw.astype(str).str.strip()
    aware = text.str.contains(_OFFSET, regex=True)
    # The city writes month first (02/13/2014). pandas reads 13/02/2014 day first without a word, and
    # 01/02/2014 month first: a file written day first would be half swapped. Refused instead.
    day_first = text.str.match(r"^(1[3-9]|[23]\d)/\d{1,2}/\d{4}\b")
    # pandas reads "now" and "today" as the moment it parses them: a file's ride is never that.
    dated = raw.notna() & text.str.contains(r"\d", regex=True)
    problem = pd.Series("", index=raw.index, dtype=object)
    out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
    for part, utc in ((dated & ~aware, False), (dated & aware, True)):
        if not part.any():
            continue
        parsed = _parse_times(text[part], utc)
        outside = parsed.notna() & ~parsed.dt.year.between(FIRST_YEAR, LAST_YEAR)
        problem[outside[outside].index] = f"trip_start_timestamp is outside the years {FIRST_YEAR}..{LAST_YEAR}"
        kept = parsed[parsed.notna() & ~outside].astype("datetime64[ns]")
        if not utc:
            skipped = kept.dt.tz_localize(
                "America/Chicago", ambiguous=np.ones(len(kept), dtype=bool), nonexistent="NaT"
            ).isna()
            problem[skipped[skipped].index] = (
                "trip_start_timestamp does not exist in Chicago (the clocks skip that hour); give its UTC offset"
            )
            kept = kept[~skipped]
        out[kept.index] = kept
    out[day_first] = pd.NaT
    problem[day_first] = "trip_start_timestamp reads day first; give month first (MM/DD/YYYY), as the city does"
    problem[out.isna() & problem.eq("")] = "trip_start_timestamp is not a date and time"
    return ParsedTimes(out, problem)


def _numbers(raw: pd.Series) -> pd.Series:
    """`raw` as floats, NaN where it holds no number. true/false (a Parquet column, a JSON ride) is
    none, though pandas reads it as 1 and 0: area 1, or $1; so is a duration or a time (a Parquet
    duration of 1 s would read as 1 mile, or 1 second in nanoseconds)."""
    if pd.api.types.is_timedelta64_dtype(raw) or pd.api.types.is_datetime64_any_dtype(raw):
        return pd.Series(np.nan, index=raw.index, dtype=float)
    value = pd.to_numeric(raw, errors="coerce").astype(float)
    if raw.dtype == object or pd.api.types.is_bool_dtype(raw):
        value[raw.map(type).isin((bool, np.bool_)).to_numpy()] = np.nan
    return value


def validate_rides(frame: pd.DataFrame, first_row: int = 1) -> Validation:
    """Split raw rides into valid, normalised rows and (row number, reasons) for the rest."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise BadRequest(f"missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}")
    refuse_binary(frame, (*REQUIRED, "trip_total", "trip_id"))
    frame = frame.reset_index(drop=True)
    n = len(frame)
    problems = [[] for _ in range(n)]

    def flag(mask: np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(mask):
            problems[i].append(reason)

    out = pd.DataFrame(index=frame.index)
    for column in ("pickup_community_area", "dropoff_community_area"):
        raw = frame[column]
        area = _numbers(raw)
        blank = _blank(raw)
        flag((~blank & area.isna()).to_numpy(), f"{column} is not a number")
        flag((area.notna() & ~area.between(1, N_AREAS)).to_numpy(), f"{column} outside 1..{N_AREAS}")
        flag((area.notna() & (area != area.round())).to_numpy(), f"{column} is not a whole number")
        usable = area.where(area.between(1, N_AREAS) & (area == area.round()))  # bad rows are dropped anyway
        out[column] = usable.astype("Int64")
    times = parse_chicago_times(frame["trip_start_timestamp"])
    for reason in times.problem[times.problem.ne("")].unique():
        flag(times.problem.eq(reason).to_numpy(), reason)
    out["trip_start_timestamp"] = times.stamps
    for column, required in (("fare", True), ("trip_miles", True), ("trip_total", False)):
        if column not in frame.columns:
            out[column] = np.nan
            continue
        raw = frame[column]
        value = _numbers(raw)
        blank = _blank(raw)
        if required:
            flag(blank.to_numpy(), f"{column} is missing")
        flag((~blank & value.isna()).to_numpy(), f"{column} is not a number")
        flag((value < 0).to_numpy(), f"{column} is negative")
        flag((~np.isfinite(value.fillna(0))).to_numpy(), f"{column} is not finite")
        largest = LARGEST_AMOUNT[column]
        flag((np.isfinite(value) & (value > largest)).to_numpy(), f"{column} is over {largest:,.0f}")
        out[column] = value.astype(float)
    if "trip_id" in frame.columns:
        ids = frame["trip_id"].map(_uuid_or_none).where(~_blank(frame["trip_id"]), None)
        given = ~_blank(frame["trip_id"])
        flag((given & ids.isna()).to_numpy(), "trip_id is not a UUID")
        flag((ids.notna() & ids.duplicated(keep=False)).to_numpy(), "trip_id appears twice")
        out["trip_id"] = ids
    else:
        out["trip_id"] = None

    bad = np.array([bool(p) for p in problems], dtype=bool)  # dtype: an empty chunk is float64 otherwise
    errors = [(first_row + int(i), "; ".join(problems[i])) for i in np.flatnonzero(bad)]
    return Validation(out[~bad], errors)  # index = row position in `frame`


OUTCOME_REQUIRED = ("trip_id", "trip_seconds")
MAX_OUTCOME_SECONDS = 24 * 3600  # a taxi trip of more than a day is a broken meter, not an outcome


def validate_outcomes(frame: pd.DataFrame, first_row: int = 1) -> Validation:
    """Real outcomes as the city's export spells them (trip_id, trip_seconds): valid rows get
    `actual_duration` in minutes; the rest get (row number, reasons)."""
    missing = [c for c in OUTCOME_REQUIRED if c not in frame.columns]
    if missing:
        raise BadRequest(f"missing column(s) {', '.join(missing)}; required: {', '.join(OUTCOME_REQUIRED)}")
    refuse_binary(frame, OUTCOME_REQUIRED)
    frame = frame.reset_index(drop=True)
    problems: list[list[str]] = [[] for _ in range(len(frame))]

    def flag(mask: np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(mask):
            problems[i].append(reason)

    raw_ids = frame["trip_id"]
    blank_id = _blank(raw_ids)
    ids = raw_ids.map(_uuid_or_none).where(~blank_id, None)
    flag(blank_id.to_numpy(), "trip_id is missing")
    flag((~blank_id & ids.isna()).to_numpy(), "trip_id is not a UUID")
    flag((ids.notna() & ids.duplicated(keep=False)).to_numpy(), "trip_id appears twice")
    raw = frame["trip_seconds"]
    blank = _blank(raw)
    seconds = _numbers(raw)  # true/false or a duration is no count of seconds
    flag(blank.to_numpy(), "trip_seconds is missing")
    flag((~blank & seconds.isna()).to_numpy(), "trip_seconds is not a number")
    flag((seconds < 0).to_numpy(), "trip_seconds is negative")
    flag((seconds == 0).to_numpy(), "trip_seconds is 0 (no duration recorded)")
    flag((seconds > MAX_OUTCOME_SECONDS).to_numpy(), f"trip_seconds is over {MAX_OUTCOME_SECONDS} (a day)")
    flag((~np.isfinite(seconds.fillna(0))).to_numpy(), "trip_seconds is not finite")
    bad = np.array([bool(p) for p in problems], dtype=bool)
    out = pd.DataFrame({"trip_id": ids, "actual_duration": seconds / 60.0})
    errors = [(first_row + int(i), "; ".join(problems[i])) for i in np.flatnonzero(bad)]
    return Validation(out[~bad], errors)


def to_records(frame: pd.DataFrame) -> list[dict]:
    """Valid rides as JSON-safe dicts (the `rides` argument of score_rides)."""
    out = frame.copy()
    out["trip_start_timestamp"] = out["trip_start_timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    out = out.astype(object).where(out.notna(), None)
    return out.to_dict("records")


def records_to_frame(rides: object) -> pd.DataFrame:
    if not isinstance(rides, list) or not rides:
        raise BadRequest("rides must be a non-empty list of ride objects")
    if not all(isinstance(r, dict) for r in rides):
        raise BadRequest("every ride must be an object with the raw columns")
    return pd.DataFrame.from_records(rides)
