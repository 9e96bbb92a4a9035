"""Writing predictions and batch bookkeeping, once, through SQLAlchemy.

A chunk is written in one transaction that claims its key in the
`batch_chunks` ledger together with its rows. A duplicate delivery (Celery
acks late, so a task can run twice, even at the same time) waits on that key,
finds it taken and writes nothing.

On PostgreSQL the rows first go by COPY into a session-local temporary table,
and only then is the ledger key claimed and the rows moved with one INSERT ...
SELECT. The order matters when a worker's host freezes (a paused container, a
VM stall): a COPY waits on its client for the next bytes, and PostgreSQL
neither cancels it (statement_timeout fires only when data arrives again) nor
notices a frozen peer (its kernel still answers TCP keepalives). A frozen COPY
into the temporary table holds nothing that another delivery needs; everything
after the claim runs on the server and is bounded: statement_timeout for each
statement, idle_in_transaction_session_timeout for the pauses between them,
lock_timeout for a delivery waiting on the key. Each fails into the task's
Celery retry (psycopg2 raises them as OperationalError). Rows whose trip ids a
user supplied are inserted ON CONFLICT DO NOTHING. A made-up chunk's true
durations (ride_outcomes) and the challenger's shadow predictions travel in the
same staged rows (one COPY, one wide temporary table) and are moved by their own
INSERT ... SELECT in the same transaction, so they are exactly-once too.
Elsewhere (SQLite) multi-row INSERT ... ON CONFLICT DO NOTHING.
"""

from __future__ import annotations

import io
import logging
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from sqlalchemy import Column, Connection, DateTime, Engine, MetaData, Table, case, func, null, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateTable

from worker.rides.generator import RIDE_COLUMNS
from worker.settings import SettingsError, get_settings, redact
from worker.store.schema import (
    batch_chunks,
    batch_runs,
    ride_outcomes,
    ride_predictions,
    shadow_predictions,
    slot_refusals,
)

log = logging.getLogger(__name__)

# The column order of ride_predictions; COPY and the frames written follow it.
PREDICTION_COLUMNS = ("trip_id", *RIDE_COLUMNS, "predicted_duration", "model_name", "model_version", "batch_id")
OUTCOME_COLUMNS = ("trip_id", "actual_duration", "observed_at", "source", "known_at")
SHADOW_COLUMNS = ("trip_id", "model_version", "predicted_duration")
# The staged row: a prediction, its outcome (made-up rides know it) and the challenger's shadow
# prediction (while there is a challenger), side by side, so one COPY carries all three.
STAGED_OUTCOME = ("actual_duration", "observed_at", "source", "known_at")
STAGED_SHADOW = ("shadow_version", "shadow_duration")
STAGED_COLUMNS = (*PREDICTION_COLUMNS, *STAGED_OUTCOME, *STAGED_SHADOW)
# Text columns that often hold one value in all of a COPY's rows (see _stage).
SHAREABLE = ("model_name", "model_version", "batch_id", "source", "shadow_version")

# Where a chunk's rows wait, per session, until the ledger key is claimed. Its columns are declared
# here rather than copied with CREATE ... (LIKE ride_predictions): LIKE would lock ride_predictions
# for the whole transaction, and a frozen COPY would then hold up every migration.
STAGING = Table(
    "ride_predictions_staging",
    MetaData(),
    *(Column(column.name, column.type) for column in ride_predictions.columns if column.name in PREDICTION_COLUMNS),
    *(
        Column(column.name, column.type)
        for column in ride_outcomes.columns
        if column.name in STAGED_OUTCOME and column.name != "known_at"
    ),
    # UTC wall time, made an instant by the move: Arrow formats a time-zone-aware column for COPY
    # at 1.8 s per million values, half of all the CSV's time, and a plain one 25 times faster.
    Column("known_at", DateTime(timezone=False)),
    Column("shadow_version", shadow_predictions.c.model_version.type),
    Column("shadow_duration", shadow_predictions.c.predicted_duration.type),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DELETE ROWS",
)
# What each target takes from the staged rows, and which staged rows it takes.
_MOVES = {
    "ride_predictions": (PREDICTION_COLUMNS, PREDICTION_COLUMNS, None),
    "ride_outcomes": (
        OUTCOME_COLUMNS,
        ("trip_id", "actual_duration", "observed_at", "source", "known_at AT TIME ZONE 'UTC'"),
        "actual_duration IS NOT NULL",
    ),
    "shadow_predictions": (
        ("trip_id", "batch_id", "model_version", "predicted_duration"),
        ("trip_id", "batch_id", "shadow_version", "shadow_duration"),
        "shadow_duration IS NOT NULL",
    ),
}


