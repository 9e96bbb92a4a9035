"""`python -m worker bench`: throughput and latency against the configured Redis and PostgreSQL.

Two measurements, both printed with their conditions:
1. In one process, per batch size: generate, predict, write, each timed; rides/s end to end.
2. The monitor's cost: monitoring one written 2,000-ride batch, as the monitoring task does.
3. Through a real `celery worker` this command starts (2 processes, warm model), with
   monitoring off, on, and on with a challenger shadow-scoring every batch (at most
   SHADOW_SAMPLE_ROWS rides of each chunk), side by side:
   100,000-ride batches fanned out in chunks (median of --repeat), and the dispatch-to-commit
   latency of 1,000-ride batches, sent back to back and settled (each once the one before it is
   monitored); and, in the same run, a bare COPY of as many prediction rows
   into a table with a primary key and nothing else, what the database itself can take. The
   challenger run uses a registered model of its own (MODEL_NAME + "-bench": two versions made
   from the production version's artifacts, as production and challenger), so the real model's
   aliases are never touched; it is deleted after.
Rows it writes are deleted afterwards, in every table.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

from worker.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)


def _cleanup(engine, batch_ids: list[str]) -> None:
    """Every row the benchmark wrote, in every table keyed by batch (outcomes and metrics included)."""
    from worker.store.retention import delete_batches
    from worker.store.schema import batch_runs

    with engine.connect() as conn:
        named = list(conn.execute(select(batch_runs.c.batch_id).where(batch_runs.c.batch_id.like("bench-%"))).scalars())
    counts = delete_batches(engine, sorted(set(batch_ids) | set(named)), any_status=True)
    if engine.dialect.name != "postgresql":
        return
    # The next measurement should not pay for this one's dead rows (autovacuum would reclaim them
    # at a moment of its choosing, in the middle of a timed run). Owners only; otherwise skip it.
    tables = [name for name, count in counts.items() if count and name not in ("left", "skipped")]
    if not tables:
        return
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM (ANALYZE) {', '.join(tables)}"))
    except DBAPIError as exc:
        log.warning("could not vacuum %s after the benchmark (%s); autovacuum will", ", ".join(tables), exc.orig)


def monitor_cost(settings: Settings, rides: int, repeat: int) -> dict:
    """Median seconds to monitor a written batch of `rides` (read its rows, summarise, test drift
    against the version's reference, store), as the monitoring task does after each commit."""
    from worker import runtime
    from worker.monitor.batches import monitor_batch
    from worker.rides.generator import chicago_now

    engine = runtime.engine()
    model = runtime.model()
    if runtime.reference(model.name, model.version) is None:
        return {"rides": rides, "seconds": None, "note": f"version {model.version} has no reference"}
    ids, times = [], []
    try:
        for attempt in range(repeat + 1):  # the first run warms caches and is not counted
            batch_id, _ = timed_batch(engine, model, rides, attempt, label="bench-monitor")
            ids.append(batch_id)
            started = time.perf_counter()
            report = monitor_batch(
                engine, batch_id, runtime.reference, chicago_now(), sample_rows=settings.MONITOR_SAMPLE_ROWS
            )
            if attempt:
                times.append(time.perf_counter() - started)
            assert report.status == "ok", report
    finally:
        _cleanup(engine, ids)
    return {"rides": rides, "seconds": statistics.median(times)}


def timed_batch(
    engine, model, rides: int, seed: int, shadow=None, label: str = "bench"
) -> tuple[str, dict[str, float]]:
    """One ad hoc batch of generated rides of the last five minutes, written as a worker writes it:
    its id, and its stage timings and total (generate, predict, write, and the challenger's shadow
    prediction if one is given). Its window is recorded, so that it can be monitored too."""
    from worker import batch
    from worker.rides.generator import recent_window
    from worker.store import writes

    batch_id = f"{label}-{uuid.uuid4()}"
    window = recent_window(5)
    row = writes.start_batch(
        engine,
        batch_id=batch_id,
        trigger="adhoc",
        rides_requested=rides,
        chunks_total=1,
        task_id=None,
        seed=seed,
        window=(window.start, window.end),
        attempt=1,
    )
    started = time.perf_counter()
    result = batch.run_generated_chunk(
        engine,
        model,
        batch_id=batch_id,
        chunk_index=0,
        rides=rides,
        seed=seed,
        window=window,
        shadow=shadow,
        written_at=row["started_at"],
    )
    total = time.perf_counter() - started
    assert result.write.rows_written == rides, result
    return batch_id, {**result.timings, "total": total}


def bare_copy_seconds(engine: Engine, model, rides: int, repeat: int) -> float:
    """COPY of `rides` prediction rows (the same columns, ids in the workers' layout) into a plain
    table with a primary key on trip_id and nothing else: what the database itself can take."""
    from worker import batch
    from worker.rides.batch_rides import generated_chunk
    from worker.rides.generator import recent_window
    from worker.store.writes import PREDICTION_COLUMNS

    frame = generated_chunk("bench-bare", 1, 0, rides, recent_window(5))
    rows = batch.prediction_frame(frame, batch.predict_minutes(model, frame), model, "bench-bare")
    data = rows[list(PREDICTION_COLUMNS)].to_csv(index=False, header=False)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_bare"))
        conn.execute(
            text(
                "CREATE TABLE bench_bare (trip_id uuid PRIMARY KEY, pickup_community_area int, "
                "dropoff_community_area int, trip_start_timestamp timestamp, fare float8, trip_total float8, "
                "trip_miles float8, predicted_duration float8, model_name varchar(200), model_version varchar(40), "
                "batch_id varchar(120))"
            )
        )
    times = []
    try:
        for _ in range(repeat + 1):  # the first warms the table's files and is not counted
            with engine.begin() as conn:
                conn.execute(text("TRUNCATE bench_bare"))
            with engine.begin() as conn:
                cursor = conn.connection.dbapi_connection.cursor()
                started = time.perf_counter()
                cursor.copy_expert(
                    f"COPY bench_bare ({', '.join(PREDICTION_COLUMNS)}) FROM STDIN WITH (FORMAT csv)", io.StringIO(data)
                )
            times.append(time.perf_counter() - started)
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_bare"))
    return statistics.median(times[1:])


def stage_bench(settings: Settings, sizes: list[int], repeat: int, challenger: bool = False) -> list[dict]:
    """In one process; with `challenger`, the production model also stands in as the challenger, so
    every ride (of a batch above SHADOW_SAMPLE_ROWS, every k-th) is predicted twice and its shadow
    prediction written in the same transaction."""
    from worker import runtime
    from worker.model.registry import Shadow

    engine = runtime.engine()
    model = runtime.model()
    shadow = Shadow(f"{model.version}-bench", model) if challenger else None
    results = []
    for size in sizes:
        runs = []
        for attempt in range(repeat + 1):  # the first run warms caches and is not counted
            _, timings = timed_batch(engine, model, size, attempt, shadow=shadow)
            if attempt:
                runs.append(timings)
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        results.append({"rides": size, **median, "rides_per_second": size / median["total"]})
    _cleanup(engine, [])
    return results


def bench_model(settings: Settings) -> str:
    """A registered model of the bench's own, MODEL_NAME + "-bench": versions 1 (production) and 2
    (challenger) made from the production version's artifacts (no upload), aliases moved on the record."""
    from worker import runtime
    from worker.lifecycle.moves import move_alias
    from worker.model.registry import CHALLENGER_ALIAS, configure_mlflow, resolve_version

    client = configure_mlflow(settings)
    name, version = resolve_version(client, settings.model_uri)
    source = client.get_model_version(name, version)
    bench_name = f"{settings.MODEL_NAME}-bench"
    drop_bench_model(settings, bench_name)
    client.create_registered_model(bench_name)
    for _ in range(2):
        client.create_model_version(bench_name, source.source, run_id=source.run_id, tags=source.tags)
    own = settings.model_copy(update={"MODEL_NAME": bench_name, "MODEL_URI": ""})
    engine = runtime.engine()
    for alias, to in ((settings.MODEL_ALIAS, "1"), (CHALLENGER_ALIAS, "2")):
        move_alias(own, engine, alias=alias, to_version=to, action="promoted", reason="bench", client=client)
    return bench_name


def drop_bench_model(settings: Settings, bench_name: str) -> None:
    from mlflow.exceptions import MlflowException

    from worker import runtime
    from worker.model.registry import configure_mlflow
    from worker.store.schema import model_aliases, model_events

    with contextlib.suppress(MlflowException):  # not there
        configure_mlflow(settings).delete_registered_model(bench_name)
    with runtime.engine().begin() as conn:
        for table in (model_events, model_aliases):
            conn.execute(table.delete().where(table.c.model_name == bench_name))


def worker_bench(
    settings: Settings,
    latency_runs: int,
    big: int,
    monitoring: bool = True,
    big_runs: int = 3,
    model_name: str | None = None,
) -> dict:
    from worker import runtime
    from worker.cli.dispatching import dispatch_batch
    from worker.store import writes
    from worker.store.monitoring import get_batch_metrics

    engine = runtime.engine()
    log_path = settings.LOCAL_DIR / "bench-worker.log"
    settings.LOCAL_DIR.mkdir(parents=True, exist_ok=True)
    celery = Path(sys.executable).parent / "celery"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(celery),
                "-A",
                "worker",
                "worker",
                "--concurrency=2",
                "--loglevel=WARNING",
                f"--hostname=bench-{uuid.uuid4().hex[:6]}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=REPO_ROOT,
            env={
                **os.environ,
                "MONITORING": "true" if monitoring else "false",
                **({"MODEL_NAME": model_name, "MODEL_URI": ""} if model_name else {}),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    batch_ids: list[str] = []

    def run(rides: int) -> float:
        started = time.perf_counter()
        _, batch_id = dispatch_batch(rides, seed=len(batch_ids))
        batch_ids.append(batch_id)
        deadline = started + 300
        while time.perf_counter() < deadline:
            row = writes.get_batch(engine, batch_id)
            if row and row["status"] in ("succeeded", "failed"):
                if row["status"] == "failed":
                    raise RuntimeError(f"bench batch failed: {row['error']}")
                return time.perf_counter() - started
            time.sleep(0.005)
        raise RuntimeError(f"bench batch {batch_id} did not finish; see {log_path}")

    def monitored(batch_id: str) -> None:
        """Its monitoring has ended: stored, or failed for good (`waiting` means a retry is still to come)."""
        deadline = time.monotonic() + 120
        while (row := get_batch_metrics(engine, batch_id)) is None or row["monitor_status"] == "waiting":
            if time.monotonic() > deadline:
                raise RuntimeError(f"bench batch {batch_id} was not monitored in 120 s; see {log_path}")
            time.sleep(0.005)

    try:
        for _ in range(2):  # both pool processes load the model before anything is timed
            run(1000)
        # Back to back: each batch is sent as the one before commits, while that one's monitoring
        # still runs on the other pool process (and core). Then settled: each is sent once the one
        # before it is monitored, as on beat's schedule, so the batch's own path is timed alone.
        latencies = [run(1000) for _ in range(latency_runs)]
        settled = []
        for _ in range(latency_runs):
            if monitoring:
                monitored(batch_ids[-1])
            settled.append(run(1000))
        # Several big batches back to back: with monitoring on, each one's monitoring runs while
        # the next is written, as it would on a busy schedule.
        bigs = [run(big) for _ in range(big_runs)]
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        _cleanup(engine, batch_ids)
    return {
        "latency_1000_median": statistics.median(latencies),
        "latency_1000_max": max(latencies),
        "latency_1000_settled": statistics.median(settled),
        "big_rides": big,
        "big_seconds": statistics.median(bigs),
        "big_rides_per_second": big / statistics.median(bigs),
    }


def run_bench(settings: Settings, sizes: list[int], repeat: int, latency_runs: int, with_worker: bool) -> None:
    from worker.store.database import migrate

    migrate(settings.database_url)
    print(
        f"machine: {os.cpu_count()} cores; broker {settings.CELERY_BROKER_URL.split('@')[-1]}; "
        f"database {settings.database_url.split('@')[-1]}; CHUNK_SIZE={settings.CHUNK_SIZE}"
    )
    print(f"in one process (median of {repeat} runs after a warm-up), without and with a challenger:")
    print(
        f"  {'challenger':>10} {'rides':>8} {'generate s':>11} {'predict s':>10} {'shadow s':>9} {'write s':>8} "
        f"{'total s':>8} {'rides/s':>9}"
    )
    staged = {on: stage_bench(settings, sizes, repeat, challenger=on) for on in (False, True)}
    for on, rows in staged.items():
        for r in rows:
            print(
                f"  {'yes' if on else 'no':>10} {r['rides']:>8} {r['generate']:>11.3f} {r['predict']:>10.3f} "
                f"{r.get('shadow', 0.0):>9.3f} {r['write']:>8.3f} {r['total']:>8.3f} {r['rides_per_second']:>9.0f}"
            )
    for plain, shadowed in zip(staged[False], staged[True], strict=True):
        print(
            f"  a challenger costs {shadowed['total'] / plain['total'] - 1:+.0%} per {plain['rides']:,}-ride batch "
            "in one process (aim: at most +30 %)"
        )
    cost = monitor_cost(settings, 2000, repeat)
    if cost["seconds"] is None:
        print(f"monitoring a 2,000-ride batch: not measured ({cost['note']})")
    else:
        print(f"monitoring a 2,000-ride batch (read, summarise, drift tests, store): {cost['seconds'] * 1000:.0f} ms")
    if with_worker:
        print(
            f"through a celery worker (2 processes, warm model), monitoring off, on, and on with a challenger "
            f"(big batch: median of {repeat}, 1000 rides: {latency_runs} runs):"
        )
        runs = {
            label: worker_bench(settings, latency_runs, max(sizes), monitoring=on, big_runs=repeat)
            for label, on in (("off", False), ("on", True))
        }
        bench_name = bench_model(settings)
        try:
            runs["on+challenger"] = worker_bench(
                settings, latency_runs, max(sizes), monitoring=True, big_runs=repeat, model_name=bench_name
            )
        finally:
            drop_bench_model(settings, bench_name)
        off, on, shadowed = runs["off"], runs["on"], runs["on+challenger"]
        print(
            f"  {'monitoring':>13} {'rides':>8} {'dispatch->commit s':>19} {'rides/s':>9} "
            f"{'1000 rides: back to back, median s':>35} {'max s':>7} {'settled, median s':>18}"
        )
        for label, w in runs.items():
            print(
                f"  {label:>13} {w['big_rides']:>8} {w['big_seconds']:>19.2f} {w['big_rides_per_second']:>9.0f} "
                f"{w['latency_1000_median']:>35.3f} {w['latency_1000_max']:>7.3f} {w['latency_1000_settled']:>18.3f}"
            )
        from worker import runtime

        bare = bare_copy_seconds(runtime.engine(), runtime.model(), max(sizes), repeat)
        print(
            f"  a bare COPY of {max(sizes):,} prediction rows (primary key only): {bare:.2f} s, "
            f"{max(sizes) / bare:,.0f} rows/s; the batch through the worker at "
            f"{off['big_rides_per_second'] * bare / max(sizes):.2f}x that with monitoring off, "
            f"{on['big_rides_per_second'] * bare / max(sizes):.2f}x on (aim: at least 0.4x)"
        )
        change = on["big_rides_per_second"] / off["big_rides_per_second"] - 1
        print(
            f"  throughput with monitoring: {change:+.1%} against without "
            f"(aim: within 15 %); 1000-ride latency with monitoring {on['latency_1000_median'] * 1000:.0f} ms "
            f"back to back, {on['latency_1000_settled'] * 1000:.0f} ms settled (aim: < 50 ms)"
        )
        cost = shadowed["big_seconds"] / on["big_seconds"] - 1
        small = shadowed["latency_1000_settled"] / on["latency_1000_settled"] - 1
        print(
            f"  a challenger costs {cost:+.0%} per {shadowed['big_rides']:,}-ride batch (aim: at most +30 %); "
            f"1000-ride latency with it {shadowed['latency_1000_median'] * 1000:.0f} ms back to back, "
            f"{shadowed['latency_1000_settled'] * 1000:.0f} ms settled, {small:+.0%} against monitoring on "
            f"(aim: at most +30 %, i.e. under 65 ms)"
        )
