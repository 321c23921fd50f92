"""The pure parts of the rows that destroy hosts (tests/faults/destruction.py) and of the lab
helpers they use: the next-hour lab zones, the comparison of what was published before and
after a loss, the moment a catch-up is caught mid-run, the status table, the traces of a dead
host's keys, the cron entry the runner plays, the inventory of a chosen fleet, and the
counting of what surviving hosts received."""

from __future__ import annotations

import io
import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.layout import hour_of
from tests.faults import destruction, measure
from tests.faults.destruction import Published, compare
from tests.faults.hostfaults import compile_zone
from tests.faults.run import by_lab
from tests.faults.scenarios import all_scenarios, hourly_cron_commands
from tests.lab import nspawn
from tests.lab.fleet import Lab

NOW = datetime(2026, 12, 2, 18, 37, 20, tzinfo=UTC).timestamp()


def _zone(offset: int, name: str = "Lab/Move1") -> ZoneInfo:
    compiled = compile_zone(name, destruction.zone_source(name, offset))
    return ZoneInfo.from_file(io.BytesIO(compiled), key=name)


@pytest.mark.parametrize(("offset", "minute"), [(3600, 43), (3600, 0), (3600, 59),
                                                (-5 * 3600 - 1800, 25), (13 * 3600, 10)])
def test_the_next_hour_zone_continues_with_the_next_label_at_the_chosen_minute(
        offset: int, minute: int) -> None:
    new = destruction.next_hour_offset(NOW, offset, minute)
    assert new % 60 == 0 and abs(new) < 24 * 3600
    zone = _zone(new)
    moment = datetime.fromtimestamp(NOW, UTC)
    old_label = hour_of(moment, _zone(offset, "Lab/Old"))
    local = moment.astimezone(zone)
    assert local.minute == minute
    # The new zone's hour is the old one's next: its previous hour is the old label, which
    # the merge of the new hour looks back into (collector.process.previous_hour).
    before = datetime.fromtimestamp(NOW - (minute * 60 + local.second + 1), UTC)
    assert hour_of(before, zone) == old_label
    assert hour_of(moment, zone) != old_label


def test_the_zone_source_keeps_one_offset() -> None:
    assert destruction.utc_offset(5400) == "+1:30"
    assert destruction.utc_offset(-2700) == "-0:45"
    zone = _zone(-2700)
    offset = datetime.fromtimestamp(NOW, UTC).astimezone(zone).utcoffset()
    assert offset is not None and offset.total_seconds() == -2700


def test_a_restart_waits_out_the_backfill_unless_the_lookback_covers_it() -> None:
    utc = ZoneInfo("UTC")
    at = datetime(2026, 12, 2, 18, 30, 0, tzinfo=UTC).timestamp()
    # Minute 30: the backfill would repeat ids the next hour's merge cannot see.
    assert destruction.restart_not_before(at, utc, 2) == at + 122
    # Minute 55:10: the last two minutes lie in the previous hour's last ten.
    late = at + 25 * 60 + 10
    assert destruction.restart_not_before(late, utc, 2) <= late
    # Minute 51: the backfill of a restart at 52:02 starts at minute 50.
    early = at + 21 * 60
    assert destruction.restart_not_before(early, utc, 2) == at + 22 * 60 + 2
    assert destruction.restart_not_before(at, utc, 0) == at + 2


def _published(ids: dict[str, set[str]], files: dict[str, str] | None = None,
               osf: dict[str, tuple[str, int]] | None = None) -> Published:
    return Published(files or {}, {hour: frozenset(found) for hour, found in ids.items()},
                     osf or {})


IDS = "2026-12-02/2026-12-02_19_IDs.txt.xz"
TWEETS = "2026-12-02/2026-12-02_19_tweets.csv.xz"
REPORT = "2026-12-02/2026-12-02_report.txt"
OPEN_IDS = "2026-12-02/2026-12-02_20_IDs.txt.xz"


