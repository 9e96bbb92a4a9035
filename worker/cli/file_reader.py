"""Reading a user's CSV or Parquet file in bounded chunks and checking it whole, for `score`
(rides) and `outcomes` (true durations).

A huge file never sits in memory whole: rows come in chunks, and a CSV line
longer than a ride could be is refused as soon as it passes that length.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow.parquet as pq

from worker.cli.errors import UsageError
from worker.rides.cleaning import DataError, readable_file
from worker.rides.validation import BadRequest, Validation

READ_CHUNK_ROWS = 50_000
MAX_ERRORS_SHOWN = 20
MAX_BYTES_PER_ROW = 400  # a ride with all raw columns and a trip_id is ~130 bytes of CSV
# A ride is ~130 bytes of CSV. pandas holds a whole line in memory before it can split it, so a
# file of one giant line (a 300 MB field passes the file-size check) would sit in memory entire,
# several times over; such a line is refused as soon as it passes this length.
MAX_LINE_BYTES = 1 << 16
_EXTRA_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
EXTRA = " (a comma too many, or a field with a comma that needs quotes)"


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


def _header(path: Path, kind: str) -> list[str]:
    """The file's column names as written (pandas renames a repeated one to `fare.1`)."""
    if kind == "parquet":
        return pq.ParquetFile(path).schema_arrow.names
    with open(path, "rb") as handle:  # the first line only, bounded: a giant one is refused while reading
        first = handle.read(MAX_LINE_BYTES + 1).split(b"\n", 1)[0]
    return next(csv.reader([first.decode("utf-8-sig", errors="replace")]), [])  # as pandas names them


def _refuse_repeated_columns(path: Path, names: list[str]) -> None:
    seen: set[str] = set()
    for name in filter(None, names):  # empty names (a header ending in ",,") are pandas' "Unnamed: 5", "Unnamed: 6"
        if name in seen:
            raise DataError(f"{path}: column {name!r} appears twice in the header; which one to read is not clear")
        seen.add(name)


def _csv_chunks(path: Path, rows_per_chunk: int) -> Iterator[pd.DataFrame]:
    with open(path, "rb") as handle:
        # index_col=False: a row with more fields than the header must not make its first fields an index
        # (pandas does that silently when the first row is the long one, and the row is misread).
        reader = pd.read_csv(
            _LineBoundedFile(handle, path), dtype=str, keep_default_na=False, chunksize=rows_per_chunk, index_col=False
        )
        while True:
            with warnings.catch_warnings():  # only around pandas' own reading, never the caller's code
                warnings.simplefilter("error", pd.errors.ParserWarning)
                try:
                    chunk = next(reader)
                except StopIteration:
                    return
                except pd.errors.ParserWarning:  # pandas would drop the extra fields, with this warning
                    raise DataError(f"{path}: a row has more fields than the header has columns{EXTRA}") from None
                except pd.errors.ParserError as exc:
                    extra = _EXTRA_FIELDS.search(str(exc))
                    if not extra:
                        raise
                    expected, line, saw = extra.groups()
                    raise DataError(
                        f"{path}: line {line} has {saw} fields, more than the header's {expected} columns{EXTRA}"
                    ) from None
            yield chunk


def iter_file(path: str | Path, rows_per_chunk: int = READ_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """The file's rows in chunks of at most `rows_per_chunk`, as strings, so validation sees them raw."""
    path, kind = readable_file(path)
    try:
        _refuse_repeated_columns(path, _header(path, kind))
        if kind == "parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows_per_chunk):
                yield batch.to_pandas()
        else:
            yield from _csv_chunks(path, rows_per_chunk)
    except (DataError, BadRequest):
        raise
    except Exception as exc:  # parser errors come in many types
        raise DataError(f"{path}: cannot be read: {exc}") from exc


def refuse_oversized(path: str | Path, max_rows: int, what: str) -> None:
    """Refuse a file too big for `max_rows` (MAX_RIDES_PER_REQUEST) before reading any of it."""
    size = Path(path).stat().st_size if Path(path).is_file() else 0
    limit = max_rows * MAX_BYTES_PER_ROW
    if size > limit:
        raise UsageError(
            f"{path}: {size / 1e6:.0f} MB is more than MAX_RIDES_PER_REQUEST={max_rows} {what} can take "
            f"({limit / 1e6:.0f} MB at {MAX_BYTES_PER_ROW} bytes a row); split the file"
        )


@dataclass
class FileCheck:
    """What validating a whole file found: its rows, how many were invalid, the first reasons."""

    total: int = 0
    invalid: int = 0
    errors_shown: list[tuple[int, str]] = field(default_factory=list)


def validated_chunks(
    path: str | Path,
    validate: Callable[..., Validation],
    check: FileCheck,
    max_rows: int,
    rows_per_chunk: int = READ_CHUNK_ROWS,
) -> Iterator[Validation]:
    """The file's chunks, validated, counted into `check`; a trip_id seen in an earlier chunk makes
    its row invalid too. `score` reads a file twice (checked, then sent) and both passes call this,
    so they refuse and keep exactly the same rows."""
    first = 1
    seen: set[str] = set()
    for chunk in iter_file(path, rows_per_chunk):
        checked = validate(chunk, first_row=first)
        ids = checked.valid["trip_id"]
        repeated = ids.notna() & ids.isin(seen)
        if repeated.any():
            rows = checked.valid.index[repeated]
            checked.errors.extend((first + int(r), "trip_id appears earlier in the file") for r in rows)
            checked.errors.sort()
            checked.valid = checked.valid[~repeated]
        seen.update(ids[ids.notna()])
        check.total += len(chunk)
        check.invalid += len(checked.errors)
        room = MAX_ERRORS_SHOWN - len(check.errors_shown)
        check.errors_shown.extend(checked.errors[: max(room, 0)])
        if check.total > max_rows:
            raise UsageError(f"{path}: more than MAX_RIDES_PER_REQUEST={max_rows} rows")
        yield checked
        first += len(chunk)
    if check.total == 0:
        raise UsageError(f"{path}: has a header but no rows")
