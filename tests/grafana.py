"""The provisioned Grafana dashboards as data, and their queries as Grafana would send them.

Grafana cannot run on this machine, so the tests check what it would do with our files:
`expand_sql` is a port of Grafana's PostgreSQL macro engine
(pkg/tsdb/grafana-postgresql-datasource/macros.go: the same pattern, the same argument
splitting, the same expansions, an unknown macro is an error), applied after the dashboard
variables ($__interval, $__rate_interval, and the dashboards' own, e.g. $whatif) are substituted, as
Grafana's frontend does.
Annotation queries (the dashboard's `annotations.list`) are SQL run the same way; Grafana draws a
marker per returned row from its `time` column, with `text` and comma-separated `tags`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO_ROOT

GRAFANA = REPO_ROOT / "deploy" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "datasources.yml"
POSTGRES_TYPE = "grafana-postgresql-datasource"
PROMETHEUS_TYPE = "prometheus"

# Grafana: const sExpr = `\$` + `([_a-zA-Z0-9]+)` + `\(([^\)]*)\)`
MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
INTERVAL = re.compile(r"^(\d+)(ms|s|m|h|d|w|y)$")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel_id: int
    panel_title: str
    panel_type: str
    target: dict[str, Any]
    panel: dict[str, Any]

    @property
    def datasource_uid(self) -> str:
        return (self.target.get("datasource") or self.panel["datasource"])["uid"]

    @property
    def label(self) -> str:
        return f"{self.dashboard} #{self.panel_id} {self.panel_title!r} ({self.target['refId']})"


@dataclass(frozen=True)
class AnnotationQuery:
    """One annotation of a dashboard: a query Grafana runs for the whole dashboard's time range."""

    dashboard: str
    annotation: dict[str, Any]

    @property
    def name(self) -> str:
        return self.annotation["name"]

    @property
    def target(self) -> dict[str, Any]:
        return self.annotation["target"]

    @property
    def datasource_uid(self) -> str:
        return (self.target.get("datasource") or self.annotation["datasource"])["uid"]

    @property
    def label(self) -> str:
        return f"{self.dashboard} annotation {self.name!r}"


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def provisioned_datasources() -> dict[str, dict[str, Any]]:
    return {source["uid"]: source for source in yaml.safe_load(DATASOURCES.read_text())["datasources"]}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside a collapsed row


def queries(kind: str | None = None) -> list[Query]:
    """Every target of every panel; `kind` = "sql" or "promql" keeps one datasource type."""
    types = provisioned_datasources()
    found = []
    for name, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                query = Query(name, panel["id"], panel["title"], panel["type"], target, panel)
                source_type = types.get(query.datasource_uid, {}).get("type")
                if kind is None or (kind == "sql") == (source_type == POSTGRES_TYPE):
                    found.append(query)
    return found


def annotation_queries() -> list[AnnotationQuery]:
    """Every annotation of every dashboard, except Grafana's built-in one (it queries nothing of ours)."""
    return [
        AnnotationQuery(name, annotation)
        for name, board in dashboards().items()
        for annotation in board["annotations"]["list"]
        if not annotation.get("builtIn")
    ]


def interval_seconds(text: str) -> float:
    match = INTERVAL.match(text.strip().strip("'"))
    if not match:
        raise ValueError(f"error parsing interval {text}")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def dashboard_variables() -> dict[str, str]:
    """Each dashboard variable's current value as the files ship it (e.g. whatif: include)."""
    return {
        variable["name"]: variable["current"]["value"]
        for board in dashboards().values()
        for variable in board["templating"]["list"]
    }


def substitute_variables(
    text: str, interval: str = "1m", rate_interval: str = "2m", variables: dict[str, str] | None = None
) -> str:
    """What Grafana's frontend does before a query leaves the browser: the built-in interval variables,
    then the dashboards' own ($whatif), at their shipped values unless `variables` says otherwise."""
    seconds = interval_seconds(interval)
    text = (
        text.replace("$__rate_interval", rate_interval)
        .replace("$__interval_ms", str(int(seconds * 1000)))
        .replace("$__interval", interval)
    )
    for name, value in {**dashboard_variables(), **(variables or {})}.items():
        text = text.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return text


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def expand_sql(
    sql: str, start: datetime, end: datetime, interval: str = "1m", variables: dict[str, str] | None = None
) -> str:
    """The SQL Grafana's PostgreSQL datasource would run for the time range [start, end]."""
    sql = substitute_variables(sql, interval, variables=variables)

    def evaluate(name: str, args: list[str], whole: str, at: int) -> str:
        if name == "__timeGroup" and len(sql) > at + len(whole) and sql[at + len(whole)] == ",":
            name = "__timeGroupAlias"  # Grafana's pre-5.3 compatibility rule
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            if not args[0]:
                raise ValueError(f"missing time column argument for macro {name}")
            return f"{args[0]} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
        if name == "__timeFrom":
            return f"'{_rfc3339(start)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(end)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            if len(args) < 2:
                raise ValueError(f"macro {name} needs time column and interval and optional fill value")
            seconds = interval_seconds(args[1])
            group = f"floor(extract(epoch from {args[0]})/{seconds:g})*{seconds:g}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        if name == "__unixEpochFilter":
            return f"{args[0]} >= {int(start.timestamp())} AND {args[0]} <= {int(end.timestamp())}"
        raise ValueError(f"unknown macro {name!r}")

    out = []
    last = 0
    for match in MACRO.finditer(sql):
        args = [arg.strip(" ") for arg in match.group(2).split(",")]
        out.append(sql[last : match.start()])
        out.append(evaluate(match.group(1), args, match.group(0), match.start()))
        last = match.end()
    out.append(sql[last:])
    return "".join(out)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
