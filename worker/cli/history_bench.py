"""`python -m worker bench --history DAYS [DAYS ...]`: the same writes and reads on an empty database
and on databases holding DAYS of Chicago-volume history, side by side in one run.

The service runs for months (about 75,000 predictions and as many outcomes a day), so what matters
is whether a write or a read costs the same on the 90th day as on the first. History is made in SQL
(generate_series, a day per transaction), not by running 26,000 batches: one scheduled batch per
5-minute slot with Chicago's volume for its hour of the week, its predictions, outcomes and
ledger rows, trip ids in the layout the workers write (`--history-ids random`: random ids, as a
database written before time-ordered ids holds). Values are plausible, not generated rides: the
measures here are of indexes and pages, not of drift.

Each database is a throwaway on the configured PostgreSQL server (`<database>_history_<n>`), created,
migrated, filled, measured and dropped; the configured database is never touched.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from worker.cli.bench import bare_copy_seconds, timed_batch
from worker.cli.errors import UsageError
from worker.settings import Settings

log = logging.getLogger(__name__)

SLOT = timedelta(minutes=5)

# One day of rides by trip start, as the "Predicted duration by trip start" panel asked for it before
# (a filter on the converted column) and asks now (the column against the range's ends converted).
TRIP_START_CONVERTED = """
SELECT count(*), avg(predicted_duration) FROM ride_predictions
WHERE trip_start_timestamp AT TIME ZONE 'America/Chicago' BETWEEN :since AND :until
"""
TRIP_START_INDEXED = """
SELECT count(*), avg(predicted_duration) FROM ride_predictions
WHERE trip_start_timestamp BETWEEN (CAST(:since AS timestamptz) AT TIME ZONE 'America/Chicago')
                               AND (CAST(:until AS timestamptz) AT TIME ZONE 'America/Chicago')
"""
RIDES_SCORED = "SELECT count(*) FROM ride_predictions WHERE created_at BETWEEN :since AND :until"


@dataclass
class Measured:
    label: str
    days: float
    history_rows: int = 0
    fill_seconds: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)


def pg_url(settings: Settings, option: str = "--history") -> str:
    url = settings.database_url
    if not url.startswith("postgresql"):
        raise UsageError(
            f"bench {option} needs DATABASE_URL to name a PostgreSQL server: it makes throwaway databases "
            f"beside the configured one (the configured database is {make_url(url).drivername})"
        )
    return url


@contextlib.contextmanager
def throwaway_database(url: str, name: str) -> Iterator[str]:
    """A fresh database beside the configured one, dropped on the way out (even after a failure)."""
    from worker.store.database import get_engine

    admin = get_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        try:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        except DBAPIError as exc:  # e.g. a role without CREATEDB; the server's message names no password
            raise UsageError(f"bench could not create a throwaway database {name}: {exc.orig}") from exc
    own = make_url(url).set(database=name).render_as_string(hide_password=False)
    try:
        yield own
    finally:
        get_engine(own).dispose()  # its pooled connections go before the database does
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def slots_of(days: float, end: datetime) -> pd.DataFrame:
    """Beat's slots over `days` before `end` (UTC), with Chicago's volume for each one's hour."""
    from worker.beat import schedule_batch_id
    from worker.rides.batch_rides import id_halves
    from worker.rides.generator import CHICAGO, expected_rides

    count = int(timedelta(days=days) / SLOT)
    rows = []
    for k in range(count, 0, -1):
        slot = end - k * SLOT
        start = slot.astimezone(CHICAGO).replace(tzinfo=None) - SLOT
        batch_id = schedule_batch_id(slot)
        high, low = id_halves(batch_id, 0, slot)
        rows.append(
            {
                "batch_id": batch_id,
                "slot": slot,
                "window_start": start,
                "window_end": start + SLOT,
                "rides": expected_rides(start, SLOT.total_seconds() / 60),
                # as PostgreSQL's signed bigint
                "id_high": high - (1 << 64) if high >= 1 << 63 else high,
                "id_low": low - (1 << 64) if low >= 1 << 63 else low,
            }
        )
    return pd.DataFrame(rows)


