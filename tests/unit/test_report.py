"""The report's data and page, on a SQLite database migrated like any other and filled with rows as
the pipeline writes them (the browser test in tests/integration/test_report.py runs the real one):
which batches a period holds, the warnings and their thresholds, the drift margin, escaping, empty
data, size, one-line refusals of bad options, and the model's life cycle: which model events a
period holds and how each is drawn, the events table and the challenger's stored comparison."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.dates import date2num
from sqlalchemy import insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tests.support import REPO_ROOT
from worker.cli.charts import LABEL_ROWS, event_label, label_rows
from worker.cli.errors import UsageError
from worker.cli.report import make_report
from worker.monitor import drift, paired
from worker.monitor.overview import (
    ACCURACY_MARGIN,
    MARGIN_CAP,
    MIN_OUTCOMES,
    ModelAliases,
    accuracy_alerts,
    collect,
    drift_margin,
    gaps,
    to_chicago,
)
from worker.rides.generator import CHICAGO
from worker.settings import Settings
from worker.store import snapshot
from worker.store.database import build_engine, migrate
from worker.store.schema import (
    batch_metrics,
    batch_runs,
    column_drift,
    daily_accuracy,
    model_aliases,
    model_events,
    ride_outcomes,
    ride_predictions,
    shadow_comparisons,
    window_column_drift,
    window_metrics,
)

NOW = datetime(2026, 11, 27, 18, 2, 30, tzinfo=UTC)  # 12:02:30 in Chicago
INTERVAL = 300.0
COLUMNS = (*drift.DATASET_COLUMNS, drift.TARGET)
ALIASES = ModelAliases("m", "production", "challenger")


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
    monitored: datetime | None = None,
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
            # as the monitor task does it: half a minute after its slot (an unscheduled batch: now)
            monitored_at=monitored or (slot + timedelta(seconds=30) if slot else NOW),
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
    """An hour window ending at a Chicago wall time, stored as windows are: by its UTC instant."""
    end = end_local.replace(tzinfo=CHICAGO).astimezone(UTC)
    conn.execute(
        insert(window_metrics).values(
            window_end=end,
            window_minutes=60,
            model_version=version,
            window_start=end - timedelta(hours=1),
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
                "window_end": end,
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
        # Production v2 on the record, its 600 most recently known outcomes each 3.4 minutes off (held out: 2.0).
        conn.execute(
            sqlite_insert(model_aliases)
            .values(model_name="m", alias="production", version="2", updated_at=NOW)
            .on_conflict_do_nothing()
        )
        rides = [
            {"trip_id": f"00000000-0000-4000-8000-{k:012d}", "trip_start_timestamp": to_chicago(_slot(30)),
             "fare": 9.0, "trip_miles": 2.0, "predicted_duration": 13.4, "model_name": "m", "model_version": "2",
             "batch_id": f"schedule-{_slot(30).isoformat()}"}
            for k in range(600)
        ]  # fmt: skip
        conn.execute(insert(ride_predictions), rides)
        conn.execute(
            insert(ride_outcomes),
            [
                {"trip_id": r["trip_id"], "actual_duration": 10.0, "observed_at": to_chicago(_slot(20)),
                 "source": "generated", "known_at": NOW - timedelta(minutes=20)}
                for r in rides
            ],
        )  # fmt: skip
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


def _event(conn, minutes_ago: float, action: str, alias: str | None, before: str | None, after: str | None,
           actor: str = "alice", status: str = "done", model: str = "m", **extra) -> None:  # fmt: skip
    conn.execute(
        insert(model_events).values(
            at=NOW - timedelta(minutes=minutes_ago),
            model_name=model,
            alias=alias,
            action=action,
            from_version=before,
            to_version=after,
            actor=actor,
            status=status,
            **extra,
        )
    )


# The period's model events as the record holds them, oldest first: (action, alias, from, to, status, drawn as).
PERIOD_EVENTS = [
    ("first_seen", "production", None, "1", "done", None),  # the record began: no move
    ("registered", None, None, "2", "done", None),  # a new version: no alias moved
    ("promoted", "production", "1", "2", "done", "production"),
    ("challenger_set", "challenger", None, "3", "done", "challenger"),
    ("promoted", "production", "2", "3", "failed", None),  # the registry refused: nothing moved
    ("moved_outside", "production", "2", "1", "done", "production"),
    ("rolled_back", "production", "1", "2", "done", "production"),
    ("moved_outside", "challenger", "3", "4", "done", "challenger"),
]
PRODUCTION_MOVES = sum(drawn == "production" for *_, drawn in PERIOD_EVENTS)
CHALLENGER_EVENTS = sum(drawn == "challenger" for *_, drawn in PERIOD_EVENTS)
LIVE_COMPARISON = {  # the current challenger v4 against production v2, as a quality pass stored it
    "challenger_version": "4",
    "production_version": "2",
    "model_name": "m",
    "outcomes": 1200,
    "production_mae": 3.4,
    "challenger_mae": 2.1,
    "mean_difference": -1.3,
    "ci_low": -1.42,
    "ci_high": -1.18,
    "wilcoxon_p": 3e-40,
    "computed_at": NOW - timedelta(minutes=2),
}


def _fill_lifecycle(engine) -> None:
    """The morning's model events (PERIOD_EVENTS, 3 h to 10 min ago), some that are not the period's, where
    the record says the aliases point, stored comparisons, and a batch the challenger could not score."""
    with engine.begin() as conn:
        _event(conn, 2 * 24 * 60, "promoted", "production", None, "1")  # before the period
        _event(conn, 30, "promoted", "production", "1", "9", model="another-model")
        _event(conn, 5, "promoted", "production", "2", "5", status="pending")  # in flight: not settled yet
        for minutes, (action, alias, before, after, status, _) in zip(
            (180, 50, 47, 40, 35, 30, 20, 10), PERIOD_EVENTS, strict=True
        ):
            _event(
                conn, minutes, action, alias, before, after,
                actor="unknown" if action in ("moved_outside", "first_seen") else "alice",
                status=status,
                reason="<img src=x onerror=alert(1)> v2 is worse" if action == "rolled_back" else f"{action} here",
                error="MlflowException: 403 Permission denied" if status == "failed" else None,
            )  # fmt: skip
        conn.execute(
            sqlite_insert(model_aliases).on_conflict_do_nothing(),
            [
                {"model_name": "m", "alias": "production", "version": "2", "updated_at": NOW},
                {"model_name": "m", "alias": "challenger", "version": "4", "updated_at": NOW},
            ],
        )
        # A comparison of the former challenger, computed later: not the one the record's challenger has.
        conn.execute(insert(shadow_comparisons), [LIVE_COMPARISON, {**LIVE_COMPARISON, "challenger_version": "3",
                     "outcomes": 40, "computed_at": NOW - timedelta(minutes=1)}])  # fmt: skip
        conn.execute(
            batch_runs.update()
            .where(batch_runs.c.batch_id == f"schedule-{_slot(15).isoformat()}")
            .values(
                challenger_version="4", shadow_error="challenger v4 failed to predict: ValueError: X has 4 features"
            )
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


def test_accuracy_warns_by_the_alerts_and_the_policys_rule():
    from worker.monitor.degradation import RecentAccuracy

    limit = 2.0 * (1 + ACCURACY_MARGIN)
    at = datetime(2026, 11, 27, 18, tzinfo=UTC)
    assert accuracy_alerts(None) == []
    assert accuracy_alerts(RecentAccuracy("1", MIN_OUTCOMES, limit, 2.0, at)) == []  # at the margin: not above it
    assert accuracy_alerts(RecentAccuracy("1", MIN_OUTCOMES - 1, 9.0, 2.0, at)) == []  # too few outcomes to say
    assert accuracy_alerts(RecentAccuracy("1", 5000, 9.0, None, at)) == []  # nothing promised to compare with
    (alert,) = accuracy_alerts(RecentAccuracy("7", MIN_OUTCOMES, limit + 0.01, 2.0, at))
    assert alert.kind == "accuracy" and alert.text.startswith("production v7: live MAE 2.51 min over its 500 most")
    assert "25.5% above its held-out MAE 2.00 min" in alert.text and "TaxiLiveMaeWorseThanHeldout" in alert.text


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
    overview = collect(engine, NOW, timedelta(hours=24), INTERVAL, _slot(0), ALIASES)
    ids = set(overview.batches["batch_id"])
    assert "schedule-old" not in ids  # backfilled a minute ago, but its rides are three days old
    assert "file-8d1c" in ids  # no ride window: placed by when it started
    # Beat was down 60 and 55 minutes ago. Before this morning's first slot nothing counts as missed:
    # the slot from three days ago was backfilled a minute ago, which is not beat seen running.
    assert overview.missed == [_slot(60), _slot(55)]
    file_row = overview.batches.set_index("batch_id").loc["file-8d1c"]
    assert file_row["at"] == pd.Timestamp(to_chicago(NOW - timedelta(minutes=10)))

    kinds = [alert.kind for alert in overview.alerts]
    assert kinds == ["failed", "missed", "accuracy", "drift", "drift", "monitoring", "monitoring"], overview.alerts
    failed, missed, accuracy, windows, batches, broken, no_reference = overview.alerts
    assert failed.text.startswith("1 failed batch in the period")
    assert "server closed the connection" in failed.items[0]
    assert missed.text.startswith("2 missed beat slots, ") and missed.text.endswith(" Chicago time")
    assert accuracy.text.startswith("production v2: live MAE 3.40 min over its 600 most recently known outcomes")
    assert windows.text == "dataset drift in the last clock hour that has ended"
    assert (
        "(v2, 1200 rides): 4 of 6 columns drifted (dropoff_community_area, fare, pickup_community_area, trip_miles)"
        in windows.items[0]
    )
    assert batches.text == "dataset drift in 9 of 9 monitored batches of the last 1 h"
    assert broken.text.startswith("monitoring failed for 1 batch") and "ValueError: bad <b>" in broken.items[0]
    assert "`python -m worker reference --version 0`" in no_reference.text


def test_the_batch_drift_warning_counts_the_batches_the_alert_counts(database):
    """TaxiDatasetDrift counts the batches monitored in the last hour (the exporter's
    taxi_drifted_batches_last_hour): a backfill of drifted slots of three days ago, monitored now,
    raises the report's warning with the same numbers, though their rides are not the period's."""
    _, engine = database
    with engine.begin() as conn:
        for k in range(4):
            slot = _slot(3 * 24 * 60 + 5 * k)
            batch_id = f"schedule-{slot.isoformat()}"
            _batch(conn, batch_id, slot, started=NOW - timedelta(minutes=k + 1))
            _metrics(conn, batch_id, slot, drifted=4, monitored=NOW - timedelta(minutes=k + 1))
        for minutes in (10, 5):  # this morning's slots, calibrated
            _batch(conn, f"schedule-{_slot(minutes).isoformat()}", _slot(minutes))
            _metrics(conn, f"schedule-{_slot(minutes).isoformat()}", _slot(minutes))
    state = snapshot.read_drift(engine, NOW)
    assert (state.drifted_last_hour, state.monitored_last_hour["ok"]) == (4, 6)
    overview = collect(engine, NOW, timedelta(hours=2), INTERVAL, _slot(0), ALIASES)
    assert "schedule-" + _slot(3 * 24 * 60).isoformat() not in set(overview.batches["batch_id"])
    (warning,) = [alert for alert in overview.alerts if alert.kind == "drift"]
    assert warning.text == "dataset drift in 4 of 6 monitored batches of the last 1 h"
    old = to_chicago(_slot(3 * 24 * 60))
    assert warning.items[0] == (
        f"schedule-{_slot(3 * 24 * 60).isoformat()} ({old:%Y-%m-%d %H:%M}, 100 rides): 4 of 6 columns drifted "
        "(dropoff_community_area, fare, pickup_community_area, trip_miles)"
    ), warning.items


def test_a_period_on_the_night_clocks_go_back_holds_its_slots_by_instant(database):
    """On 1 November 2026 Chicago's 01:00-02:00 comes twice (CDT, then CST). A period of 40 minutes
    ending at 01:50 CST starts at 01:10 CST: the slots of 01:10-01:55 CDT, an hour earlier, have the
    same local wall times but are not the period's."""
    _, engine = database
    now = datetime(2026, 11, 1, 7, 50, tzinfo=UTC)  # 01:50 CST, the second pass
    slots = [datetime(2026, 11, 1, 6, tzinfo=UTC) + timedelta(minutes=5 * k) for k in range(23)]  # 01:00 CDT on
    with engine.begin() as conn:
        for slot in slots:
            _batch(conn, f"schedule-{slot.isoformat()}", slot, started=slot)
    overview = collect(engine, now, timedelta(minutes=40), INTERVAL, slots[0], ALIASES)
    expected = {f"schedule-{slot.isoformat()}" for slot in slots if slot >= now - timedelta(minutes=40)}
    assert set(overview.batches["batch_id"]) == expected
    assert overview.missed == []


