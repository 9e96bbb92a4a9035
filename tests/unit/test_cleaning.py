"""Loading a trips export and the cleaning rules: each rule drops exactly what it should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support import REAL_TRIP_ROW
from worker.rides.cleaning import (
    CLEANING_RULES,
    REQUIRED_COLUMNS,
    DataError,
    clean_trips,
    load_real_trips,
    read_table,
)

GOOD = {**REAL_TRIP_ROW, "tips": 2.0, "payment_type": "Credit Card"}


def trips(*changes: dict) -> pd.DataFrame:
    """Two good rows followed by one row per `changes` (the good row with those fields replaced)."""
    rows = [dict(GOOD), dict(GOOD, trip_seconds=900, fare=11.05)]
    rows += [dict(GOOD, **change) for change in changes]
    return pd.DataFrame(rows)


def only(rule: str, count: int) -> dict[str, int]:
    return {name: (count if name == rule else 0) for name, _ in CLEANING_RULES}


@pytest.mark.parametrize(
    ("rule", "bad_rows"),
    [
        (
            "unparseable",
            [
                {"trip_start_timestamp": "not a date"},
                {"trip_seconds": "ten minutes"},
                {"trip_miles": None},
                {"fare": ""},
            ],
        ),
        (
            "missing_area",
            [
                {"pickup_community_area": None},
                {"dropoff_community_area": None},
                {"pickup_community_area": 0},
                {"dropoff_community_area": 78},
                {"pickup_community_area": "Loop"},
            ],
        ),
        ("seconds_out_of_range", [{"trip_seconds": 0}, {"trip_seconds": 59}, {"trip_seconds": 3 * 3600 + 1}]),
        ("miles_out_of_range", [{"trip_miles": 0.0}, {"trip_miles": -1.0}, {"trip_miles": 100.5}]),
        ("fare_out_of_range", [{"fare": 0.0}, {"fare": 3.24}, {"fare": 700.0}]),
        (
            "speed_out_of_range",
            [
                {"trip_miles": 0.1, "trip_seconds": 3600},  # 0.1 mph
                {"trip_miles": 20.0, "trip_seconds": 600},  # 120 mph
            ],
        ),
    ],
)
def test_each_rule_drops_its_rows_and_nothing_else(rule, bad_rows):
    kept, report = clean_trips(trips(*bad_rows))
    assert report.rows_read == 2 + len(bad_rows)
    assert report.dropped == only(rule, len(bad_rows))
    assert report.rows_kept == 2
    assert list(kept["trip_seconds"]) == [600, 900]


def test_boundary_values_are_kept():
    edges = [
        {"trip_seconds": 60, "trip_miles": 0.5},  # 30 mph
        {"trip_seconds": 3 * 3600, "trip_miles": 100.0},  # 33 mph
        {"fare": 3.25},
        {"fare": 500.0},
        {"pickup_community_area": 1, "dropoff_community_area": 77},
        {"pickup_community_area": "76", "dropoff_community_area": 56.0},  # text and float ids
    ]
    _, report = clean_trips(trips(*edges))
    assert report.rows_kept == 2 + len(edges), report.dropped
    assert sum(report.dropped.values()) == 0


def test_a_row_breaking_several_rules_counts_once_for_the_first():
    # Zero miles also means zero speed, but the miles rule comes first.
    _, report = clean_trips(trips({"trip_miles": 0.0}, {"trip_miles": 0.0, "fare": 1.0, "trip_seconds": 10}))
    assert report.dropped["seconds_out_of_range"] == 1  # the 10-second row
    assert report.dropped["miles_out_of_range"] == 1
    assert report.dropped["fare_out_of_range"] == 0
    assert report.dropped["speed_out_of_range"] == 0
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())


def test_kept_rows_are_typed_and_carry_the_target():
    kept, _ = clean_trips(trips())
    assert kept["pickup_community_area"].dtype == np.int64
    assert kept["dropoff_community_area"].dtype == np.int64
    assert pd.api.types.is_datetime64_any_dtype(kept["trip_start_timestamp"])
    assert kept.loc[0, "trip_start_timestamp"] == pd.Timestamp("2013-06-01 12:15:00")
    assert list(kept["trip_minutes"]) == [10.0, 15.0]
    assert list(kept.index) == [0, 1]


def test_trip_total_is_fare_plus_tips_when_the_export_has_none():
    frame = trips({"tips": None})
    kept, _ = clean_trips(frame)
    assert list(kept["trip_total"]) == pytest.approx([11.45, 13.05, 9.45])  # a missing tip counts as 0


def test_trip_total_is_kept_when_the_export_has_it():
    frame = trips().assign(trip_total=[20.0, 21.0])
    kept, _ = clean_trips(frame)
    assert list(kept["trip_total"]) == [20.0, 21.0]


def test_trip_total_without_tips_column_is_the_fare():
    kept, _ = clean_trips(trips().drop(columns=["tips"]))
    assert list(kept["trip_total"]) == list(kept["fare"])


def test_real_sample_cleaning_report_adds_up(real_sample_path):
    kept, report = load_real_trips(real_sample_path)
    assert report.rows_read == 9_533  # the README's row count
    assert report.rows_kept == len(kept)
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())
    # The README's known defects: ~27% zero miles is the biggest reason to drop a row.
    assert max(report.dropped, key=report.dropped.get) == "miles_out_of_range"
    assert 0.5 < report.rows_kept / report.rows_read < 0.8
    assert kept["trip_minutes"].between(1, 180).all()
    assert kept["pickup_community_area"].between(1, 77).all()


# --- files that cannot be used ---------------------------------------------------------------


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="no such file") as info:
        load_real_trips(path)
    assert str(path) in str(info.value)


def test_empty_file(tmp_path: Path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_real_trips(path)


def test_header_only_file(tmp_path: Path):
    path = tmp_path / "header.csv"
    path.write_text(",".join(REQUIRED_COLUMNS) + "\n")
    with pytest.raises(DataError, match="no rows"):
        load_real_trips(path)


def test_directory_is_not_a_file(tmp_path: Path):
    with pytest.raises(DataError, match="directory"):
        read_table(tmp_path)


def test_unsupported_file_type(tmp_path: Path):
    path = tmp_path / "trips.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a workbook")
    with pytest.raises(DataError, match="unsupported file type"):
        read_table(path)


def test_corrupt_parquet(tmp_path: Path):
    path = tmp_path / "trips.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match="cannot be read as parquet"):
        read_table(path)


@pytest.mark.parametrize("missing", ["trip_seconds", "fare", "dropoff_community_area"])
def test_wrong_columns_name_the_missing_one(tmp_path: Path, missing: str):
    path = tmp_path / "wrong.csv"
    trips().drop(columns=[missing]).to_csv(path, index=False)
    with pytest.raises(DataError, match="missing column") as info:
        load_real_trips(path)
    message = str(info.value)
    assert missing in message.split(";")[0]  # named as missing, not just listed among the found ones
    assert str(path) in message


def test_entirely_different_columns(tmp_path: Path):
    path = tmp_path / "other.csv"
    pd.DataFrame({"a": [1, 2], "b": [3, 4]}).to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        load_real_trips(path)
    for column in REQUIRED_COLUMNS:
        assert column in str(info.value)


def test_no_usable_rows_after_cleaning(tmp_path: Path):
    path = tmp_path / "useless.csv"
    pd.DataFrame([dict(GOOD, trip_miles=0.0), dict(GOOD, trip_seconds=0)]).to_csv(path, index=False)
    with pytest.raises(DataError, match="no usable rows") as info:
        load_real_trips(path)
    assert "miles_out_of_range=1" in str(info.value)
    assert "seconds_out_of_range=1" in str(info.value)


def test_parquet_is_read(tmp_path: Path):
    path = tmp_path / "trips.parquet"
    frame = trips({"trip_miles": 0.0})
    frame["trip_start_timestamp"] = pd.to_datetime(frame["trip_start_timestamp"])
    frame.to_parquet(path)
    kept, report = load_real_trips(path)
    assert report.rows_read == 3
    assert report.rows_kept == 2
    assert report.dropped["miles_out_of_range"] == 1
    assert list(kept["trip_minutes"]) == [10.0, 15.0]


def test_csv_and_parquet_give_the_same_rows(tmp_path: Path):
    frame = trips({"fare": 3.0})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    from_csv, _ = load_real_trips(tmp_path / "t.csv")
    from_parquet, _ = load_real_trips(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(
        from_csv.drop(columns=["payment_type"]), from_parquet.drop(columns=["payment_type"]), check_dtype=False
    )
