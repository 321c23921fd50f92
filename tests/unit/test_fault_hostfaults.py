"""The pure parts of the host fault scenarios (tests/faults/hostfaults.py): the lab time zones
of the clock-change scenarios, and which messages went to one host."""

from __future__ import annotations

import io
import shutil
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from tests.faults import hostfaults, measure

CHANGE_AT = int(datetime(2026, 11, 27, 23, 43, tzinfo=UTC).timestamp())


def _wall(plan: hostfaults.ClockPlan, offset: int) -> datetime:
    return datetime.fromtimestamp(plan.change_at + offset, UTC)


def test_going_back_the_change_ends_the_repeated_hour_on_the_hour() -> None:
    plan = hostfaults.plan_clock_change("back", CHANGE_AT, set())
    assert (plan.hour, plan.before - plan.after) == (1, 3600)
    assert (_wall(plan, plan.before).hour, _wall(plan, plan.before).minute) == (2, 0)
    assert (_wall(plan, plan.after).hour, _wall(plan, plan.after).minute) == (1, 0)
    assert (plan.label_before, plan.label_after) == (f"{plan.day}T01", f"{plan.day}T01b")


def test_going_forward_the_change_starts_the_skipped_hour_on_the_hour() -> None:
    plan = hostfaults.plan_clock_change("forward", CHANGE_AT, set())
    assert (plan.hour, plan.after - plan.before) == (2, 3600)
    assert _wall(plan, plan.before).strftime("%H:%M") == "02:00"
    assert (plan.label_before, plan.label_after) == (f"{plan.day}T01", f"{plan.day}T03")


def test_a_plan_avoids_labels_in_use_by_the_other_day_then_another_hour() -> None:
    first = hostfaults.plan_clock_change("back", CHANGE_AT, set())
    other_day = hostfaults.plan_clock_change("back", CHANGE_AT, first.labels)
    assert other_day.hour == 1 and other_day.day != first.day
    assert abs(other_day.before) < 86400 and abs(other_day.after) < 86400
    other_hour = hostfaults.plan_clock_change("back", CHANGE_AT, first.labels | other_day.labels)
    assert other_hour.hour == 13 and not other_hour.labels & (first.labels | other_day.labels)


@pytest.mark.skipif(shutil.which("zic") is None, reason="zic (libc-bin) not installed")
@pytest.mark.parametrize(("kind", "suffixes"), [("back", ["01", "01b"]),
                                                ("forward", ["01", "03"])])
def test_the_compiled_zone_names_the_hours_as_the_plan_says(kind: str,
                                                            suffixes: list[str]) -> None:
    name = hostfaults.ZONE_NAMES[kind]
    plan = hostfaults.plan_clock_change(kind, CHANGE_AT, set())
    source = hostfaults.zone_source(name, plan)
    assert "2026 Nov 27 23:43u" in source
    zone = ZoneInfo.from_file(io.BytesIO(hostfaults.compile_zone(name, source)), key=name)
    hours = measure.hours_between(CHANGE_AT - 120, CHANGE_AT + 120, zone)
    assert hours == [f"{plan.day}T{suffix}" for suffix in suffixes]
    assert hours == [plan.label_before, plan.label_after]


def test_token_indices_only_count_that_tokens_connections() -> None:
    log = {"connections": [{"token": "a", "whole_runs": [[0, 2]]},
                           {"token": "b", "whole_runs": [[3, 5]]},
                           {"token": "a", "whole_runs": [[6, 6]]}]}
    assert hostfaults.token_indices(log, "a") == {0, 1, 2, 6}
