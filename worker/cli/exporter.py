"""`python -m worker exporter`: batch, drift, accuracy, queue and worker metrics for Prometheus.

Flower's /metrics covers the tasks (events, runtimes). This exporter adds what
only the database, the broker and the registry know, read fresh on every scrape:
when the last batch succeeded, what failed, which slots were missed, how long
the queue is, which workers send heartbeats, how the last batch drifted, how the
live MAE of each model version compares with its held-out MAE.

A scrape never hangs on a sick dependency. Each source (database, broker,
registry) is read in its own thread and waited for at most
EXPORTER_TIMEOUT_SECONDS; a source that fails or is late is reported with its
`taxi_*_up` gauge at 0 and `taxi_exporter_errors_total` counting up, and its
other series are left out of that scrape (absent, not zero, so that no alert
reads "0 rows" when the truth is "unknown"). A read still stuck from an earlier
scrape is waited on again rather than started twice.

Workers alive come from their heartbeat events, which expire (Flower's
`flower_worker_online` stays 1 for a worker killed without a goodbye,
mher/flower#1128). The exporter writes nothing to the broker: no ping (a ping
travels where `shutdown` does), no queue declared (broker_reads.py).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.cli.broker_reads import WorkerHeartbeats, WorkersUnknown, waiting_messages
from worker.cli.launcher import check_port_free
from worker.settings import Settings, redact
from worker.store.snapshot import (
    EVENT_ACTIONS,
    FINISHED,
    MONITOR_STATUSES,
    TRIGGERS,
    UNFINISHED,
    BatchState,
    DriftState,
    LifecycleState,
    VersionAccuracy,
    as_utc,
    read_accuracy,
    read_batches,
    read_drift,
    read_lifecycle,
    scrape_engine,
)

log = logging.getLogger(__name__)

SOURCES = ("database", "broker", "workers", "registry")
# A worker that answered once is reported (as 0) while silent for up to this long, then forgotten,
# so a worker removed on purpose stops alerting after an hour.
WORKER_MEMORY_SECONDS = 3600.0


@dataclass
class Reading:
    value: Any = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class BoundedRead:
    """One source, read in its own thread; a scrape waits for it at most `timeout` seconds.

    A read that is still running (a hung connection) is waited on again by the next scrape
    instead of starting a second one, so a dead dependency costs one thread, not one per scrape.
    """

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"exporter-{name}")
        self._lock = threading.Lock()
        self._future: Future | None = None
        self._started = 0.0

    def start(self, read: Callable[[], Any]) -> None:
        with self._lock:
            if self._future is None or self._future.done():
                self._started = time.monotonic()
                self._future = self._executor.submit(self._timed, read)

    @staticmethod
    def _timed(read: Callable[[], Any]) -> tuple[Any, float]:
        started = time.monotonic()
        return read(), time.monotonic() - started

    def result(self, deadline: float) -> Reading:
        with self._lock:
            future, started = self._future, self._started
        if future is None:
            return Reading(error="never started")
        try:
            value, seconds = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            return Reading(error=f"no answer within {self.timeout:g} s", seconds=time.monotonic() - started)
        except Exception as exc:  # any failure of a dependency means "down", with its reason
            return Reading(error=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - started)
        return Reading(value=value, seconds=seconds)


@dataclass
class DatabaseReading:
    batches: BatchState
    drift: DriftState
    accuracy: list[VersionAccuracy]
    lifecycle: LifecycleState


@dataclass
class BrokerReading:
    queue_lengths: dict[str, int]  # by queue
    workers: list[str] | None  # None: not hearing the workers' heartbeats
    ping_error: str | None = None


@dataclass
class RegistryReading:
    model_name: str
    production_version: str | None
    heldout_mae_minutes: dict[str, float] = field(default_factory=dict)  # by version, from the `mae_minutes` tag
    challenger_version: str | None = None


def read_database(settings: Settings, engine: Any) -> DatabaseReading:
    now = datetime.now(UTC)
    return DatabaseReading(
        batches=read_batches(engine, now, settings.BATCH_INTERVAL_SECONDS),
        drift=read_drift(engine, now),
        accuracy=read_accuracy(engine, now),
        lifecycle=read_lifecycle(
            engine, now, settings.MODEL_NAME, settings.MODEL_ALIAS, settings.POLICY_WINDOW_OUTCOMES
        ),
    )


def read_broker(timeout: float, heartbeats: WorkerHeartbeats) -> BrokerReading:
    """Every queue's length and the workers heard alive; nothing declared, sent or pinged."""
    from worker.celery_app import QUEUES, app

    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        lengths = {queue: waiting_messages(conn.default_channel, queue) for queue in QUEUES}
    try:
        return BrokerReading(lengths, heartbeats.alive())
    except WorkersUnknown as exc:  # the queues were readable; only the heartbeats are not heard
        return BrokerReading(lengths, None, str(exc))


