"""The database tables. Alembic migrations (worker/migrations) create and change them.

`ride_predictions` keeps the original system's columns and meanings, plus lineage.
`batch_chunks` is the ledger that makes a chunk's write happen once: its key is
inserted in the same transaction as the chunk's rows, so a redelivered or
parallel duplicate finds the key taken and writes nothing.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    func,
)

metadata = MetaData()

ride_predictions = Table(
    "ride_predictions",
    metadata,
    Column("trip_id", Uuid(as_uuid=False), primary_key=True),
    Column("pickup_community_area", Integer),
    Column("dropoff_community_area", Integer),
    Column("trip_start_timestamp", DateTime(timezone=False), nullable=False, comment="Chicago local time"),
    Column("fare", Float, nullable=False),
    Column("trip_total", Float),
    Column("trip_miles", Float, nullable=False),
    Column("predicted_duration", Float, nullable=False, comment="minutes"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now(), comment="UTC"),
    Column("model_name", String(200), nullable=False),
    Column("model_version", String(40), nullable=False),
    Column("batch_id", String(120), nullable=False),
    Index("ix_ride_predictions_batch_id", "batch_id"),
    Index("ix_ride_predictions_created_at", "created_at"),
)

batch_runs = Table(
    "batch_runs",
    metadata,
    Column("batch_id", String(120), primary_key=True),
    Column("trigger", String(20), nullable=False, comment="schedule, adhoc or file"),
    Column("task_id", String(64)),
    Column("seed", String(40)),
    Column("rides_requested", Integer, nullable=False),
    Column("rows_written", Integer, nullable=False, server_default="0"),
    Column("chunks_total", Integer, nullable=False, server_default="1"),
    Column("chunks_done", Integer, nullable=False, server_default="0"),
    Column("model_name", String(200)),
    Column("model_version", String(40)),
    Column("window_start", DateTime(timezone=False), comment="Chicago local"),
    Column("window_end", DateTime(timezone=False), comment="Chicago local"),
    Column("status", String(20), nullable=False, comment="running, retrying, succeeded or failed"),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("error", Text),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    Index("ix_batch_runs_finished_at", "finished_at"),
)

batch_chunks = Table(
    "batch_chunks",
    metadata,
    Column("batch_id", String(120), primary_key=True),
    Column("chunk_index", Integer, primary_key=True),
    Column("rows_written", Integer, nullable=False),
    Column("model_version", String(40), nullable=False),
    Column("written_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
