"""Reading a user's CSV or Parquet file of rides in bounded chunks, for `score`.

A huge file never sits in memory whole: rows come in chunks, and a CSV line
longer than a ride could be is refused as soon as it passes that length.
"""

from __future__ import annotations

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
