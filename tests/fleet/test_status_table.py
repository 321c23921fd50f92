"""playbooks/status.yml's table, rendered by the real ansible-playbook from `collector status
--json` answers (local connection): a host that cannot be reached is a row with the verdict
`down`, not the end of the report, and the replication state shows on every host, as do the
source and Jetstream instance each host's settings name (read by the role's own task)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import yaml

TEMPLATE = Path(__file__).resolve().parents[2] / "playbooks" / "templates" / "status_table.j2"
STATUS_TASKS = Path(__file__).resolve().parents[2] / "roles" / "collector" / "tasks" / "status.yml"
SETTINGS_TASK = "Read this host's source from its settings"
US_WEST = "wss://jetstream.us-west.bsky.network/subscribe"
# What each host's server_settings.txt says about its source: an X host's file has no source=
# line (x is the collector's default), a Bluesky host's names its instance.
SETTINGS = {
    "collector1": "# x\nserver_id=collector1\napi_base_url=https://api.x.com\n",
    "collector2": f"# bluesky\nserver_id=collector2\nsource=bluesky\njetstream_url={US_WEST}\n",
}
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

STATUS = {
    "collector1": {"role": "main", "verdict": "degraded", "chunks_waiting": 0,
                   "stream": {"connected": True, "last_tweet_age": 1.4, "tweets": 50},
                   "problems": ["replication to collector3@h3:22 is 2.5 h behind"],
                   "replication": {"configured": True, "targets": {
                       "collector2": {"chunks_waiting": 0, "consecutive_failures": 0},
                       "collector3": {"chunks_waiting": 150, "consecutive_failures": 3}}},
                   "replica": {"age": None}},
    "collector2": {"role": "secondary", "verdict": "healthy", "chunks_waiting": 2,
                   "stream": {"connected": True, "last_tweet_age": 0.4, "tweets": 48},
                   "problems": [], "replica": {"age": 312.0}},
}

# The playbook's own table task after a stand-in for the role's status.yml (each host's answer).
PLAY = """
- name: Fleet status
  hosts: collectors
  gather_facts: false
  ignore_unreachable: true
  tasks:
    - name: Read each host's health (stand-in for `collector status --json`)
      ansible.builtin.command:
        cmd: cat {folder}/{{{{ inventory_hostname }}}}.json
      register: __collector_status
      changed_when: false

    - name: Print the fleet table
      ansible.builtin.debug:
        msg: "{{{{ lookup('ansible.builtin.template', '{template}') | trim | split('\\n') }}}}"
      run_once: true
"""


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_host_is_a_down_row_and_replication_shows(tmp_path: Path) -> None:
    for host, status in STATUS.items():
        (tmp_path / f"{host}.json").write_text(json.dumps(status))
        (tmp_path / f"{host}.settings").write_text(SETTINGS[host])
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = {"collectors": {"children": {
        "main": {"hosts": {"collector1": local}},
        "secondary": {"hosts": {
            "collector2": local,
            "collector3": {"ansible_host": "127.0.0.1", "ansible_port": closed_port(),
                           "ansible_ssh_common_args": "-o ConnectTimeout=5 -o BatchMode=yes"}}}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    play = yaml.safe_load(PLAY.format(folder=tmp_path, template=TEMPLATE))
    settings_task = next(task for task in yaml.safe_load(STATUS_TASKS.read_text())
                         if task["name"] == SETTINGS_TASK)
    settings_task["vars"] = {
        "_collector_settings_file": f"{tmp_path}/{{{{ inventory_hostname }}}}.settings"}
    play[0]["tasks"].insert(1, settings_task)
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    result = subprocess.run(
        [str(PLAYBOOK), "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PATH": f"{PLAYBOOK.parent}:/usr/bin:/bin", "HOME": str(tmp_path),
             "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0",
             "ANSIBLE_HOST_KEY_CHECKING": "0"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    rows = {line.split()[0].strip('"'): line.split() for line in result.stdout.splitlines()
            if line.strip().startswith('"collector')}
    assert rows["collector3"][1:5] == ["secondary", "down", "unreachable", "-"]
    assert rows["collector1"][1:3] == ["main", "degraded"]
    row1 = " ".join(rows["collector1"])
    assert "collector2 0 waiting, collector3 150 waiting, failing" in row1
    assert "received 312 s ago" in " ".join(rows["collector2"])
    lines = {line.split()[0].strip('"'): line.strip().rstrip(",").strip('"').rstrip()
             for line in result.stdout.splitlines()
             if line.strip().startswith(('"collector', '"host'))}
    assert lines["host"].split()[-3:] == ["source", "instance", "problems"]
    # source and instance: the two columns before the problems.
    assert re.search(r"collector3 150 waiting, failing\s+x\s+-\s+replication to collector3@h3:22 "
                     r"is 2\.5 h behind$", lines["collector1"])
    assert re.search(rf"received 312 s ago\s+bluesky\s+{re.escape(US_WEST)}$", lines["collector2"])
    # last tweet, tweets, waiting, replication, source, instance: nothing known
    assert lines["collector3"].split()[4:10] == ["-"] * 6
