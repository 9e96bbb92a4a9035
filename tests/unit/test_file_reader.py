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


def _parquet(tmp_path, table: pa.Table):
    path = tmp_path / "rides.parquet"
    pq.write_table(table, path)
    return path


RIDE = {
    "pickup_community_area": [8],
    "dropoff_community_area": [32],
    "trip_start_timestamp": ["2026-11-26 08:15:00"],
    "fare": [9.25],
    "trip_miles": [1.9],
}


@pytest.mark.parametrize("column", ["fare", "pickup_community_area", "trip_start_timestamp"])
def test_a_parquet_binary_column_is_refused_naming_it(tmp_path, column):
    """pandas decoded the bytes as UTF-8 on the way to a number or a time: a traceback, exit 1."""
    from worker.cli.file_reader import FileCheck, validated_chunks
    from worker.rides.validation import BadRequest, validate_rides

    table = pa.table({**RIDE, column: pa.array([b"\xe0\x01"], pa.binary())})
    with pytest.raises(BadRequest, match=rf"^column {column} holds binary data \(bytes\), not text or numbers"):
        list(validated_chunks(_parquet(tmp_path, table), validate_rides, FileCheck(), 100))


def test_a_trip_id_of_16_bytes_is_read_as_the_uuid_parquet_writes_and_other_bytes_are_refused(tmp_path):
    import uuid

    from worker.cli.file_reader import FileCheck, validated_chunks
    from worker.rides.validation import BadRequest, validate_outcomes, validate_rides

    given = uuid.uuid4()
    table = pa.table({**RIDE, "trip_id": pa.array([given.bytes], pa.binary(16))})
    [checked] = validated_chunks(_parquet(tmp_path, table), validate_rides, FileCheck(), 100)
    assert list(checked.valid["trip_id"]) == [given.hex] and not checked.errors
    outcomes = pa.table({"trip_id": pa.array([b"\xe0\x01"], pa.binary()), "trip_seconds": [600]})
    with pytest.raises(BadRequest, match=r"^column trip_id holds binary data .* 16 bytes, a UUID"):
        list(validated_chunks(_parquet(tmp_path, outcomes), validate_outcomes, FileCheck(), 100))


def test_an_outcome_of_true_or_a_duration_type_is_no_count_of_seconds(tmp_path):
    """A boolean True was stored as a 1-second trip, for good (a later correct file only finds it
    "already known"); scoring already refused true/false where a number belongs."""
    import uuid

    from worker.rides.validation import validate_outcomes, validate_rides

    ids = [str(uuid.uuid4()) for _ in range(2)]
    checked = validate_outcomes(pd.DataFrame({"trip_id": ids, "trip_seconds": [True, 600]}))
    assert checked.errors == [(1, "trip_seconds is not a number")] and len(checked.valid) == 1
    durations = pd.DataFrame({"trip_id": ids, "trip_seconds": pd.to_timedelta([1, 600], unit="s")})
    assert [why for _, why in validate_outcomes(durations).errors] == ["trip_seconds is not a number"] * 2
    miles = pd.DataFrame({**RIDE, "trip_miles": pd.to_timedelta([1], unit="s")})
    assert validate_rides(miles).errors == [(1, "trip_miles is not a number")]