# A finished batch that `prune` has claimed and is deleting: no writer, retry mark or reopen touches
# it again, so the prune's later transactions never race a rerun into a half-deleted batch.
PRUNING = "pruning"


class BatchPruned(RuntimeError):
    """The batch is being deleted by `prune` (it is older than the retention); nothing was written.
    Built by `of`: the result backend rebuilds an exception from its message alone."""

    @classmethod
    def of(cls, batch_ids: list[str]) -> BatchPruned:
        shown = ", ".join(batch_ids[:3]) + (f" and {len(batch_ids) - 3} more" if len(batch_ids) > 3 else "")
        return cls(f"batch {shown} is being deleted by prune (older than the retention); nothing was written")


def refuse_claimed(row: dict[str, Any]) -> None:
    """A task's check before it predicts anything: raise BatchPruned if prune has claimed the batch."""
    if row["status"] == PRUNING:
        raise BatchPruned.of([row["batch_id"]])


@dataclass(frozen=True)
class ChunkWrite:
    batch_id: str
    chunk_index: int
    rows_written: int
    duplicate: bool  # True: the ledger already had this chunk, nothing was written
    batch_finished: bool


def _insert(conn: Connection, table):
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def start_batch(engine: Engine, **batch: Any) -> dict[str, Any]:
    """Record the batch (first delivery) or count another attempt; returns its row as stored (the
    arguments are `_start`'s)."""
    with engine.begin() as conn:
        return _start(conn, **batch)