def _before() -> Published:
    return _published({"2026-12-02T19": {"1", "2"}, "2026-12-02T20": {"3"}},
                      {IDS: "a", TWEETS: "t", REPORT: "r", OPEN_IDS: "o"},
                      {"2026/12/02/2026-12-02_19_IDs.txt.xz": ("a", 1),
                       "2026/12/02/2026-12-02_report.txt": ("r", 2),
                       "2026/12/02/2026-12-02_20_IDs.txt.xz": ("o", 1)})


def test_an_unchanged_fleet_compares_clean() -> None:
    before = _before()
    findings, notes = compare(before, before, {"2026-12-02T19"})
    assert findings == []
    assert "2 output files of the 1 complete hours byte-identical" in notes
    assert "3 of 3 OSF files unchanged, no new version" in notes


def test_a_grown_open_hour_and_a_new_report_version_are_notes() -> None:
    before = _before()
    after = _published({"2026-12-02T19": {"1", "2"}, "2026-12-02T20": {"3", "4"}},
                       {**before.files, OPEN_IDS: "o2", REPORT: "r2"},
                       {**before.osf, "2026/12/02/2026-12-02_20_IDs.txt.xz": ("o2", 2),
                        "2026/12/02/2026-12-02_report.txt": ("r2", 3)})
    findings, notes = compare(before, after, {"2026-12-02T19"})
    assert findings == []
    assert "2026-12-02T20 grew by 1 ids" in notes
    assert any("version 1 -> 2 (the hour grew)" in note for note in notes)


def test_every_broken_promise_is_a_finding() -> None:
    before = _before()
    after = _published({"2026-12-02T20": {"4"}},
                       {IDS: "a", TWEETS: "t-other", OPEN_IDS: "o2"},
                       {"2026/12/02/2026-12-02_19_IDs.txt.xz": ("a", 2),
                        "2026/12/02/2026-12-02_20_IDs.txt.xz": ("o", 1)})
    findings, _ = compare(before, after, {"2026-12-02T19"})
    text = "\n".join(findings)
    assert "2026-12-02T19: its IDs file is gone" in text
    assert "2026-12-02T20: 1 of its 1 published ids are gone" in text
    assert f"{TWEETS} of 2026-12-02T19, complete before the loss, changed" in text
    assert f"vault file {REPORT} is gone" in text
    assert "new version of the unchanged 2026/12/02/2026-12-02_19_IDs.txt.xz (1 -> 2)" in text
    assert "OSF lost 2026/12/02/2026-12-02_report.txt" in text
    assert f"OSF does not hold {OPEN_IDS} as the vault does" in text


def test_fewer_ids_names_only_hours_that_lost_ids() -> None:
    before = _before()
    assert destruction.fewer_ids(before, {"2026-12-02T19": frozenset({"1", "2", "9"}),
                                          "2026-12-02T20": frozenset({"3"})}) == []
    assert destruction.fewer_ids(before, {"2026-12-02T19": frozenset({"1"})}) == [
        "2026-12-02T19: 1 ids published before the loss are not in the final outputs",
        "2026-12-02T20: 1 ids published before the loss are not in the final outputs"]


def test_vault_paths_map_to_osf_and_to_their_hour() -> None:
    assert destruction.osf_path(IDS) == "2026/12/02/2026-12-02_19_IDs.txt.xz"
    assert destruction.hour_of_file(TWEETS) == "2026-12-02T19"
    assert destruction.hour_of_file("2026-10-25/2026-10-25_02b_users.csv.xz") == "2026-10-25T02b"
    assert destruction.hour_of_file(REPORT) == ""


def test_a_catch_up_is_caught_while_it_writes_the_hours_outputs() -> None:
    folder = ["2026-12-02_19_IDs.txt.xz", "2026-12-02_report.txt"]
    assert destruction.caught_mid_run(folder, "2026-12-02T20") == ""
    writing = [*folder, ".2026-12-02_20_tweets.csv.xz.tmp-4242"]
    assert destruction.caught_mid_run(writing, "2026-12-02T20") == writing[-1]
    assert destruction.caught_mid_run(writing, "2026-12-02T19") == ""


