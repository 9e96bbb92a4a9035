"""The report's data and page, on a SQLite database migrated like any other and filled with rows as
the pipeline writes them (the browser test in tests/integration/test_report.py runs the real one):
which batches a period holds, the warnings and their thresholds, the drift margin, escaping, empty
data, size, and one-line refusals of bad options."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert

from tests.support import REPO_ROOT
from worker.cli.report import make_report
from worker.monitor import drift
from worker.monitor.overview import (
    ACCURACY_MARGIN,
    MARGIN_CAP,
    MIN_OUTCOMES,
    accuracy_alerts,
    collect,
    drift_margin,
    gaps,
    to_chicago,
)
from worker.settings import Settings
from worker.store.database import build_engine, migrate
from worker.store.history import slot_grid
from worker.store.schema import (
    batch_metrics,
    batch_runs,
    column_drift,
    daily_accuracy,
    window_column_drift,
    window_metrics,
)

NOW = datetime(2026, 11, 27, 18, 2, 30, tzinfo=UTC)  # 12:02:30 in Chicago
INTERVAL = 300.0
COLUMNS = (*drift.DATASET_COLUMNS, drift.TARGET)


@pytest.fixture
def database(tmp_path: Path) -> tuple[Settings, object]:
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    migrate(url)
    settings = Settings(LOCAL_DIR=tmp_path, DATABASE_URL=url, BATCH_INTERVAL_SECONDS=INTERVAL)
    engine = build_engine(url)
    yield settings, engine
    engine.dispose()


def _slot(minutes_before_now: int) -> datetime:
    current = datetime.fromtimestamp(NOW.timestamp() // INTERVAL * INTERVAL, UTC)
    return current - timedelta(minutes=minutes_before_now)


def _batch(
    conn,
    batch_id: str,
    slot: datetime | None,
    *,
    status: str = "succeeded",
    version: str = "1",
    rides: int = 100,
    started: datetime | None = None,
    pinned: str = "alias",
    error: str | None = None,
    trigger: str | None = None,
) -> None:
    end = to_chicago(slot) if slot is not None else None
    conn.execute(
        insert(batch_runs).values(
            batch_id=batch_id,
            trigger=trigger or ("schedule" if slot is not None else "file"),
            rides_requested=rides,
            rows_written=rides if status == "succeeded" else 0,
            model_name="m",
            model_version=version,
            model_pinned_by=pinned,
            window_start=end - timedelta(seconds=INTERVAL) if end else None,
            window_end=end,
            status=status,
            error=error,
            started_at=started or (slot or NOW),
            finished_at=started or (slot or NOW),
            slot=slot if trigger is None else None,
        )
    )


def _metrics(
    conn,
    batch_id: str,
    slot: datetime | None,
    *,
    version: str = "1",
    drifted: int = 0,
    status: str = "ok",
    error: str | None = None,
    mae: float | None = 2.0,
    rows: int = 100,
) -> None:
    conn.execute(
        insert(batch_metrics).values(
            batch_id=batch_id,
            model_version=version,
            window_end=to_chicago(slot) if slot else None,
            rows=rows,
            prediction_p10=5.0,
            prediction_p50=10.0 + drifted,
            prediction_p90=20.0,
            columns_checked=6 if status == "ok" else None,
            drifted_columns=drifted if status == "ok" else None,
            dataset_drift=drifted >= 3 if status == "ok" else None,
            monitor_status=status,
            monitor_error=error,
            monitored_at=NOW,
            outcomes=rows if mae is not None else None,
            mae=mae,
        )
    )
    if status != "ok":
        return
    conn.execute(
        insert(column_drift),
        [
            {
                "batch_id": batch_id,
                "column_name": column,
                "method": "ks",
                "score": 0.001 if i < drifted else 0.5,
                "threshold": 0.05,
                "drifted": i < drifted,
            }
            for i, column in enumerate(COLUMNS)
        ],
    )


def _window(conn, end_local: datetime, drifted: int, version: str = "1") -> None:
    conn.execute(
        insert(window_metrics).values(
            window_end=end_local,
            window_minutes=60,
            model_version=version,
            window_start=end_local - timedelta(hours=1),
            batches=12,
            rows=1200,
            columns_checked=6,
            drifted_columns=drifted,
            dataset_drift=drifted >= 3,
            reference="hour 11 (900 rows)",
            computed_at=NOW,
        )
    )
    conn.execute(
        insert(window_column_drift),
        [
            {
                "window_end": end_local,
                "window_minutes": 60,
                "model_version": version,
                "column_name": column,
                "method": "wasserstein",
                "score": 0.3 if i < drifted else 0.02,
                "threshold": 0.1,
                "drifted": i < drifted,
            }
            for i, column in enumerate(drift.DATASET_COLUMNS)
        ],
    )


def _fill(engine) -> None:
    """A morning of the service: slots with a gap, a failed slot, a fare rise, a file, two versions."""
    with engine.begin() as conn:
        for minutes in range(120, 60, -5):  # calibrated slots, v1
            _batch(conn, f"schedule-{_slot(minutes).isoformat()}", _slot(minutes))
            _metrics(conn, f"schedule-{_slot(minutes).isoformat()}", _slot(minutes), drifted=1 if minutes == 100 else 0)
        # 60 and 55 minutes ago: beat was down (missed). 50: failed.
        _batch(
            conn,
            f"schedule-{_slot(50).isoformat()}",
            _slot(50),
            status="failed",
            rides=120,
            error="OperationalError: <script>alert('x')</script> server closed the connection",
        )
        for minutes in range(45, 0, -5):  # fares rose; v2 served, one batch pinned by fallback
            batch_id = f"schedule-{_slot(minutes).isoformat()}"
            _batch(conn, batch_id, _slot(minutes), version="2", pinned="fallback" if minutes == 20 else "alias")
            _metrics(conn, batch_id, _slot(minutes), version="2", drifted=4, mae=3.4)
        _batch(conn, "adhoc-monitor-broke", _slot(5) - timedelta(seconds=1), version="2", trigger="adhoc")
        _metrics(conn, "adhoc-monitor-broke", None, version="2", status="failed", error="ValueError: bad <b>", mae=None)
        _batch(conn, "adhoc-no-reference", _slot(5) - timedelta(seconds=2), version="0", trigger="adhoc")
        _metrics(conn, "adhoc-no-reference", None, version="0", status="no_reference", mae=None)
        _batch(conn, "file-8d1c", None, started=NOW - timedelta(minutes=10), version="2")  # no window
        # A slot of three days ago, backfilled a minute ago: it belongs to its own day, not to this period.
        _batch(conn, "schedule-old", _slot(3 * 24 * 60), started=NOW - timedelta(minutes=1))
        _window(conn, to_chicago(_slot(0)) - timedelta(hours=1, minutes=to_chicago(_slot(0)).minute), drifted=0)
        _window(conn, to_chicago(_slot(0)) - timedelta(minutes=to_chicago(_slot(0)).minute), drifted=4, version="2")
        today = to_chicago(NOW).date()
        conn.execute(
            insert(daily_accuracy),
            [
                {
                    "day": today,
                    "model_version": "1",
                    "outcomes": 1200,
                    "mae": 2.2,
                    "rmse": 3.0,
                    "bias": 0.1,
                    "baseline_mae": 5.9,
                    "heldout_mae": 2.0,
                },
                {
                    "day": today,
                    "model_version": "2",
                    "outcomes": 900,
                    "mae": 3.4,
                    "rmse": 4.0,
                    "bias": 1.1,
                    "baseline_mae": 6.1,
                    "heldout_mae": 2.0,
                },
                {
                    "day": today - timedelta(days=1),
                    "model_version": "1",
                    "outcomes": 20000,
                    "mae": 9.0,
                    "rmse": 9.0,
                    "bias": 0.0,
                    "baseline_mae": 6.0,
                    "heldout_mae": 2.0,
                },
            ],
        )


def test_drift_margin_reads_drifted_the_same_way_for_every_test():
    rng = np.random.default_rng(3)
    found = {}
    for size in (200, 3000):  # small samples get the p-value tests, large ones the distances
        reference = pd.DataFrame({"fare": rng.gamma(2, 6, 5000), "pickup_community_area": rng.integers(1, 30, 5000)})
        for shift in (1.0, 1.3):
            current = pd.DataFrame(
                {"fare": rng.gamma(2, 6, size) * shift, "pickup_community_area": rng.integers(1, int(30 * shift), size)}
            )
            for column in ("fare", "pickup_community_area"):
                result = drift.column_drift(column, reference, current)
                margin = drift_margin(result.method, result.score, result.threshold)
                assert (margin > 1) == result.drifted, (result, margin)
                found[result.method] = found.get(result.method, set()) | {result.drifted}
    assert found == {m: {True, False} for m in ("ks", "chisquare", "wasserstein", "jensenshannon")}
    assert drift_margin("ks", 0.0, 0.05) == MARGIN_CAP  # a p-value of 0 is as far past as can be drawn
    assert drift_margin("ks", 0.005, 0.05) == pytest.approx(10)
    assert drift_margin("wasserstein", 0.5, 0.1) == pytest.approx(5)
    assert math.isnan(drift_margin("ks", None, 0.05))
    with pytest.raises(ValueError, match="unknown drift method"):
        drift_margin("psi", 0.2, 0.1)


def _daily(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["day", "model_version", "outcomes", "mae", "heldout_mae"])


def test_accuracy_warns_only_past_the_margin_over_enough_outcomes():
    day = date(2026, 11, 27)
    limit = 2.0 * (1 + ACCURACY_MARGIN)
    assert accuracy_alerts(_daily([(day, "1", MIN_OUTCOMES, limit - 0.01, 2.0)])) == []
    assert accuracy_alerts(_daily([(day, "1", MIN_OUTCOMES - 1, 9.0, 2.0)])) == []  # too few outcomes to say
    assert accuracy_alerts(_daily([(day, "1", 5000, 9.0, None)])) == []  # nothing promised to compare with
    # The latest day with enough outcomes counts: yesterday's bad day is over, today's small day is not enough.
    assert accuracy_alerts(_daily([(day - timedelta(1), "1", 900, 9.0, 2.0), (day, "1", 900, 2.1, 2.0)])) == []
    assert accuracy_alerts(_daily([(day - timedelta(1), "1", 900, 2.1, 2.0), (day, "1", 30, 9.0, 2.0)])) == []
    (alert,) = accuracy_alerts(_daily([(day, "1", 300, 2.1, 2.0), (day, "7", MIN_OUTCOMES, limit + 0.01, 2.0)]))
    assert alert.kind == "accuracy" and alert.text.startswith("model v7: live MAE 2.51 min on 2026-11-27")
    assert "25.5% above its held-out MAE 2.00 min" in alert.text


def test_lines_break_over_gaps_of_more_than_two_slots():
    times = pd.Series(
        pd.to_datetime(
            ["2026-11-27 10:00", "2026-11-27 10:05", "2026-11-27 10:15", "2026-11-27 10:16", "2026-11-27 10:30"]
        )
    )
    assert gaps(times, INTERVAL).tolist() == [False, False, False, False, True]
    assert gaps(times[:1], INTERVAL).tolist() == [False]


def test_a_period_holds_the_batches_whose_rides_it_covers_and_warns_about_what_needs_a_look(database):
    _, engine = database
    _fill(engine)
    overview = collect(engine, NOW, timedelta(hours=24), INTERVAL, _slot(0))
    ids = set(overview.batches["batch_id"])
    assert "schedule-old" not in ids  # backfilled a minute ago, but its rides are three days old
    assert "file-8d1c" in ids  # no ride window: placed by when it started
    # Beat was down 60 and 55 minutes ago; and before this morning's first slot, since the schedule
    # was first seen running three days ago (the backfilled slot), every slot of the period is missed.
    assert overview.missed[-2:] == [_slot(60), _slot(55)]
    assert len(overview.missed) == len(slot_grid(NOW - timedelta(hours=24), _slot(120), INTERVAL)) + 2
    file_row = overview.batches.set_index("batch_id").loc["file-8d1c"]
    assert file_row["at"] == pd.Timestamp(to_chicago(NOW - timedelta(minutes=10)))

    kinds = [alert.kind for alert in overview.alerts]
    assert kinds == ["failed", "missed", "accuracy", "drift", "drift", "monitoring", "monitoring"], overview.alerts
    failed, missed, accuracy, windows, batches, broken, no_reference = overview.alerts
    assert failed.text.startswith("1 failed batch in the period")
    assert "server closed the connection" in failed.items[0]
    assert missed.text == f"{len(overview.missed)} missed beat slots, 2026-11-26 12:05 to 2026-11-27 11:05 Chicago time"
    assert accuracy.text.startswith("model v2: live MAE 3.40 min")  # v1's bad day was yesterday
    assert windows.text == "dataset drift in 1 hour window of the last 3 h"
    assert (
        "(v2, 1200 rides): 4 of 6 columns drifted (dropoff_community_area, fare, pickup_community_area, trip_miles)"
        in windows.items[0]
    )
    assert batches.text == "dataset drift in 9 of 21 monitored batches of the last 3 h"
    assert broken.text.startswith("monitoring failed for 1 batch") and "ValueError: bad <b>" in broken.items[0]
    assert "`python -m worker reference --version 0`" in no_reference.text


def test_the_page_draws_every_chart_and_escapes_what_the_database_holds(database):
    settings, engine = database
    _fill(engine)
    out = settings.LOCAL_DIR / "report.html"
    written = make_report(settings, timedelta(hours=24), out, now=NOW)
    page = out.read_text()
    assert written.size == len(page.encode()) and written.charts_with_data == 5 and written.alerts == 7
    for key in ("batches", "predictions", "drift", "accuracy", "versions"):
        assert f'id="chart-{key}" data-empty="false"' in page
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "ValueError: bad &lt;b&gt;" in page
    assert "<code>python -m worker reference --version 0</code>" in page  # our commands are set as code
    # Chicago local time on every axis; no id twice in the page (five SVGs inline in one document).
    assert page.count("Chicago local time (America/Chicago)") >= 5
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), [i for i in set(ids) if ids.count(i) > 1][:5]
    # The versions chart marks the batch pinned by fallback; the batches chart the failed one and the gap.
    assert 'id="versions-v2-fallback"' in page and 'id="batches-failed"' in page and 'id="batches-missed"' in page


def test_an_empty_database_gives_a_report_that_says_so_for_each_chart(database):
    settings, _ = database
    out = settings.LOCAL_DIR / "empty.html"
    written = make_report(settings, timedelta(hours=24), out, now=NOW)
    page = out.read_text()
    assert written.charts_with_data == 0 and written.alerts == 0
    assert page.count('data-empty="true"') == 5 and "<svg" not in page
    assert "Nothing needs a look" in page


def test_a_month_of_slots_stays_a_small_file(database):
    settings, engine = database
    slots = [_slot(5 * k) for k in range(30 * 288)]
    rows = [
        {
            "batch_id": f"schedule-{s.isoformat()}",
            "trigger": "schedule",
            "rides_requested": 200,
            "rows_written": 200,
            "model_name": "m",
            "model_version": "1",
            "model_pinned_by": "alias",
            "status": "succeeded",
            "window_start": to_chicago(s) - timedelta(minutes=5),
            "window_end": to_chicago(s),
            "started_at": s,
            "finished_at": s,
            "slot": s,
        }
        for s in slots
    ]
    rng = np.random.default_rng(1)
    with engine.begin() as conn:
        conn.execute(insert(batch_runs), rows)
        conn.execute(
            insert(batch_metrics),
            [
                {
                    "batch_id": r["batch_id"],
                    "model_version": "1",
                    "window_end": r["window_end"],
                    "rows": 200,
                    "prediction_p10": 5.0,
                    "prediction_p50": 11.0,
                    "prediction_p90": 25.0,
                    "columns_checked": 6,
                    "drifted_columns": 0,
                    "dataset_drift": False,
                    "monitor_status": "ok",
                    "monitored_at": NOW,
                    "outcomes": 200,
                    "mae": float(rng.normal(2, 0.2)),
                }
                for r in rows
            ],
        )
        conn.execute(
            insert(column_drift),
            [
                {
                    "batch_id": r["batch_id"],
                    "column_name": c,
                    "method": "ks",
                    "score": float(rng.uniform()),
                    "threshold": 0.05,
                    "drifted": False,
                }
                for r in rows
                for c in COLUMNS
            ],
        )
    out = settings.LOCAL_DIR / "month.html"
    written = make_report(settings, timedelta(days=31), out, now=NOW)
    assert written.charts_with_data == 5
    assert written.size < 1_500_000, written.size  # dense series are drawn as images inside the SVG


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "error: --since 'yesterday' is not a duration such as 90m, 6h, 2d or 1w"),
        (["--since", "0h"], "error: --since '0h' is not a duration"),
        (["--since", "100000w"], "error: --since reaches back more than 100 years"),
        (["--since", "9" * 20 + "d"], "is longer than any duration this can count"),
        (
            ["-o", "/no/such/folder/report.html"],
            "error: -o /no/such/folder/report.html: folder /no/such/folder does not exist",
        ),
    ],
)
def test_bad_options_are_refused_in_one_line(args, message, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "worker", "report", *args],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert not list(tmp_path.glob("*.html"))
