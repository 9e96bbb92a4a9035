"""Validating rides that users bring (a file, or the `rides` list of score_rides).

Every row is checked before anything is written, and each refused row is
reported with its row number and reasons. Files are read in bounded chunks
so a huge file never sits in memory whole.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from worker.cleaning import DataError, readable_file
from worker.geography import N_AREAS

REQUIRED = ("pickup_community_area", "dropoff_community_area", "trip_start_timestamp", "fare", "trip_miles")
READ_CHUNK_ROWS = 50_000
# A ride is ~130 bytes of CSV. pandas holds a whole line in memory before it can split it, so a
# file of one giant line (a 300 MB field passes the file-size check) would sit in memory entire,
# several times over; such a line is refused as soon as it passes this length.
MAX_LINE_BYTES = 1 << 16


class BadRequest(ValueError):
    """Arguments or rides that can never succeed; never retried."""


@dataclass
class Validation:
    valid: pd.DataFrame
    errors: list[tuple[int, str]] = field(default_factory=list)  # (1-based row number, reasons)


def _uuid_or_none(value: object) -> str | None:
    try:
        return uuid.UUID(str(value)).hex
    except ValueError:
        return None


_OFFSET = r"(?:Z|[+-]\d{2}:?\d{2})$"


def parse_chicago_times(raw: pd.Series) -> pd.Series:
    """Naive Chicago-local datetimes. Values with a UTC offset (either side of a DST change, or
    mixed with naive ones) are converted to Chicago time; naive values are taken as Chicago time."""
    text = raw.astype(str).str.strip()
    aware = text.str.contains(_OFFSET, regex=True)
    out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
    if (~aware).any():
        out[~aware] = pd.to_datetime(text[~aware], errors="coerce", format="mixed")
    if aware.any():
        utc = pd.to_datetime(text[aware], errors="coerce", format="mixed", utc=True)
        out[aware] = utc.dt.tz_convert("America/Chicago").dt.tz_localize(None)
    return out


def validate_rides(frame: pd.DataFrame, first_row: int = 1) -> Validation:
    """Split raw rides into valid, normalised rows and (row number, reasons) for the rest."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise BadRequest(f"missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}")
    frame = frame.reset_index(drop=True)
    n = len(frame)
    problems = [[] for _ in range(n)]

    def flag(mask: np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(mask):
            problems[i].append(reason)

    out = pd.DataFrame(index=frame.index)
    for column in ("pickup_community_area", "dropoff_community_area"):
        raw = frame[column]
        area = pd.to_numeric(raw, errors="coerce")
        blank = raw.isna() | raw.astype(str).str.strip().eq("")
        flag((~blank & area.isna()).to_numpy(), f"{column} is not a number")
        flag((area.notna() & ~area.between(1, N_AREAS)).to_numpy(), f"{column} outside 1..{N_AREAS}")
        flag((area.notna() & (area != area.round())).to_numpy(), f"{column} is not a whole number")
        usable = area.where(area.between(1, N_AREAS) & (area == area.round()))  # bad rows are dropped anyway
        out[column] = usable.astype("Int64")
    raw_ts = frame["trip_start_timestamp"]
    stamps = parse_chicago_times(raw_ts)
    flag(
        (stamps.isna() & raw_ts.notna()).to_numpy() | raw_ts.isna().to_numpy(),
        "trip_start_timestamp is not a date and time",
    )
    out["trip_start_timestamp"] = stamps
    for column, required in (("fare", True), ("trip_miles", True), ("trip_total", False)):
        if column not in frame.columns:
            out[column] = np.nan
            continue
        raw = frame[column]
        value = pd.to_numeric(raw, errors="coerce")
        blank = raw.isna() | raw.astype(str).str.strip().eq("")
        if required:
            flag(blank.to_numpy(), f"{column} is missing")
        flag((~blank & value.isna()).to_numpy(), f"{column} is not a number")
        flag((value < 0).to_numpy(), f"{column} is negative")
        flag((~np.isfinite(value.fillna(0))).to_numpy(), f"{column} is not finite")
        out[column] = value.astype(float)
    if "trip_id" in frame.columns:
        ids = frame["trip_id"].map(lambda v: None if pd.isna(v) or str(v).strip() == "" else _uuid_or_none(v))
        given = frame["trip_id"].notna() & frame["trip_id"].astype(str).str.strip().ne("")
        flag((given & ids.isna()).to_numpy(), "trip_id is not a UUID")
        flag((ids.notna() & ids.duplicated(keep=False)).to_numpy(), "trip_id appears twice")
        out["trip_id"] = ids
    else:
        out["trip_id"] = None

    bad = np.array([bool(p) for p in problems], dtype=bool)  # dtype: an empty chunk is float64 otherwise
    errors = [(first_row + int(i), "; ".join(problems[i])) for i in np.flatnonzero(bad)]
    return Validation(out[~bad], errors)  # index = row position in `frame`


class _LineBoundedFile:
    """A binary file for pandas' CSV reader that refuses any line longer than MAX_LINE_BYTES."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self._handle = handle
        self._path = path
        self._line = 1  # the line the next byte belongs to (the header is line 1)
        self._open = 0  # bytes of that line already read

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size if size and size > 0 else 1 << 18)
        lengths = [len(part) for part in data.split(b"\n")]
        lengths[0] += self._open
        for offset, length in enumerate(lengths):
            if length > MAX_LINE_BYTES:
                raise DataError(
                    f"{self._path}: line {self._line + offset} is longer than {MAX_LINE_BYTES} bytes; "
                    "a ride is one short line of CSV"
                )
        self._line += len(lengths) - 1
        self._open = lengths[-1]
        return data

    def __iter__(self) -> Iterator[bytes]:  # pandas takes only objects with read and __iter__ for files
        return iter(self.read, b"")


def iter_file(path: str | Path, rows_per_chunk: int = READ_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """The file's rows in chunks of at most `rows_per_chunk`, as strings, so validation sees them raw."""
    path, kind = readable_file(path)
    try:
        if kind == "parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows_per_chunk):
                yield batch.to_pandas()
        else:
            with open(path, "rb") as handle:
                bounded = _LineBoundedFile(handle, path)
                yield from pd.read_csv(bounded, dtype=str, keep_default_na=False, chunksize=rows_per_chunk)
    except (DataError, BadRequest):
        raise
    except Exception as exc:  # parser errors come in many types
        raise DataError(f"{path}: cannot be read: {exc}") from exc


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
