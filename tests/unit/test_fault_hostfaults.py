"""The pure parts of the host fault scenarios (tests/faults/hostfaults.py): the lab time zones
of the clock-change scenarios, and which messages went to one host."""

from __future__ import annotations

import io
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from collector.cli import main
from collector.layout import chunk_path, hour_of
from collector.settings import load_settings
from tests.conftest import SettingsWriter
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


def test_a_plan_puts_every_label_after_the_fleets_own_future() -> None:
    first = hostfaults.plan_clock_change("back", CHANGE_AT, set())
    later = hostfaults.plan_clock_change("back", CHANGE_AT, set(), max(first.labels))
    assert min(later.labels) > max(first.labels)
    for kind in ("back", "forward"):
        for minutes in range(0, 24 * 60, 7):
            change_at = CHANGE_AT + minutes * 60
            own_future = str(measure.hours_between(change_at + 3600, change_at + 3600,
                                                   ZoneInfo("CET"))[0])
            plan = hostfaults.plan_clock_change(kind, change_at, set(), own_future)
            assert min(plan.labels) > own_future


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


def test_in_a_zone_hours_ahead_the_fleets_unmerged_hours_look_overdue_until_merged(
    write_settings: SettingsWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Why the clock scenarios failed by chance: the lab zone is hours away from the fleet's
    own, so the own zone's current hour, and the previous one until its hourly run, are past
    hours there. `collector status` on the main then rightly counts 2 due hours and says
    degraded, and the fleet never looks healthy in the zone. The scenario's setup now merges
    those hours first (`ClockChange._merge_own_hours`); merged, none is due in either zone."""
    own = ZoneInfo("CET")
    path = write_settings(role="main", data_vault_dst=str(tmp_path / "vault"),
                          incoming_dst=str(tmp_path / "incoming"), timezone="CET",
                          osf_enabled="False")
    settings = load_settings(path)
    now = datetime.now(UTC)
    hours = []
    for moment in (now - timedelta(hours=1), now):
        chunk = chunk_path(settings.data_storage_dst, "srv1", moment, own)
        chunk.parent.mkdir(parents=True, exist_ok=True)
        chunk.write_text(f'{{"data": {{"id": "{len(hours)}"}}}}\n')
        hours.append(str(hour_of(moment, own)))

    def waiting(zone: str) -> tuple[int, list[str]]:
        text = path.read_text()
        path.write_text(re.sub(r"(?m)^timezone=.*$", f"timezone={zone}", text))
        main(["--settings", str(path), "status", "--json"])
        report = orjson.loads(capsys.readouterr().out)
        return report["processing"]["hours_waiting"], report["problems"]

    assert waiting("CET")[0] <= 1  # the previous hour is due from :10 until the :15 run
    count, problems = waiting("Etc/GMT-11")  # 10 hours ahead of CET
    assert count == 2
    assert f"2 due hours are not processed (oldest {hours[0]})" in problems
    waiting("CET")
    for hour in hours:
        assert main(["--settings", str(path), "process", "--hour", hour, "--force"]) == 0
    capsys.readouterr()
    assert waiting("Etc/GMT-11")[0] == 0
    assert waiting("CET")[0] == 0
