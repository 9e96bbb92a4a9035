"""The beat schedule, as data: task names, intervals, arguments.

run_batch fires on every wall-clock multiple of BATCH_INTERVAL_SECONDS (5
minutes by default). Beat stamps each message with its slot (worker/beat.py),
which becomes the batch id. A message nobody picks up in time expires rather
than piling up behind a stopped worker: the expiry leaves room for one
redelivery after a crash (visibility timeout + hard time limit).

update_quality fills live accuracy every QUALITY_INTERVAL_SECONDS; with
RETENTION_DAYS set, prune_batches deletes old batches once a day; with
MODEL_POLICY advise or auto, model_policy runs a pass every POLICY_INTERVAL_SECONDS.
"""

from __future__ import annotations

from celery.schedules import crontab

from worker.beat import aligned_every
from worker.settings import get_settings

_settings = get_settings()
_interval = _settings.BATCH_INTERVAL_SECONDS

beat_schedule = {
    "run-batch": {
        "task": "worker.tasks.run_batch",
        "schedule": aligned_every(_interval),
        "kwargs": {"rides": _settings.RIDES_PER_BATCH, "interval": _interval},
        "options": {"expires": _settings.VISIBILITY_TIMEOUT + _settings.TASK_TIME_LIMIT + _interval},
    },
}

if _settings.MONITORING:
    # Live accuracy as outcomes become observed; also monitors any batch whose monitoring was lost.
    beat_schedule["update-quality"] = {
        "task": "worker.tasks.update_quality",
        "schedule": _settings.QUALITY_INTERVAL_SECONDS,
        "options": {"expires": _settings.QUALITY_INTERVAL_SECONDS},
    }

if _settings.RETENTION_DAYS is not None:
    # Once a day at 09:30 UTC (03:30 or 04:30 in Chicago), when the city's taxis are quietest.
    beat_schedule["prune-old-batches"] = {
        "task": "worker.tasks.prune_batches",
        "schedule": crontab(minute=30, hour=9),
        "kwargs": {"older_than_days": _settings.RETENTION_DAYS},
        "options": {"expires": 3600},
    }

if _settings.MODEL_POLICY != "off":
    # A pass that cannot start within its interval is dropped: the next one decides from fresher facts.
    beat_schedule["model-policy"] = {
        "task": "worker.tasks.model_policy",
        "schedule": _settings.POLICY_INTERVAL_SECONDS,
        "options": {"expires": _settings.POLICY_INTERVAL_SECONDS},
    }
