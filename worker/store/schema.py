"""The database tables. Alembic migrations (worker/store/migrations) create and change them.

`ride_predictions` keeps the original system's columns and meanings, plus lineage.
`batch_chunks` is the ledger that makes a chunk's write happen once: its key is
inserted in the same transaction as the chunk's rows, so a redelivered or
parallel duplicate finds the key taken and writes nothing.

Times: ride and window times are naive Chicago local time, as in the city's
data; bookkeeping times (`created_at`, `started_at`, `slot`, ...) are UTC.
The monitoring tables (`ride_outcomes`, `batch_metrics`, `column_drift`,
`window_metrics`, `window_column_drift`, `daily_accuracy`) are keyed by batch or
window and model version, never by anything that a retry would change.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    false,
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
    # A B-tree: the rides-scored panel counts a range of it from the index alone (3-6 ms for a day on
    # 90 days; through BRIN it read the heap, 15-19 ms, past the 1.5x read aim), and its values
    # arrive in order, so each entry appends at the index's right edge.
    Index("ix_ride_predictions_created_at", "created_at"),
    # A block-range (BRIN) index on PostgreSQL (migration 0013): a B-tree entry per row cost every
    # write an insert among random trip starts, for a column read only by time ranges. minmax-multi
    # keeps several intervals per 128 pages, so a backfilled week among today's rides still reads
    # as apart; `prune` summarizes afresh the ranges it empties. SQLite keeps a B-tree.
    Index(
        "ix_ride_predictions_trip_start_timestamp",
        "trip_start_timestamp",
        postgresql_using="brin",
        postgresql_ops={"trip_start_timestamp": "timestamp_minmax_multi_ops"},
        postgresql_with={"autosummarize": "on"},
    ),
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
    Column(
        "status",
        String(20),
        nullable=False,
        comment="running, retrying, succeeded, failed or pruning (claimed by a prune that is deleting it)",
    ),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("error", Text),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    Column("speed_factor", Float, nullable=False, server_default="1.0", comment="generated speeds x this"),
    Column("fare_factor", Float, nullable=False, server_default="1.0", comment="meter rates x this"),
    Column("slot", DateTime(timezone=True), comment="UTC beat slot of a scheduled batch"),
    Column(
        "model_pinned_by",
        String(20),
        comment=(
            "alias, fallback, fixed or given: how model_version was chosen; converted or repinned: "
            "moved by rerun off a version no worker can score with"
        ),
    ),
    Column("chunk_size", Integer, comment="rides per chunk the first delivery planned with"),
    Column("attempt_started_at", DateTime(timezone=True), comment="UTC start of the latest attempt"),
    Column("challenger_version", String(40), comment="the challenger version pinned for shadow scoring, if any"),
    Column(
        "shadow_error", Text, comment="why the challenger could not score (part of) the batch; the batch is unaffected"
    ),
    Column("sent_by", String(20), comment="who first sent a scheduled slot: beat, backfill or rerun"),
    Index("ix_batch_runs_finished_at", "finished_at"),
    Index("ix_batch_runs_started_at", "started_at"),
    Index("ix_batch_runs_slot", "slot"),
    Index("ix_batch_runs_status", "status"),
    # The newest finished batch per trigger and status (exporter, status), one descent each.
    Index("ix_batch_runs_trigger_status_finished_at", "trigger", "status", "finished_at"),
)

batch_chunks = Table(
    "batch_chunks",
    metadata,
    Column("batch_id", String(120), primary_key=True),
    Column("chunk_index", Integer, primary_key=True),
    Column("rows_written", Integer, nullable=False),
    Column("model_version", String(40), nullable=False),
    Column("written_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("hostname", String(255), comment="the worker that wrote the chunk"),
)

# What actually happened: the true duration, known once the trip ended.
ride_outcomes = Table(
    "ride_outcomes",
    metadata,
    Column("trip_id", Uuid(as_uuid=False), primary_key=True),
    Column("actual_duration", Float, nullable=False, comment="minutes"),
    Column("observed_at", DateTime(timezone=False), nullable=False, comment="Chicago local: trip start + duration"),
    Column("source", String(20), nullable=False, comment="generated or file"),
    Column("loaded_at", DateTime(timezone=True), nullable=False, server_default=func.now(), comment="UTC"),
    Column(
        "known_at",
        DateTime(timezone=True),
        comment="UTC: when the service could first know it, the later of the trip's end and loaded_at",
    ),
    # No index on observed_at: it is only compared beside a join on trip_id (migration 0010).
    Index("ix_ride_outcomes_known_at", "known_at"),
)

# One row per batch: its predictions, its drift against the reference of the version that
# scored it, and (once outcomes are observed) its live accuracy.
batch_metrics = Table(
    "batch_metrics",
    metadata,
    Column("batch_id", String(120), primary_key=True),
    Column("model_version", String(40)),
    Column("window_start", DateTime(timezone=False), comment="Chicago local"),
    Column("window_end", DateTime(timezone=False), comment="Chicago local"),
    Column("rows", Integer, nullable=False, server_default="0"),
    Column("prediction_mean", Float),
    Column("prediction_p10", Float),
    Column("prediction_p50", Float),
    Column("prediction_p90", Float),
    Column("missing_share", Float, comment="share of missing values in the input columns"),
    Column("columns_checked", Integer, comment="columns counted toward dataset drift"),
    Column("drifted_columns", Integer),
    Column("dataset_drift", Boolean),
    Column("reference", String(80), comment="which reference rows the batch was compared with"),
    Column("monitor_status", String(20), nullable=False, comment="ok, no_reference, waiting or failed"),
    Column("monitor_error", Text),
    Column("monitored_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("outcomes", Integer, comment="rides whose true duration is known"),
    Column("mae", Float, comment="minutes"),
    Column("rmse", Float, comment="minutes"),
    Column("bias", Float, comment="mean(predicted - actual), minutes"),
    Column("quality_at", DateTime(timezone=True)),
    Index("ix_batch_metrics_window_end", "window_end"),
    Index("ix_batch_metrics_monitored_at", "monitored_at"),
)

column_drift = Table(
    "column_drift",
    metadata,
    Column("batch_id", String(120), primary_key=True),
    Column("column_name", String(60), primary_key=True),
    Column("method", String(40), nullable=False, comment="Evidently's name of the test"),
    Column("score", Float),
    Column("threshold", Float, nullable=False),
    Column("drifted", Boolean, nullable=False),
)

# Rolling windows (a clock hour of scheduled batches, per model version): the like-for-like
# comparison with enough rides to see a shift that single night slots are too small for. Keyed by
# UTC instants: the two 01:00-02:00 hours of November's change are two windows, not one.
window_metrics = Table(
    "window_metrics",
    metadata,
    Column("window_end", DateTime(timezone=True), primary_key=True, comment="UTC instant the clock hour ends"),
    Column("window_minutes", Integer, primary_key=True),
    Column("model_version", String(40), primary_key=True),
    Column("window_start", DateTime(timezone=True), nullable=False, comment="UTC instant the clock hour starts"),
    Column("batches", Integer, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("columns_checked", Integer),
    Column("drifted_columns", Integer),
    Column("dataset_drift", Boolean),
    Column("reference", String(80)),
    Column("computed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

window_column_drift = Table(
    "window_column_drift",
    metadata,
    Column("window_end", DateTime(timezone=True), primary_key=True, comment="UTC instant the clock hour ends"),
    Column("window_minutes", Integer, primary_key=True),
    Column("model_version", String(40), primary_key=True),
    Column("column_name", String(60), primary_key=True),
    Column("method", String(40), nullable=False),
    Column("score", Float),
    Column("threshold", Float, nullable=False),
    Column("drifted", Boolean, nullable=False),
)

# Live accuracy per Chicago-local day of trip start and model version, beside what the version
# promised (its held-out MAE) and what always guessing the median would have scored.
daily_accuracy = Table(
    "daily_accuracy",
    metadata,
    Column("day", Date, primary_key=True, comment="Chicago local date of the trips' start"),
    Column("model_version", String(40), primary_key=True),
    Column("outcomes", Integer, nullable=False),
    Column("mae", Float, nullable=False),
    Column("rmse", Float, nullable=False),
    Column("bias", Float, nullable=False),
    Column("baseline_mae", Float, comment="always-the-median baseline on the same rides"),
    Column("heldout_mae", Float, comment="the version's MAE on held-out rides at training"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The model's life cycle (worker/lifecycle): every alias move, intended then confirmed or failed, and
# moves seen in the registry that no command of this project made. MLflow keeps no alias history.
model_events = Table(
    "model_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now(), comment="UTC"),
    Column("model_name", String(200), nullable=False),
    Column("alias", String(60), comment="the alias moved; none for `registered`"),
    Column("action", String(30), nullable=False),
    Column("from_version", String(40)),
    Column("to_version", String(40)),
    Column("actor", String(200), nullable=False, comment="MLflow user, else OS user; `policy`; `unknown`"),
    Column("reason", Text),
    Column("evidence", JSON, comment="the numbers the decision rested on"),
    Column("status", String(10), nullable=False, comment="pending, done or failed"),
    Column("error", Text),
    Column("finished_at", DateTime(timezone=True)),
    Index("ix_model_events_model_at", "model_name", "at"),
)

# Where the record says each alias points: moved only by a confirmed event, so that a worker that
# finds the registry elsewhere knows the move was not the project's (a compare-and-set on this row
# records it once, however many workers notice).
model_aliases = Table(
    "model_aliases",
    metadata,
    Column("model_name", String(200), primary_key=True),
    Column("alias", String(60), primary_key=True),
    Column("version", String(40), comment="none: the alias is absent"),
    Column("event_id", Integer),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# What the challenger predicted for each ride of a batch (shadow scoring); written in the batch's own
# transaction, so exactly once like the predictions. Users never read these as predictions.
shadow_predictions = Table(
    "shadow_predictions",
    metadata,
    Column("trip_id", Uuid(as_uuid=False), primary_key=True),
    Column("model_version", String(40), primary_key=True),
    Column("batch_id", String(120), nullable=False),
    Column("predicted_duration", Float, nullable=False, comment="minutes"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now(), comment="UTC"),
    Index("ix_shadow_predictions_batch_id", "batch_id"),
    Index("ix_shadow_predictions_model_version_created_at", "model_version", "created_at"),
)

# The paired comparison of a challenger with production on the same rides, as the last pass computed it
# (worker/monitor/paired.py): what `models --compare`, `status`, the report and the exporter show.
shadow_comparisons = Table(
    "shadow_comparisons",
    metadata,
    Column("challenger_version", String(40), primary_key=True),
    Column("production_version", String(40), primary_key=True),
    Column("model_name", String(200), nullable=False),
    Column("outcomes", Integer, nullable=False, comment="rides scored by both with a known duration"),
    Column("production_mae", Float),
    Column("challenger_mae", Float),
    Column("mean_difference", Float, comment="mean(|challenger error| - |production error|), minutes"),
    Column("ci_low", Float, comment="95 % t-interval of the mean difference"),
    Column("ci_high", Float),
    Column("wilcoxon_p", Float, comment="Wilcoxon signed-rank p-value, a check on the interval"),
    Column("first_at", DateTime(timezone=True), comment="UTC: the first shadow prediction counted"),
    Column("computed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The model policy's own state (worker/lifecycle/policy.py), one row per model: paused by a person or
# halted after a rollback, the guard it keeps after a promotion, when it last retrained, what it last
# did and why, and the lease that keeps two passes from acting at once.
model_policy = Table(
    "model_policy",
    metadata,
    Column("model_name", String(200), primary_key=True),
    Column("paused", Boolean, nullable=False, server_default=false(), comment="by a person: models policy pause"),
    Column("halted", Boolean, nullable=False, server_default=false(), comment="after its own rollback, until resumed"),
    Column("note", Text, comment="why it is paused or halted"),
    Column("confirmed_version", String(40), comment="the last version the policy promoted whose watch ended well"),
    Column("challenger_since", DateTime(timezone=True), comment="when the current challenger was set"),
    Column("degraded_since", DateTime(timezone=True), comment="first pass that found production degraded"),
    Column("last_retrain_at", DateTime(timezone=True)),
    Column("last_retrain_rows", Integer, comment="post-change rides the last retrain learned from"),
    Column("last_action", String(30), comment="retrain, promote, retire, rollback, wait, none"),
    Column("last_reason", Text),
    Column("last_evidence", JSON),
    Column("last_pass_at", DateTime(timezone=True)),
    Column("attention", String(40), comment="why a person is needed now, if one is: recovery_failed, ..."),
    Column("lease_until", DateTime(timezone=True), comment="a pass holds the policy until then"),
    Column("lease_owner", String(200)),
)

# Scheduled slots whose message a worker refused or dropped before it recorded a batch (a bad
# setting, an expired message): such a slot has no batch_runs row and shows as missed, and this says
# why. Written by the failing task. A later run of the slot writes its batch as usual and leaves the
# row (no extra statement on every batch's start): readers ask only about slots still missed.
slot_refusals = Table(
    "slot_refusals",
    metadata,
    Column("batch_id", String(120), primary_key=True, comment="the batch id the slot would have had"),
    Column("slot", DateTime(timezone=True), nullable=False, comment="UTC"),
    Column("error", Text, nullable=False, comment="why the worker refused it, redacted"),
    Column("sent_by", String(20), comment="beat, backfill or rerun"),
    Column("refused_at", DateTime(timezone=True), nullable=False, server_default=func.now(), comment="UTC"),
    Index("ix_slot_refusals_slot", "slot"),
)