def start_batches(engine: Engine, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`start_batch` for several batches (a run of backfilled slots) in one transaction, in batch id
    order (two runs sharing slots then take their rows' locks in the same order, never a deadlock);
    returns the rows as stored, in the order given."""
    rows = {}
    with engine.begin() as conn:
        for batch in sorted(batches, key=lambda kw: kw["batch_id"]):
            rows[batch["batch_id"]] = _start(conn, **batch)
    return [rows[batch["batch_id"]] for batch in batches]


def _start(
    conn: Connection,
    *,
    batch_id: str,
    trigger: str,
    rides_requested: int,
    chunks_total: int,
    task_id: str | None,
    seed: int | None,
    window: tuple[datetime, datetime] | None,
    attempt: int,
    redelivered: bool = False,
    speed_factor: float = 1.0,
    fare_factor: float = 1.0,
    slot: datetime | None = None,
    chunk_size: int | None = None,
    sent_by: str | None = None,
) -> dict[str, Any]:
    """Record the batch (first delivery) or count another attempt; returns its row as stored.

    The first delivery's plan (seed, window, size, chunk size, knobs) is what every later attempt
    must follow, so callers take those from the returned row, not from their own arguments.
    `attempt` is Celery's retry count + 1; a message the broker delivered again (after a lost
    worker or the visibility timeout) counts one more attempt on top. A `failed` batch stays
    failed: only `rerun` and `backfill` reopen one (`reopen_batch` marks it `retrying` first), so a late
    message of a batch that failed cannot leave it `running` for ever.
    """
    conn.execute(
        _insert(conn, batch_runs)
        .values(
            batch_id=batch_id,
            trigger=trigger,
            task_id=task_id,
            seed=None if seed is None else str(seed),
            rides_requested=rides_requested,
            chunks_total=chunks_total,
            window_start=window[0] if window else None,
            window_end=window[1] if window else None,
            status="running",
            attempts=attempt,
            speed_factor=speed_factor,
            fare_factor=fare_factor,
            slot=slot,
            chunk_size=chunk_size,
            sent_by=sent_by,
            attempt_started_at=func.now(),
        )
        .on_conflict_do_nothing(index_elements=["batch_id"])
    )
    conn.execute(
        update(batch_runs)
        .where(batch_runs.c.batch_id == batch_id, batch_runs.c.status.not_in(("succeeded", "failed", PRUNING)))
        .values(
            status="running",
            attempt_started_at=func.now(),
            attempts=batch_runs.c.attempts + 1
            if redelivered
            else case((batch_runs.c.attempts < attempt, attempt), else_=batch_runs.c.attempts),
        )
    )
    row = conn.execute(select(batch_runs).where(batch_runs.c.batch_id == batch_id)).mappings().one()
    return dict(row)


def pin_model(
    engine: Engine, batch_id: str, name: str, version: str, pinned_by: str, challenger: str | None = None
) -> dict[str, Any]:
    """Pin the batch to a model version (and its challenger, for shadow scoring) unless an earlier
    attempt (or a parallel chunk) already did; returns the row, whose model_version and
    challenger_version are the ones every chunk of the batch must use."""
    return pin_models(engine, [batch_id], name, version, pinned_by, challenger)[0]


def pin_models(
    engine: Engine, batch_ids: list[str], name: str, version: str, pinned_by: str, challenger: str | None = None
) -> list[dict[str, Any]]:
    """`pin_model` for several batches in one statement; the rows in the order given."""
    with engine.begin() as conn:
        conn.execute(
            update(batch_runs)
            .where(batch_runs.c.batch_id.in_(batch_ids), batch_runs.c.model_version.is_(None))
            .values(model_name=name, model_version=version, model_pinned_by=pinned_by, challenger_version=challenger)
        )
        rows = {
            row["batch_id"]: dict(row)
            for row in conn.execute(select(batch_runs).where(batch_runs.c.batch_id.in_(batch_ids))).mappings()
        }
    return [rows[batch_id] for batch_id in batch_ids]


def _csv(frame: pd.DataFrame) -> io.BytesIO:
    """Arrow's C++ CSV writer: ~10x faster than DataFrame.to_csv; nulls become unquoted empty fields."""
    buffer = io.BytesIO()
    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), buffer, pacsv.WriteOptions(include_header=False))
    buffer.seek(0)
    return buffer


def _copy(conn: Connection, table: str, frame: pd.DataFrame, columns: tuple[str, ...] = PREDICTION_COLUMNS) -> None:
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)"
    dbapi_connection = conn.connection.dbapi_connection
    cursor = dbapi_connection.cursor()
    try:
        cursor.copy_expert(statement, _csv(frame))
    except conn.dialect.loaded_dbapi.Error as exc:
        # A raw cursor's errors bypass SQLAlchemy. Wrap them as conn.execute would, so the tasks'
        # retry (OperationalError/DBAPIError) sees a cancelled COPY or a lost server, and a dead
        # connection leaves the pool instead of being handed out again.
        lost = conn.dialect.is_disconnect(exc, dbapi_connection, cursor)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            statement, None, exc, conn.dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=conn.dialect
        ) from exc
    finally:
        if not cursor.closed:
            cursor.close()


def _bound(conn: Connection, statement_timeout: float, lock_timeout: float) -> None:
    """Bound this transaction's statements, the pauses between them and its lock waits (milliseconds),
    in one round trip (set_config with is_local is SET LOCAL)."""
    statement, lock = (str(max(1, round(seconds * 1000))) for seconds in (statement_timeout, lock_timeout))
    conn.execute(
        text(
            "SELECT set_config('statement_timeout', :statement, true), "
            "set_config('idle_in_transaction_session_timeout', :statement, true), "
            "set_config('lock_timeout', :lock, true)"
        ),
        {"statement": statement, "lock": lock},
    )


