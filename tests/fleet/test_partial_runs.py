"""`site.yml --limit` keeps what belongs to hosts outside the play: the role's own expressions
(vars/main.yml), its preflight and push tasks (taken from tasks/*.yml as they are) and its
authorized_keys, known_hosts and server_settings templates, run by the real ansible-playbook on
this machine (local connection, nothing outside a temporary folder is touched).

- Every host receives pushes: the main one line per secondary (`collector receive
  <incoming>/<id>`), every other host one line for the main's key (`collector receive
  <replica_dst>`). Read back and rendered again, each file is byte-identical: the key of every
  line is matched by its last field (the server id), whatever the options and the forced
  command look like, so `--limit` keeps the line of every host outside the play.
- known_hosts: a secondary pins the main, the main pins every secondary at the address it
  replicates to; a pin counts only for that exact address, and `--limit` keeps the pins of the
  hosts outside the play. Where there is nothing to keep, the run stops with one line.
- A secondary removed from the inventory leaves no line, no pin and no `replicas=` entry.
- The settings the role renders are accepted by collector.settings, `replicas=` included.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.commands import receive as receive_command
from collector.settings import ReplicaTarget, parse_key_values, settings_from_mapping
from collector.transfer.send import DEFAULT_COLLECTOR_BIN, authorized_keys_line

ROLE = Path(__file__).resolve().parents[2] / "roles" / "collector"
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

KEY1 = "AAAAC3NzaC1lZDI1NTE5AAAAIFDXAQ1MT3QYQe+HK3YrlYqVZKBvUd3ZvTRGiBvILgRh"
KEY2 = "AAAAC3NzaC1lZDI1NTE5AAAAIBweTd5kSbR3SH63J9wclGojOqQvdFZz/ZoZKYxn8a+V"
KEY3 = "AAAAC3NzaC1lZDI1NTE5AAAAIJrFS0Xg+Ek41OtTaeTCamuZYOBV52bZ1KjlXTMSLZa8"
KEY4 = ("AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5"
        "YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg=")
HOST_KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIJ499mWeS3BBBoVwiAELHKqkUwqu/4HZnHRnZYEXKlxt"
HOST_KEYS = {"collector1": HOST_KEY, "collector2": KEY3, "collector3": KEY1}
PUSH_KEYS = {"collector1": KEY1, "collector2": KEY2, "collector3": KEY3}
# Lines as the role wrote them before `collector receive` (existing fleets), and as it writes
# them now: the same text as collector.send.authorized_keys_line.
RRSYNC = 'restrict,command="/usr/bin/rrsync -wo /srv/collector/incoming/'
OLD2 = f'{RRSYNC}collector2" ssh-ed25519 {KEY2} collector2'
OLD3 = f'{RRSYNC}collector3" ssh-ed25519 {KEY3} collector3'
INCOMING = Path("/srv/collector/incoming")
REPLICA_DST = Path("/srv/collector/replica")
LINE2 = authorized_keys_line(INCOMING, "collector2", f"ssh-ed25519 {KEY2} collector2")
LINE3 = authorized_keys_line(INCOMING, "collector3", f"ssh-ed25519 {KEY3} collector3")
KEYS23 = {"collector2": f"ssh-ed25519 {KEY2}", "collector3": f"ssh-ed25519 {KEY3}"}

# The lab's shape: every host on its own port (collector2 as ansible_port, collector3 by the
# override collector_replica_host, port 22); the main at 127.0.0.1:50591.
INVENTORY = {"collectors": {
    "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
    "children": {
        "main": {"hosts": {"collector1": {"ansible_host": "127.0.0.1", "ansible_port": 50591}}},
        "secondary": {"hosts": {
            "collector2": {"ansible_host": "10.0.0.2", "ansible_port": 2202},
            "collector3": {"ansible_host": "10.0.0.3",
                           "collector_replica_host": "replica3.example"}}}}}}
MAIN_PIN = "[127.0.0.1]:50591"
HOST = "{{ inventory_hostname }}"
PIN2 = "[10.0.0.2]:2202"
PIN3 = "replica3.example"

# What `--limit` must read back, in the shapes an authorized_keys file may take (hand edits,
# another forced command, CRLF, tabs, comments): server id -> "type base64".
KEY_CASES: list[tuple[str, list[str], dict[str, str]]] = [
    ("rrsync lines", [
        f"#\n# Ansible managed\n#\n# One line per secondary\n{OLD2}\n{OLD3}\n"], KEYS23),
    ("collector receive lines", [f"{LINE2}\n{LINE3}\n"], KEYS23),
    ("a replica line (the main's key on a secondary)", [
        f'restrict,command="{DEFAULT_COLLECTOR_BIN} receive {REPLICA_DST}" '
        f"ssh-ed25519 {KEY2} collector2\n"],
     {"collector2": f"ssh-ed25519 {KEY2}"}),
    ("another forced command, from=, tabs, CRLF, no options, trailing blanks", [
        "# hand edited\r\n\r\n"
        'restrict,from="10.0.0.2",command="/usr/local/bin/collector-receive collector2 --x" '
        f"ssh-ed25519\t{KEY2}   collector2\r\n"
        f"ssh-ed25519 {KEY3} collector3  \n"
        f'command="rrsync -wo /x",restrict ecdsa-sha2-nistp256 {KEY4} collector4\n'],
     {**KEYS23, "collector4": f"ecdsa-sha2-nistp256 {KEY4}"}),
    ("commented, comment-less and garbled lines are not keys", [
        f'# restrict,command="x" ssh-ed25519 {KEY2} collector2\n'
        f'restrict,command="x" ssh-ed25519 {KEY3}\n'
        "restrict,command=\"x\" not-a-key AAAA collector3\n"
        "\n"],
     {}),
    ("the main's own file wins over a former main's; the first line over a later one", [
        f'restrict ssh-ed25519 {KEY2} collector2\nrestrict ssh-ed25519 {KEY4} collector2\n',
        f'restrict ssh-ed25519 {KEY3} collector2\nrestrict ssh-ed25519 {KEY3} collector3\n'],
     {"collector2": f"ssh-ed25519 {KEY2}", "collector3": f"ssh-ed25519 {KEY3}"}),
    ("no file at all", [], {}),
]

# known_hosts contents -> address -> "type base64"; and whether the main's address is pinned.
PIN_CASES: list[tuple[str, list[str], dict[str, str], bool]] = [
    ("pinned for the main's address",
     [f"#\n# Ansible managed\n#\n{MAIN_PIN} ssh-ed25519 {HOST_KEY}\n"],
     {MAIN_PIN: f"ssh-ed25519 {HOST_KEY}"}, True),
    ("pinned for another port only", [f"[127.0.0.1]:22 ssh-ed25519 {HOST_KEY}\n"],
     {"[127.0.0.1]:22": f"ssh-ed25519 {HOST_KEY}"}, False),
    ("a longer port that starts the same", [f"[127.0.0.1]:505910 ssh-ed25519 {HOST_KEY}\n"],
     {"[127.0.0.1]:505910": f"ssh-ed25519 {HOST_KEY}"}, False),
    ("blanked by an earlier run (header only)", ["#\n# Ansible managed\n#\n"], {}, False),
    ("missing", [], {}, False),
    ("the main's pins of several secondaries, CRLF, tabs, a comment after the key", [
        f"{PIN2}\tssh-ed25519 {KEY3}\r\n{PIN3} ecdsa-sha2-nistp256 {KEY4} root@replica3\n"],
     {PIN2: f"ssh-ed25519 {KEY3}", PIN3: f"ecdsa-sha2-nistp256 {KEY4}"}, False),
    ("hashed names, host lists, markers, comments and garbled lines pin nothing", [
        f"|1|abc=|def= ssh-ed25519 {HOST_KEY}\n{MAIN_PIN},other ssh-ed25519 {HOST_KEY}\n"
        f"@revoked {MAIN_PIN} ssh-ed25519 {HOST_KEY}\n# {MAIN_PIN} ssh-ed25519 {HOST_KEY}\n"
        f"{MAIN_PIN} not-a-key AAAA\n"], {}, False),
    ("this host's own file wins over a former main's; the first line over a later one", [
        f"{PIN2} ssh-ed25519 {KEY3}\n{PIN2} ssh-ed25519 {KEY2}\n",
        f"{PIN2} ssh-ed25519 {KEY1}\n{MAIN_PIN} ssh-ed25519 {HOST_KEY}\n"],
     {PIN2: f"ssh-ed25519 {KEY3}", MAIN_PIN: f"ssh-ed25519 {HOST_KEY}"}, True),
]

EXPRESSIONS_PLAY = """
- name: Evaluate the role's partial-run expressions
  hosts: collector1
  gather_facts: false
  vars_files:
    - {role}/defaults/main.yml
    - {role}/vars/main.yml
  tasks:
    - name: Read the push keys of each case
      ansible.builtin.debug:
        msg: "{{{{ _collector_push_keys_in_texts }}}}"
      loop: "{{{{ key_cases }}}}"
      vars:
        __collector_authorized_keys_texts: "{{{{ item }}}}"
      register: kept

    - name: Read the pins of each case and whether the main's address is pinned
      ansible.builtin.debug:
        msg: >-
          {{{{ [_collector_pins_in_texts,
               _collector_known_hosts_address in _collector_pins_in_texts] }}}}
      loop: "{{{{ pin_cases }}}}"
      vars:
        __collector_known_hosts_texts: "{{{{ item }}}}"
        __collector_main_host: 127.0.0.1
        __collector_main_port: 50591
      register: pinned

    - name: Write what the expressions gave
      ansible.builtin.copy:
        content: "{{{{ {{'kept': kept.results | map(attribute='msg') | list,
                        'pinned': pinned.results | map(attribute='msg') | list}} | to_json }}}}"
        dest: "{out}/results.json"
        mode: "0644"
