"""Grafana's per-batch panels on the night the clocks go back (America/Chicago, 1 November 2026):
a scheduled batch is drawn at its slot, a UTC instant, not at its window's Chicago wall time, which
names two instants in the repeated hour (PostgreSQL reads it as the later one, standard time, so
both 01:xx hours landed on one and the other stayed empty). Real PostgreSQL, the shipped SQL with
Grafana's macros expanded (tests/grafana.py)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.grafana import expand_sql, queries
from worker.rides.generator import CHICAGO
from worker.store.database import build_engine

pytestmark = pytest.mark.integration

FIRST = datetime(2026, 11, 1, 5, 0, tzinfo=UTC)  # 00:00 CDT; 01:xx is 06:xx UTC (CDT) and 07:xx UTC (CST)
SLOTS = [FIRST + timedelta(minutes=5 * k) for k in range(48)]  # four UTC hours of 12 slots
PANELS = {("model-health.json", 1), ("model-health.json", 3), ("model-health.json", 5)}


def test_per_batch_panels_draw_a_scheduled_batch_at_its_slot_on_the_night_clocks_go_back(fresh_pg_url):
    engine = build_engine(fresh_pg_url)
    with engine.begin() as conn:
        for slot in SLOTS:
            batch_id = f"schedule-{slot.isoformat()}"
            end_local = slot.astimezone(CHICAGO).replace(tzinfo=None)  # window_end: Chicago wall time
            conn.execute(
                text(
                    "INSERT INTO batch_runs (batch_id, trigger, rides_requested, status, slot, window_start, window_end) "
                    "VALUES (:b, 'schedule', 10, 'succeeded', :slot, :start, :end)"
                ),
                {"b": batch_id, "slot": slot, "start": end_local - timedelta(minutes=5), "end": end_local},
            )
            conn.execute(
                text(
                    "INSERT INTO batch_metrics (batch_id, model_version, window_start, window_end, rows, outcomes, mae, "
                    "dataset_drift, monitor_status, monitored_at) "
                    "VALUES (:b, '1', :start, :end, 10, 10, 2.0, false, 'ok', :slot)"
                ),
                {"b": batch_id, "slot": slot, "start": end_local - timedelta(minutes=5), "end": end_local},
            )
            conn.execute(
                text(
                    "INSERT INTO column_drift (batch_id, column_name, method, score, threshold, drifted) "
                    "VALUES (:b, 'fare', 'ks', 0.5, 0.05, false)"
                ),
                {"b": batch_id},
            )
    checked = 0
    with engine.connect() as conn:
        for query in queries("sql"):
            if (query.dashboard, query.panel_id) not in PANELS or query.target["refId"] != "A":
                continue
            sql = expand_sql(query.target["rawSql"], SLOTS[0] - timedelta(minutes=1), SLOTS[-1] + timedelta(minutes=1))
            times = [row[0] for row in conn.execute(text(sql)) if row[1] != "threshold · ks"]
            per_hour = Counter(t.astimezone(UTC).hour for t in times)
            assert per_hour == {5: 12, 6: 12, 7: 12, 8: 12}, f"{query.label}: points per UTC hour {dict(per_hour)}"
            checked += 1
    engine.dispose()
    assert checked == len(PANELS)