def _stage(conn: Connection, frame: pd.DataFrame, keep: tuple[str, ...] = ()) -> dict[str, str | None]:
    """COPY rows into this session's temporary table; it holds no lock another delivery needs.

    A SHAREABLE column with one value in every row (a chunk has one batch, model and source) is left
    out of the COPY and returned, for the moves to write as a parameter: it was a third of each
    row's bytes, formatted by Arrow and parsed by the server 100,000 times over. `keep`: columns a
    later statement reads from the staged rows, staged whatever their values."""
    shared: dict[str, str | None] = {}
    for name in SHAREABLE:
        if name not in frame or name in keep:
            continue
        values = frame[name].to_numpy()  # numpy's comparison: a third of pandas' time for 1,000 rows
        missing = pd.isna(values)
        if missing.all():
            shared[name] = None
        elif not missing.any() and (values == values[0]).all():
            shared[name] = str(values[0])
    conn.execute(CreateTable(STAGING, if_not_exists=True))
    staged = tuple(name for name in frame.columns if name not in shared)
    _copy(conn, STAGING.name, frame[list(staged)], staged)
    return shared


def _move_staged(conn: Connection, target: str, ids_are_new: bool, shared: dict[str, str | None]) -> int:
    """Fresh random ids go in as they are: the ledger already made this write the only one, and a
    freak collision fails the whole transaction. Ids a user supplied may exist already: ON CONFLICT.
    `shared`: the columns _stage left out, and their one value."""
    columns, sources, only = _MOVES[target]
    selected = [f"CAST(:{source} AS text)" if source in shared else source for source in sources]
    where = f" WHERE {only}" if only else ""
    conflict = "" if ids_are_new else " ON CONFLICT DO NOTHING"
    parameters = {source: shared[source] for source in sources if source in shared}
    result = conn.execute(
        text(
            f"INSERT INTO {target} ({', '.join(columns)}) "
            f"SELECT {', '.join(selected)} FROM {STAGING.name}{where}{conflict}"
        ),
        parameters,
    )
    return result.rowcount


def staged_frame(predictions: pd.DataFrame, outcomes: pd.DataFrame | None, shadow: pd.DataFrame | None) -> pd.DataFrame:
    """The chunk's rows as staged: predictions, with their outcome and shadow prediction beside them
    (rows of one chunk, in the same order, so no join is needed). Built in one go from the columns'
    arrays (by position; a time zone is kept, no object array): copying the predictions and adding
    columns one by one took twice as long (1.7 against 0.8 ms for 1,000 rides)."""
    columns = {name: predictions[name].array for name in PREDICTION_COLUMNS}
    for target, extra, sources in (
        (outcomes, STAGED_OUTCOME, STAGED_OUTCOME),
        (shadow, STAGED_SHADOW, ("model_version", "predicted_duration")),
    ):
        if target is not None and len(target):
            if (
                len(target) != len(predictions)
                or not (target["trip_id"].to_numpy() == predictions["trip_id"].to_numpy()).all()
            ):
                raise ValueError("outcomes and shadow predictions must be the chunk's rides, in the same order")
            for name, source in zip(extra, sources, strict=True):
                columns[name] = target[source].array
    known = columns.get("known_at")
    if known is not None and isinstance(known.dtype, pd.DatetimeTZDtype):
        columns["known_at"] = known.tz_convert("UTC").tz_localize(None)  # as STAGING holds it
    return pd.DataFrame(columns)


def _insert_rows(conn: Connection, frame: pd.DataFrame, table, keys: list[str]) -> int:
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for record in records:
        for key, value in record.items():
            if isinstance(value, pd.Timestamp):
                record[key] = value.to_pydatetime()
    result = conn.execute(_insert(conn, table).on_conflict_do_nothing(index_elements=keys), records)
    return result.rowcount


