"""The report in a real browser: Debian's Chromium, headless, driven by Playwright, opens the HTML file
that `python -m worker report` wrote from real batches (real Redis, PostgreSQL, MLflow and worker:
backfilled past slots with a gap, a fare increase, the quality pass; a promotion, a rollback and a
challenger set behind the service's back, which then shadow-scores) and from a fresh install.

The page must load with no console error and no request but the file itself, and every chart must
be there with its data drawn (marks with a size, counted against the database), a line per model
event on every chart, the events table and the challenger's stored comparison as the database holds
them. The screenshot is kept in .local/test-artifacts/ (git-ignored) and its path printed.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support import REPO_ROOT, registry_client, wait_until
from worker.monitor import paired

pytestmark = pytest.mark.integration

ARTIFACTS = REPO_ROOT / ".local" / "test-artifacts"
CHARTS = ("batches", "predictions", "drift", "accuracy", "versions")
SMALL_TRAIN = ("--rides", "20000", "--trees", "10", "--max-depth", "10", "--seed", "1")
TINY_TRAIN = ("--rides", "3000", "--trees", "2", "--max-depth", "3", "--seed", "2")  # worse: registered, not promoted
# This machine's Chromium: no GPU, no sandbox as root, nothing fetched in the background.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Per chart: how many data marks (SVG shapes with a size) each of its series drew, read from the DOM,
# and the labels of the model events it drew (text shown, in groups `KEY-label-...`).
MARKS_JS = """
() => Array.from(document.querySelectorAll('section.chart')).map(section => {
  const key = section.id.slice(6);
  const series = {};
  for (const group of section.querySelectorAll('svg g[id^="' + key + '-"]:not([id^="' + key + '-label-"])')) {
    const shapes = Array.from(group.querySelectorAll('path, use, image')).filter(shape => {
      const box = shape.getBoundingClientRect();
      return box.width > 0 || box.height > 0;
    });
    series[group.id] = shapes.length;
  }
  const labels = Array.from(section.querySelectorAll('svg g[id^="' + key + '-label-"] text'))
    .filter(text => text.getBoundingClientRect().width > 0).map(text => text.textContent);
  return {key, empty: section.dataset.empty, svgs: section.querySelectorAll('svg').length,
          text: section.querySelector('.empty') ? section.querySelector('.empty').textContent : '', series, labels};
})
"""
# The events table and the challenger block, as the page shows them.
LIFECYCLE_JS = """
() => ({
  events: Array.from(document.querySelectorAll('#events tbody tr')).map(row => ({
    action: row.dataset.action, status: row.dataset.status, kind: row.dataset.kind,
    cells: Array.from(row.cells).map(cell => cell.textContent)})),
  eventsText: document.querySelector('#events').innerText,
  challenger: Object.assign({}, document.querySelector('#challenger').dataset),
  challengerText: document.querySelector('#challenger').innerText,
})
"""


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed: apt-get install -y --no-install-recommends chromium")
    return path


def open_in_chromium(report: Path, screenshot: Path, profile: Path) -> dict:
    """Load the file in headless Chromium; what it logged, requested and drew, and a full-page screenshot."""
    from playwright.sync_api import sync_playwright

    seen: dict = {"console": [], "errors": [], "requests": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile),  # a fresh --user-data-dir
            executable_path=chromium(),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 900},
        )
        try:
            page = browser.new_page()
            page.on("console", lambda message: seen["console"].append((message.type, message.text)))
            page.on("pageerror", lambda error: seen["errors"].append(str(error)))
            page.on("request", lambda request: seen["requests"].append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            seen["title"] = page.title()
            seen["charts"] = page.evaluate(MARKS_JS)
            seen["alerts"] = page.eval_on_selector_all("#warnings li.alert", "items => items.map(i => i.dataset.kind)")
            seen["alert_text"] = page.inner_text("#warnings")
            seen["lifecycle"] = page.evaluate(LIFECYCLE_JS)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return seen


def _assert_offline_and_clean(report: Path, seen: dict) -> None:
    assert seen["errors"] == [], seen["errors"]
    assert [m for m in seen["console"] if m[0] in ("error", "warning")] == [], seen["console"]
    assert seen["requests"] == [report.as_uri()], seen["requests"]  # nothing but the file itself
    page = report.read_text()
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "src=" not in page and 'href="http' not in page and "url(http" not in page


def _keep(screenshot: Path, name: str, capsys) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kept = ARTIFACTS / name
    shutil.copy(screenshot, kept)
    with capsys.disabled():
        print(f"\nreport screenshot: {kept}")
    return kept


def _slot(minutes_ago: int, now: datetime) -> datetime:
    """The beat slot (5 minutes) `minutes_ago` before the current one, in UTC."""
    current = datetime.fromtimestamp(now.timestamp() // 300 * 300, UTC)
    return current - timedelta(minutes=minutes_ago)


def _ok(done) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _backfill(stack, start: datetime, end: datetime, *knobs: str) -> None:
    _ok(stack.cli("backfill", "--from", start.isoformat(), "--to", end.isoformat(), "--rides", "400", "--wait",
                  *knobs, timeout=300))  # fmt: skip


def test_the_report_of_real_batches_opens_offline_in_chromium_with_every_chart_drawn(new_stack, tmp_path, capsys):
    started = time.monotonic()
    model = f"report-{datetime.now(UTC):%H%M%S%f}"
    stack = new_stack(MODEL_NAME=model)
    _ok(stack.cli("train", *SMALL_TRAIN))  # v1, promoted: the first production move
    _ok(stack.cli("train", *TINY_TRAIN))  # v2, registered only
    stack.start_worker("report", concurrency=2)
    now = datetime.now(UTC)
    # Past slots (most of their trips have ended, so outcomes are observed): 4 calibrated, a gap of 2
    # missed slots, then 6 in a world whose fares rose 25 %, up to the current slot (still beat's).
    first, gap, shifted, current = _slot(60, now), _slot(40, now), _slot(30, now), _slot(0, now)
    missed = [gap, gap + timedelta(minutes=5)]
    _backfill(stack, first, gap)
    # v2 serves one batch, then goes back; then someone sets it as the challenger with MLflow's own client.
    _ok(stack.cli("promote", "2", "--reason", "try the small forest"))
    _ok(stack.cli("dispatch", "--rides", "300", "--wait"))
    _ok(stack.cli("rollback", "--reason", "the small forest is worse"))
    registry_client(stack.env["MLFLOW_TRACKING_URI"]).set_registered_model_alias(model, "challenger", "2")
    _backfill(stack, shifted, current, "--fare-factor", "1.25")
    # Slots count as missed only once beat was seen running on time. These were backfilled, so say
    # that beat wrote the first one at its slot (what the backfill stands in for here).
    stack.sql_exec(
        "UPDATE batch_runs SET started_at = slot + interval '2 seconds' WHERE batch_id = :b",
        b=f"schedule-{first.isoformat()}",
    )
    for knobs in ([], ["--fare-factor", "1.25"]):
        sent = stack.cli("dispatch", "--rides", "2500", "--seed", "3", *knobs, "--wait")
        assert sent.returncode == 0, sent.stdout + sent.stderr
    served = dict(stack.sql("SELECT model_version, count(*) FROM batch_runs WHERE status = 'succeeded' GROUP BY 1"))
    assert served == {"1": 12, "2": 1}, served
    shadowed = stack.sql("SELECT count(*) FROM batch_runs WHERE challenger_version = '2' AND shadow_error IS NULL")
    assert shadowed[0][0] == 8  # the shifted slots and the two hand-sent batches after the challenger was set
    wait_until(
        "every batch monitored",
        lambda: stack.sql("SELECT count(*) FROM batch_metrics WHERE monitor_status = 'ok'")[0][0] == 13,
        120,
    )
    quality = stack.client().send_task("worker.tasks.update_quality").get(timeout=180)
    assert quality["days"] >= 1 and quality["comparisons"] == 1, quality

    # The record: three moves of production, the challenger set outside the project, two registrations.
    production_moves = stack.sql(
        "SELECT action, from_version, to_version, actor FROM model_events "
        "WHERE alias = 'production' AND status = 'done' ORDER BY id"
    )
    assert [tuple(m)[:3] for m in production_moves] == [
        ("promoted", None, "1"),
        ("promoted", "1", "2"),
        ("rolled_back", "2", "1"),
    ]
    actor = production_moves[0].actor
    challenger_moves = stack.sql("SELECT action, from_version, to_version FROM model_events WHERE alias = 'challenger'")
    assert [tuple(m) for m in challenger_moves] == [("moved_outside", None, "2")]
    recorded = stack.sql("SELECT action, status FROM model_events WHERE model_name = :m ORDER BY at, id", m=model)
    assert len(recorded) == 6  # + `registered` twice
    comparison = stack.sql("SELECT * FROM shadow_comparisons WHERE challenger_version = '2'")
    assert len(comparison) == 1 and comparison[0].production_version == "1" and comparison[0].outcomes > 0
    stored = paired.stored(dict(comparison[0]._mapping))

    report = tmp_path / "report.html"
    made = stack.cli("report", "--since", "3h", "-o", str(report))
    assert made.returncode == 0, made.stdout + made.stderr
    assert f"wrote {report}" in made.stdout and "5 of 5 charts with data" in made.stdout, made.stdout
    size = report.stat().st_size
    assert 20_000 < size < 3_000_000, size

    seen = open_in_chromium(report, tmp_path / "report.png", tmp_path / "profile")
    _assert_offline_and_clean(report, seen)
    assert seen["title"].startswith("Chicago Taxi Batch report")
    charts = {chart["key"]: chart for chart in seen["charts"]}
    assert list(charts) == list(CHARTS)
    for chart in charts.values():
        assert chart["empty"] == "false" and chart["svgs"] == 1, chart
        assert sum(chart["series"].values()) > 0, chart

    # Drawn marks match the database: a bar per batch and per missed slot, a bar per batch on its version.
    series = charts["batches"]["series"]
    assert series["batches-succeeded"] == 13, series
    assert series["batches-missed"] >= 2, series  # the gap; a slot that passed during the test may join it
    for version, count in served.items():
        assert charts["versions"]["series"][f"versions-v{version}-alias"] == count, charts["versions"]
    assert charts["predictions"]["series"]["predictions-median"] >= 1  # the scheduled slots' line
    assert charts["predictions"]["series"]["predictions-adhoc"] >= 3  # three hand-sent batches with whiskers
    drift = charts["drift"]["series"]
    for column in ("pickup_community_area", "dropoff_community_area", "trip_miles", "fare", "trip_total"):
        assert any(name.startswith(f"drift-{column}-") and n for name, n in drift.items()), (column, drift)
    assert sum(n for name, n in drift.items() if name.startswith("drift-dataset-batches")) == 13  # grey and red
    scored = dict(stack.sql("SELECT model_version, count(*) FROM batch_metrics WHERE outcomes > 0 GROUP BY 1"))
    assert scored.get("1", 0) >= 7  # the backfilled slots' trips have ended
    for version, count in scored.items():
        assert charts["accuracy"]["series"][f"accuracy-batches-v{version}"] == count
    assert charts["accuracy"]["series"]["accuracy-daily-v1"] >= 1

    # A line per production move and per challenger change on every chart, each labelled with who moved what.
    labels = [
        f"v1 promoted by {actor}",
        f"v1 → v2 promoted by {actor}",
        f"v2 → v1 rolled back by {actor}",
        "challenger none → v2 moved outside the project",
    ]
    for key, chart in charts.items():
        assert chart["series"][f"{key}-moves"] == len(production_moves), (key, chart["series"])
        assert chart["series"][f"{key}-challenger-events"] == len(challenger_moves), (key, chart["series"])
        assert sorted(chart["labels"]) == sorted(labels), (key, chart["labels"])

    # The events table lists the record of the period; the challenger block shows the stored comparison.
    lifecycle = seen["lifecycle"]
    assert [(row["action"], row["status"]) for row in lifecycle["events"]] == [tuple(r) for r in recorded]
    assert [row["kind"] for row in lifecycle["events"]].count("production") == len(production_moves)
    assert "the small forest is worse" in lifecycle["eventsText"]
    block = lifecycle["challenger"]
    assert (block["challenger"], block["production"], block["current"]) == ("2", "1", "true"), block
    assert int(block["outcomes"]) == stored.outcomes and block["verdict"] == paired.verdict(stored), block
    assert f"{stored.outcomes:,}" in lifecycle["challengerText"]
    assert f"{stored.challenger_mae:.3f} min" in lifecycle["challengerText"]
    assert f"{stored.ci_low:+.3f} to {stored.ci_high:+.3f} min" in lifecycle["challengerText"]

    # The warnings name the gap (with the backfill that fills it), the fare increase and the outside move.
    assert {"missed", "drift", "outside"} <= set(seen["alerts"]), seen["alert_text"]
    for slot in missed:
        assert slot.isoformat() in seen["alert_text"], seen["alert_text"]
    assert "python -m worker backfill --from" in seen["alert_text"]
    assert "fare" in seen["alert_text"]  # the drifted columns of the batches with higher fares
    assert "@challenger none → v2" in seen["alert_text"]

    kept = _keep(tmp_path / "report.png", "report.png", capsys)
    assert kept.stat().st_size > 50_000
    with capsys.disabled():
        print(f"report test: {size / 1024:.0f} KB report, {time.monotonic() - started:.0f} s in all")


def test_a_fresh_install_gets_a_report_that_says_each_chart_is_empty(fresh_pg_url, tmp_path, capsys):
    import subprocess
    import sys

    report = tmp_path / "empty.html"
    made = subprocess.run(
        [sys.executable, "-m", "worker", "report", "-o", str(report)],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path), "DATABASE_URL": fresh_pg_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert "0 of 5 charts with data, no warnings" in made.stdout

    seen = open_in_chromium(report, tmp_path / "empty.png", tmp_path / "profile")
    _assert_offline_and_clean(report, seen)
    assert seen["alerts"] == [] and "Nothing needs a look" in seen["alert_text"]
    assert [chart["key"] for chart in seen["charts"]] == list(CHARTS)
    for chart in seen["charts"]:
        assert chart["empty"] == "true" and chart["svgs"] == 0 and chart["text"].startswith("No "), chart
    assert seen["lifecycle"]["events"] == [] and "No model events in this period" in seen["lifecycle"]["eventsText"]
    assert seen["lifecycle"]["challenger"]["challenger"] == ""
    assert "No challenger on record" in seen["lifecycle"]["challengerText"]
    _keep(tmp_path / "empty.png", "report-empty.png", capsys)
