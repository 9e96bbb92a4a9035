"""The Grafana provisioning and dashboards, checked without Grafana (it cannot be installed here).

What these check: fixed and unique uids, datasources that panels use exist in the provisioning
with the right type, unique panel ids, a grid that fits 24 columns without overlaps, a time
filter in every SQL query, only macros Grafana knows (expanded by a port of its macro engine),
explicit time-zone conversion of Chicago-local columns, and every PromQL expression parsed by
promtool. The model events are annotations on the dashboards: their queries are checked the same
way, return `time`, `text` and `tags`, and select the same moves the report draws (the action lists
of worker/monitor/overview.py). The queries are run for real in
tests/integration/test_production_monitoring.py. Not checked anywhere: how Grafana renders the
panels and the annotations.
"""

from __future__ import annotations

import os
import re
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from tests.grafana import (
    DASHBOARDS,
    GRAFANA,
    POSTGRES_TYPE,
    PROMETHEUS_TYPE,
    annotation_queries,
    dashboards,
    expand_sql,
    panels,
    provisioned_datasources,
    queries,
    substitute_variables,
)
from tests.support import REPO_ROOT, required_tool
from worker.model.registry import CHALLENGER_ALIAS
from worker.monitor.overview import CHALLENGER_MOVES, MOVED_OUTSIDE, PRODUCTION_MOVES

GRID_WIDTH = 24
# Columns holding naive Chicago-local times (schema comments): never compared or drawn without a zone.
# (The hour-window tables' window_end/window_start are UTC instants: see the check below.)
CHICAGO_LOCAL = ("trip_start_timestamp", "window_end", "window_start", "observed_at")
EXPECTED_UIDS = {"taxi-predictions", "taxi-model-health", "taxi-pipeline"}
# The dashboards on which a step can be read against the model move that caused it.
ANNOTATED = {"model-health.json", "predictions.json", "pipeline.json"}
PRODUCTION_ANNOTATION, CHALLENGER_ANNOTATION = "Production model moves", "Challenger changes"
START = datetime(2026, 7, 1, 12, tzinfo=UTC)


def test_three_dashboards_with_fixed_unique_uids_shown_on_chicago_time():
    boards = dashboards()
    assert len(boards) == 3
    uids = [board["uid"] for board in boards.values()]
    assert set(uids) == EXPECTED_UIDS
    assert len({board["title"] for board in boards.values()}) == 3
    for name, board in boards.items():
        assert board["timezone"] == "America/Chicago", name
        assert board["editable"] is False, name
        assert board["time"]["from"].startswith("now-"), name


def test_the_provisioned_datasources_have_fixed_uids_and_no_password():
    sources = provisioned_datasources()
    assert {uid: source["type"] for uid, source in sources.items()} == {
        "taxi-prometheus": PROMETHEUS_TYPE,
        "taxi-postgres": POSTGRES_TYPE,
    }
    assert sources["taxi-prometheus"]["url"] == "http://prometheus:9090"
    postgres = sources["taxi-postgres"]
    assert postgres["secureJsonData"]["password"] == "$POSTGRES_READER_PASSWORD"  # from the container's environment
    # The read-only role (deploy/postgres-init), whose search_path finds schema `predictions`.
    assert postgres["user"] == "taxi_reader" and postgres["jsonData"]["database"] == "$POSTGRES_DB"


def test_every_panel_uses_a_provisioned_datasource_of_the_right_type():
    sources = provisioned_datasources()
    for name, board in dashboards().items():
        for panel in panels(board):
            references = [panel["datasource"]] + [target["datasource"] for target in panel.get("targets", [])]
            for reference in references:
                assert reference["uid"] in sources, f"{name} #{panel['id']}: unknown datasource {reference}"
                assert reference["type"] == sources[reference["uid"]]["type"], f"{name} #{panel['id']}"
            assert panel.get("targets"), f"{name} #{panel['id']} has no query"


def test_panel_ids_are_unique_and_the_grid_fits_without_overlaps():
    for name, board in dashboards().items():
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids {ids}"
        cells: dict[tuple[int, int], int] = {}
        for panel in panels(board):
            grid = panel["gridPos"]
            assert grid["w"] > 0 and grid["h"] > 0, (name, panel["id"])
            assert grid["x"] >= 0 and grid["y"] >= 0, (name, panel["id"])
            assert grid["x"] + grid["w"] <= GRID_WIDTH, f"{name} #{panel['id']} is wider than the grid"
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, f"{name}: panels {cells[(x, y)]} and {panel['id']} overlap at {x},{y}"
                    cells[(x, y)] = panel["id"]