def write_chunk(
    engine: Engine,
    batch_id: str,
    chunk_index: int,
    frame: pd.DataFrame,
    ids_are_new: bool = False,
    outcomes: pd.DataFrame | None = None,
    shadow: pd.DataFrame | None = None,
    shadow_error: str | None = None,
    *,
    statement_timeout: float | None = None,
    lock_timeout: float | None = None,
) -> ChunkWrite:
    """Write one chunk's predictions exactly once; `frame` has PREDICTION_COLUMNS.

    `ids_are_new`: every trip_id was drawn at random for this chunk (not given by a user).
    `outcomes` (OUTCOME_COLUMNS; made-up rides know their true duration) and `shadow` (the
    challenger's predictions of the same rides: trip_id, model_version, predicted_duration) go in
    the same transaction, so they are exactly-once too; `shadow_error` (the challenger could not
    score the chunk) is recorded on the batch instead, which is written all the same.
    The timeouts (seconds) default to DATABASE_STATEMENT_TIMEOUT and DATABASE_LOCK_TIMEOUT.
    """
    settings = get_settings()
    statement_timeout = statement_timeout or settings.DATABASE_STATEMENT_TIMEOUT
    lock_timeout = lock_timeout or settings.DATABASE_LOCK_TIMEOUT
    model_version = str(frame["model_version"].iloc[0]) if len(frame) else ""
    has_outcomes = outcomes is not None and len(outcomes) > 0
    has_shadow = shadow is not None and len(shadow) > 0
    with engine.begin() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            _bound(conn, statement_timeout, lock_timeout)
            shared = _stage(conn, staged_frame(frame, outcomes, shadow))
        claimed = conn.execute(
            _insert(conn, batch_chunks)
            .values(
                batch_id=batch_id,
                chunk_index=chunk_index,
                # Fresh ids all go in (or the transaction fails). Given ids are usually new too; any
                # stored already are taken off below (nobody sees this count before the commit).
                rows_written=len(frame),
                model_version=model_version,
                hostname=socket.gethostname(),
            )
            .on_conflict_do_nothing(index_elements=["batch_id", "chunk_index"])
        ).rowcount
        if not claimed:
            log.info("batch %s chunk %d was already written; this delivery writes nothing", batch_id, chunk_index)
            return ChunkWrite(batch_id, chunk_index, 0, duplicate=True, batch_finished=False)
        if postgres:
            written = _move_staged(conn, "ride_predictions", ids_are_new, shared)
            if has_outcomes:
                _move_staged(conn, "ride_outcomes", ids_are_new, shared)
            if has_shadow:
                _move_staged(conn, "shadow_predictions", ids_are_new, shared)
        else:
            written = _insert_rows(conn, frame[list(PREDICTION_COLUMNS)], ride_predictions, ["trip_id"])
            if has_outcomes:
                _insert_rows(conn, outcomes[list(OUTCOME_COLUMNS)], ride_outcomes, ["trip_id"])
            if has_shadow:
                # Rides the challenger did not score (above SHADOW_SAMPLE_ROWS) have no shadow row.
                rows = shadow[list(SHADOW_COLUMNS)].dropna(subset=["predicted_duration"]).assign(batch_id=batch_id)
                _insert_rows(conn, rows, shadow_predictions, ["trip_id", "model_version"])
        if written != len(frame):
            conn.execute(
                update(batch_chunks)
                .where(batch_chunks.c.batch_id == batch_id, batch_chunks.c.chunk_index == chunk_index)
                .values(rows_written=written)
            )
        # The batch's last chunk finishes it in the same statement (SET reads the row as it was).
        last = batch_runs.c.chunks_done + 1 >= batch_runs.c.chunks_total
        done = conn.execute(
            update(batch_runs)
            .where(batch_runs.c.batch_id == batch_id, batch_runs.c.status != PRUNING)
            .values(
                rows_written=batch_runs.c.rows_written + written,
                chunks_done=batch_runs.c.chunks_done + 1,
                model_name=frame["model_name"].iloc[0] if len(frame) else batch_runs.c.model_name,
                model_version=model_version or batch_runs.c.model_version,
                status=case((last, "succeeded"), else_=batch_runs.c.status),
                finished_at=case((last, func.now()), else_=batch_runs.c.finished_at),
                error=case((last, null()), else_=batch_runs.c.error),
                **({"shadow_error": stored_error(shadow_error)} if shadow_error else {}),
            )
            .returning(batch_runs.c.chunks_done, batch_runs.c.chunks_total)
        ).one_or_none()
        if done is None:  # prune claimed the batch while this chunk was staged: roll the chunk back
            raise BatchPruned.of([batch_id])
        finished = done.chunks_done >= done.chunks_total
    return ChunkWrite(batch_id, chunk_index, written, duplicate=False, batch_finished=finished)


