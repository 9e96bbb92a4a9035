"""The summary of `lifecycle-check`: its windows for a world that changed for good."""

from __future__ import annotations

from datetime import timedelta

from worker.cli.lifecycle_check import START, Hour, Outcome, Scenario, report


def test_a_world_changed_for_good_is_summed_up_around_its_recovery_to_the_achievable():
    """Slower traffic never returns to the pre-change level: "during" and "after 24 h" were nan."""
    start = START.replace(tzinfo=None)
    hours = [Hour(start + timedelta(hours=h), rides=100, error=200.0, pre=200.0, best=200.0) for h in range(6)]
    for h in range(6, 40):  # from hour 6 the world is slower: 30 % worse than before for ever; 2 h to adapt
        error = 500.0 if h < 8 else 260.0
        hours.append(Hour(start + timedelta(hours=h), rides=100, error=error, pre=200.0, best=255.0))
    outcome = Outcome(Scenario("traffic", "traffic x 0.7", 40, change_at=6), hours, [], [], [], 0, True)
    row = report([outcome])[-1]
    assert "nan" not in row, row
    # before 2.00; during (the change to the first hour within 10 % of the achievable) 4.20; after 2.60
    assert row.split()[-5:] == ["2.00", "4.20", "2.60", "+30.0%", "+2.0%"]
    assert outcome.recovery_hours() is None and outcome.recovery_hours(yardstick="best") == 3