def test_the_brief_panels_exist():
    titles = {name: {panel["title"] for panel in panels(board)} for name, board in dashboards().items()}
    assert {
        "Rides scored",
        "Predicted duration by trip start: median and p10–p90",
        "Rows per batch",
        "Top routes",
        "Model version serving",
    } <= titles["predictions.json"]
    assert {
        "Drift score per column, single batches",
        "Dataset drift",
        "Live MAE by model version, per day, against held-out MAE and the median baseline",
        "Challenger vs production (paired)",
    } <= titles["model-health.json"]
    assert {
        "Batch duration",
        "Batches finished: succeeded and failed",
        "Retries",
        "Missed slots (last 24 h)",
        "Queue length",
        "Workers online",
        "Task runtime p95",
    } <= titles["pipeline.json"]


@pytest.mark.parametrize("query", queries("sql"), ids=lambda q: q.label)
def test_every_sql_query_filters_on_the_time_range_with_known_macros(query):
    sql = query.target["rawSql"]
    assert query.target["rawQuery"] is True and query.target["format"] in ("time_series", "table")
    assert "$__timeFilter(" in sql or ("$__timeFrom()" in sql and "$__timeTo()" in sql), query.label
    expanded = expand_sql(sql, START, START + timedelta(hours=6))  # raises on a macro Grafana does not know
    assert "$" not in expanded, expanded
    assert (
        "BETWEEN '2026-07-01T12:00:00Z' AND '2026-07-01T18:00:00Z'" in expanded or "'2026-07-01T12:00:00Z'" in expanded
    )
    if query.target["format"] == "time_series" or query.panel_type in ("timeseries", "state-timeline"):
        assert re.search(r'AS "time"', expanded), f'{query.label}: a time column must be named "time"'
        assert re.search(r"ORDER BY 1\s*$", sql), f"{query.label}: time series must be sorted by time"


# `column BETWEEN (range start in Chicago wall time) AND (range end in Chicago wall time)`.
RANGE_IN_CHICAGO_TIME = re.compile(
    r"\s+BETWEEN \(\$__timeFrom\(\)::timestamptz AT TIME ZONE 'America/Chicago'\)"
    r"\s+AND \(\$__timeTo\(\)::timestamptz AT TIME ZONE 'America/Chicago'\)"
)


def _assert_chicago_columns_converted(sql: str, label: str) -> None:
    columns = CHICAGO_LOCAL
    if re.search(r"\bFROM window_(metrics|column_drift)\b", sql) and not re.search(r"\bbatch_(runs|metrics)\b", sql):
        # The hour windows are keyed by UTC instants (timestamptz): converting one would make a wall time.
        assert not re.search(r"\bwindow_(end|start) AT TIME ZONE", sql), f"{label}: hour windows are UTC instants"
        columns = tuple(c for c in CHICAGO_LOCAL if c not in ("window_end", "window_start"))
    for column in columns:
        for match in re.finditer(rf"\b{column}\b", sql):
            following = sql[match.end() : match.end() + 200]
            if RANGE_IN_CHICAGO_TIME.match(following):
                continue  # the column itself against the range's ends in Chicago wall time: its index serves it
            assert following.startswith(" AT TIME ZONE 'America/Chicago'"), (
                f"{label}: {column} used without AT TIME ZONE 'America/Chicago': ...{sql[match.start() : match.end() + 40]}"
            )
    if re.search(r"\bday\b", sql):
        assert "day::timestamp AT TIME ZONE 'America/Chicago'" in sql, label


@pytest.mark.parametrize("query", queries("sql"), ids=lambda q: q.label)
def test_chicago_local_columns_are_converted_explicitly(query):
    _assert_chicago_columns_converted(query.target["rawSql"], query.label)


@pytest.mark.parametrize("query", queries("sql"), ids=lambda q: q.label)
def test_no_time_filter_is_on_a_converted_column(query):
    """A filter on `column AT TIME ZONE ...` can use no index: on 90 days of history the trip-start
    panel read the whole of ride_predictions for one day. The range's ends are converted instead."""
    converted = re.findall(r"\$__timeFilter\([^)]*AT TIME ZONE[^)]*\)", query.target["rawSql"])
    assert not converted, f"{query.label}: {converted}"


def test_model_events_are_two_annotations_on_the_dashboards_production_moves_and_challenger_changes():
    sources = provisioned_datasources()
    found: dict[str, dict[str, object]] = {}
    for annotation in annotation_queries():
        found.setdefault(annotation.dashboard, {})[annotation.name] = annotation
    assert set(found) == ANNOTATED
    for name, shown in found.items():
        assert set(shown) == {PRODUCTION_ANNOTATION, CHALLENGER_ANNOTATION}, name
        for annotation in shown.values():
            assert annotation.annotation["enable"] is True and annotation.annotation["hide"] is False, annotation.label
            for reference in (annotation.annotation["datasource"], annotation.target["datasource"]):
                assert reference == {"type": POSTGRES_TYPE, "uid": "taxi-postgres"}, annotation.label
                assert sources[reference["uid"]]["type"] == POSTGRES_TYPE
        colors = {annotation.annotation["iconColor"] for annotation in shown.values()}
        assert len(colors) == 2, f"{name}: production moves and challenger changes must look different"