def test_the_page_draws_every_chart_and_escapes_what_the_database_holds(database):
    settings, engine = database
    _fill(engine)
    out = settings.LOCAL_DIR / "report.html"
    written = make_report(settings.model_copy(update={"MODEL_NAME": "m"}), timedelta(hours=24), out, now=NOW)
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


def _svg_group_paths(page: str, gid: str) -> int:
    """How many shapes the SVG group `gid` holds (a line collection writes a path per line), -1 if absent."""
    match = re.search(rf'<g id="{re.escape(gid)}">(.*?)</g>', page, re.S)
    return -1 if match is None else match.group(1).count("<path")


def test_the_periods_model_events_are_listed_classified_and_warned_about(database):
    _, engine = database
    _fill(engine)
    _fill_lifecycle(engine)
    overview = collect(engine, NOW, timedelta(hours=24), INTERVAL, _slot(0), ALIASES)
    found = [(e.action, e.alias, e.from_version, e.to_version, e.status, e.kind) for e in overview.events.itertuples()]
    # Settled events of this model in the period only: not the pending move, another model's or last week's.
    assert found == PERIOD_EVENTS
    assert overview.events["local"].iloc[2] == pd.Timestamp(to_chicago(NOW - timedelta(minutes=47)))

    kinds = [alert.kind for alert in overview.alerts]
    assert kinds == [
        "failed", "missed", "outside", "accuracy", "drift", "drift", "monitoring", "monitoring", "challenger",
    ], overview.alerts  # fmt: skip
    outside, shadow = overview.alerts[2], overview.alerts[-1]
    assert outside.text.startswith("2 alias moves made outside the project in the period")
    assert outside.items == (
        f"{to_chicago(NOW - timedelta(minutes=10)):%Y-%m-%d %H:%M} Chicago: @challenger v3 → v4",
        f"{to_chicago(NOW - timedelta(minutes=30)):%Y-%m-%d %H:%M} Chicago: @production v2 → v1",
    )
    assert shadow.text.startswith("the challenger failed to score 1 batch in the period")
    assert shadow.items == (
        f"schedule-{_slot(15).isoformat()} (v4): challenger v4 failed to predict: ValueError: X has 4 features",
    )