def write_batches(
    engine: Engine,
    frame: pd.DataFrame,
    outcomes: pd.DataFrame | None = None,
    shadow: pd.DataFrame | None = None,
    shadow_error: str | None = None,
    *,
    statement_timeout: float | None = None,
    lock_timeout: float | None = None,
) -> list[ChunkWrite]:
    """Write several one-chunk batches of made-up rides (a run of backfilled slots) in one transaction,
    each exactly once: `frame` holds their predictions side by side (PREDICTION_COLUMNS, its `batch_id`
    telling them apart; `outcomes` and `shadow` row for row, as for write_chunk).

    Each batch claims its own ledger key (chunk 0), as its own run_batch would: a batch whose key is
    taken (a single delivery of the same slot, an earlier attempt of this run) is dropped from the
    staged rows and the others are written. One COPY, one claim, one move per table and one update of
    batch_runs for the whole run, instead of a transaction of ten statements per slot. Returns one
    ChunkWrite per batch, in the order of first appearance in `frame`."""
    settings = get_settings()
    statement_timeout = statement_timeout or settings.DATABASE_STATEMENT_TIMEOUT
    lock_timeout = lock_timeout or settings.DATABASE_LOCK_TIMEOUT
    counts = frame["batch_id"].value_counts(sort=False)
    order = list(dict.fromkeys(frame["batch_id"]))
    if engine.dialect.name != "postgresql":  # the embedded store: one transaction per batch, as write_chunk
        return [_write_one(engine, batch_id, frame, outcomes, shadow, shadow_error) for batch_id in order]
    versions = frame.drop_duplicates("batch_id").set_index("batch_id")
    with engine.begin() as conn:
        _bound(conn, statement_timeout, lock_timeout)
        # batch_id stays staged: the batches whose key is taken are deleted from the staged rows by it.
        shared = _stage(conn, staged_frame(frame, outcomes, shadow), keep=("batch_id",))
        host = socket.gethostname()
        claimed = {
            row.batch_id
            for row in conn.execute(
                _insert(conn, batch_chunks)
                .values(
                    [
                        {
                            "batch_id": batch_id,
                            "chunk_index": 0,
                            "rows_written": int(counts[batch_id]),  # made-up ids: every staged row goes in
                            "model_version": str(versions.at[batch_id, "model_version"]),
                            "hostname": host,
                        }
                        for batch_id in sorted(order)  # the ledger's locks in one order, whoever claims
                    ]
                )
                .on_conflict_do_nothing(index_elements=["batch_id", "chunk_index"])
                .returning(batch_chunks.c.batch_id)
            )
        }
        taken = [batch_id for batch_id in order if batch_id not in claimed]
        if taken:
            log.info("%d of %d batches were already written; this run writes the others", len(taken), len(order))
            if not claimed:
                return [ChunkWrite(batch_id, 0, 0, duplicate=True, batch_finished=False) for batch_id in order]
            conn.execute(text(f"DELETE FROM {STAGING.name} WHERE batch_id = ANY(:taken)"), {"taken": taken})
        _move_staged(conn, "ride_predictions", True, shared)
        for target, present in (("ride_outcomes", outcomes), ("shadow_predictions", shadow)):
            if present is not None and len(present):
                _move_staged(conn, target, True, shared)
        written = [batch_id for batch_id in order if batch_id in claimed]
        finished = {
            row.batch_id: row.finished
            for row in conn.execute(
                text(
                    "UPDATE batch_runs AS b SET rows_written = b.rows_written + v.n, chunks_done = b.chunks_done + 1, "
                    "model_name = v.model_name, model_version = v.model_version, "
                    "shadow_error = COALESCE(:shadow_error, b.shadow_error), "
                    "status = CASE WHEN b.chunks_done + 1 >= b.chunks_total THEN 'succeeded' ELSE b.status END, "
                    "finished_at = CASE WHEN b.chunks_done + 1 >= b.chunks_total THEN now() ELSE b.finished_at END, "
                    "error = CASE WHEN b.chunks_done + 1 >= b.chunks_total THEN NULL ELSE b.error END "
                    "FROM unnest(CAST(:ids AS text[]), CAST(:ns AS integer[]), CAST(:names AS text[]), "
                    "CAST(:versions AS text[])) AS v(batch_id, n, model_name, model_version) "
                    f"WHERE b.batch_id = v.batch_id AND b.status <> '{PRUNING}' "
                    "RETURNING b.batch_id, b.status = 'succeeded' AS finished"
                ),
                {
                    "ids": written,
                    "ns": [int(counts[batch_id]) for batch_id in written],
                    "names": [str(versions.at[batch_id, "model_name"]) for batch_id in written],
                    "versions": [str(versions.at[batch_id, "model_version"]) for batch_id in written],
                    "shadow_error": stored_error(shadow_error) if shadow_error else None,
                },
            )
        }
        if pruned := [batch_id for batch_id in written if batch_id not in finished]:
            raise BatchPruned.of(pruned)  # claimed by prune meanwhile: the run rolls back; run_slots retries without it
    return [
        ChunkWrite(batch_id, 0, int(counts[batch_id]), duplicate=False, batch_finished=finished[batch_id])
        if batch_id in claimed
        else ChunkWrite(batch_id, 0, 0, duplicate=True, batch_finished=False)
        for batch_id in order
    ]


