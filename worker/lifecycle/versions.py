"""Every version of the model in view: what it learned from, what it promised, how it does live,
what it served, which alias it holds and whether a worker would load it (`python -m worker models`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from worker.model.reference import HELDOUT_MAE_TAG
from worker.model.registry import configure_mlflow, loadable
from worker.model.training import TRAINED_ON_TAG
from worker.settings import Settings
from worker.store import evidence

DAY = timedelta(days=1)
WEEK = timedelta(days=7)


@dataclass
class VersionView:
    version: str
    registered_at: datetime  # UTC
    trained_on: str
    heldout_mae: float | None
    live_day: tuple[int, float | None]  # outcomes, MAE (minutes) over batches finished in the last 24 h
    live_week: tuple[int, float | None]
    batches: int
    rows: int
    aliases: list[str] = field(default_factory=list)
    loadable: str = "yes"  # "yes", "not checked", or why a worker would refuse it

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["registered_at"] = self.registered_at.isoformat()
        values["live_day"] = {"outcomes": self.live_day[0], "mae": self.live_day[1]}
        values["live_week"] = {"outcomes": self.live_week[0], "mae": self.live_week[1]}
        return values


def _trained_on(client, version) -> str:
    tag = (version.tags or {}).get(TRAINED_ON_TAG)
    if tag:
        return tag
    if not version.run_id:
        return "unknown"
    try:  # versions from before the tag: the run's parameters say it
        params = client.get_run(version.run_id).data.params
    except Exception:
        return "unknown"
    source = params.get("source", "unknown")
    rows = params.get("rows_train")
    return f"{source} ({int(rows):,} rows)" if rows and rows.isdigit() else source


def _heldout(version) -> float | None:
    try:
        return float((version.tags or {})[HELDOUT_MAE_TAG])
    except (KeyError, TypeError, ValueError):
        return None


def list_versions(
    settings: Settings, engine: Engine, check: bool = True, now: datetime | None = None
) -> list[VersionView]:
    """Every registered version of MODEL_NAME, newest first. `check` runs the workers' trust check on
    each (format and types, from the downloaded artifact, without loading it)."""
    now = now or datetime.now(UTC)
    client = configure_mlflow(settings)
    model = client.get_registered_model(settings.MODEL_NAME)
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    day = evidence.version_accuracy(engine, now - DAY)
    week = evidence.version_accuracy(engine, now - WEEK)
    use = evidence.version_use(engine)
    found = client.search_model_versions(f"name='{settings.MODEL_NAME}'")
    views = []
    for version in sorted(found, key=lambda v: int(v.version), reverse=True):
        number = str(version.version)
        views.append(
            VersionView(
                version=number,
                registered_at=datetime.fromtimestamp(version.creation_timestamp / 1000, UTC),
                trained_on=_trained_on(client, version),
                heldout_mae=_heldout(version),
                live_day=day.get(number, (0, None)),
                live_week=week.get(number, (0, None)),
                batches=use.get(number, (0, 0))[0],
                rows=use.get(number, (0, 0))[1],
                aliases=sorted(aliases.get(number, [])),
                loadable=(loadable(settings.MODEL_NAME, number) or "yes") if check else "not checked",
            )
        )
    return views