def test_the_challenger_shown_is_the_one_the_record_names_with_its_stored_verdict(database):
    _, engine = database
    _fill_lifecycle(engine)
    view = collect(engine, NOW, timedelta(hours=24), INTERVAL, _slot(0), ALIASES).challenger
    # v4 against v2, as the record says, although v3's comparison was computed later.
    assert (view.challenger, view.production, view.current) == ("4", "2", True)
    assert view.evidence == paired.stored(LIVE_COMPARISON)
    assert view.verdict == paired.verdict(view.evidence) == "challenger better"
    assert view.computed_at == NOW - timedelta(minutes=2)

    # The challenger retired: the latest comparison stays in view, as a former challenger's.
    with engine.begin() as conn:
        conn.execute(model_aliases.update().where(model_aliases.c.alias == "challenger").values(version=None))
    view = collect(engine, NOW, timedelta(hours=24), INTERVAL, _slot(0), ALIASES).challenger
    assert (view.challenger, view.production, view.current) == ("3", "2", False)
    assert (
        view.evidence.outcomes == 40 and view.verdict == f"too few paired outcomes (40 of {paired.MIN_PAIRED_OUTCOMES})"
    )


@pytest.mark.parametrize(
    ("event", "label"),
    [
        (("promoted", "alice", "2", "3", "production"), "v2 → v3 promoted by alice"),
        (("promoted", "alice", None, "1", "production"), "v1 promoted by alice"),
        (("rolled_back", "bob", "3", "2", "production"), "v3 → v2 rolled back by bob"),
        (("converted", "carol", "4", "5", "production"), "v4 → v5 converted to skops by carol"),
        (("moved_outside", "unknown", "2", "7", "production"), "v2 → v7 moved outside the project"),
        (("moved_outside", "unknown", "3", None, "challenger"), "challenger v3 → none moved outside the project"),
        (("challenger_set", "dave", None, "6", "challenger"), "challenger v6 set by dave"),
        (("challenger_retired", "dave", "6", None, "challenger"), "challenger v6 retired by dave"),
    ],
)
def test_each_drawn_event_says_what_moved_and_who_moved_it(event, label):
    assert event_label(*event) == label