def _write_one(
    engine: Engine,
    batch_id: str,
    frame: pd.DataFrame,
    outcomes: pd.DataFrame | None,
    shadow: pd.DataFrame | None,
    shadow_error: str | None,
) -> ChunkWrite:
    """One batch of a run written on its own (SQLite): its rows of each frame, row for row."""
    mine = (frame["batch_id"] == batch_id).to_numpy()
    return write_chunk(
        engine,
        batch_id,
        0,
        frame[mine],
        True,
        None if outcomes is None or not len(outcomes) else outcomes[mine],
        shadow=None if shadow is None or not len(shadow) else shadow[mine],
        shadow_error=shadow_error,
    )


MAX_ERROR_CHARS = 2000


def stored_error(text: str) -> str:
    """Error text as it may be stored: redacted and cut to MAX_ERROR_CHARS.

    Stored errors are shown by `batches`, `status`, the report and Grafana (whose database role
    reads them): a driver's or the registry client's message may quote a URL with its password.
    """
    try:
        settings = get_settings()
    except SettingsError:  # only the URL rule then; a process with bad settings never got this far
        settings = None
    return redact(text, settings)[:MAX_ERROR_CHARS]


def mark_batch(engine: Engine, batch_id: str, status: str, error: str | None = None) -> None:
    """Record a retry or failure; a batch that already succeeded (or that prune is deleting) keeps its status."""
    values: dict[str, Any] = {"status": status, "error": None if error is None else stored_error(error)}
    if status == "failed":
        values["finished_at"] = func.now()
    with engine.begin() as conn:
        conn.execute(
            update(batch_runs)
            .where(batch_runs.c.batch_id == batch_id, batch_runs.c.status.not_in(("succeeded", PRUNING)))
            .values(**values)
        )


def record_broken_send(engine: Engine, batch_id: str, rides: int, chunks_total: int, error: str) -> None:
    """A file's batch whose later chunks were never sent: failed, recorded here if no worker has yet
    (a failed batch stays failed, so its sent chunks, written later, do not make it `running`)."""
    values = {"status": "failed", "error": stored_error(error), "finished_at": func.now()}
    with engine.begin() as conn:
        conn.execute(
            _insert(conn, batch_runs)
            .values(batch_id=batch_id, trigger="file", rides_requested=rides, chunks_total=chunks_total, **values)
            .on_conflict_do_nothing(index_elements=["batch_id"])
        )
        conn.execute(
            update(batch_runs)
            .where(batch_runs.c.batch_id == batch_id, batch_runs.c.status.not_in(("succeeded", PRUNING)))
            .values(**values)
        )


def record_refusal(engine: Engine, batch_id: str, slot: datetime, error: str, sent_by: str | None) -> bool:
    """Say why a scheduled slot's message failed, if it failed before its batch was recorded (a batch
    that exists keeps its own error in batch_runs). The latest refusal of a slot wins. True if stored."""
    values = {"slot": slot, "error": stored_error(error), "sent_by": sent_by, "refused_at": func.now()}
    with engine.begin() as conn:
        if conn.execute(select(batch_runs.c.batch_id).where(batch_runs.c.batch_id == batch_id)).first():
            return False
        statement = _insert(conn, slot_refusals).values(batch_id=batch_id, **values)
        conn.execute(statement.on_conflict_do_update(index_elements=["batch_id"], set_=values))
    return True