def read_registry(settings: Settings) -> RegistryReading:
    from worker.model.registry import CHALLENGER_ALIAS, configure_mlflow, read_state

    client = configure_mlflow(settings)
    state = read_state(client, settings.model_uri)
    found = (state.name, state.version) if state.version is not None else None
    name = state.name
    heldout = {}
    if found is not None:
        for version in client.search_model_versions(f"name='{name}'"):
            tag = (version.tags or {}).get("mae_minutes")
            try:
                heldout[str(version.version)] = float(tag)
            except (TypeError, ValueError):
                continue
    return RegistryReading(name, found[1] if found else None, heldout, state.aliases.get(CHALLENGER_ALIAS))


def gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class TaxiCollector(Collector):
    """Reads every source on each scrape (bounded), and turns the answers into metric families."""

    def __init__(self, settings: Settings, heartbeats: WorkerHeartbeats) -> None:
        self.settings = settings
        self.heartbeats = heartbeats
        timeout = settings.EXPORTER_TIMEOUT_SECONDS
        self.timeout = timeout
        self.engine = scrape_engine(settings.database_url, timeout)
        self.reads = {name: BoundedRead(name, timeout) for name in ("database", "broker", "registry")}
        self.errors = dict.fromkeys(SOURCES, 0)
        self.down: set[str] = set()
        self.workers_seen: dict[str, float] = {}
        self.registry_cache: RegistryReading | None = None
        self.registry_read_at = -1e18
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return []  # families are decided at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        deadline = time.monotonic() + self.timeout
        self.reads["database"].start(lambda: read_database(self.settings, self.engine))
        self.reads["broker"].start(lambda: read_broker(self.timeout, self.heartbeats))
        refresh = time.monotonic() - self.registry_read_at >= self.settings.MODEL_REFRESH_SECONDS
        if refresh or self.registry_cache is None:
            self.reads["registry"].start(lambda: read_registry(self.settings))
            registry = self.reads["registry"].result(deadline)
        else:
            registry = Reading(value=self.registry_cache)
        database = self.reads["database"].result(deadline)
        broker = self.reads["broker"].result(deadline)
        with self._lock:
            if registry.ok:
                if refresh or self.registry_cache is None:
                    self.registry_read_at = time.monotonic()
                self.registry_cache = registry.value
            workers = self._workers(broker)
            self._note("database", database)
            self._note("broker", broker)
            self._note("workers", workers)
            self._note("registry", registry)
            errors = dict(self.errors)
        yield from self._health(database, broker, registry, errors)
        if database.ok:
            yield from self._batches(database.value.batches)
            yield from self._drift(database.value.drift)
        if broker.ok:
            queue = gauge(
                "taxi_queue_length", "Messages waiting in each broker queue (celery, monitoring, training).", ["queue"]
            )
            for name, length in broker.value.queue_lengths.items():
                queue.add_metric([name], length)
            yield queue
        if workers.ok:
            yield from self._worker_families(workers.value)
        yield from self._accuracy(database, registry)
        if database.ok:
            yield from self._lifecycle(database.value.lifecycle)

    def _workers(self, broker: Reading) -> Reading:
        """Ping replies as {worker: answered now}, remembering silent workers for WORKER_MEMORY_SECONDS."""
        if not broker.ok:
            return Reading(error="broker down")
        if broker.value.workers is None:
            return Reading(error=broker.value.ping_error)
        now = time.monotonic()
        answered = set(broker.value.workers)
        for name in answered:
            self.workers_seen[name] = now
        for name, seen in list(self.workers_seen.items()):
            if now - seen > WORKER_MEMORY_SECONDS:
                del self.workers_seen[name]
        return Reading(value={name: name in answered for name in sorted(self.workers_seen)})

    def _note(self, source: str, reading: Reading) -> None:
        if reading.ok:
            if source in self.down:
                log.info("exporter: %s is answering again", source)
                self.down.discard(source)
            return
        self.errors[source] += 1
        if source not in self.down:
            log.warning("exporter: %s read failed: %s", source, redact(reading.error or "", self.settings))
            self.down.add(source)

    def _health(
        self, database: Reading, broker: Reading, registry: Reading, errors: dict[str, int]
    ) -> Iterator[Metric]:
        for source, reading in (("database", database), ("broker", broker), ("registry", registry)):
            up = gauge(f"taxi_{source}_up", f"1 if the exporter's last read of the {source} succeeded in time, else 0.")
            up.add_metric([], 1.0 if reading.ok else 0.0)
            yield up
        failed = CounterMetricFamily(
            "taxi_exporter_errors",
            "Scrapes in which reading a source failed or timed out, since the exporter started.",
            labels=["source"],
        )
        for source in SOURCES:
            failed.add_metric([source], errors[source])
        yield failed
        took = gauge("taxi_exporter_read_duration_seconds", "How long the last read of each source took.", ["source"])
        for source, reading in (("database", database), ("broker", broker), ("registry", registry)):
            took.add_metric([source], reading.seconds)
        yield took
        interval = gauge("taxi_batch_interval_seconds", "BATCH_INTERVAL_SECONDS: how often beat sends a batch.")
        interval.add_metric([], self.settings.BATCH_INTERVAL_SECONDS)
        yield interval

    def _batches(self, state: BatchState) -> Iterator[Metric]:
        last_ok = gauge(
            "taxi_batch_last_success_timestamp_seconds",
            "Unix time the newest succeeded batch finished, by trigger (schedule, adhoc, file).",
            ["trigger"],
        )
        for trigger, at in sorted(state.last_success.items()):
            last_ok.add_metric([trigger], at.timestamp())
        yield last_ok
        if state.last_slot is not None:
            slot = gauge(
                "taxi_batch_last_slot_timestamp_seconds",
                "The newest slot beat itself sent whose batch succeeded: beat's heartbeat (backfills and reruns, "
                "however recent their slots, do not move it).",
            )
            slot.add_metric([], state.last_slot.timestamp())
            yield slot
        last_failed = gauge(
            "taxi_batch_last_failure_timestamp_seconds",
            "Unix time the newest failed batch gave up, by trigger.",
            ["trigger"],
        )
        for trigger, at in sorted(state.last_failure.items()):
            last_failed.add_metric([trigger], at.timestamp())
        yield last_failed
        rows = gauge("taxi_batch_last_rows", "Rows written by the newest succeeded batch, by trigger.", ["trigger"])
        took = gauge(
            "taxi_batch_last_duration_seconds",
            "Start to finish of the newest succeeded batch, by trigger.",
            ["trigger"],
        )
        for trigger in sorted(state.last_rows):
            rows.add_metric([trigger], state.last_rows[trigger])
            took.add_metric([trigger], state.last_duration_seconds[trigger])
        yield rows
        yield took
        finished = gauge(
            "taxi_batches_finished_last_hour",
            "Batches that finished in the last hour, by final status (succeeded, failed) and trigger.",
            ["status", "trigger"],
        )
        for status in FINISHED:
            for trigger in TRIGGERS:
                finished.add_metric([status, trigger], state.finished_last_hour.get((status, trigger), 0))
        yield finished
        written = gauge(
            "taxi_rows_written_last_hour", "Rows written by batches that succeeded in the last hour.", ["trigger"]
        )
        for trigger in TRIGGERS:
            written.add_metric([trigger], state.rows_last_hour.get(trigger, 0))
        yield written
        unfinished = gauge(
            "taxi_batches_unfinished", "Batches now running or waiting to retry, whatever their age.", ["status"]
        )
        for status in UNFINISHED:
            unfinished.add_metric([status], state.unfinished.get(status, 0))
        yield unfinished
        missed = gauge(
            "taxi_missed_slots_last_day",
            "Beat slots of the last 24 hours that have no batch at all (the newest two slots are not counted yet).",
        )
        missed.add_metric([], state.missed_slots_last_day)
        yield missed
        refused = gauge(
            "taxi_refused_slots_last_day",
            "Of the missed slots, those a worker refused or dropped as expired before recording a batch "
            "(status and the report say why); the rest beat never sent, or the broker lost.",
        )
        refused.add_metric([], state.refused_slots_last_day)
        yield refused

    def _drift(self, state: DriftState) -> Iterator[Metric]:
        monitored = gauge(
            "taxi_monitored_batches_last_hour",
            "Batches whose monitoring ran in the last hour, by outcome (ok, no_reference, waiting, failed).",
            ["status"],
        )
        for status in MONITOR_STATUSES:
            monitored.add_metric([status], state.monitored_last_hour.get(status, 0))
        yield monitored
        drifted = gauge(
            "taxi_drifted_batches_last_hour", "Batches monitored in the last hour whose dataset drift flag is set."
        )
        drifted.add_metric([], state.drifted_last_hour)
        yield drifted
        if state.last_batch_monitored_at is not None:
            for name, documentation, value in (
                (
                    "taxi_last_batch_dataset_drift",
                    "1 if the newest monitored batch drifted (at least half its checked columns did), else 0.",
                    float(bool(state.last_batch_dataset_drift)),
                ),
                (
                    "taxi_last_batch_drifted_columns",
                    "Columns of the newest monitored batch that drifted.",
                    state.last_batch_drifted_columns,
                ),
                (
                    "taxi_last_batch_columns_checked",
                    "Columns of the newest monitored batch counted toward dataset drift.",
                    state.last_batch_columns_checked,
                ),
                (
                    "taxi_last_batch_monitored_timestamp_seconds",
                    "Unix time the newest monitored batch was monitored.",
                    state.last_batch_monitored_at.timestamp(),
                ),
            ):
                if value is not None:
                    family = gauge(name, documentation)
                    family.add_metric([], float(value))
                    yield family
            score = gauge(
                "taxi_last_batch_column_drift_score",
                "Drift score of each column of the newest monitored batch: a distance (wasserstein, "
                "jensenshannon; drift at or above the threshold) or a p-value (ks, chisquare; drift below it).",
                ["column", "method"],
            )
            threshold = gauge(
                "taxi_last_batch_column_drift_threshold",
                "The threshold each column's score is compared with.",
                ["column", "method"],
            )
            flag = gauge(
                "taxi_last_batch_column_drifted",
                "1 if the column drifted in the newest monitored batch.",
                ["column", "method"],
            )
            for column in state.last_batch_columns:
                labels = [column.column, column.method]
                if column.score is not None:
                    score.add_metric(labels, column.score)
                threshold.add_metric(labels, column.threshold)
                flag.add_metric(labels, float(column.drifted))
            yield score
            yield threshold
            yield flag
        if state.hour_window_end is not None:
            end = gauge("taxi_hour_window_end_timestamp_seconds", "Unix time the newest ended clock-hour window ended.")
            end.add_metric([], state.hour_window_end.timestamp())
            yield end
            if state.hour_window_dataset_drift is not None:
                window = gauge(
                    "taxi_hour_window_dataset_drift",
                    "1 if the newest ended clock-hour window of generated batches drifted (any model version), else 0.",
                )
                window.add_metric([], float(state.hour_window_dataset_drift))
                yield window
            if state.hour_window_prediction_drift is not None:
                predicted = gauge(
                    "taxi_hour_window_prediction_drift",
                    "1 if the predicted duration drifted in the newest ended clock-hour window (any model version).",
                )
                predicted.add_metric([], float(state.hour_window_prediction_drift))
                yield predicted
            if state.hour_window_drifted_columns is not None:
                columns = gauge(
                    "taxi_hour_window_drifted_columns", "Columns that drifted in the newest ended hour window."
                )
                columns.add_metric([], state.hour_window_drifted_columns)
                yield columns

    def _accuracy(self, database: Reading, registry: Reading) -> Iterator[Metric]:
        cached: RegistryReading | None = self.registry_cache
        tags = cached.heldout_mae_minutes if cached else {}
        if database.ok:
            live = gauge(
                "taxi_live_mae_seconds",
                "Live MAE of each model version on its newest Chicago day with outcomes (today or yesterday).",
                ["model_version"],
            )
            outcomes = gauge(
                "taxi_live_outcomes",
                "Rides with a known true duration behind taxi_live_mae_seconds.",
                ["model_version"],
            )
            heldout = gauge(
                "taxi_heldout_mae_seconds",
                "The version's MAE on held-out rides at training (daily_accuracy, else the registry tag mae_minutes).",
                ["model_version"],
            )
            baseline = gauge(
                "taxi_baseline_mae_seconds",
                "MAE that always guessing the median would have scored on the same rides.",
                ["model_version"],
            )
            versions = set()
            for row in database.value.accuracy:
                versions.add(row.model_version)
                live.add_metric([row.model_version], row.mae_minutes * 60)
                outcomes.add_metric([row.model_version], row.outcomes)
                promised = (
                    row.heldout_mae_minutes if row.heldout_mae_minutes is not None else tags.get(row.model_version)
                )
                if promised is not None:
                    heldout.add_metric([row.model_version], promised * 60)
                if row.baseline_mae_minutes is not None:
                    baseline.add_metric([row.model_version], row.baseline_mae_minutes * 60)
            production = cached.production_version if cached else None
            if production is not None and production not in versions and production in tags:
                heldout.add_metric([production], tags[production] * 60)
            yield live
            yield outcomes
            yield heldout
            yield baseline
        if registry.ok and cached is not None and cached.production_version is not None:
            info = InfoMetricFamily(
                "taxi_production_model", "The model version the registry's production alias (MODEL_URI) points at."
            )
            info.add_metric([], {"model_name": cached.model_name, "model_version": cached.production_version})
            yield info
            if cached.production_version.isdigit():
                number = gauge("taxi_production_model_version", "The production model version, as a number.")
                number.add_metric([], float(cached.production_version))
                yield number

    def _lifecycle(self, state: LifecycleState) -> Iterator[Metric]:
        """The challenger and its paired evidence (the comparison stored by the quality pass for the
        versions the registry's aliases point at now), shadow failures and model events."""
        from worker.monitor.paired import favours_challenger, stored

        failures = gauge(
            "taxi_shadow_failures_last_hour",
            "Batches finished in the last hour whose challenger could not score them (the batches were written).",
        )
        failures.add_metric([], state.shadow_failures_last_hour)
        yield failures
        happened = gauge(
            "taxi_model_events_last_day", "Model events (alias moves, registrations) of the last 24 hours.", ["action"]
        )
        for action in EVENT_ACTIONS:
            happened.add_metric([action], state.events_last_day.get(action, 0))
        yield happened
        failed = gauge("taxi_model_moves_failed_last_day", "Alias moves the registry did not make, last 24 hours.")
        failed.add_metric([], state.failed_moves_last_day)
        yield failed
        if state.last_production_move is not None:
            moved = gauge(
                "taxi_model_last_production_move_timestamp_seconds",
                "When the production alias last moved on the record (promotion, rollback, conversion, outside move).",
            )
            moved.add_metric([], state.last_production_move.timestamp())
            yield moved
        yield from self._recent_accuracy(state)
        yield from self._policy(state)
        cached = self.registry_cache
        if cached is None or cached.challenger_version is None:
            return
        challenger = gauge(
            "taxi_challenger_model_version", "The version the challenger alias points at (shadow-scored)."
        )
        if cached.challenger_version.isdigit():
            challenger.add_metric([], float(cached.challenger_version))
        yield challenger
        found = stored(state.comparisons.get((cached.challenger_version, cached.production_version or "")))
        if found is None or not found.outcomes:
            return
        labels = ["challenger", "production"]
        values = [found.challenger_version, found.production_version]
        for name, documentation, value in (
            ("taxi_challenger_paired_outcomes", "Rides both versions scored whose duration is known.", found.outcomes),
            (
                "taxi_challenger_mae_seconds",
                "The challenger's MAE on the paired rides.",
                _seconds(found.challenger_mae),
            ),
            (
                "taxi_challenger_production_mae_seconds",
                "Production's MAE on the same paired rides.",
                _seconds(found.production_mae),
            ),
            (
                "taxi_challenger_mae_difference_seconds",
                "Mean of |challenger error| - |production error| per ride (negative: the challenger is better).",
                _seconds(found.mean_difference),
            ),
            ("taxi_challenger_difference_ci_low_seconds", "95 % CI of that mean, low end.", _seconds(found.ci_low)),
            ("taxi_challenger_difference_ci_high_seconds", "95 % CI of that mean, high end.", _seconds(found.ci_high)),
            (
                "taxi_challenger_favoured",
                "1 if the paired evidence favours the challenger (the rule `promote` and the policy use).",
                float(favours_challenger(found)),
            ),
        ):
            if value is not None:
                family = gauge(name, documentation, labels)
                family.add_metric(values, value)
                yield family

    def _recent_accuracy(self, state: LifecycleState) -> Iterator[Metric]:
        """Production's live accuracy over the most recently known outcomes, and whether it is degraded:
        the one definition (worker/monitor/degradation.py) the alert, the report and the policy use."""
        from worker.monitor.degradation import RecentAccuracy, degraded

        if state.production_on_record is None or state.recent is None:
            return
        version = state.production_on_record
        cached = self.registry_cache
        promised = cached.heldout_mae_minutes.get(version) if cached else None
        recent = RecentAccuracy(version, int(state.recent["outcomes"] or 0), state.recent["mae"], promised, None)
        outcomes = gauge(
            "taxi_live_recent_outcomes",
            "Outcomes in production's rolling window of most recently known outcomes (POLICY_WINDOW_OUTCOMES).",
            ["model_version"],
        )
        outcomes.add_metric([version], recent.outcomes)
        yield outcomes
        if recent.mae is not None:
            mae = gauge(
                "taxi_live_mae_recent_seconds",
                "Production's live MAE over its most recently known outcomes (by when each became known).",
                ["model_version"],
            )
            mae.add_metric([version], recent.mae * 60)
            yield mae
        if promised is not None:
            flag = gauge(
                "taxi_production_degraded",
                "1 if production's recent live MAE is over 25 % above its held-out MAE on 500+ outcomes.",
                ["model_version"],
            )
            flag.add_metric([version], float(degraded(recent)))
            yield flag

    def _policy(self, state: LifecycleState) -> Iterator[Metric]:
        policy = state.policy or {}
        info = InfoMetricFamily("taxi_policy", "The model policy: MODEL_POLICY and what its last pass did.")
        info.add_metric([], {"mode": self.settings.MODEL_POLICY, "last_action": str(policy.get("last_action") or "")})
        yield info
        for name, documentation, value in (
            ("taxi_policy_paused", "1 if a person paused the model policy.", float(bool(policy.get("paused")))),
            ("taxi_policy_halted", "1 if the policy halted after its own rollback.", float(bool(policy.get("halted")))),
        ):
            family = gauge(name, documentation)
            family.add_metric([], value)
            yield family
        attention = gauge(
            "taxi_policy_attention",
            "1 for the reason a person is needed now (recovery_failed, halted_after_rollback, hand_promotion_worse).",
            ["reason"],
        )
        from worker.lifecycle.policy import ATTENTION_REASONS

        for reason in ATTENTION_REASONS:
            attention.add_metric([reason], float(policy.get("attention") == reason))
        yield attention
        for column, name, documentation in (
            ("last_pass_at", "taxi_policy_last_pass_timestamp_seconds", "When the policy's last pass ran."),
            ("last_retrain_at", "taxi_policy_last_retrain_timestamp_seconds", "When the policy last retrained."),
        ):
            if policy.get(column) is not None:
                family = gauge(name, documentation)
                family.add_metric([], as_utc(policy[column]).timestamp())
                yield family

    def _worker_families(self, answered: dict[str, bool]) -> Iterator[Metric]:
        online = gauge("taxi_workers_online", "Celery workers whose heartbeats arrive.")
        online.add_metric([], float(sum(answered.values())))
        yield online
        up = gauge(
            "taxi_worker_up",
            "1 if the worker's heartbeats arrive, 0 if they arrived in the last hour but stopped.",
            ["worker"],
        )
        for name, alive in answered.items():
            up.add_metric([name], float(alive))
        yield up