def test_labels_of_moves_close_in_time_go_on_different_rows():
    start = datetime(2026, 11, 27, 8, 0)
    span = (start, start + timedelta(hours=10))
    minutes = [0, 60, 300, 301, 302, 303, 304, 600]  # a cluster of five within 4 minutes, far from the rest
    x = date2num([start + timedelta(minutes=m) for m in minutes])
    rows = label_rows(x, span)
    assert rows[0] == 0 and rows[1] == 1  # an hour is close on a 10-hour axis
    assert rows[2] == 0  # five hours later the top row is free again
    assert rows[2:6] == [0, 1, 2, 3] and rows[6] == 0  # more than LABEL_ROWS at once: the oldest row is reused
    assert rows[7] == 0
    assert max(rows) == LABEL_ROWS - 1


def test_the_page_draws_a_line_per_model_event_on_every_time_chart_and_lists_the_events(database):
    settings, engine = database
    _fill(engine)
    _fill_lifecycle(engine)
    out = settings.LOCAL_DIR / "lifecycle.html"
    written = make_report(settings.model_copy(update={"MODEL_NAME": "m"}), timedelta(hours=24), out, now=NOW)
    page = out.read_text()
    assert written.charts_with_data == 5 and written.alerts == 9
    # One solid line per production move and one dashed line per challenger change, on each time chart.
    for key in ("batches", "predictions", "drift", "accuracy", "versions"):
        assert _svg_group_paths(page, f"{key}-moves") == PRODUCTION_MOVES == 3, key
        assert _svg_group_paths(page, f"{key}-challenger-events") == CHALLENGER_EVENTS == 2, key
    for label in (
        "v1 → v2 promoted by alice",
        "v2 → v1 moved outside the project",
        "v1 → v2 rolled back by alice",
        "challenger v3 set by alice",
        "challenger v3 → v4 moved outside the project",
    ):
        assert page.count(f">{label}</text>") == 5, label
    assert "v2 → v3 promoted" not in page  # the failed promotion moved nothing: listed, not drawn
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), [i for i in set(ids) if ids.count(i) > 1][:5]

    # The events table: the period's settled events, escaped, the failed one with its error.
    table = page[page.index('<section id="events"') :]
    table = table[: table.index("</section>")]
    assert 'data-events="8" data-moves="3"' in table
    rows = re.findall(r'<tr data-action="([^"]+)" data-status="([^"]+)" data-kind="([^"]*)">', table)
    assert rows == [(a, status, kind or "") for a, _, _, _, status, kind in PERIOD_EVENTS]
    assert f"<td>{to_chicago(NOW - timedelta(minutes=47)):%Y-%m-%d %H:%M:%S}</td><td>promoted</td>" in table
    assert "<td>v1 → v2</td>" in table and "<td>none → v3</td>" in table
    assert "MlflowException: 403 Permission denied" in table
    assert "&lt;img src=x onerror=alert(1)&gt; v2 is worse" in table and "<img" not in page
    assert ">nan<" not in table and "v9" not in page and "v5" not in page  # another model's, a pending move

    # The challenger block: the stored comparison of v4 against v2, and its verdict.
    block = page[page.index('<section id="challenger"') :]
    block = block[: block.index("</section>")]
    assert 'data-challenger="4" data-production="2" data-current="true" data-outcomes="1200"' in block
    assert 'data-verdict="challenger better"' in block
    for shown in ("3.400 min", "2.100 min", "-1.300 min (-38.2% of production", "-1.420 to -1.180 min", "1,200",
                  "3e-40", '<td class="verdict">challenger better</td>'):  # fmt: skip
        assert shown in block, shown


