"""Reading a user's file for `score` and `outcomes`: a file whose rows cannot be read as written is
refused naming why, never misread."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worker.cli.file_reader import iter_file
from worker.rides.cleaning import DataError

HEADER = "pickup_community_area,dropoff_community_area,trip_start_timestamp,fare,trip_miles"
ROW = "8,32,2026-11-26T10:00:00,12,3.1"


def read(path) -> pd.DataFrame:
    return pd.concat(list(iter_file(path, rows_per_chunk=2)), ignore_index=True)


@pytest.mark.parametrize(
    ("where", "message"),
    [(0, "a row has more fields than the header"), (3, "line 5 has 7 fields, more than the header's 5 columns")],
    ids=["first row", "a later chunk"],
)
def test_a_row_with_more_fields_than_the_header_is_refused(tmp_path, where, message):
    rows = [ROW] * 5
    rows[where] = ROW + ",99,99"  # first: pandas made 8 and 32 an index and read 2026-… as the pickup area
    path = tmp_path / "rides.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    with pytest.raises(DataError, match=message):
        read(path)


def test_a_column_named_twice_is_refused(tmp_path):
    path = tmp_path / "rides.csv"
    path.write_text(f"{HEADER},fare\n{ROW},99\n")  # pandas read the first fare and renamed the second fare.1
    with pytest.raises(DataError, match="column 'fare' appears twice in the header"):
        read(path)
    table = pa.table(
        [[8], [32], [9.5], [1.0]], names=["pickup_community_area", "dropoff_community_area", "fare", "fare"]
    )
    pq.write_table(table, tmp_path / "rides.parquet")
    with pytest.raises(DataError, match="column 'fare' appears twice"):
        read(tmp_path / "rides.parquet")


def test_a_well_formed_file_reads_every_row_as_written(tmp_path):
    path = tmp_path / "rides.csv"
    path.write_text("\n".join([HEADER, *[ROW] * 5, '8,32,"2026-11-26T10:00:00",12,"3.1"']) + "\n")
    frame = read(path)
    assert len(frame) == 6 and list(frame.columns) == HEADER.split(",")
    assert frame["pickup_community_area"].tolist() == ["8"] * 6 and frame["trip_miles"].iloc[-1] == "3.1"


def test_empty_trailing_header_columns_are_no_repeated_name(tmp_path):
    """A spreadsheet's export ends its header with `,,`: it read before the repeated-name check and must still."""
    path = tmp_path / "rides.csv"
    path.write_text(f"{HEADER},,\n{ROW},,\n")
    assert read(path)["fare"].tolist() == ["12"]
