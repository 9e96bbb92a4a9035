"""Times a user types: ISO 8601 with an offset is that instant; without one it is Chicago local
time, as in the city's data. A local time that the daylight-saving change skips or repeats is
refused unless it carries an offset, because it names no instant, or two."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from worker.cli.errors import UsageError
from worker.rides.generator import CHICAGO
from worker.rides.validation import FIRST_YEAR, LAST_YEAR
from worker.settings import CENTURY_DAYS

TIME_HELP = (
    "ISO 8601, e.g. 2026-11-26T10:00 (Chicago local time, as in the city's data) "
    "or 2026-11-26T16:00:00+00:00 (that instant)"
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, option: str) -> datetime:
    """The instant `text` names, in UTC; a UsageError naming `option` if it names none."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r} is not an ISO 8601 time ({TIME_HELP})") from None
    if not FIRST_YEAR <= value.year <= LAST_YEAR:  # year 1 or 9999 overflowed a conversion further on
        raise UsageError(f"{option} {text!r} is outside the years {FIRST_YEAR}..{LAST_YEAR}")
    if value.tzinfo is not None:
        return value.astimezone(UTC)
    early = value.replace(tzinfo=CHICAGO, fold=0)
    if early.astimezone(UTC).astimezone(CHICAGO).replace(tzinfo=None) != value:
        raise UsageError(
            f"{option} {text!r} does not exist in Chicago (the clocks skip that hour); give a time with an offset"
        )
    if early.utcoffset() != value.replace(tzinfo=CHICAGO, fold=1).utcoffset():
        raise UsageError(
            f"{option} {text!r} happens twice in Chicago (the clocks go back that night); "
            "add its offset, e.g. -05:00 for the first or -06:00 for the second"
        )
    return early.astimezone(UTC)


def parse_duration(text: str, option: str) -> timedelta:
    """`90m`, `6h`, `2d`, `1w`: how far back a command looks."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"{option} {text!r} is not a duration such as 90m, 6h, 2d or 1w")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > CENTURY_DAYS * 86_400:  # now minus more than that overflowed the calendar (retrain --since)
        raise UsageError(f"{option} {text!r} reaches back more than {CENTURY_DAYS} days (a century)")
    return timedelta(seconds=seconds)
