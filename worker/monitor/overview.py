"""The report's data: what the batches, their monitoring and live accuracy looked like over a period,
on one time axis (Chicago local, as users think), and the short list of what needs a look now.

Every test's result is also given as a *drift margin*, so that "drifted" reads the same way for
both kinds of test: a distance (Wasserstein, Jensen-Shannon) drifts at or above its threshold, a
p-value (K-S, chi-square) below it. The margin is distance / threshold, or threshold / p-value:
above 1 means drifted, 10 means ten times past the threshold, whichever the test.

The warnings' thresholds are module constants, named here once so that the report, the README and
the alert rules of the Prometheus issue say the same thing:

- accuracy: production is degraded by worker/monitor/degradation.py's rule (the one of the alert
  TaxiLiveMaeWorseThanHeldout and of the model policy): over its POLICY_WINDOW_OUTCOMES most
  recently known outcomes, its MAE is more than ACCURACY_MARGIN (25 %) above its held-out MAE, on
  at least MIN_OUTCOMES (500);
- drift, as the alerts TaxiDatasetDrift and TaxiPredictionDrift say it: at least DRIFT_BATCHES and
  at least DRIFT_SHARE of the batches of the last RECENT (one hour) drifted; the newest hour window
  that has ended, if it ended at most WINDOW_FRESH (90 minutes) ago, drifted (its dataset, or its
  predicted durations). tests/unit/test_alert_rules.py holds the rule file to these constants.

The model's life cycle is on the same axis: the period's model events (`model_events`), of which
PRODUCTION_MOVES and CHALLENGER_MOVES are drawn as annotations on the charts (the Grafana
dashboards' annotation queries use the same two lists, checked by tests/unit/test_dashboards.py),
and the stored paired comparison of the challenger the record names (worker/monitor/paired.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from worker.monitor import paired
from worker.monitor.degradation import ACCURACY_MARGIN, MIN_OUTCOMES, RecentAccuracy, degraded, production_recent
from worker.monitor.drift import DATASET_COLUMNS
from worker.rides.generator import CHICAGO
from worker.store import events, evidence, history, timelines, whatif
from worker.store.monitoring import RECENT, RecentDrift, recent_drift

DRIFT_BATCHES = 3  # batches of the last hour that must have drifted ...
DRIFT_SHARE = 0.5  # ... and their share of the hour's monitored batches
WINDOW_FRESH = timedelta(minutes=90)  # an ended hour window counts this long after its end
P_VALUE_METHODS = frozenset({"ks", "chisquare"})  # drift when score < threshold
DISTANCE_METHODS = frozenset({"wasserstein", "jensenshannon"})  # drift when score >= threshold
MARGIN_CAP = 1000.0  # a p-value of 0 would be infinitely far past the threshold; drawn at the cap
SHOWN_ITEMS = 5  # items listed under one warning
# Moves of the serving alias: a step in live MAE is read against these. `first_seen` is no move (the
# record began), `registered` moves no alias. `moved_outside` counts here unless it moved the challenger.
PRODUCTION_MOVES = ("promoted", "rolled_back", "converted", "moved_outside")
# What happened to the challenger (its moves outside the project too): drawn lightly, they change no prediction.
CHALLENGER_MOVES = ("challenger_set", "challenger_retired")
MOVED_OUTSIDE = "moved_outside"


@dataclass(frozen=True)
class Alert:
    """One warning of the report: what kind (drift, accuracy, failed, missed, monitoring), one line
    (commands in `backticks`), and the first few items it is about."""

    kind: str
    text: str
    items: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelAliases:
    """Which model the report is about, and the names of its two aliases (MODEL_NAME, MODEL_ALIAS and
    the registry's challenger alias), so that the monitor room needs neither settings nor MLflow."""

    name: str
    production: str
    challenger: str


@dataclass(frozen=True)
class ChallengerView:
    """The challenger the record names (or, with none named, the last one compared) and its stored
    paired comparison with production. `current` says whether the record still names it."""

    challenger: str | None
    production: str | None
    current: bool
    evidence: paired.PairedEvidence | None = None
    verdict: str | None = None
    computed_at: datetime | None = None  # UTC


@dataclass(frozen=True)
class Overview:
    generated_at: datetime  # UTC
    since: datetime  # UTC start of the period
    interval_seconds: float
    batches: pd.DataFrame  # timelines.batches_since + `start`/`at`: the Chicago-local window (or start) of each
    column_drift: pd.DataFrame  # per batch and column, + `at`, `model_version`, `margin`
    windows: pd.DataFrame  # hour windows
    window_drift: pd.DataFrame  # per hour window and column, + `window_start`, `margin`
    daily: pd.DataFrame  # daily_accuracy rows of the period
    missed: list[datetime] = field(default_factory=list)  # UTC beat slots that never ran
    refused: dict[datetime, str] = field(default_factory=dict)  # among `missed`: why a worker refused it
    production: RecentAccuracy | None = None  # production's recent live accuracy (degradation's rule)
    alerts: list[Alert] = field(default_factory=list)
    events: pd.DataFrame = field(default_factory=lambda: empty_events())  # + `local`, `kind` (see classify)
    challenger: ChallengerView = ChallengerView(None, None, current=False)
    recent_drift: RecentDrift = field(default_factory=lambda: RecentDrift({}, 0))  # monitored in the last RECENT
    whatif_excluded: bool = False  # WHATIF_BATCHES=exclude: what-if batches are in `batches`, not in figures
    # `windows` and `window_drift` of the windows that ended in the last WINDOW_FRESH, whatever the period
    fresh_windows: tuple[pd.DataFrame, pd.DataFrame] | None = None

    @property
    def counted(self) -> pd.DataFrame:
        """The batches that count in production figures (predictions, drift, live accuracy); `batches`
        keeps every one for the batches and versions charts, where what-if batches are marked."""
        return self.batches[self.batches["counts"]]

    @property
    def since_local(self) -> datetime:
        return to_chicago(self.since)

    @property
    def generated_local(self) -> datetime:
        return to_chicago(self.generated_at)


def to_chicago(moment: datetime) -> datetime:
    """A UTC instant (aware, or naive as SQLite gives it back) as naive Chicago local time."""
    return timelines.utc(moment).astimezone(CHICAGO).replace(tzinfo=None)


def empty_events() -> pd.DataFrame:
    return pd.DataFrame(columns=[*timelines.EVENT_COLUMNS, "local", "kind"])


def classify(action: str, alias: str | None, status: str, challenger_alias: str) -> str | None:
    """How an event is drawn: "production" (a move of the serving alias), "challenger", or None (listed
    in the events table only: not done, not a move, or an alias the charts do not follow)."""
    if status != events.DONE:
        return None
    if action in CHALLENGER_MOVES or (action == MOVED_OUTSIDE and alias == challenger_alias):
        return "challenger"
    if action in PRODUCTION_MOVES:
        return "production"
    return None


def model_events(engine: Engine, aliases: ModelAliases, since: datetime, now: datetime) -> pd.DataFrame:
    """The period's settled model events, oldest first, with their Chicago-local time and how they are drawn."""
    found = timelines.model_events_since(engine, aliases.name, since, now)
    if found.empty:
        return empty_events()
    # pandas holds a missing text as NaN, which reads as true and prints "nan": keep None for "no version".
    text = ["alias", "from_version", "to_version", "actor", "reason", "error"]
    found[text] = found[text].astype(object).where(found[text].notna(), None)
    found["local"] = pd.to_datetime(_chicago_series(found["at"]))
    kinds = [
        classify(action, alias, status, aliases.challenger)
        for action, alias, status in zip(found["action"], found["alias"], found["status"], strict=True)
    ]
    found["kind"] = pd.Series(kinds, index=found.index, dtype=object)
    return found


def challenger_view(engine: Engine, aliases: ModelAliases) -> ChallengerView:
    """The challenger the record names, against the production version it names, with the comparison the
    last quality pass stored; with no challenger named, the latest stored comparison of this model."""
    challenger = events.alias_on_record(engine, aliases.name, aliases.challenger)
    production = events.alias_on_record(engine, aliases.name, aliases.production)
    if challenger is not None:
        row = evidence.comparison(engine, challenger, production) if production is not None else None
        current = True
    else:
        row = evidence.latest_comparison(engine, aliases.name)
        current = False
        if row is None:
            return ChallengerView(None, production, current=False)
    found = paired.stored(row)
    if found is None:
        return ChallengerView(challenger, production, current=current)
    return ChallengerView(
        found.challenger_version,
        found.production_version,
        current=current,
        evidence=found,
        verdict=paired.verdict(found),
        computed_at=timelines.utc(row["computed_at"]) if row.get("computed_at") else None,
    )


def _chicago_series(values: pd.Series) -> pd.Series:
    return pd.Series([to_chicago(v) if pd.notna(v) else pd.NaT for v in values], index=values.index, dtype=object)


def _utc_series(values: pd.Series) -> pd.Series:
    """Stored UTC instants as naive UTC times, comparable with each other whatever the backend."""
    return pd.to_datetime(
        pd.Series(
            [timelines.utc(v).replace(tzinfo=None) if pd.notna(v) else pd.NaT for v in values],
            index=values.index,
            dtype=object,
        )
    )


def drift_margin(method: str, score: float | None, threshold: float) -> float:
    """How far past its threshold a test's score is: above 1 = drifted, for either kind of test;
    NaN when the test had nothing to compare (no score)."""
    if score is None or not math.isfinite(score) or not threshold > 0:
        return math.nan
    if method in P_VALUE_METHODS:
        return min(MARGIN_CAP, threshold / score) if score > 0 else MARGIN_CAP
    if method in DISTANCE_METHODS:
        return min(MARGIN_CAP, score / threshold) if score > 0 else 1 / MARGIN_CAP
    raise ValueError(f"unknown drift method {method!r}")


def _with_margins(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    frame["margin"] = [
        drift_margin(m, None if pd.isna(s) else float(s), float(t))
        for m, s, t in zip(frame["method"], frame["score"], frame["threshold"], strict=True)
    ]
    return frame


def _numeric(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    for column in columns:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def collect(
    engine: Engine,
    now: datetime,
    period: timedelta,
    interval_seconds: float,
    until_slot: datetime,
    aliases: ModelAliases,
    window: int = 1000,
) -> Overview:
    """Everything the report shows for the `period` before `now` (UTC); slots before `until_slot` can be
    missed (history.settled_until); `aliases` names the model whose events and challenger are shown;
    `window` is POLICY_WINDOW_OUTCOMES (production's recent accuracy)."""
    since = now - period
    since_local = to_chicago(since)
    batches = timelines.batches_since(engine, since_local, since)
    batches = _numeric(
        batches,
        ["rides_requested", "rows_written", "prediction_p10", "prediction_p50", "prediction_p90", "outcomes", "mae"],
    )
    started = _chicago_series(batches["started_at"])
    batches["at"] = pd.to_datetime(batches["window_end"].where(batches["window_end"].notna(), started))
    fallback_start = batches["at"] - pd.Timedelta(seconds=interval_seconds)
    batches["start"] = pd.to_datetime(batches["window_start"]).where(batches["window_start"].notna(), fallback_start)

    drift = _with_margins(timelines.column_drift_since(engine, since_local, since))
    drift = drift.merge(batches[["batch_id", "at", "model_version"]], on="batch_id", how="left")
    drift = drift[drift["batch_id"].isin(batches.loc[batches["counts"], "batch_id"])]

    windows, window_drift = hour_windows(engine, since)
    # The warnings read the newest ended window whatever the period, as the alerts do.
    fresh = hour_windows(engine, now - WINDOW_FRESH) if since > now - WINDOW_FRESH else (windows, window_drift)

    daily = _numeric(
        timelines.daily_accuracy_since(engine, since_local.date()),
        ["outcomes", "mae", "rmse", "bias", "baseline_mae", "heldout_mae"],
    )
    missed = history.missed_slots(engine, interval_seconds, since, until_slot)
    refused = history.refusals(engine, missed)
    with engine.connect() as conn:
        recent = recent_drift(conn, now, shown=SHOWN_ITEMS)
    overview = Overview(
        generated_at=now.astimezone(UTC),
        since=since.astimezone(UTC),
        interval_seconds=interval_seconds,
        batches=batches,
        column_drift=drift,
        windows=windows,
        window_drift=window_drift,
        daily=daily,
        missed=missed,
        refused=refused,
        events=model_events(engine, aliases, since, now),
        challenger=challenger_view(engine, aliases),
        production=production_recent(engine, aliases.name, aliases.production, window, now),
        recent_drift=recent,
        whatif_excluded=whatif.excluded(),
        fresh_windows=fresh,
    )
    overview.alerts.extend(alerts(overview))
    return overview


def alerts(overview: Overview) -> list[Alert]:
    """The report's warnings, most pressing first: what failed, what is missing, what got worse."""
    now_local = overview.generated_local
    now = overview.generated_at
    fresh = overview.fresh_windows or (overview.windows, overview.window_drift)
    return [
        *failed_batches(overview.batches),
        *missed_slots(overview.missed, overview.refused),
        *moved_outside_alerts(overview.events),
        *accuracy_alerts(overview.production),
        *window_drift_alerts(*fresh, now - WINDOW_FRESH, now),
        *prediction_drift_alerts(fresh[1], now - WINDOW_FRESH, now),
        *batch_drift_alerts(overview.recent_drift, now_local),
        *monitoring_alerts(overview.batches),
        *shadow_alerts(overview.batches),
    ]


def _more(items: list[str], total: int) -> tuple[str, ...]:
    shown = items[:SHOWN_ITEMS]
    if total > len(shown):
        shown.append(f"... and {total - len(shown)} more")
    return tuple(shown)


def _first_line(text: object, limit: int = 160) -> str:
    line = str(text or "").strip().splitlines()[0] if str(text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def failed_batches(batches: pd.DataFrame) -> list[Alert]:
    failed = batches[batches["status"] == "failed"].sort_values("at", ascending=False)
    if failed.empty:
        return []
    items = [f"{row.batch_id}: {_first_line(row.error) or 'no error recorded'}" for row in failed.itertuples()]
    return [
        Alert(
            "failed",
            f"{len(failed)} failed batch{'es' if len(failed) > 1 else ''} in the period "
            "(`python -m worker rerun BATCH_ID` sends one again)",
            _more(items, len(items)),
        )
    ]


def missed_slots(missed: list[datetime], refused: dict[datetime, str] | None = None) -> list[Alert]:
    """Slots with no batch; those a worker refused or dropped before recording a batch say why."""
    if not missed:
        return []
    refused = refused or {}
    first, last = to_chicago(missed[0]), to_chicago(missed[-1])
    why = f" ({len(refused)} refused by a worker)" if refused else ""
    return [
        Alert(
            "missed",
            f"{len(missed)} missed beat slot{'s' if len(missed) > 1 else ''}, "
            f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} Chicago time{why}",
            _more(
                [
                    f"{to_chicago(s):%Y-%m-%d %H:%M} Chicago ({s.isoformat()})"
                    + (f": refused by a worker: {refused[s]}" if s in refused else "")
                    for s in missed
                ],
                len(missed),
            ),
        )
    ]


def has_version(version: object) -> bool:
    """False for an event's missing version (None, or NaN once pandas held the column)."""
    return version is not None and not pd.isna(version)


def version_text(version: object) -> str:
    """`v3`, or `none` where an alias pointed nowhere (before its first move, after a retirement)."""
    return f"v{version}" if has_version(version) else "none"


def moved_outside_alerts(found: pd.DataFrame) -> list[Alert]:
    """An alias moved by something other than this project (MLflow's UI, another client): who and why are
    unknown, and a production move changes every prediction from then on."""
    outside = found[(found["action"] == MOVED_OUTSIDE) & (found["status"] == events.DONE)]
    if outside.empty:
        return []
    outside = outside.sort_values("at", ascending=False)
    items = [
        f"{row.local:%Y-%m-%d %H:%M} Chicago: @{row.alias} {version_text(row.from_version)} → {version_text(row.to_version)}"
        for row in outside.itertuples()
    ]
    return [
        Alert(
            "outside",
            f"{len(outside)} alias move{'s' if len(outside) > 1 else ''} made outside the project in the period "
            "(no command of this project did it; `python -m worker rollback --reason TEXT` undoes a production "
            "move on the record)",
            _more(items, len(items)),
        )
    ]


def shadow_alerts(batches: pd.DataFrame) -> list[Alert]:
    """Batches whose challenger could not score them: their rows are written, the paired evidence misses them."""
    failed = batches[batches["shadow_error"].notna()].sort_values("at", ascending=False)
    if failed.empty:
        return []
    items = [
        f"{row.batch_id} ({version_text(row.challenger_version)}): {_first_line(row.shadow_error)}"
        for row in failed.itertuples()
    ]
    return [
        Alert(
            "challenger",
            f"the challenger failed to score {len(failed)} batch{'es' if len(failed) > 1 else ''} in the period "
            "(their rows are written as usual; only the paired comparison misses them)",
            _more(items, len(items)),
        )
    ]


def accuracy_alerts(production: RecentAccuracy | None) -> list[Alert]:
    """Production degraded, by the one rule (worker/monitor/degradation.py) the alert and the policy use."""
    if production is None or not degraded(production):
        return []
    worse = production.mae / production.heldout_mae - 1
    return [
        Alert(
            "accuracy",
            f"production v{production.version}: live MAE {production.mae:.2f} min over its {production.outcomes} most "
            f"recently known outcomes is {worse:.1%} above its held-out MAE {production.heldout_mae:.2f} min "
            f"(degraded above {ACCURACY_MARGIN:.0%}, from {MIN_OUTCOMES} outcomes: the rule of "
            "TaxiLiveMaeWorseThanHeldout and of the model policy)",
        )
    ]


def _drifted_columns(window_drift: pd.DataFrame, end_utc: datetime, version: str) -> list[str]:
    rows = window_drift[
        (window_drift["end_utc"] == end_utc) & (window_drift["model_version"] == version) & window_drift["drifted"]
    ]
    return sorted(rows["column_name"])


def hour_windows(engine: Engine, since: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The hour windows that ended after `since` (UTC), and their columns' drift. They are stored by
    UTC instant and shown in Chicago time; `end_utc` orders them (the wall time repeats for an hour
    each November)."""
    windows = timelines.windows_since(engine, since)
    windows["end_utc"] = _utc_series(windows["window_end"])
    windows["window_start"] = pd.to_datetime(_chicago_series(windows["window_start"]))
    windows["window_end"] = pd.to_datetime(_chicago_series(windows["window_end"]))
    window_drift = _with_margins(timelines.window_drift_since(engine, since))
    window_drift["end_utc"] = _utc_series(window_drift["window_end"])
    window_drift["window_end"] = pd.to_datetime(_chicago_series(window_drift["window_end"]))
    window_drift["window_start"] = window_drift["window_end"] - pd.to_timedelta(
        window_drift["window_minutes"].astype(float), unit="min"
    )
    return windows, window_drift


def _newest_ended(frame: pd.DataFrame, fresh_since: datetime, now: datetime) -> pd.DataFrame:
    """The rows of the newest hour window that has ended by `now`, if it ended after `fresh_since`
    (the hour in progress is as noisy as a batch; a window older than that is stale). Both are UTC."""
    fresh_since, now = (timelines.utc(t).replace(tzinfo=None) for t in (fresh_since, now))
    ended = frame[frame["end_utc"] <= now]
    if ended.empty:
        return ended
    newest = ended["end_utc"].max()
    return ended[(ended["end_utc"] == newest) & (ended["end_utc"] > fresh_since)]


def window_drift_alerts(
    windows: pd.DataFrame, window_drift: pd.DataFrame, fresh_since: datetime, now: datetime
) -> list[Alert]:
    """The newest ended hour window drifted (any version): TaxiDatasetDrift's hour-window rule."""
    recent = _newest_ended(windows, fresh_since, now)
    recent = recent[recent["dataset_drift"].eq(True)]
    if recent.empty:
        return []
    items = [
        f"{row.window_start:%Y-%m-%d %H:%M}–{row.window_end:%H:%M} (v{row.model_version}, {row.rows} rides): "
        f"{row.drifted_columns} of {row.columns_checked} columns drifted "
        f"({', '.join(_drifted_columns(window_drift, row.end_utc, row.model_version))})"
        for row in recent.itertuples()
    ]
    return [Alert("drift", "dataset drift in the last clock hour that has ended", _more(items, len(items)))]


def prediction_drift_alerts(window_drift: pd.DataFrame, fresh_since: datetime, now: datetime) -> list[Alert]:
    """The predicted durations of the newest ended hour window drifted (TaxiPredictionDrift's rule): the
    first sign of a changed world, hours before outcomes arrive, even where dataset drift is silent."""
    predicted = window_drift[window_drift["column_name"] == "predicted_duration"]
    moved = _newest_ended(predicted, fresh_since, now)
    moved = moved[moved["drifted"].eq(True)]
    if moved.empty:
        return []
    items = [
        f"{row.window_start:%Y-%m-%d %H:%M}–{row.window_end:%H:%M} (v{row.model_version}): {row.method} "
        f"{row.score:.3g} against {row.threshold:g}"
        for row in moved.itertuples()
    ]
    return [
        Alert(
            "drift",
            "prediction drift in the last clock hour that has ended: the predicted durations moved (a changed "
            "world shows here before any outcome)",
            _more(items, len(items)),
        )
    ]


def batch_drift_alerts(recent: RecentDrift, now_local: datetime) -> list[Alert]:
    """TaxiDatasetDrift's batch rule on the same count (store.monitoring.recent_drift): the batches
    monitored in the last hour, whatever their rides' window. A slot drifts by chance a few % of the
    time, a majority does not."""
    if recent.drifted < DRIFT_BATCHES or recent.drifted < DRIFT_SHARE * recent.tested:
        return []
    items = []
    for batch in recent.newest:
        at = batch.window_end or to_chicago(batch.monitored_at)
        shown = f"{at:%H:%M}" if at.date() == now_local.date() else f"{at:%Y-%m-%d %H:%M}"
        columns = ", ".join(c for c in batch.columns if c in DATASET_COLUMNS)
        items.append(
            f"{batch.batch_id} ({shown}, {batch.rows} rides): "
            f"{batch.drifted_columns} of {batch.columns_checked} columns drifted ({columns})"
        )
    return [
        Alert(
            "drift",
            f"dataset drift in {recent.drifted} of {recent.tested} monitored batches of the last "
            f"{RECENT.total_seconds() / 3600:g} h",
            _more(items, recent.drifted),
        )
    ]


def monitoring_alerts(batches: pd.DataFrame) -> list[Alert]:
    found = []
    failed = batches[batches["monitor_status"] == "failed"].sort_values("at", ascending=False)
    if not failed.empty:
        items = [f"{row.batch_id}: {_first_line(row.monitor_error)}" for row in failed.itertuples()]
        found.append(
            Alert(
                "monitoring",
                f"monitoring failed for {len(failed)} batch{'es' if len(failed) > 1 else ''} "
                "(their rows are written; only drift and accuracy are missing)",
                _more(items, len(items)),
            )
        )
    waiting = batches[batches["monitor_status"] == "waiting"]
    if not waiting.empty:
        found.append(
            Alert(
                "monitoring",
                f"monitoring of {len(waiting)} batch{'es' if len(waiting) > 1 else ''} waits for the model registry",
            )
        )
    missing = batches[batches["monitor_status"] == "no_reference"]
    if not missing.empty:
        versions = sorted({str(v) for v in missing["model_version"].dropna()})
        found.append(
            Alert(
                "monitoring",
                f"{len(missing)} batch{'es' if len(missing) > 1 else ''} scored by a version without a drift "
                f"reference (v{', v'.join(versions)}): `python -m worker reference --version "
                f"{versions[0] if versions else 'N'}` adds one",
            )
        )
    return found


def whatif_knobs(batches: pd.DataFrame) -> pd.Series:
    """Each batch's world knobs as people read them ("fare ×1.25"; "" for a calibrated batch)."""
    return pd.Series(
        [
            whatif.knobs_text(float(s), float(f))
            for s, f in zip(batches["speed_factor"], batches["fare_factor"], strict=True)
        ],
        index=batches.index,
        dtype=object,
    )


def whatif_summary(overview: Overview) -> str | None:
    """One sentence for the report's head: how many what-if batches the period holds, their knobs, and
    whether they count in production figures (None when it holds none)."""
    knobs = whatif_knobs(overview.batches)
    knobs = knobs[knobs != ""]
    if knobs.empty:
        return None
    groups = ", ".join(f"{text}: {count}" for text, count in sorted(knobs.value_counts().items()))
    counted = (
        "left out of production figures (WHATIF_BATCHES=exclude)"
        if overview.whatif_excluded
        else "counted in production figures (WHATIF_BATCHES=exclude leaves them out)"
    )
    return f"{len(knobs)} what-if batch{'es' if len(knobs) > 1 else ''} ({groups}), {counted}"


def gaps(times: pd.Series, interval_seconds: float) -> np.ndarray:
    """Where a line over these sorted times should break: after a gap of more than two intervals
    (missed slots, a quiet spell), so that a line never draws through hours without data."""
    values = pd.to_datetime(times).to_numpy()
    if len(values) < 2:
        return np.zeros(len(values), dtype=bool)
    step = np.diff(values) > np.timedelta64(int(2 * interval_seconds * 1000), "ms")
    return np.concatenate([[False], step])
