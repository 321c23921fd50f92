"""What a converged fleet must look like on every lab host (run by molecule's verify step).

Run by hand against a running lab:
    .venv/bin/pytest -o addopts= --hosts=ansible://collectors \
        --ansible-inventory=inventory/lab molecule/default/tests
"""

from __future__ import annotations

import re
from typing import Any

import pytest

EXPOSURE_LIMIT = 2.0
SETTINGS = "/etc/collector/server_settings.txt"
MAIN_ONLY_PATHS = ("/srv/collector/vault", "/srv/collector/incoming",
                   "/etc/ssh/authorized_keys/collector", "/etc/ssh/sshd_config.d/collector.conf",
                   "/etc/collector/keys/osf_credentials.txt")
SECONDARY_ONLY_PATHS = ("/etc/collector/ssh/id_ed25519", "/etc/collector/ssh/known_hosts")


def is_main(host: Any) -> bool:
    return "main" in host.ansible.get_variables()["group_names"]


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


def test_cron_only_where_it_belongs(host: Any) -> None:
    cron = host.file("/etc/cron.d/collector").content_string
    if is_main(host):
        assert " process; " in cron and " upload" in cron and "report --send" in cron
        assert " send" not in cron.replace("report --send", "")
    else:
        assert " send" in cron
        assert " process" not in cron and "report" not in cron


def test_main_only_resources_only_on_the_main(host: Any) -> None:
    main = is_main(host)
    for path in MAIN_ONLY_PATHS:
        assert host.file(path).exists == main, path
    for path in SECONDARY_ONLY_PATHS:
        assert host.file(path).exists != main, path
    shell = host.user("collector").shell
    assert shell == ("/bin/sh" if main else "/usr/sbin/nologin")


def test_authorized_keys_are_root_owned_and_forced(host: Any) -> None:
    if not is_main(host):
        pytest.skip("receiving side only on the main")
    keys = host.file("/etc/ssh/authorized_keys/collector")
    assert (keys.user, keys.mode) == ("root", 0o644)
    lines = [line for line in keys.content_string.splitlines()
             if line and not line.startswith("#")]
    # One forced, restricted line per secondary, ending with its server id (the swap and the
    # `--limit` runs of side_effect.yml came before: none was dropped or blanked).
    secondaries = host.ansible.get_variables()["groups"]["secondary"]
    assert sorted(line.split()[-1] for line in lines) == sorted(secondaries)
    for line in lines:
        assert line.startswith('restrict,command="')
        assert line.split()[-3].startswith(("ssh-", "ecdsa-", "sk-"))


def test_no_copy_of_a_handover_left(host: Any) -> None:
    # The swap's archive and manifest (tweet texts) are gone once the new main verified them.
    for path in ("/var/tmp/collector-handover", "/var/tmp/collector-handover.tgz",
                 "/etc/ssh/authorized_keys/collector.handover"):
        assert not host.file(path).exists, path


def test_confined_key_refuses_a_shell(host: Any) -> None:
    if is_main(host):
        pytest.skip("the push key lives on the secondaries")
    settings = settings_of(host)
    result = host.run(
        "runuser -u collector -- ssh -p %s -i %s -o BatchMode=yes -o UserKnownHostsFile=%s "
        "-o StrictHostKeyChecking=yes %s@%s id",
        settings["main_port"], settings["ssh_identity_file"], settings["ssh_known_hosts_file"],
        settings["main_user"], settings["main_host"])
    assert result.rc != 0
    assert "uid=" not in result.stdout
    assert "rsync" in result.stderr  # rrsync answered: the key works, but only for rsync


def test_push_reaches_the_main(host: Any) -> None:
    if is_main(host):
        pytest.skip("secondaries push")
    result = host.run("runuser -u collector -- /opt/collector/venv/bin/collector "
                      "--settings %s send", SETTINGS)
    assert result.rc == 0, result.stderr


def test_status_is_healthy(host: Any) -> None:
    result = host.run("/opt/collector/venv/bin/collector --settings %s status --json", SETTINGS)
    assert result.rc == 0, result.stdout
