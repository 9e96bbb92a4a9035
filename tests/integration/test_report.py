"""The report in a real browser: Debian's Chromium, headless, driven by Playwright, opens the HTML file
that `python -m worker report` wrote from real batches (real Redis, PostgreSQL, MLflow and worker:
backfilled past slots with a gap, a fare increase, the quality pass) and from a fresh install.

The page must load with no console error and no request but the file itself, and every chart must
be there with its data drawn (marks with a size, counted against the database). The screenshot is
kept in .local/test-artifacts/ (git-ignored) and its path printed.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support import REPO_ROOT, wait_until

pytestmark = pytest.mark.integration

ARTIFACTS = REPO_ROOT / ".local" / "test-artifacts"
CHARTS = ("batches", "predictions", "drift", "accuracy", "versions")
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
# Per chart: how many data marks (SVG shapes with a size) each of its series drew, read from the DOM.
MARKS_JS = """
() => Array.from(document.querySelectorAll('section.chart')).map(section => {
  const series = {};
  for (const group of section.querySelectorAll('svg g[id^="' + section.id.slice(6) + '-"]')) {
    const shapes = Array.from(group.querySelectorAll('path, use, image')).filter(shape => {
      const box = shape.getBoundingClientRect();
      return box.width > 0 || box.height > 0;
    });
    series[group.id] = shapes.length;
  }
  return {key: section.id.slice(6), empty: section.dataset.empty, svgs: section.querySelectorAll('svg').length,
          text: section.querySelector('.empty') ? section.querySelector('.empty').textContent : '', series};
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


def test_the_report_of_real_batches_opens_offline_in_chromium_with_every_chart_drawn(new_stack, tmp_path, capsys):
    started = time.monotonic()
    stack = new_stack()
    stack.start_worker("report", concurrency=2)
    now = datetime.now(UTC)
    # Past slots (most of their trips have ended, so outcomes are observed): 4 calibrated, a gap of 2
    # missed slots, then 6 in a world whose fares rose 25 %, up to the current slot (still beat's).
    first, gap, shifted, current = _slot(60, now), _slot(40, now), _slot(30, now), _slot(0, now)
    missed = [gap, gap + timedelta(minutes=5)]
    for start, end, knobs in ((first, gap, []), (shifted, current, ["--fare-factor", "1.25"])):
        done = stack.cli(
            "backfill",
            "--from",
            start.isoformat(),
            "--to",
            end.isoformat(),
            "--rides",
            "400",
            "--wait",
            *knobs,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    # Slots count as missed only once beat was seen running on time. These were backfilled, so say
    # that beat wrote the first one at its slot (what the backfill stands in for here).
    stack.sql_exec(
        "UPDATE batch_runs SET started_at = slot + interval '2 seconds' WHERE batch_id = :b",
        b=f"schedule-{first.isoformat()}",
    )
    for knobs in ([], ["--fare-factor", "1.25"]):
        sent = stack.cli("dispatch", "--rides", "2500", "--seed", "3", *knobs, "--wait")
        assert sent.returncode == 0, sent.stdout + sent.stderr
    batches = stack.sql("SELECT batch_id FROM batch_runs WHERE status = 'succeeded'")
    assert len(batches) == 12
    wait_until(
        "every batch monitored",
        lambda: stack.sql("SELECT count(*) FROM batch_metrics WHERE monitor_status = 'ok'")[0][0] == 12,
        120,
    )
    quality = stack.client().send_task("worker.tasks.update_quality").get(timeout=180)
    assert quality["days"] >= 1, quality

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
    assert series["batches-succeeded"] == 12, series
    assert series["batches-missed"] >= 2, series  # the gap; a slot that passed during the test may join it
    version = stack.sql("SELECT DISTINCT model_version FROM batch_runs")[0][0]
    assert charts["versions"]["series"][f"versions-v{version}-alias"] == 12, charts["versions"]
    assert charts["predictions"]["series"]["predictions-median"] >= 1  # the scheduled slots' line
    assert charts["predictions"]["series"]["predictions-adhoc"] >= 2  # two hand-sent batches with whiskers
    drift = charts["drift"]["series"]
    for column in ("pickup_community_area", "dropoff_community_area", "trip_miles", "fare", "trip_total"):
        assert any(name.startswith(f"drift-{column}-") and n for name, n in drift.items()), (column, drift)
    assert sum(n for name, n in drift.items() if name.startswith("drift-dataset-batches")) == 12  # grey and red
    scored = stack.sql("SELECT count(*) FROM batch_metrics WHERE outcomes > 0")[0][0]
    assert scored >= 7  # the backfilled slots' trips have ended
    assert charts["accuracy"]["series"][f"accuracy-batches-v{version}"] == scored
    assert charts["accuracy"]["series"][f"accuracy-daily-v{version}"] >= 1

    # The warnings name the gap (with the backfill that fills it) and the fare increase.
    assert "missed" in seen["alerts"] and "drift" in seen["alerts"], seen["alert_text"]
    for slot in missed:
        assert slot.isoformat() in seen["alert_text"], seen["alert_text"]
    assert "python -m worker backfill --from" in seen["alert_text"]
    assert "fare" in seen["alert_text"]  # the drifted columns of the batches with higher fares

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
    _keep(tmp_path / "empty.png", "report-empty.png", capsys)