FILL_SQL = """
INSERT INTO batch_runs (batch_id, trigger, seed, rides_requested, rows_written, chunks_total, chunks_done,
                        model_name, model_version, window_start, window_end, status, attempts, started_at,
                        finished_at, slot, model_pinned_by, chunk_size, attempt_started_at, sent_by)
SELECT batch_id, 'schedule', '1', rides, rides, 1, 1, 'history', '1', window_start, window_end, 'succeeded', 1,
       slot, slot + interval '1 second', slot, 'alias', 50000, slot, 'beat'
FROM history_slots;

INSERT INTO batch_chunks (batch_id, chunk_index, rows_written, model_version, written_at, hostname)
SELECT batch_id, 0, rides, '1', slot + interval '1 second', 'history' FROM history_slots;

INSERT INTO ride_predictions (trip_id, pickup_community_area, dropoff_community_area, trip_start_timestamp, fare,
                              trip_total, trip_miles, predicted_duration, created_at, model_name, model_version,
                              batch_id)
SELECT {trip_id}, 1 + (random() * 76)::int, 1 + (random() * 76)::int,
       s.window_start + random() * interval '5 minutes', 3.25 + 2.25 * r.miles, (3.25 + 2.25 * r.miles) * 1.15,
       r.miles, 4 + 2.6 * r.miles, s.slot + interval '1 second', 'history', '1', s.batch_id
FROM history_slots s CROSS JOIN LATERAL generate_series(0, s.rides - 1) AS g(place)
CROSS JOIN LATERAL (SELECT round((0.3 + random() * 9)::numeric, 2)::float8 AS miles, g.place) AS r;

INSERT INTO ride_outcomes (trip_id, actual_duration, observed_at, source, loaded_at, known_at)
SELECT p.trip_id, d.minutes, p.trip_start_timestamp + d.minutes * interval '1 minute', 'generated', p.created_at,
       greatest((p.trip_start_timestamp + d.minutes * interval '1 minute') AT TIME ZONE 'America/Chicago', p.created_at)
FROM ride_predictions p JOIN history_slots s ON s.batch_id = p.batch_id
CROSS JOIN LATERAL (SELECT p.predicted_duration * (0.75 + random() * 0.5) AS minutes) AS d;
"""
ORDERED_ID = "(lpad(to_hex(s.id_high), 16, '0') || lpad(to_hex(s.id_low + g.place), 16, '0'))::uuid"
RANDOM_ID = "gen_random_uuid()"


def fill_history(engine: Engine, days: float, ids: str, end: datetime, progress: Callable[[str], None]) -> int:
    """DAYS of scheduled batches before `end`, a day per transaction; returns the predictions made."""
    slots = slots_of(days, end)
    sql = FILL_SQL.format(trip_id=ORDERED_ID if ids == "ordered" else RANDOM_ID)
    per_day = int(timedelta(days=1) / SLOT)
    for first in range(0, len(slots), per_day):
        part = slots.iloc[first : first + per_day]
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE TEMPORARY TABLE history_slots (batch_id text, slot timestamptz, window_start timestamp, "
                    "window_end timestamp, rides int, id_high bigint, id_low bigint) ON COMMIT DROP"
                )
            )
            raw = conn.connection.dbapi_connection.cursor()
            buffer = io.StringIO()
            part.to_csv(buffer, index=False, header=False, date_format="%Y-%m-%d %H:%M:%S%z")
            buffer.seek(0)
            raw.copy_expert("COPY history_slots FROM STDIN WITH (FORMAT csv)", buffer)
            for statement in sql.split(";\n"):
                if statement.strip():
                    conn.execute(text(statement))
        progress(f"  {min(first + per_day, len(slots)) // per_day} of {len(slots) // per_day} days")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) batch_runs, batch_chunks, ride_predictions, ride_outcomes"))
        conn.execute(text("CHECKPOINT"))
    # And the kernel's: gigabytes of freshly written pages would otherwise still be on their way to
    # disk while the first measurements run (90 days then wrote 44 % slower than the same database
    # did minutes later, in one run here).
    os.sync()
    return int(slots["rides"].sum())


