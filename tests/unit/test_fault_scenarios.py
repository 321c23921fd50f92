"""The fault suite's cron timing: scenarios that run cron's jobs by hand start clear of them."""

from __future__ import annotations

from tests.faults.scenarios import hourly_minutes, seconds_until_next


def test_hourly_minutes_reads_the_hourly_entries_of_the_roles_cron_file() -> None:
    crontab = """#Ansible: collector process and upload
15 * * * * collector systemd-cat -t collector-process /opt/collector/bin/collector process
#Ansible: collector daily report
0 2 * * * collector systemd-cat -t collector-report /opt/collector/bin/collector report
#Ansible: collector send
2 * * * * collector systemd-cat -t collector-send /opt/collector/bin/collector send
"""
    assert hourly_minutes(crontab) == {2, 15}
    assert hourly_minutes("") == set()


def test_seconds_until_next_counts_to_the_next_start_past_the_hour() -> None:
    ten_past = 1_795_000_000 - 1_795_000_000 % 3600 + 600
    assert seconds_until_next({15}, ten_past) == 300
    assert seconds_until_next({2, 15}, ten_past) == 300
    assert seconds_until_next({2}, ten_past) == 3600 - 480
    assert seconds_until_next(set(), ten_past) == 3600
