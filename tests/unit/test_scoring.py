"""Validation of user-supplied rides: every bad row named with its reasons, no crash."""

from __future__ import annotations

import pandas as pd
import pytest

from worker.rides.validation import BadRequest, records_to_frame, to_records, validate_rides

GOOD = {
    "pickup_community_area": "8",
    "dropoff_community_area": "32",
    "trip_start_timestamp": "2026-11-26 10:00:00",
    "fare": "9.25",
    "trip_miles": "1.9",
}


def frame(*overrides: dict) -> pd.DataFrame:
    return pd.DataFrame([{**GOOD, **o} for o in overrides])


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"pickup_community_area": "8.5"}, "pickup_community_area is not a whole number"),
        ({"pickup_community_area": "1e20"}, "pickup_community_area outside 1..77"),
        ({"dropoff_community_area": "999"}, "dropoff_community_area outside 1..77"),
        ({"dropoff_community_area": "north"}, "dropoff_community_area is not a number"),
        ({"trip_start_timestamp": "yesterday"}, "trip_start_timestamp is not a date and time"),
        ({"trip_start_timestamp": ""}, "trip_start_timestamp is not a date and time"),
        ({"fare": "cheap"}, "fare is not a number"),
        ({"fare": ""}, "fare is missing"),
        ({"trip_miles": "-1"}, "trip_miles is negative"),
        ({"fare": "inf"}, "fare is not finite"),
        ({"trip_total": "x"}, "trip_total is not a number"),
        ({"trip_id": "not-a-uuid"}, "trip_id is not a UUID"),
        # Beyond float32 the forest cannot read it: the batch failed in the worker after other chunks were written.
        ({"fare": "1e39"}, "fare is over 100,000"),
        ({"trip_miles": "1e39"}, "trip_miles is over 10,000"),
        ({"trip_total": "1e30"}, "trip_total is over 100,000"),
        # Outside pandas' nanosecond range: these raised OutOfBoundsDatetime, a traceback naming no row.
        ({"trip_start_timestamp": "2262-05-01T00:00"}, "trip_start_timestamp is outside the years 1900..2199"),
        ({"trip_start_timestamp": "9999-01-01"}, "trip_start_timestamp is outside the years 1900..2199"),
        ({"trip_start_timestamp": "1677-09-21T06:00:00+00:00"}, "outside the years 1900..2199"),
        # pandas reads these as the moment of parsing, which was stored as if it were Chicago time.
        ({"trip_start_timestamp": "now"}, "trip_start_timestamp is not a date and time"),
        ({"trip_start_timestamp": "today"}, "trip_start_timestamp is not a date and time"),
        ({"trip_start_timestamp": "2026-03-08T02:30:00"}, "does not exist in Chicago"),
    ],
)
def test_each_bad_value_is_named_with_its_row(override, reason):
    checked = validate_rides(frame({}, override), first_row=10)
    assert len(checked.valid) == 1
    assert len(checked.errors) == 1
    row, why = checked.errors[0]
    assert row == 11 and reason in why


def test_missing_area_is_allowed_like_the_city_suppresses_it():
    checked = validate_rides(frame({"pickup_community_area": ""}))
    assert checked.errors == [] and checked.valid["pickup_community_area"].isna().all()


def test_offsets_either_side_of_a_dst_change_and_naive_times_mix():
    checked = validate_rides(
        frame(
            {"trip_start_timestamp": "2026-11-01T01:30:00-05:00"},  # CDT
            {"trip_start_timestamp": "2026-11-01T01:30:00-06:00"},  # CST, an hour later
            {"trip_start_timestamp": "2026-11-26T16:00:00Z"},
            {"trip_start_timestamp": "2026-11-26 10:00:00"},  # naive: already Chicago time
        )
    )
    assert checked.errors == []
    stamps = checked.valid["trip_start_timestamp"].dt.strftime("%Y-%m-%d %H:%M").tolist()
    assert stamps == ["2026-11-01 01:30", "2026-11-01 01:30", "2026-11-26 10:00", "2026-11-26 10:00"]


def test_an_odd_real_fare_is_still_scored_and_a_skipped_hour_with_its_offset_is_a_time():
    checked = validate_rides(
        frame({"fare": "700", "trip_miles": "1710"}, {"trip_start_timestamp": "2026-03-08T02:30:00-06:00"})
    )
    assert checked.errors == []
    assert checked.valid["trip_start_timestamp"].iloc[1] == pd.Timestamp("2026-03-08 03:30")


@pytest.mark.parametrize("column", ["fare", "pickup_community_area"])
@pytest.mark.parametrize("truth", [pd.Series([True], dtype=bool), pd.Series([True], dtype=object)])
def test_a_true_or_false_is_not_a_number(truth, column):
    rides = frame({})
    rides[column] = truth  # a Parquet boolean column, or a JSON ride's true: read as $1, or area 1, before
    assert [why for _, why in validate_rides(rides).errors] == [f"{column} is not a number"]


def test_a_zone_word_is_that_zone_alone_or_beside_naive_times():
    """`… UTC` was not taken for an offset: alone it raised a TypeError, beside naive times a ValueError."""
    alone = validate_rides(frame({"trip_start_timestamp": "2013-01-01 10:00:00 UTC"}))
    mixed = validate_rides(
        frame({"trip_start_timestamp": "2013-01-01 10:00:00 UTC"}, {"trip_start_timestamp": "2013-01-01 10:00:00"})
    )
    assert alone.errors == [] and mixed.errors == []
    assert alone.valid["trip_start_timestamp"].tolist() == [pd.Timestamp("2013-01-01 04:00")]
    assert mixed.valid["trip_start_timestamp"].tolist() == [
        pd.Timestamp("2013-01-01 04:00"),
        pd.Timestamp("2013-01-01 10:00"),
    ]


def test_duplicate_trip_ids_are_refused():
    same = "5f0c3e9e-9a8b-4c1f-8a47-1f2d3c4b5a69"
    checked = validate_rides(frame({"trip_id": same}, {"trip_id": same}))
    assert [why for _, why in checked.errors] == ["trip_id appears twice", "trip_id appears twice"]


def test_missing_columns_refuse_the_whole_request():
    with pytest.raises(BadRequest, match="missing column"):
        validate_rides(pd.DataFrame([{"fare": 1}]))


def test_records_round_trip_as_json_values():
    checked = validate_rides(frame({"trip_total": "11.5"}))
    records = to_records(checked.valid)
    assert records[0]["trip_start_timestamp"] == "2026-11-26T10:00:00"
    again = validate_rides(records_to_frame(records))
    assert again.errors == [] and again.valid["trip_total"].iloc[0] == 11.5


@pytest.mark.parametrize("rides", [None, [], "rides", [1, 2]])
def test_ride_list_must_be_a_list_of_objects(rides):
    with pytest.raises(BadRequest):
        records_to_frame(rides)


def test_a_date_written_day_first_is_refused_not_swapped():
    """The city writes month first. 13/02/2014 was read as 13 February without a word (and 01/02/2014
    as 2 January), so a file written day first was half swapped."""
    from worker.rides.validation import parse_chicago_times

    found = parse_chicago_times(pd.Series(["13/02/2014 12:15:00 PM", "02/13/2014 01:00:00 PM", "31/12/2013 23:00"]))
    assert found.stamps.isna().tolist() == [True, False, True]
    assert found.stamps[1] == pd.Timestamp("2014-02-13 13:00")
    assert (
        found.problem[0]
        == found.problem[2]
        == ("trip_start_timestamp reads day first; give month first (MM/DD/YYYY), as the city does")
    )