STATUS_LOG = """
TASK [Print the fleet table] ****
ok: [collector1] => {
    "msg": [
        "host        role       verdict  stream       last tweet  tweets  waiting  problems",
        "collector1  main       healthy  connected    0 s         9000    0",
        "collector2  secondary  healthy  connected    1 s         8000    2",
        "collector3  -          unknown  unreachable  -           -       -        Failed"
    ]
}

PLAY RECAP *****
collector1                 : ok=3    changed=0    unreachable=0    failed=0
collector3                 : ok=0    changed=0    unreachable=1    failed=0
"""


def test_the_status_table_is_read_by_host() -> None:
    rows = destruction.status_rows(STATUS_LOG)
    assert set(rows) == {"collector1", "collector2", "collector3"}
    assert rows["collector3"][3] == "unreachable"
    assert rows["collector1"][:3] == ["collector1", "main", "healthy"]
    assert destruction.status_rows("no table") == {}


def test_the_play_recap_names_the_hosts_played() -> None:
    assert destruction._recap_hosts(STATUS_LOG) == {"collector1", "collector3"}


def test_a_dead_hosts_keys_are_found_wherever_they_remain() -> None:
    who = {"server_id": "collector3", "push_key": "ssh-ed25519 AAAApush",
           "host_key": "ssh-ed25519 AAAAhost"}
    texts = {"collector1:/etc/ssh/authorized_keys/collector":
             'restrict,command="x" ssh-ed25519 AAAApush collector3\n',
             "collector1:/etc/collector/ssh/known_hosts":
             "[127.0.0.1]:2222 ssh-ed25519 AAAAother\n",
             "collector2:/etc/collector/ssh/known_hosts":
             "[127.0.0.1]:2223 ssh-ed25519 AAAAhost\n"}
    assert destruction.key_traces(texts, who) == [
        "collector1:/etc/ssh/authorized_keys/collector still holds collector3's push key",
        "collector2:/etc/collector/ssh/known_hosts still holds collector3's host key"]
    assert destruction.key_traces(texts, {"server_id": "x", "push_key": "", "host_key": ""}) == []


_BIN = "/opt/collector/venv/bin/collector --settings /etc/collector/server_settings.txt"
CRON = (f"#Ansible: collector process and upload\n"
        f"7 * * * * collector systemd-cat -t collector-process {_BIN} process; "
        f"systemd-cat -t collector-upload {_BIN} upload; "
        f"systemd-cat -t collector-replicate {_BIN} replicate\n"
        f"#Ansible: collector daily report\n"
        f"5 7 * * * collector systemd-cat -t collector-report {_BIN} report --send\n")


def test_the_runner_plays_the_mains_hourly_cron_entry_in_its_order() -> None:
    assert hourly_cron_commands(CRON) == ("process", "upload", "replicate")
    assert hourly_cron_commands(CRON.replace("replicate", "")) == ("process", "upload")
    assert hourly_cron_commands("") == ()
    assert hourly_cron_commands("# 7 * * * * x /collector --settings s process") == ()


def _state() -> dict[str, object]:
    return {"hosts": {"collector2": {"port": 2202}, "collector3": {"port": 2203}},
            "gone": {"collector1": {"port": 2201}},
            "processes": {name: {"port": port} for name, port in
                          (("fake_api", 1), ("fake_osf", 2), ("smtp", 3))},
            "tokens": {name: f"token-{name}" for name in ("collector1", "collector2",
                                                          "collector3")},
            "osf_token": "o", "smtp_password": "p",
            "inventory_vars": {"collector_timezone": "Lab/Move1"}}


def _lab(tmp_path: Path) -> Lab:
    """A lab whose cache (its SSH key) and inventory are in `tmp_path`."""
    (tmp_path / "id_ed25519").write_text("a key")  # controller_key makes none then
    return Lab("lab", cache_dir=tmp_path, inventory_dir=tmp_path)