def test_an_empty_database_gives_a_report_that_says_so_for_each_chart(database):
    settings, _ = database
    out = settings.LOCAL_DIR / "empty.html"
    written = make_report(settings, timedelta(hours=24), out, now=NOW)
    page = out.read_text()
    assert written.charts_with_data == 0 and written.alerts == 0
    assert page.count('data-empty="true"') == 5 and "<svg" not in page
    assert "Nothing needs a look" in page
    assert '<section id="events" data-events="0" data-moves="0">' in page and "No model events in this period" in page
    assert 'data-challenger="" data-production="" data-current="false" data-outcomes="0"' in page
    assert "No challenger on record and no comparison stored" in page


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
        (["--since", "100000w"], "error: --since '100000w' reaches back more than 36500 days (a century)"),
        (["--since", "9" * 20 + "d"], "reaches back more than 36500 days"),
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


def test_prediction_drift_of_an_hour_is_a_warning_even_without_dataset_drift() -> None:
    from worker.monitor.overview import prediction_drift_alerts

    local = datetime(2026, 11, 27, 11, 0)  # shown in Chicago time; decided by the UTC instant
    end = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)
    rows = pd.DataFrame(
        [
            {"window_end": local, "window_start": local - timedelta(hours=1), "end_utc": end.replace(tzinfo=None),
             "model_version": "1", "column_name": column,
             "method": "wasserstein", "score": score, "threshold": 0.1, "drifted": score >= 0.1}
            for column, score in (("fare", 0.04), ("trip_miles", 0.01), ("predicted_duration", 0.31))
        ]
    )  # fmt: skip
    (alert,) = prediction_drift_alerts(rows, end - timedelta(minutes=90), end + timedelta(minutes=20))
    assert alert.kind == "drift" and alert.text.startswith("prediction drift in the last clock hour that has ended")
    assert alert.items == ("2026-11-27 10:00–11:00 (v1): wasserstein 0.31 against 0.1",)
    calm = rows.assign(drifted=False)
    assert prediction_drift_alerts(calm, end - timedelta(minutes=90), end + timedelta(minutes=20)) == []
    assert prediction_drift_alerts(rows, end, end + timedelta(hours=2)) == []  # stale: ended over 90 minutes ago
    assert prediction_drift_alerts(rows, end - timedelta(minutes=90), end - timedelta(minutes=1)) == []  # in progress


