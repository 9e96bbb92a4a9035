"""Log lines and task events with their passwords taken out, whoever wrote them.

Our own messages never format a password, but other libraries' do not promise as much:
Celery logs a retried task's exception as it was raised (a registry client's error quotes the
URL it called, credentials included, when the tracking URI carries them), and any traceback may
show a connection string. So every handler's formatter is wrapped: the finished line, traceback
included, goes through `redact` with the process's settings before it is written anywhere. The
same exception and traceback travel in the task-failed and task-retried events that Flower
shows; the worker's event dispatcher redacts those fields before they are sent.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher

from worker.settings import Settings, get_settings, redact

# Event fields that may quote an exception: task-failed, task-retried (and a result's repr).
TEXT_FIELDS = ("exception", "traceback", "result")


class RedactingFormatter(logging.Formatter):
    """Formats with the handler's own formatter, then hides every password in the result."""

    def __init__(self, inner: logging.Formatter, settings: Settings | None) -> None:
        super().__init__()
        self.inner = inner
        self.settings = settings

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record), self.settings)


def redact_handlers(logger: logging.Logger, settings: Settings | None) -> None:
    """Wrap the formatter of each of the logger's handlers (once; a second call changes nothing)."""
    for handler in logger.handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter or logging.Formatter(), settings))


class RedactingEventDispatcher(EventDispatcher):
    """Celery's event dispatcher, with the fields that quote exceptions redacted before sending."""

    def send(self, type: str, *args: Any, **fields: Any) -> Any:
        for name in TEXT_FIELDS:
            if isinstance(fields.get(name), str):
                fields[name] = redact(fields[name], get_settings())
        return super().send(type, *args, **fields)


class RedactingEvents(Events):
    """`app.events` whose dispatchers redact (the app's `events=` class)."""

    dispatcher_cls = "worker.logs:RedactingEventDispatcher"
