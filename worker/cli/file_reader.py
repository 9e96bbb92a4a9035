"""Reading a user's CSV or Parquet file of rides in bounded chunks, for `score`.

A huge file never sits in memory whole: rows come in chunks, and a CSV line
longer than a ride could be is refused as soon as it passes that length.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow.parquet as pq

from worker.rides.cleaning import DataError, readable_file
from worker.rides.validation import BadRequest

READ_CHUNK_ROWS = 50_000
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
    return [name.strip() for name in next(csv.reader([first.decode("utf-8-sig", errors="replace")]), [])]


def _refuse_repeated_columns(path: Path, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
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