REOPEN_KEPT = ("status", "error", "attempts", "finished_at", "attempt_started_at", "model_version", "model_pinned_by")


def reopen_batch(
    engine: Engine, batch_id: str, note: str, repin: tuple[str, str, str] | None = None
) -> dict[str, Any] | None:
    """Show a failed (or stuck) batch as `retrying` with one more attempt, sent now (its attempt's start:
    a second `rerun` at once finds it fresh and refuses), before `rerun` or `backfill` sends it again;
    returns what the row held before (for `undo_reopen`), or None if it succeeded or a worker took it.
    Raises BatchPruned if prune has claimed it: the row lock makes that either-or, never both.

    `repin` (from_version, to_version, pinned_by) moves the batch to another version in the same
    statement, only if it is still pinned to from_version (else None: it changed meanwhile)."""
    with engine.begin() as conn:
        query = select(*(batch_runs.c[c] for c in REOPEN_KEPT)).where(batch_runs.c.batch_id == batch_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        before = conn.execute(query).mappings().first()
        if before is not None and before["status"] == PRUNING:
            raise BatchPruned.of([batch_id])
        if before is None or before["status"] == "succeeded":
            return None
        reopen = (
            update(batch_runs)
            # As read: SQLite takes no row lock, and a prune's claim may have come in between.
            .where(batch_runs.c.batch_id == batch_id, batch_runs.c.status == before["status"])
            .values(
                status="retrying",
                error=stored_error(note),
                attempts=before["attempts"] + 1,
                attempt_started_at=func.now(),
            )
        )
        if repin is not None:
            if before["model_version"] != repin[0]:
                return None
            reopen = reopen.where(batch_runs.c.model_version == repin[0]).values(
                model_version=repin[1], model_pinned_by=repin[2]
            )
        reopened = conn.execute(reopen).rowcount
        if not reopened:
            now = conn.execute(select(batch_runs.c.status).where(batch_runs.c.batch_id == batch_id)).scalar()
            if now == PRUNING:
                raise BatchPruned.of([batch_id])
            return None  # a worker took it meanwhile: it is that worker's
    return dict(before)


def undo_reopen(engine: Engine, batch_id: str, before: dict[str, Any]) -> bool:
    """The send failed: put the row back exactly as `reopen_batch` found it, unless a worker has
    touched it since (then it is that worker's). True if it was put back."""
    with engine.begin() as conn:
        restored = conn.execute(
            update(batch_runs)
            .where(
                batch_runs.c.batch_id == batch_id,
                batch_runs.c.status == "retrying",
                batch_runs.c.attempts == before["attempts"] + 1,
            )
            .values(**{column: before[column] for column in REOPEN_KEPT})
        ).rowcount
    return bool(restored)


def get_batch(engine: Engine, batch_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(batch_runs).where(batch_runs.c.batch_id == batch_id)).mappings().first()
    return dict(row) if row else None


def chunks_written(engine: Engine, batch_id: str) -> int:
    """How many of the batch's chunks are in the ledger (written, each with its own model version)."""
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(batch_chunks).where(batch_chunks.c.batch_id == batch_id)
        ).scalar_one()


def get_batches(engine: Engine, batch_ids: list[str]) -> list[dict[str, Any]]:
    """The rows of the batches recorded among `batch_ids`, in batch id order."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(batch_runs).where(batch_runs.c.batch_id.in_(batch_ids)).order_by(batch_runs.c.batch_id)
        ).mappings()
        return [dict(row) for row in rows]


def last_finished_batch(engine: Engine, status: str = "succeeded") -> dict[str, Any] | None:
    """The newest batch that finished with `status` (succeeded, or failed)."""
    with engine.connect() as conn:
        row = (
            conn.execute(
                select(batch_runs)
                .where(batch_runs.c.status == status, batch_runs.c.finished_at.is_not(None))
                .order_by(batch_runs.c.finished_at.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None
