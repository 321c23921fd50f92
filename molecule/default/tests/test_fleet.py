"""What a converged fleet must look like on every lab host (run by molecule's verify step).

Run by hand against a running lab:
    .venv/bin/pytest -o addopts= --hosts=ansible://collectors \
        --ansible-inventory=inventory/lab molecule/default/tests
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import testinfra

EXPOSURE_LIMIT = 2.0
SETTINGS = "/etc/collector/server_settings.txt"
AUTHORIZED_KEYS = "/etc/ssh/authorized_keys/collector"
REPLICA = "/srv/collector/replica"
COLLECTOR = "/opt/collector/venv/bin/collector"
MAIN_ONLY_PATHS = ("/srv/collector/vault", "/srv/collector/incoming",
                   "/etc/collector/keys/osf_credentials.txt")
# Every host pushes (a secondary its chunks, the main its replicas) and receives.
EVERY_HOST_PATHS = ("/etc/collector/ssh/id_ed25519", "/etc/collector/ssh/known_hosts",
                    AUTHORIZED_KEYS, "/etc/ssh/sshd_config.d/collector.conf")
APT_DROPIN = "/etc/apt/apt.conf.d/52collector-security-updates"
APT_TIMERS = ("apt-daily.timer", "apt-daily-upgrade.timer")
# What unattended-upgrade itself reads (get_allowed_origins: apt_pkg's value_list of both keys).
UU_ORIGINS = ("import apt_pkg, json; apt_pkg.init_config(); print(json.dumps({key: "
              "apt_pkg.config.value_list('Unattended-Upgrade::' + key) "
              "for key in ('Origins-Pattern', 'Allowed-Origins')}))")


def is_main(host: Any) -> bool:
    return "main" in host.ansible.get_variables()["group_names"]


def groups(host: Any) -> dict[str, list[str]]:
    return dict(host.ansible.get_variables()["groups"])


def settings_of(host: Any) -> dict[str, str]:
    text = host.file(SETTINGS).content_string
    return dict(line.split("=", 1) for line in text.splitlines()
                if line and not line.startswith("#"))


def test_stream_service_active_and_enabled(host: Any) -> None:
    service = host.service("collector")
    assert service.is_running, host.run("journalctl -u collector -n 30 --no-pager").stdout
    assert service.is_enabled


def test_stream_service_runs_unprivileged(host: Any) -> None:
    user = host.run("systemctl show -p User --value collector").stdout.strip()
    assert user == "collector"
    assert host.user("collector").uid != 0


def test_exposure_score_at_most_two(host: Any) -> None:
    output = host.check_output("systemd-analyze security collector.service")
    score = float(re.search(r"Overall exposure level for collector\.service: ([0-9.]+)",
                            output).group(1))
    assert score <= EXPOSURE_LIMIT


@pytest.mark.parametrize(("path", "owner", "group", "mode"), [
    ("/etc/collector", "root", "collector", 0o750),
    (SETTINGS, "root", "collector", 0o640),
    ("/etc/collector/keys/twitter_api.txt", "root", "collector", 0o640),
    ("/srv/collector/data", "collector", "collector", 0o750),
    ("/etc/systemd/system/collector.service", "root", "root", 0o644),
    ("/etc/collector/ssh/id_ed25519", "collector", "collector", 0o600),
    ("/etc/collector/ssh/known_hosts", "root", "collector", 0o644),
    (REPLICA, "collector", "collector", 0o750),
    (f"{REPLICA}/chunks", "collector", "collector", 0o750),
    (f"{REPLICA}/vault", "collector", "collector", 0o750),
    (f"{REPLICA}/state", "collector", "collector", 0o750),
])
def test_owners_and_modes(host: Any, path: str, owner: str, group: str, mode: int) -> None:
    target = host.file(path)
    assert target.exists
    assert (target.user, target.group, target.mode) == (owner, group, mode)


def test_incoming_is_roots_and_only_the_quarantine_is_the_collectors(host: Any) -> None:
    # A key pushes into its own folder only; process moves rejects to a folder no key reaches.
    if not is_main(host):
        pytest.skip("the receiving side is on the main")
    incoming = host.file("/srv/collector/incoming")
    quarantine = host.file("/srv/collector/incoming/.quarantine")
    assert (incoming.user, incoming.mode) == ("root", 0o750)
    assert (quarantine.user, quarantine.group, quarantine.mode) == ("collector", "collector", 0o700)


def test_settings_match_the_role(host: Any) -> None:
    settings = settings_of(host)
    assert settings["role"] == ("main" if is_main(host) else "secondary")
    assert settings["server_id"] == host.ansible.get_variables()["inventory_hostname"]
    assert settings["replica_dst"] == REPLICA
    assert "raw_retention_days" in settings and "ssh_identity_file" in settings
    if is_main(host):
        # One replica target per secondary, at the address the lab reaches it by.
        assert sorted(target.split("@")[0] for target in settings["replicas"].split(",")) \
            == sorted(groups(host)["secondary"])
    else:
        assert "replicas" not in settings


def test_cron_only_where_it_belongs(host: Any) -> None:
    cron = host.file("/etc/cron.d/collector").content_string
    if is_main(host):
        # One hourly entry: replicate before upload, so nothing reaches OSF with one copy.
        hourly = [re.findall(r"--settings \S+ (\w+)", line) for line in cron.splitlines()
                  if " process;" in line]
        assert hourly == [["process", "replicate", "upload"]]
        assert "report --send" in cron
        assert " send" not in cron.replace("report --send", "")
    else:
        assert " send" in cron
        assert " process" not in cron and "report" not in cron and "replicate" not in cron


def test_metrics_entry_only_when_asked_for(host: Any) -> None:
    # collector_metrics_textfile_dir is off by default: no entry. The lab's inventory may turn it
    # on (group_vars), and then every host writes a fresh collector.prom as the collector.
    textfile_dir = host.ansible.get_variables().get("collector_metrics_textfile_dir", "")
    cron = host.file("/etc/cron.d/collector").content_string
    entries = [line for line in cron.splitlines() if " metrics --textfile-dir " in line]
    if not textfile_dir:
        assert entries == [] and "#Ansible: collector metrics" not in cron
        return
    assert len(entries) == 1 and entries[0].startswith("* * * * * collector ")
    folder = host.file(textfile_dir)
    assert folder.is_directory
    server_id = settings_of(host)["server_id"]
    written = host.run(f"runuser -u collector -- {COLLECTOR} --settings {SETTINGS} metrics "
                       f"--textfile-dir {textfile_dir}")
    assert (written.rc, written.stderr) == (0, ""), written.stderr
    prom = host.file(f"{textfile_dir}/collector.prom")
    assert (prom.user, prom.mode) == ("collector", 0o644)
    assert f'collector_stream_connected{{server="{server_id}"}} 1' in prom.content_string


def test_main_only_resources_only_on_the_main(host: Any) -> None:
    main = is_main(host)
    for path in MAIN_ONLY_PATHS:
        assert host.file(path).exists == main, path
    for path in EVERY_HOST_PATHS:
        assert host.file(path).exists, path
    # sshd runs the forced command through the receiving account's shell, on every host.
    assert host.user("collector").shell == "/bin/sh"


def test_no_confirmation_ledger_of_the_other_role(host: Any) -> None:
    # After the swap: what a host confirmed in its other role describes folders a handover
    # moved away, so the role removes it (the main has no send ledger, a secondary no
    # replication ledger) and a later swap back offers every kept chunk again.
    names = host.run("ls -A /srv/collector/data/.collector").stdout.split()
    if is_main(host):
        assert "send_ledger.json" not in names
    else:
        assert [name for name in names if name.startswith("replicate_")] == []


def test_authorized_keys_are_root_owned_and_forced(host: Any) -> None:
    keys = host.file(AUTHORIZED_KEYS)
    assert (keys.user, keys.mode) == ("root", 0o644)
    lines = [line for line in keys.content_string.splitlines()
             if line and not line.startswith("#")]
    # The main: one forced, restricted line per secondary, ending with its server id, into its
    # incoming folder; a secondary: one line for the main's key, into the replica folder (the
    # swap and the `--limit` runs of side_effect.yml came before: none was dropped or blanked).
    if is_main(host):
        expected = {name: f"{COLLECTOR} receive /srv/collector/incoming/{name}"
                    for name in groups(host)["secondary"]}
    else:
        expected = {groups(host)["main"][0]: f"{COLLECTOR} receive {REPLICA}"}
    assert sorted(line.split()[-1] for line in lines) == sorted(expected)
    for line in lines:
        assert line.startswith(f'restrict,command="{expected[line.split()[-1]]}" ')
        assert line.split()[-3].startswith(("ssh-", "ecdsa-", "sk-"))


def pushes_to(host: Any) -> list[tuple[str, str]]:
    """(host, port) of every host this one pushes to, from its own settings."""
    settings = settings_of(host)
    if not is_main(host):
        return [(settings["main_host"], settings["main_port"])]
    targets = [target.split("@", 1)[1] for target in settings["replicas"].split(",")]
    return [tuple(target.rsplit(":", 1)) for target in targets]  # type: ignore[misc]


def test_known_hosts_pin_the_hosts_this_one_pushes_to(host: Any) -> None:
    # The main's own on a secondary, every secondary's at its replica address on the main
    # (test_confined_key_refuses_a_shell connects with StrictHostKeyChecking=yes to each).
    lines = [line for line in host.file("/etc/collector/ssh/known_hosts").content_string
             .splitlines() if line and not line.startswith("#")]
    expected = [address if port == "22" else f"[{address}]:{port}"
                for address, port in pushes_to(host)]
    assert sorted(line.split()[0] for line in lines) == sorted(expected)
    assert all(line.split()[1] == "ssh-ed25519" for line in lines)


def test_confined_key_refuses_a_shell(host: Any) -> None:
    # A secondary's key on the main, the main's key on each secondary: rsync only.
    settings = settings_of(host)
    for address, port in pushes_to(host):
        result = host.run(
            "runuser -u collector -- ssh -p %s -i %s -o BatchMode=yes -o UserKnownHostsFile=%s "
            "-o StrictHostKeyChecking=yes collector@%s id",
            port, settings["ssh_identity_file"], settings["ssh_known_hosts_file"], address)
        assert result.rc != 0
        assert "uid=" not in result.stdout
        assert "rsync" in result.stderr  # rrsync answered: the key works, but only for rsync


def test_push_reaches_the_main(host: Any) -> None:
    if is_main(host):
        pytest.skip("secondaries push")
    result = host.run("runuser -u collector -- /opt/collector/venv/bin/collector "
                      "--settings %s send", SETTINGS)
    assert result.rc == 0, result.stderr


def test_replicas_reach_every_secondary(host: Any) -> None:
    # After the cycle's `process`: the main's vault and its ledger (pushed last) land in each
    # secondary's replica folder, owned by the receiving account. (testinfra runs every test
    # of one host before the next host's, so the secondaries are looked at from here.)
    if not is_main(host):
        pytest.skip("the main replicates")
    result = host.run("runuser -u collector -- %s --settings %s replicate", COLLECTOR, SETTINGS)
    assert result.rc == 0, result.stderr
    for name in groups(host)["secondary"]:
        secondary = testinfra.get_host(f"ansible://{name}",
                                       ansible_inventory=host.backend.ansible_inventory)
        ledger = secondary.file(f"{REPLICA}/state/process_ledger.json")
        assert ledger.exists and ledger.user == "collector", name
        found = secondary.run("find %s/vault -type f -name '*_IDs.txt.xz'", REPLICA).stdout
        assert found.strip(), name


def test_status_is_healthy(host: Any) -> None:
    result = host.run("/opt/collector/venv/bin/collector --settings %s status --json", SETTINGS)
    assert result.rc == 0, result.stdout


def codename_of(host: Any) -> str:
    release = dict(line.split("=", 1) for line in host.file("/etc/os-release").content_string
                   .splitlines() if "=" in line)
    return release["VERSION_CODENAME"].strip('"')


def test_security_updates_from_this_release_only(host: Any) -> None:
    # Each host its own release's security archive and point releases (a lab may mix bookworm
    # and trixie), and only those: the drop-in's #clear empties the package's own list.
    if not host.ansible.get_variables().get("collector_security_updates", True):
        pytest.skip("collector_security_updates is off for this host")
    assert host.package("unattended-upgrades").is_installed
    dropin = host.file(APT_DROPIN)
    assert (dropin.user, dropin.group, dropin.mode) == ("root", "root", 0o644)
    assert "Managed by the collector role" in dropin.content_string
    release = codename_of(host)
    patterns = [f"origin=Debian,codename={release}-security,label=Debian-Security",
                f"origin=Debian,codename={release},label=Debian"]
    origins = json.loads(host.check_output("/usr/bin/python3 -c %s", UU_ORIGINS))
    assert origins == {"Origins-Pattern": patterns, "Allowed-Origins": []}
    periodic = host.check_output("apt-config shell LISTS APT::Periodic::Update-Package-Lists "
                                 "UPGRADE APT::Periodic::Unattended-Upgrade")
    assert sorted(periodic.split()) == ["LISTS='1'", "UPGRADE='1'"]


@pytest.mark.parametrize("timer", APT_TIMERS)
def test_apt_timer_enabled_unless_masked(host: Any, timer: str) -> None:
    # The lab's image masks both on purpose; the role enables and starts them everywhere else.
    if not host.ansible.get_variables().get("collector_security_updates", True):
        pytest.skip("collector_security_updates is off for this host")
    state = host.run("systemctl is-enabled %s", timer).stdout.strip()
    assert state in ("enabled", "masked")
    if state == "enabled":
        assert host.service(timer).is_running