def test_the_fill_command_of_a_gap_longer_than_a_year_is_one_backfill_accepts():
    """It named the whole gap, which backfill refuses past a year of slots ("send it in parts")."""
    from worker.cli.backfill import MAX_SLOTS_EVER
    from worker.cli.status import fill_command

    first, last = datetime(2016, 3, 1, 12, 35, tzinfo=UTC), datetime(2026, 12, 5, 0, 25, tzinfo=UTC)
    command = fill_command([first, last], 300).split()
    start, end = (datetime.fromisoformat(command[command.index(o) + 1]) for o in ("--from", "--to"))
    assert end == last + timedelta(minutes=5) and (end - start) / timedelta(minutes=5) == MAX_SLOTS_EVER
    assert command[-1] == "--yes"
    short = fill_command([last - timedelta(hours=1), last], 300)
    assert short == f"python -m worker backfill --from {(last - timedelta(hours=1)).isoformat()} --to " + (
        f"{(last + timedelta(minutes=5)).isoformat()} --wait"
    )


def test_a_report_that_cannot_be_written_where_asked_is_refused_naming_the_path_and_why():
    """A folder that exists but takes no new file (/proc here; a folder without write permission alike,
    which root cannot be shown): one line, nothing half-written."""
    from worker.cli.report import write_atomically

    with pytest.raises(UsageError, match=r"^-o /proc/report\.html: cannot write there: .*No such file"):
        write_atomically(Path("/proc/report.html"), "<html></html>")


def test_the_hour_window_warnings_do_not_depend_on_the_period(database):
    """The newest ended hour window is what TaxiDatasetDrift and TaxiPredictionDrift read, whatever
    the report's period: `--since 30m` run at xx:45 missed the window that ended at xx:00."""
    _, engine = database
    _fill(engine)

    def hour_warnings(period: timedelta) -> list:
        later = NOW + timedelta(minutes=40)  # 12:42 in Chicago: the window that ended at 12:00 is the newest
        overview = collect(engine, later, period, INTERVAL, _slot(0), ALIASES)
        return [a for a in overview.alerts if "in the last clock hour that has ended" in a.text]

    found = hour_warnings(timedelta(hours=24))
    assert found and hour_warnings(timedelta(minutes=30)) == found
