"""The Celery application and its one configuration block.

Each setting says why it is there; most follow from one promise: a batch is
never lost and never written twice (see the README's reliability section).
"""

from __future__ import annotations

import logging
import sys

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init, worker_process_init
from kombu import Queue

from worker.logs import redact_handlers
from worker.settings import SettingsError, get_settings

try:
    settings = get_settings()
except SettingsError as exc:  # `celery -A worker ...` with a malformed setting: one clear line
    sys.stderr.write(f"error: {exc}\n")
    raise SystemExit(2) from None

from beat_schedule import beat_schedule

VT = settings.VISIBILITY_TIMEOUT
# Scoring stays on Celery's default queue; monitoring must not wait behind a backfill, and training
# (tens of seconds of CPU) must never delay a scheduled batch. `-Q` narrows a worker to some of them.
SCORING_QUEUE, MONITORING_QUEUE, TRAINING_QUEUE = "celery", "monitoring", "training"
QUEUES = (SCORING_QUEUE, MONITORING_QUEUE, TRAINING_QUEUE)


def _broker_transport_options() -> dict:
    if settings.CELERY_BROKER_URL.startswith("filesystem"):
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        # One folder for messages in and out: every process on this machine shares the queue.
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    # Sweep for unacked messages of dead workers every 10 s (kombu's default scans every 100 s).
    # A broker that vanished without closing the connection (a network cut, measured by
    # make test-compose): without a socket timeout a publish waits for its reply for ever and the
    # whole worker hangs, even after the network is back; with it the call fails and kombu reconnects.
    return {
        "visibility_timeout": VT,
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
        "socket_keepalive": True,
    }


def _broker_url() -> str:
    """The broker URL for kombu. The embedded filesystem:// has no host, and kombu then warns
    "No hostname was supplied. Reverting to default 'localhost'" in every process, a warning
    nobody can act on: name that same default host here instead."""
    url = settings.CELERY_BROKER_URL
    return "filesystem://localhost/" if url.rstrip("/") == "filesystem:" else url


# Task events (which Flower shows) carry a failed task's exception and traceback: redacted first.
app = Celery("worker", include=["worker.tasks"], events="worker.logs:RedactingEvents")
app.conf.update(
    broker_url=_broker_url(),
    # The embedded broker writes each message whole before a consumer can see it (kombu's did not).
    broker_transport="worker.filesystem_broker:Transport"
    if settings.CELERY_BROKER_URL.startswith("filesystem")
    else None,
    result_backend=settings.result_backend,
    # JSON only: a pickle message could run code in the worker (Celery security guide).
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # Ack after the task ends, and requeue if its process dies: a crash loses no batch.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Reserve only the task being run, so a dying worker holds nothing else back.
    worker_prefetch_multiplier=1,
    # Finish inside the visibility timeout, or Redis hands the task to a second worker.
    task_soft_time_limit=settings.TASK_SOFT_TIME_LIMIT,
    task_time_limit=settings.TASK_TIME_LIMIT,
    # Redis redelivers unacked tasks after this; set for broker and result backend alike.
    broker_transport_options=_broker_transport_options(),
    result_backend_transport_options={"visibility_timeout": VT},
    # The result backend's connections likewise (Celery's default read timeout is 120 s, none to connect).
    redis_socket_timeout=30,
    redis_socket_connect_timeout=10,
    redis_socket_keepalive=True,
    # Keep trying a lost broker forever instead of giving up after 100 tries.
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    # A worker that lost the broker stops long tasks, which Redis will redeliver anyway.
    worker_cancel_long_running_tasks_on_connection_loss=True,
    # Results (and the dedup of redelivered successful tasks) live a day.
    result_expires=86400,
    result_extended=True,
    worker_deduplicate_successful_tasks=not settings.CELERY_BROKER_URL.startswith("filesystem"),
    # Events on, so Flower shows every task, its arguments and its result.
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_track_started=True,
    # On a cold shutdown, hand running tasks back to the broker for 30 s first.
    worker_soft_shutdown_timeout=30.0,
    worker_enable_soft_shutdown_on_idle=True,
    # A model and a 50k-ride chunk fit well below this; a leak replaces the child (KiB).
    worker_max_memory_per_child=2_000_000,
    beat_schedule=beat_schedule,
    enable_utc=True,
    timezone="UTC",
    # Three queues; a worker started without -Q consumes all of them, so one worker still does everything.
    task_queues=[Queue(name) for name in QUEUES],
    task_default_queue=SCORING_QUEUE,
    task_routes={
        "worker.tasks.monitor_batch": {"queue": MONITORING_QUEUE},
        "worker.tasks.monitor_batches": {"queue": MONITORING_QUEUE},
        "worker.tasks.update_quality": {"queue": MONITORING_QUEUE},
        "worker.tasks.model_policy": {"queue": TRAINING_QUEUE},
    },
)


@worker_process_init.connect
def _fresh_process(**_: object) -> None:
    """Pool children build their own engine and model cache; pools must not cross a fork."""
    from worker import runtime

    runtime.reset()


@worker_init.connect
def _preload_model_reader(**_: object) -> None:
    """Import skops in the main worker process, before the pool forks: its import lists every
    scikit-learn estimator (~1 s here), which each pool child would otherwise pay on its first
    model load."""
    from worker.model.trust import preload_reader

    preload_reader()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redacted_logs(logger: logging.Logger, **_: object) -> None:
    """Worker and beat logs (task tracebacks, retry reasons) go out with their passwords hidden."""
    redact_handlers(logger, settings)