"""

PREFLIGHT_TASKS = [
    "Map every collector to its server id",
    "Work out where secondaries push to",
    "Work out where the main pushes its replicas to",
    "Note that there is nowhere to replicate to (no secondary)",
    "Read the receiving side's authorized_keys as it is (missing is fine)",
    "Read the copy a handover that was cut off set aside (missing is fine)",
    "Read the pinned host keys as they are (missing is fine)",
    "Collect the push keys and pinned host keys the files already hold",
    "Refuse to drop the push key of a secondary outside the play (main)",
    "Refuse to drop the pinned host key of a secondary outside the play (main)",
    "Refuse to drop the main's push key on a secondary (main not in the play)",
    "Refuse to leave a secondary without the main's host key (main not in the play)",
]
PUSH_TASKS = [
    "Choose the hosts whose key this host pins",
    "Start from the pins the known_hosts files hold",
    "Take each host key read in this run",
    "Choose the hosts whose push key this host accepts",
    "Start from the push keys the authorized_keys files hold",
    "Take each push key read in this run",
    "Refuse to write authorized_keys without a key for every host that pushes here",
]


def role_tasks(file: str, names: list[str]) -> list[dict[str, Any]]:
    """The role's own tasks, by name, exactly as tasks/<file> has them."""
    tasks = {task["name"]: task for task in yaml.safe_load((ROLE / "tasks" / file).read_text())}
    return [tasks[name] for name in names]