def _seconds(minutes: float | None) -> float | None:
    return None if minutes is None else minutes * 60


def build_registry(settings: Settings, heartbeats: WorkerHeartbeats) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(TaxiCollector(settings, heartbeats))
    ProcessCollector(registry=registry)
    return registry


def serve(settings: Settings, port: int | None = None) -> int:
    """Serve /metrics until SIGTERM or Ctrl-C."""
    port = port or settings.EXPORTER_PORT
    address = settings.EXPORTER_ADDRESS
    check_port_free(address, port, "EXPORTER_PORT", owner="exporter", address_setting="EXPORTER_ADDRESS")
    # Import now what scrapes use: the Celery app, MLflow, and the monitor's and the policy's rules
    # (pandas, scipy). A first import takes seconds on a cold machine, longer than a scrape may: the
    # first scrape once took 3.7 s with a 2 s timeout, 1.6 s of it importing these after the reads.
    import worker.celery_app
    import worker.lifecycle.policy
    import worker.model.registry
    import worker.monitor.degradation
    import worker.monitor.paired

    # The registry is asked with no retries and a short timeout: a scrape waits for nobody's backoff.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(settings.EXPORTER_TIMEOUT_SECONDS)))
    # Heard for a whole heartbeat interval before the first scrape, so it lists every live worker.
    heartbeats = WorkerHeartbeats(worker.celery_app.app).start()
    heartbeats.wait_ready(seconds=5)
    server, thread = start_http_server(port, addr=address, registry=build_registry(settings, heartbeats))
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"exporter: http://{address}:{port}/metrics", flush=True)
    log.info("exporter listening on %s:%d", address, port)
    stop.wait()
    server.shutdown()
    thread.join(timeout=5)
    return 0
