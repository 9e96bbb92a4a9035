"""`python -m worker bench --backfill DAYS`: DAYS of past Chicago slots backfilled through real
workers, as `make run` starts them (a scoring worker of 2 processes, a monitoring worker of 1), once
with one `run_batch` message per slot (how backfill sent them before run_slots) and once as
`backfill` sends them now (an hour of slots per `run_slots`), each on a throwaway database, side by
side in one run. It times the backfill from its first send to its last slot written, and how long
monitoring trailed the last write.

The workers take their messages from the configured broker's queues, so the broker must be the
bench's alone: a worker of a running service would take the slots and write them to its own
database. The bench refuses to start while any worker answers there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from worker.cli.backfill import plan_backfill, send_slots, wait_for_slots
from worker.cli.dispatching import dispatch_slot
from worker.cli.errors import UsageError
from worker.cli.history_bench import pg_url, throwaway_database
from worker.cli.launcher import WORKERS as LAUNCHED
from worker.settings import REPO_ROOT, Settings

# The scoring and monitoring workers as `make run` starts them (no trainer: a backfill never trains).
WORKERS = tuple((queue, concurrency) for _, queue, concurrency in LAUNCHED if queue != "training")
READY_SECONDS = 90.0


@dataclass
class BackfillRun:
    label: str
    slots: int = 0
    rides: int = 0
    seconds: float = 0.0
    written: int = 0
    failed: int = 0
    monitoring_lag: float | None = None  # last batch monitored, after the last batch written (s)


def one_message_per_slot(interval: float) -> Callable[[list[datetime]], list[str]]:
    """Send each slot of a run as its own run_batch, as backfill did before run_slots."""

    def send(run: list[datetime]) -> list[str]:
        return [dispatch_slot(slot, interval, None, sent_by="backfill") for slot in run]

    return send


def _answering_workers() -> list[str]:
    from worker.celery_app import app

    return sorted(name for reply in app.control.ping(timeout=1.0) or [] for name in reply)


@contextmanager
def bench_workers(database_url: str, logs: Path) -> Iterator[None]:
    """A scoring and a monitoring worker on the throwaway database, stopped (with their pools) on the way out."""
    celery = Path(sys.executable).parent / "celery"
    env = {**os.environ, "DATABASE_URL": database_url, "MONITORING": "true"}
    processes: list[subprocess.Popen] = []
    with ExitStack() as files:
        try:
            for queue, concurrency in WORKERS:
                log = files.enter_context(open(logs / f"bench-backfill-{queue}.log", "wb"))
                command = [str(celery), "-A", "worker", "worker", f"--concurrency={concurrency}", f"--queues={queue}"]
                command += ["--loglevel=WARNING", f"--hostname=bench-{queue}-{uuid.uuid4().hex[:6]}@%h"]
                command += ["--without-gossip", "--without-mingle"]
                processes.append(
                    subprocess.Popen(
                        command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
            deadline = time.monotonic() + READY_SECONDS
            while len(_answering_workers()) < len(WORKERS):
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise UsageError(f"the bench's workers did not start; see {logs}/bench-backfill-*.log")
            yield
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def monitoring_lag(engine: Engine, timeout: float) -> float | None:
    """Wait until every written batch has its metrics; then how long after the last write the last
    batch was monitored (None: monitoring had not caught up within `timeout`)."""
    deadline = time.monotonic() + timeout
    query = text(
        "SELECT count(*) FILTER (WHERE m.batch_id IS NULL), "
        "EXTRACT(EPOCH FROM max(m.monitored_at) - max(b.finished_at)) "
        "FROM batch_runs b LEFT JOIN batch_metrics m USING (batch_id) WHERE b.status = 'succeeded'"
    )
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            missing, lag = conn.execute(query).one()
        if not missing:
            return float(lag or 0.0)
        time.sleep(0.25)
    return None


def backfill_once(
    settings: Settings, url: str, label: str, send: Callable[[list[datetime]], list[str]] | None, start, end
) -> BackfillRun:
    """`send`: how a run of slots goes out; None sends them as `backfill` does."""
    from worker.store.database import get_engine, migrate

    migrate(url)
    engine = get_engine(url)
    interval = settings.BATCH_INTERVAL_SECONDS
    settings.LOCAL_DIR.mkdir(parents=True, exist_ok=True)
    result = BackfillRun(label)
    with bench_workers(url, settings.LOCAL_DIR):
        plan = plan_backfill(engine, interval, start, end, datetime.now(UTC), allow_many=True)
        print(f"{label}: backfilling {len(plan.to_send)} slots...", flush=True)
        started = time.perf_counter()
        sent = send_slots(plan.to_send, interval, None, send=send, stall_seconds=600.0)
        outcome = wait_for_slots(engine, sent, timeout=3600.0)
        result.seconds = time.perf_counter() - started
        result.slots, result.written, result.failed, result.rides = (
            len(sent),
            outcome.written,
            outcome.failed,
            outcome.rows,
        )
        result.monitoring_lag = monitoring_lag(engine, timeout=600.0)
    return result


def run_backfill_bench(settings: Settings, days: float) -> list[BackfillRun]:
    url = pg_url(settings, "--backfill")
    if answering := _answering_workers():
        raise UsageError(
            f"bench --backfill needs the broker to itself: {len(answering)} worker(s) answer on it "
            f"({', '.join(answering[:3])}); stop them, or point CELERY_BROKER_URL at a broker of its own"
        )
    interval = settings.BATCH_INTERVAL_SECONDS
    end = datetime.fromtimestamp((time.time() // 86400 - 1) * 86400, UTC)  # yesterday's midnight (UTC)
    start = end - timedelta(days=days)
    base = make_url(url).database or "postgres"
    results = []
    for n, (label, send) in enumerate(
        (
            ("a run_batch per slot", one_message_per_slot(interval)),
            ("run_slots, an hour each", None),
        )
    ):
        with throwaway_database(url, f"{base}_backfill_{n}") as own:
            results.append(backfill_once(settings, own, label, send, start, end))
    print_table(results, start, end)
    return results


def print_table(results: list[BackfillRun], start: datetime, end: datetime) -> None:
    print()
    print(
        f"backfill of {start.isoformat()} to {end.isoformat()} (workers as make run starts them: 2 scoring, 1 monitoring)"
    )
    print(
        f"  {'sent as':<26}{'slots':>7}{'rides':>10}{'written':>9}{'failed':>8}{'seconds':>9}{'monitoring trailed s':>22}"
    )
    for r in results:
        lag = "did not catch up" if r.monitoring_lag is None else f"{r.monitoring_lag:.1f}"
        print(f"  {r.label:<26}{r.slots:>7}{r.rides:>10,}{r.written:>9}{r.failed:>8}{r.seconds:>9.1f}{lag:>22}")
    if len(results) == 2 and results[1].seconds:
        print(
            f"  an hour per message takes {results[1].seconds / results[0].seconds:.2f}× the time of a message per slot"
        )