def _median_seconds(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def read_seconds(engine: Engine, sql: str, since: datetime, until: datetime, repeat: int) -> float:
    def run() -> None:
        with engine.connect() as conn:
            conn.execute(text(sql), {"since": since, "until": until}).all()

    run()  # warm
    return _median_seconds(run, repeat)


def measure(settings: Settings, engine: Engine, model, repeat: int, big: int) -> dict[str, float]:
    """Reads first, on the history as made (the writes below add their rides to the day read), then
    the writes."""
    now = datetime.now(UTC)
    day = (now - timedelta(days=1), now)
    figures = {
        "trip_start_converted": read_seconds(engine, TRIP_START_CONVERTED, *day, repeat),
        "trip_start_indexed": read_seconds(engine, TRIP_START_INDEXED, *day, repeat),
        "rides_scored": read_seconds(engine, RIDES_SCORED, *day, repeat),
        "exporter": _median_seconds(lambda: _exporter_reading(settings, engine), repeat),
        "batches": _median_seconds(lambda: _batches_reading(engine), repeat),
        "report_7d": _warm_median(lambda: _report_reading(settings, engine, timedelta(days=7)), repeat),
        "quality_pass": _steady_quality_pass(settings, engine, model, repeat),
        "monitor_slot": _warm_median(lambda: _monitor_newest_slot(settings, engine, model), repeat),
    }
    writes_big = [timed_batch(engine, model, big, seed, label="bench-history")[1] for seed in range(repeat + 1)][1:]
    writes_small = [
        timed_batch(engine, model, 1000, 100 + seed, label="bench-history")[1] for seed in range(repeat + 2)
    ][1:]
    figures |= {
        "big_write": statistics.median(w["write"] for w in writes_big),
        "big_total": statistics.median(w["total"] for w in writes_big),
        "small_total": statistics.median(w["total"] for w in writes_small),
        "bare_copy": bare_copy_seconds(engine, model, big, repeat),
    }
    return figures


def _exporter_reading(settings: Settings, engine: Engine) -> None:
    """What one scrape of the exporter asks the database (status --json reads the same snapshot)."""
    from worker.cli.exporter import read_database

    read_database(settings, engine)


def _warm_median(run: Callable[[], object], repeat: int) -> float:
    """After a first run, which may catch up with what the history lacks (a quality pass fills a day
    of batches' accuracy, the first time only), as it runs from then on."""
    run()
    return _median_seconds(run, repeat)


def _batches_reading(engine: Engine) -> None:
    """`batches`: the newest 20."""
    from worker.store.history import list_batches

    list_batches(engine, last=20)


def _report_reading(settings: Settings, engine: Engine, period: timedelta) -> None:
    """`report --since 7d`, whole: its reads, its charts and the HTML page, into a throwaway file."""
    from worker.cli.report import make_report

    own = settings.model_copy(update={"DATABASE_URL": engine.url.render_as_string(hide_password=False)})
    with tempfile.TemporaryDirectory() as folder:
        make_report(own, period, Path(folder) / "report.html")


def _history_lookups(model) -> tuple[Callable, Callable]:
    """The history's batches name a version the registry does not hold: monitoring reads them with
    the bench model's reference and held-out MAE, so it does all it would do for a real version."""
    from worker import runtime

    return (
        lambda _name, _version: runtime.reference(model.name, model.version),
        lambda _name, _version: runtime.heldout_mae(model.name, model.version),
    )


def _quality_pass(settings: Settings, engine: Engine, model) -> int:
    """What update_quality does each minute (beat): catch up unmonitored batches (how many it did is
    returned), then live accuracy."""
    from worker.monitor import quality
    from worker.rides.generator import chicago_now

    references, heldout = _history_lookups(model)
    now = datetime.now(UTC)
    sample = settings.MONITOR_SAMPLE_ROWS
    swept = quality.sweep_unmonitored(engine, references, chicago_now(), now, sample)["swept"]
    quality.update_quality(engine, chicago_now(), heldout, references, now_utc=now, sample_rows=sample)
    return swept


def _steady_quality_pass(settings: Settings, engine: Engine, model, repeat: int) -> float:
    """A pass as beat runs it once the service is in step: first the passes that catch up with what
    the made history lacks (its batches were never monitored: a pass sweeps 20), then the timed ones."""
    for _ in range(100):
        if not _quality_pass(settings, engine, model):
            break
    return _median_seconds(lambda: _quality_pass(settings, engine, model), repeat)


def _monitor_newest_slot(settings: Settings, engine: Engine, model) -> None:
    """A scheduled batch's monitoring, as monitor_batch runs it: its drift, then its clock hour's."""
    from worker.monitor.batches import monitor_batch
    from worker.rides.generator import chicago_now

    with engine.connect() as conn:
        newest = conn.execute(
            text("SELECT batch_id FROM batch_runs WHERE trigger = 'schedule' ORDER BY slot DESC LIMIT 1")
        ).scalar()
    if newest is not None:
        monitor_batch(engine, newest, _history_lookups(model)[0], chicago_now(), settings.MONITOR_SAMPLE_ROWS)


def prune_day_seconds(engine: Engine, days: float) -> tuple[float, int]:
    """`prune` of the oldest day, as the retention task runs it; seconds and predictions deleted."""
    from worker.store.retention import prune

    started = time.perf_counter()
    counts = prune(engine, older_than_days=days - 1, now=datetime.now(UTC))
    return time.perf_counter() - started, int(counts.get("ride_predictions", 0))


def run_history_bench(settings: Settings, days: list[float], repeat: int, big: int, ids: str) -> list[Measured]:
    from worker import runtime
    from worker.store.database import get_engine, migrate

    url = pg_url(settings)
    model = runtime.model()
    base = make_url(url).database or "postgres"
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    end -= timedelta(minutes=end.minute % 5)
    results = []
    for n, span in enumerate([0.0, *days]):
        label = "empty" if not span else f"{span:g} days"
        with throwaway_database(url, f"{base}_history_{n}") as own:
            migrate(own)
            engine = get_engine(own)
            measured = Measured(label, span)
            if span:
                print(f"filling {label} of history ({ids} trip ids)...", flush=True)
                started = time.perf_counter()
                measured.history_rows = fill_history(engine, span, ids, end, lambda line: print(line, flush=True))
                measured.fill_seconds = time.perf_counter() - started
            print(f"measuring on {label}...", flush=True)
            measured.figures = measure(settings, engine, model, repeat, big)
            if span >= 2:
                measured.figures["prune_day"], measured.figures["prune_rows"] = prune_day_seconds(engine, span)
            results.append(measured)
    print_table(results, big, repeat, ids)
    return results


def print_table(results: list[Measured], big: int, repeat: int, ids: str) -> None:
    empty = results[0].figures
    print()
    print(f"medians of {repeat} runs after a warm-up; history trip ids: {ids}")
    header = f"  {'measure':<58}" + "".join(f"{m.label:>16}" for m in results)
    print(header)

    def line(name: str, value: Callable[[Measured], str]) -> None:
        print(f"  {name:<58}" + "".join(f"{value(m):>16}" for m in results))

    line("history: predictions (and as many outcomes)", lambda m: f"{m.history_rows:,}")
    line("history: seconds to make", lambda m: f"{m.fill_seconds:.0f}" if m.days else "—")
    line(
        f"{big:,}-ride batch: write s (generate+predict+write s)",
        lambda m: f"{m.figures['big_write']:.2f} ({m.figures['big_total']:.2f})",
    )
    line(
        f"{big:,}-ride batch: against empty (aim: within 15 %)",
        lambda m: f"{m.figures['big_total'] / empty['big_total'] - 1:+.0%}",
    )
    line(f"bare COPY of {big:,} prediction rows, PK only: s", lambda m: f"{m.figures['bare_copy']:.2f}")
    line(
        "batch's rides/s against bare COPY's rows/s (aim ≥ 0.4)",
        lambda m: f"{m.figures['bare_copy'] / m.figures['big_total']:.2f}×",
    )
    line("1,000-ride batch: generate+predict+write ms", lambda m: f"{m.figures['small_total'] * 1000:.0f}")
    # Reads of the last day: against the smallest history, a database holding about just that range.
    least = next((m.figures for m in results if m.days), None)

    def read(key: str) -> Callable[[Measured], str]:
        def shown(m: Measured) -> str:
            ms = f"{m.figures[key] * 1000:.0f}"
            return f"{ms} ({m.figures[key] / least[key]:.1f}×)" if least and m.days else ms

        return shown

    where = next((m.label for m in results if m.days), "")
    print(f"  reads of the last day, before the writes; (×) against the {where} database, aim ≤ 1.5×:")
    line("trip-start panel: filter on the converted column, ms", read("trip_start_converted"))
    line("trip-start panel: filter on the column itself, ms", read("trip_start_indexed"))
    line("rides-scored panel, ms", read("rides_scored"))
    line("an exporter scrape's database reads (status's too), ms", read("exporter"))
    line("`batches` (the newest 20), ms", read("batches"))
    line("`report --since 7d`, whole (reads, charts, page), ms", read("report_7d"))
    line("an update_quality pass (sweep, live accuracy), ms", read("quality_pass"))
    line("monitoring the newest slot's batch (and its hour), ms", read("monitor_slot"))
    line(
        "prune of the oldest day: s (predictions deleted)",
        lambda m: f"{m.figures['prune_day']:.2f} ({m.figures['prune_rows']:,})" if "prune_day" in m.figures else "—",
    )