@pytest.mark.parametrize("annotation", annotation_queries(), ids=lambda a: a.label)
def test_every_annotation_query_filters_on_when_the_event_happened_and_returns_time_text_and_tags(annotation):
    target = annotation.target
    sql = target["rawSql"]
    assert target["rawQuery"] is True and target["format"] == "table" and target["refId"], annotation.label
    assert "FROM model_events" in sql and "$__timeFilter(at)" in sql, annotation.label
    assert "status = 'done'" in sql, f"{annotation.label}: a pending or failed move moved nothing"
    expanded = expand_sql(sql, START, START + timedelta(hours=6))  # raises on a macro Grafana does not know
    assert "$" not in expanded and "at BETWEEN '2026-07-01T12:00:00Z' AND '2026-07-01T18:00:00Z'" in expanded
    for column in ('"time"', "text", "tags"):
        assert re.search(rf"\bAS {column}", expanded), f"{annotation.label}: no column {column}"
    assert re.search(r"ORDER BY 1\s*$", sql), f"{annotation.label}: markers must come sorted by time"
    _assert_chicago_columns_converted(sql, annotation.label)


def _actions(sql: str) -> set[str]:
    """The actions an annotation query selects: its `action IN (...)` list and any `action = '...'`."""
    listed = re.search(r"action IN \(([^)]*)\)", sql)
    found = set(re.findall(r"'([a-z_]+)'", listed.group(1))) if listed else set()
    return found | set(re.findall(r"action = '([a-z_]+)'", sql))


def test_the_annotations_select_the_moves_the_report_draws():
    """One definition: the report's lists (worker/monitor/overview.py) are what Grafana marks."""
    for annotation in annotation_queries():
        sql = annotation.target["rawSql"]
        if annotation.name == PRODUCTION_ANNOTATION:
            assert _actions(sql) == set(PRODUCTION_MOVES), annotation.label
            assert f"alias IS DISTINCT FROM '{CHALLENGER_ALIAS}'" in sql, (
                annotation.label
            )  # its moves outside: not here
        else:
            assert _actions(sql) == {*CHALLENGER_MOVES, MOVED_OUTSIDE}, annotation.label
            assert f"action = '{MOVED_OUTSIDE}' AND alias = '{CHALLENGER_ALIAS}'" in sql, annotation.label


def test_every_promql_expression_parses(tmp_path):
    """promtool parses each expression as a recording rule (after Grafana's variables are substituted)."""
    promtool = required_tool("promtool", "prometheus")
    found = queries("promql")
    assert found
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute_variables(q.target["expr"])} for i, q in enumerate(found)
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_dashboard_provider_reads_the_folder_compose_mounts():
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())["providers"][0]
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    source = os.path.relpath(DASHBOARDS, REPO_ROOT)
    assert f"./{source}:{provider['options']['path']}:ro" in mounts
    assert provider["allowUiUpdates"] is False


def test_what_if_batches_are_told_apart_by_the_one_definition_and_shipped_included():
    """The dashboards' SQL tests a batch for what-if with worker/store/whatif.py's WHATIF_SQL, word for word,
    and their `whatif` variable ships at WHATIF_BATCHES's default."""
    from worker.settings import Settings
    from worker.store.whatif import WHATIF_SQL

    marked = [query for query in queries("sql") if "factor" in query.target["rawSql"]]
    assert {query.panel_title for query in marked} >= {"Rows per batch", "Live MAE per batch"}
    for query in marked:
        sql = query.target["rawSql"]
        assert sql.count("speed_factor") == sql.count(WHATIF_SQL), query.label
        assert "$whatif" in sql, query.label
    for name in ("predictions.json", "model-health.json"):
        (variable,) = [v for v in dashboards()[name]["templating"]["list"] if v["name"] == "whatif"]
        assert variable["current"]["value"] == Settings.model_fields["WHATIF_BATCHES"].default
        assert [option["value"] for option in variable["options"]] == ["include", "exclude"]


def test_a_prometheus_panel_drawn_against_an_alert_plots_only_series_that_alert_reads():
    """A panel that names an alert is read as "this is what the alert sees": a series the alert does
    not read (the day's live MAE beside the rolling window's) would show the line uncrossed while it
    fires."""
    rules = yaml.safe_load((REPO_ROOT / "deploy/prometheus/rules/taxi-alerts.yml").read_text())["groups"]
    read: dict[str, set[str]] = {}
    for rule in (rule for group in rules for rule in group["rules"] if "alert" in rule):
        read.setdefault(rule["alert"], set()).update(re.findall(r"\b(?:taxi|process)_\w+", rule["expr"]))
    checked = 0
    for query in queries("promql"):
        for alert in (name for name in read if re.search(rf"\b{name}\b", query.panel.get("description") or "")):
            plotted = set(re.findall(r"\b(?:taxi|process)_\w+", query.target["expr"]))
            assert plotted <= read[alert], f"{query.label}: {plotted - read[alert]} not read by {alert}"
            checked += 1
    assert checked >= 4  # the live-MAE panel's three targets and the pipeline's heartbeat