def fleet_play(out: Path) -> list[dict[str, Any]]:
    """Preflight and push as the role runs them; each host's files under out/<host>/.

    The keys a run reads on each host in the play (its push key and host key) are given; the
    files are read back from out/<host>/ exactly as the role reads them on the host."""
    templates = [("authorized_keys.j2", "{{ _collector_authorized_keys_file }}"),
                 ("known_hosts.j2", "{{ _collector_known_hosts_file }}"),
                 ("server_settings.txt.j2", f"{out}/{HOST}/server_settings.txt")]
    return [{
        "name": "Run the role's partial-run tasks and render its files",
        "hosts": "collectors",
        "gather_facts": False,
        "vars_files": [f"{ROLE}/defaults/main.yml", f"{ROLE}/vars/main.yml"],
        "tasks": [
            {"name": "Know the hosts' Python without gathering facts",
             "ansible.builtin.set_fact": {"python": {"version": {"major": 3, "minor": 11}},
                                          "cacheable": True}},
            {"name": "No main moved in this run",
             "ansible.builtin.set_fact": {"__collector_former_mains": []}},
            *role_tasks("preflight.yml", PREFLIGHT_TASKS),
            {"name": "Read this host's push key and host key (given)",
             "ansible.builtin.set_fact": {
                 "__collector_push_pubkey": {"content": "{{ push_keys[inventory_hostname] }}"},
                 "__collector_host_key": {"content": "{{ host_keys[inventory_hostname] }}"}}},
            *role_tasks("push.yml", PUSH_TASKS),
            {"name": "Create this host's folder", "ansible.builtin.file": {
                "path": f"{out}/{HOST}", "state": "directory",
                "mode": "0755"}},
            *({"name": f"Render {src}", "ansible.builtin.template": {
                "src": f"{ROLE}/templates/{src}", "dest": dest, "mode": "0644"}}
              for src, dest in templates),
        ]}]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def run_playbook(folder: Path, play: Any, inventory: dict[str, Any], extra: dict[str, Any],
                 *args: str) -> subprocess.CompletedProcess[str]:
    (folder / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (folder / "play.yml").write_text(play if isinstance(play, str) else yaml.safe_dump(play))
    (folder / "extra.json").write_text(json.dumps(extra))
    return subprocess.run(
        [str(PLAYBOOK), "-i", str(folder / "hosts.yml"), "-e", f"@{folder / 'extra.json'}",
         str(folder / "play.yml"), *args],
        cwd=folder, capture_output=True, text=True, timeout=300,
        env={"PATH": f"{PLAYBOOK.parent}:/usr/bin:/bin", "HOME": str(folder),
             "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0"})


class Fleet:
    """A three-host fleet whose files live in one folder; `run` is one site.yml-like run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = folder / "hosts"
        self.inventory = json.loads(json.dumps(INVENTORY))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        extra = {
            "push_keys": {h: b64(f"ssh-ed25519 {k} collector@{h}\n") for h, k in PUSH_KEYS.items()},
            "host_keys": {h: b64(f"ssh-ed25519 {k} root@{h}\n") for h, k in HOST_KEYS.items()},
            "_collector_authorized_keys_file": f"{self.files}/{HOST}/authorized_keys",
            "_collector_known_hosts_file": f"{self.files}/{HOST}/known_hosts",
            "collector_osf_project": "abc12",
        }
        return run_playbook(self.folder, fleet_play(self.files), self.inventory, extra, *args)

    def converge(self, *args: str) -> None:
        result = self.run(*args)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    def read(self, host: str, name: str) -> str:
        return (self.files / host / name).read_text()

    def snapshot(self) -> dict[str, str]:
        """Every host's authorized_keys and known_hosts (its settings name this folder)."""
        return {str(path.relative_to(self.files)): path.read_text()
                for path in sorted(self.files.glob("*/*")) if path.name != "server_settings.txt"}


def key_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


# ---- the expressions -------------------------------------------------------------------------

Outputs = tuple[Path, dict[str, Any]]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    folder = tmp_path_factory.mktemp("partial_runs")
    inventory = {"collectors": {"children": {
        "main": {"hosts": {"collector1": None}},
        "secondary": {"hosts": {"collector2": None, "collector3": None}}}}}
    extra = {"key_cases": [texts for _, texts, _ in KEY_CASES],
             "pin_cases": [texts for _, texts, _, _ in PIN_CASES],
             "ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    result = run_playbook(folder, EXPRESSIONS_PLAY.format(role=ROLE, out=folder), inventory, extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder, dict(json.loads((folder / "results.json").read_text()))


@pytest.mark.parametrize("index", range(len(KEY_CASES)), ids=[c[0] for c in KEY_CASES])
def test_push_keys_are_read_back_from_any_line_shape(outputs: Outputs, index: int) -> None:
    assert outputs[1]["kept"][index] == KEY_CASES[index][2]


@pytest.mark.parametrize("index", range(len(PIN_CASES)), ids=[c[0] for c in PIN_CASES])
def test_pins_are_read_back_and_count_only_for_their_own_address(outputs: Outputs,
                                                                 index: int) -> None:
    pins, main_pinned = outputs[1]["pinned"][index]
    assert pins == PIN_CASES[index][2]
    assert main_pinned is PIN_CASES[index][3]


# ---- the fleet's files, full and partial runs --------------------------------------------------

@pytest.fixture(scope="module")
def converged(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """A fleet after its first full run, from nothing (no key line, no pin anywhere)."""
    fleet = Fleet(tmp_path_factory.mktemp("converged"))
    fleet.converge()
    return fleet


@pytest.fixture(scope="module")
def fleet(converged: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """A copy of it that the tests below run site.yml on again."""
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    shutil.copytree(converged.files, fleet.files)
    return fleet


def test_the_main_authorizes_each_secondary_for_its_incoming_folder(fleet: Fleet) -> None:
    assert key_lines(fleet.read("collector1", "authorized_keys")) == [LINE2, LINE3]


def replica_line(replica_dst: Path, main_id: str, public_key: str) -> str:
    """The main's line on another host, as `collector.transfer.receive` expects it:
    `collector receive` with one argument, the absolute replica folder; the key's comment
    replaced by the main's id.

    collector.send.authorized_keys_line renders `<folder>/<server_id>` for a secondary's line
    and names the key by that same server_id; the replica line names a folder that is no
    server's and the key by the main's id, so it is built from the function's own rendering of
    `<parent>/<name>` with the comment exchanged."""
    line = authorized_keys_line(replica_dst.parent, replica_dst.name, public_key)
    return line.rsplit(" ", 1)[0] + f" {main_id}"


@pytest.mark.parametrize("host", ["collector2", "collector3"])
def test_a_secondary_authorizes_the_mains_key_for_its_replica_folder_only(fleet: Fleet,
                                                                          host: str) -> None:
    lines = key_lines(fleet.read(host, "authorized_keys"))
    assert lines == [replica_line(REPLICA_DST, "collector1", f"ssh-ed25519 {KEY1} collector@x")]
    options, key = lines[0].split('" ', 1)
    assert key.split() == ["ssh-ed25519", KEY1, "collector1"]
    # The forced command is exactly what `collector receive` takes: one absolute folder.
    assert options.startswith('restrict,command="')
    forced = shlex.split(options.split('command="', 1)[1])
    assert forced[:2] == [str(DEFAULT_COLLECTOR_BIN), "receive"]
    parser = argparse.ArgumentParser()
    receive_command.add_arguments(parser)
    directory = parser.parse_args(forced[2:]).directory
    assert directory == REPLICA_DST and directory.is_absolute()


def test_the_main_pins_every_secondary_at_the_address_it_replicates_to(fleet: Fleet) -> None:
    assert key_lines(fleet.read("collector1", "known_hosts")) == [
        f"{PIN2} ssh-ed25519 {KEY3}", f"{PIN3} ssh-ed25519 {KEY1}"]
    for host in ("collector2", "collector3"):
        assert key_lines(fleet.read(host, "known_hosts")) == [f"{MAIN_PIN} ssh-ed25519 {HOST_KEY}"]


def settings_of(fleet: Fleet, host: str) -> Any:
    source = fleet.files / host / "server_settings.txt"
    return settings_from_mapping(parse_key_values(source.read_text(), source), source)


def test_the_rendered_settings_are_valid_and_name_the_replicas(fleet: Fleet) -> None:
    main = settings_of(fleet, "collector1")
    assert main.is_main
    assert main.replicas == (ReplicaTarget("collector2", "10.0.0.2", 2202),
                             ReplicaTarget("collector3", "replica3.example", 22))
    assert main.replica_dst == REPLICA_DST
    assert main.ssh_identity_file == Path("/etc/collector/ssh/id_ed25519")
    # (moved into the test's folder, like the authorized_keys file)
    assert main.ssh_known_hosts_file is not None
    assert main.ssh_known_hosts_file.parts[-2:] == ("collector1", "known_hosts")
    for host in ("collector2", "collector3"):
        secondary = settings_of(fleet, host)
        assert not secondary.is_main and secondary.replicas == ()
        assert secondary.replica_dst == REPLICA_DST
        assert (secondary.main_host, secondary.main_port) == ("127.0.0.1", 50591)
        assert "raw_retention_days=7" in (fleet.files / host / "server_settings.txt").read_text()


@pytest.mark.parametrize("limit", [None, "collector1", "collector2", "secondary"])
def test_runs_on_any_part_of_the_fleet_keep_every_file_byte_identical(fleet: Fleet,
                                                                      limit: str | None) -> None:
    before = fleet.snapshot()
    fleet.converge(*(["--limit", limit] if limit else []))
    assert fleet.snapshot() == before


def test_a_removed_secondary_leaves_no_line_pin_or_replica(tmp_path: Path,
                                                           converged: Fleet) -> None:
    fleet = Fleet(tmp_path)
    shutil.copytree(converged.files, fleet.files)
    del fleet.inventory["collectors"]["children"]["secondary"]["hosts"]["collector3"]
    fleet.converge()
    assert key_lines(fleet.read("collector1", "authorized_keys")) == [LINE2]
    assert key_lines(fleet.read("collector1", "known_hosts")) == [f"{PIN2} ssh-ed25519 {KEY3}"]
    assert settings_of(fleet, "collector1").replicas == (
        ReplicaTarget("collector2", "10.0.0.2", 2202),)
    del fleet.inventory["collectors"]["children"]["secondary"]["hosts"]["collector2"]
    fleet.converge()
    assert key_lines(fleet.read("collector1", "authorized_keys")) == []
    assert key_lines(fleet.read("collector1", "known_hosts")) == []
    assert "replicas=" not in fleet.read("collector1", "server_settings.txt")


@pytest.mark.parametrize(("limit", "missing", "message"), [
    ("collector2", "authorized_keys",
     "authorized_keys on collector2 has no line for the main collector1, not in this play: "
     "nothing was changed; run site.yml with collector1 included (its push key is read there)"),
    ("collector2", "known_hosts",
     "known_hosts on collector2 pins no host key for the main collector1 at [127.0.0.1]:50591, "
     "not in this play: nothing was changed; run site.yml with collector1 included"),
    ("collector1", "known_hosts",
     "known_hosts on collector1 pins no host key for collector2 at [10.0.0.2]:2202, "
     "collector3 at replica3.example, not in this play: nothing was changed; run site.yml with "
     "collector2, collector3 included (its host key is read there)"),
    ("collector1", "authorized_keys",
     "authorized_keys on collector1 has no line for collector2, collector3, not in this play: "
     "nothing was changed"),
])
def test_a_limited_run_with_nothing_to_keep_stops_before_any_change(
        tmp_path: Path, converged: Fleet, limit: str, missing: str, message: str) -> None:
    fleet = Fleet(tmp_path)
    shutil.copytree(converged.files, fleet.files)
    (fleet.files / limit / missing).write_text("#\n# Ansible managed\n#\n")
    before = fleet.snapshot()
    result = fleet.run("--limit", limit)
    assert result.returncode != 0
    assert message in " ".join((result.stdout + result.stderr).split()), result.stdout[-3000:]
    assert fleet.snapshot() == before
