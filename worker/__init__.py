"""Chicago taxi trip-duration batches; `celery -A worker ...` finds the app here."""

from worker.celery_app import app

__all__ = ("app",)