def test_the_inventory_lists_the_chosen_fleet_with_its_main(tmp_path: Path) -> None:
    fleet = _lab(tmp_path)
    state = _state()
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "collector9.yml").write_text("stale")
    # The dead collector1 still listed, as an operator's inventory still lists a host that
    # just died; then without it, collector3 promoted.
    fleet.write_inventory(state, "collector2", ["collector2", "collector3", "collector1"])
    assert fleet.main_of_inventory() == "collector2"
    assert fleet.inventory_hosts() == ["collector2", "collector3", "collector1"]
    assert "ansible_port: 2201" in (tmp_path / "host_vars" / "collector1.yml").read_text()
    assert not (tmp_path / "host_vars" / "collector9.yml").exists()
    assert 'collector_timezone: "Lab/Move1"' in (tmp_path / "group_vars" / "all.yml").read_text()
    fleet.write_inventory(state, "collector3", ["collector3", "collector2"])
    assert fleet.main_of_inventory() == "collector3"
    assert fleet.inventory_hosts() == ["collector3", "collector2"]
    assert not (tmp_path / "host_vars" / "collector1.yml").exists()
    fleet.write_inventory(state, "collector3")  # default: every running host
    assert sorted(fleet.inventory_hosts()) == ["collector2", "collector3"]
    with pytest.raises(ValueError):
        fleet.write_inventory(state, "collector1", ["collector2"])


def test_a_main_alone_has_an_empty_secondary_group(tmp_path: Path) -> None:
    fleet = _lab(tmp_path)
    fleet.write_inventory(_state(), "collector2", ["collector2"])
    assert "      hosts: {}" in (tmp_path / "hosts.yml").read_text()
    assert fleet.inventory_hosts() == ["collector2"]


def test_recreate_refuses_a_host_that_was_not_destroyed(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        _lab(tmp_path).recreate(_state(), "collector2")


def test_a_port_someone_listens_on_is_not_free() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not nspawn.port_free(port)
    assert nspawn.port_free(port)


def _log(*records: tuple[int, list[int]]) -> dict[str, object]:
    return {"connections": [{"id": ident, "whole_runs": [run]} for ident, run in records]}


def test_what_only_a_destroyed_host_received_is_not_counted_as_sent() -> None:
    before = _log((1, [0, 9]), (2, [0, 9]))
    # Host 1 (records 1, 3) died; host 2 received 10-19 and host 1 also 20-29 before dying.
    after = _log((1, [0, 9]), (2, [0, 19]), (3, [10, 29]))
    everyone = measure.sent_ids(before, after)
    survivors = measure.sent_ids(before, after, {1, 3})
    assert survivors == {measure.tweet_id(i) for i in range(10, 20)} - {
        measure.tweet_id(i) for i in range(10)}
    assert survivors < everyone
    assert json.dumps(sorted(measure.whole_indices(after, {3}))) == json.dumps(list(range(20)))


def test_the_destruction_rows_run_in_their_own_lab_of_three_in_order() -> None:
    scenarios = all_scenarios()
    mine = [scenario for scenario in scenarios if scenario.lab == destruction.LAB]
    assert [scenario.name for scenario in mine] == [
        "main-destroyed", "promote-then-old-main-returns", "main-destroyed-during-catch-up",
        "secondary-destroyed"]
    assert all(scenario.hosts == 3 for scenario in mine)
    assert all(scenario.hosts == 2 for scenario in scenarios if scenario not in mine)
    labs = by_lab(scenarios, one_lab=False)
    assert [scenario.name for scenario in labs["d"]] == [scenario.name for scenario in mine]
    assert not {scenario.name for scenario in labs[""]} & {scenario.name for scenario in mine}


def test_an_hour_is_complete_only_if_published_after_a_move_closed_it() -> None:
    published = Published({}, {"2026-12-02T19": frozenset({"1"}),
                               "2026-12-02T20": frozenset({"2"})}, {},
                          {"2026-12-02T19": 1000.0, "2026-12-02T20": 900.0})
    # 19 was merged after the move closed it; 20 was published before its move (it grew
    # since), and 21 was never published.
    closed = {"2026-12-02T19": 950.0, "2026-12-02T20": 950.0, "2026-12-02T21": 950.0}
    assert published.complete(closed) == {"2026-12-02T19"}
