"""The Prometheus config, the alert rules and their unit tests, and the Alertmanager config,
checked by Prometheus's and Alertmanager's own tools (promtool 2.42, amtool 0.25: Debian's
`prometheus` and `prometheus-alertmanager`, installed by .ci/run). Without them these tests
skip locally and fail under CI=true.

The rule tests are only worth something if they can fail: every alert is checked to have a
case where it fires and one where it must stay silent, and two mutants of every alert (one that
never fires, one that always does) must make `promtool test rules` fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO_ROOT, required_tool
from worker.settings import Settings

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "rules" / "taxi-alerts.yml"
RULE_TESTS = PROMETHEUS / "tests" / "taxi-alerts.test.yml"
ALERTMANAGER = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def alert_names() -> list[str]:
    return sorted({rule["alert"] for rule in alert_rules()})


def test_promtool_accepts_the_config_with_its_rules():
    result = run(required_tool("promtool"), "check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout  # the rules/ glob reached the file


def test_promtool_accepts_the_rules():
    result = run(required_tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass():
    result = run(required_tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_case_and_a_silent_case():
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert set(alert_names()) <= fires, sorted(set(alert_names()) - fires)
    assert set(alert_names()) <= silent, sorted(set(alert_names()) - silent)


def _mutant(root: Path, alert: str, expr: str) -> Path:
    """A copy of the rules with `alert`'s expressions replaced, beside a copy of the tests."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = expr
    (root / "rules").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "rules" / RULES.name).write_text(yaml.safe_dump(document, sort_keys=False))
    shutil.copy(RULE_TESTS, root / "tests" / RULE_TESTS.name)
    return root / "tests" / RULE_TESTS.name


def _outcomes(stdout: str) -> dict[str, bool]:
    """promtool's verdict per test file: `Unit Testing:  FILE` followed by SUCCESS, or not."""
    verdicts: dict[str, bool] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith("Unit Testing:"):
            current = line.split(":", 1)[1].strip()
            verdicts[current] = False
        elif current is not None and line.strip() == "SUCCESS":
            verdicts[current] = True
    return verdicts


@pytest.mark.parametrize(("kind", "expr"), [("never fires", "vector(1) > 2"), ("always fires", "vector(1)")])
def test_the_rule_tests_catch_a_broken_alert(tmp_path, kind, expr):
    """For every alert, a mutant rule that never (or always) fires must make its tests fail."""
    files = {alert: _mutant(tmp_path / alert, alert, expr) for alert in alert_names()}
    result = run(required_tool("promtool"), "test", "rules", *map(str, files.values()))
    verdicts = _outcomes(result.stdout)
    assert set(verdicts) == {str(path) for path in files.values()}, result.stdout
    passed = sorted(alert for alert, path in files.items() if verdicts[str(path)])
    assert not passed, f"the tests still pass when these alerts' rules {kind}: {passed}"
    for alert in files:
        assert f"alertname: {alert}" in result.stderr + result.stdout, alert


def test_the_config_scrapes_flower_without_a_login_and_the_exporter_on_its_port():
    """Flower 2.2's /metrics asks for no password, and a Flower login is an admin's (README, Monitoring)."""
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    flower = jobs["flower"]
    assert not {"basic_auth", "authorization", "oauth2"} & set(flower)
    assert flower["static_configs"][0]["targets"] == ["flower:5555"]
    exporter_port = Settings.model_fields["EXPORTER_PORT"].default
    assert jobs["taxi-exporter"]["static_configs"][0]["targets"] == [f"exporter:{exporter_port}"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    # No credentials in the committed file: no inline password, no token, no user:password@ URL.
    text = CONFIG.read_text()
    assert not re.search(r"^\s*(password|credentials|bearer_token)\s*:", text, re.MULTILINE)
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text)
    # The scrape timeout leaves room for the exporter's bounded reads.
    timeout = int(config["global"]["scrape_timeout"].rstrip("s"))
    assert timeout >= Settings.model_fields["EXPORTER_TIMEOUT_SECONDS"].default + 2


def test_every_alert_has_a_severity_a_summary_and_is_in_the_readme():
    readme = (REPO_ROOT / "README.md").read_text()
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert f"`{rule['alert']}`" in readme, f"{rule['alert']} is not described in the README"


def test_amtool_accepts_the_alertmanager_config():
    result = run(required_tool("amtool"), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("severity", ["critical", "warning"])
def test_every_alert_routes_to_the_documented_receiver(severity):
    for alert in alert_names():
        result = run(
            required_tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}", f"alertname={alert}",
            f"severity={severity}",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["operators"], (alert, result.stdout)


def test_alertmanager_groups_by_alert_and_inhibits_only_alerts_that_exist():
    config = yaml.safe_load(ALERTMANAGER.read_text())
    route = config["route"]
    assert "alertname" in route["group_by"]
    assert route["receiver"] == "operators"
    receiver = {r["name"]: r for r in config["receivers"]}["operators"]
    assert receiver["webhook_configs"][0]["send_resolved"] is True
    names = set(alert_names())
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            match = re.fullmatch(r'alertname(=~?)"([^"]+)"', matcher)
            assert match, matcher
            named = set(match.group(2).split("|"))
            assert named <= names, named - names


def test_the_live_accuracy_alert_is_the_degradation_rule_the_policy_and_the_report_use():
    """One definition: the rule's margin and count are worker/monitor/degradation.py's constants, over the
    same rolling window of most recently known outcomes that the exporter computes with its function."""
    from worker.monitor.degradation import ACCURACY_MARGIN, MIN_OUTCOMES

    rule = next(r for r in alert_rules() if r["alert"] == "TaxiLiveMaeWorseThanHeldout")
    expr = " ".join(rule["expr"].split())
    factor, count = re.fullmatch(
        r"last_over_time\(taxi_live_mae_recent_seconds\[5m\]\) > ([\d.]+) \* last_over_time\(taxi_heldout_mae_seconds"
        r"\[5m\]\) and last_over_time\(taxi_live_recent_outcomes\[5m\]\) >= (\d+)",
        expr,
    ).groups()
    assert float(factor) == 1 + ACCURACY_MARGIN and int(count) == MIN_OUTCOMES


def test_the_drift_alerts_are_the_reports_drift_warnings():
    """The report warns when the alerts would fire: their numbers are worker/monitor/overview.py's."""
    from worker.monitor.overview import DRIFT_BATCHES, DRIFT_SHARE, RECENT, WINDOW_FRESH

    rules = {(r["alert"], r["labels"].get("basis")): " ".join(r["expr"].split()) for r in alert_rules()}
    batches = rules[("TaxiDatasetDrift", "batches")]
    assert f"taxi_drifted_batches_last_hour >= {DRIFT_BATCHES} " in batches
    assert f">= ignoring (status) {DRIFT_SHARE} * taxi_monitored_batches_last_hour" in batches
    assert RECENT.total_seconds() == 3600  # the exporter's "last hour"
    for key in (("TaxiDatasetDrift", "hour_window"), ("TaxiPredictionDrift", None)):
        assert f"time() - taxi_hour_window_end_timestamp_seconds < {WINDOW_FRESH.total_seconds():.0f}" in rules[key]
