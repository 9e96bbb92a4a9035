"""The beat schedule, as data: task names, intervals, arguments.

run_batch fires on every wall-clock multiple of BATCH_INTERVAL_SECONDS (5
minutes by default). Beat stamps each message with its slot (worker/beat.py),
which becomes the batch id. A message nobody picks up in time expires rather
than piling up behind a stopped worker: the expiry leaves room for one
redelivery after a crash (visibility timeout + hard time limit).
"""

from __future__ import annotations

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
