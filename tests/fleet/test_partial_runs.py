"""`site.yml --limit` keeps what belongs to hosts outside the play: the role's own expressions
(vars/main.yml) and its authorized_keys/known_hosts templates, run by the real ansible-playbook
on this machine (local connection, nothing outside a temporary folder is touched).

- A main's authorized_keys, read back and rendered again, is byte-identical: the key of every
  line is matched by its last field (the server id), whatever the options and the forced
  command look like, so `--limit <main>` keeps the line of every secondary outside the play.
- A secondary's known_hosts counts as pinned only with a key for the main's own address.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.send import authorized_keys_line

ROLE = Path(__file__).resolve().parents[2] / "roles" / "collector"
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

KEY2 = "AAAAC3NzaC1lZDI1NTE5AAAAIBweTd5kSbR3SH63J9wclGojOqQvdFZz/ZoZKYxn8a+V"
KEY3 = "AAAAC3NzaC1lZDI1NTE5AAAAIJrFS0Xg+Ek41OtTaeTCamuZYOBV52bZ1KjlXTMSLZa8"
KEY4 = ("AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5"
        "YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg=")
# Lines as the role wrote them before `collector receive` (existing fleets), and as it writes
# them now: the same text as collector.send.authorized_keys_line.
RRSYNC = 'restrict,command="/usr/bin/rrsync -wo /srv/collector/incoming/'
OLD2 = f'{RRSYNC}collector2" ssh-ed25519 {KEY2} collector2'
OLD3 = f'{RRSYNC}collector3" ssh-ed25519 {KEY3} collector3'
INCOMING = Path("/srv/collector/incoming")
LINE2 = authorized_keys_line(INCOMING, "collector2", f"ssh-ed25519 {KEY2} collector2")
LINE3 = authorized_keys_line(INCOMING, "collector3", f"ssh-ed25519 {KEY3} collector3")
KEYS23 = {"collector2": f"ssh-ed25519 {KEY2}", "collector3": f"ssh-ed25519 {KEY3}"}
HOST_KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIJ499mWeS3BBBoVwiAELHKqkUwqu/4HZnHRnZYEXKlxt"

# What `--limit` must read back, in the shapes an authorized_keys file may take (hand edits,
# another forced command, CRLF, tabs, comments): server id -> "type base64".
KEY_CASES: list[tuple[str, list[str], dict[str, str]]] = [
    ("rrsync lines", [
        f"#\n# Ansible managed\n#\n# One line per secondary\n{OLD2}\n{OLD3}\n"], KEYS23),
    ("collector receive lines", [f"{LINE2}\n{LINE3}\n"], KEYS23),
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

PIN_CASES: list[tuple[str, str, bool]] = [
    ("pinned for the main's address",
     f"#\n# Ansible managed\n#\n[127.0.0.1]:50591 ssh-ed25519 {HOST_KEY}\n", True),
    ("pinned for another port only", f"[127.0.0.1]:22 ssh-ed25519 {HOST_KEY}\n", False),
    ("a longer port that starts the same", f"[127.0.0.1]:505910 ssh-ed25519 {HOST_KEY}\n", False),
    ("blanked by an earlier run (header only)", "#\n# Ansible managed\n#\n", False),
    ("missing", "", False),
]

PLAY = """
- name: Evaluate the role's partial-run expressions and render its templates
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

    - name: Decide for each case whether the main's host key is pinned
      ansible.builtin.debug:
        msg: "{{{{ _collector_main_key_pinned_in_text }}}}"
      loop: "{{{{ pin_cases }}}}"
      vars:
        __collector_known_hosts_text: "{{{{ item }}}}"
        __collector_main_host: 127.0.0.1
        __collector_main_port: 50591
      register: pinned

    - name: Render authorized_keys as the role does
      ansible.builtin.template:
        src: {role}/templates/authorized_keys.j2
        dest: "{out}/authorized_keys.first"
        mode: "0644"
      vars:
        __collector_server_ids: {{collector2: collector2, collector3: collector3}}
        __collector_push_keys: "{{{{ first_keys }}}}"

    - name: Render it again from the keys read back from the first one (a --limit run)
      ansible.builtin.template:
        src: {role}/templates/authorized_keys.j2
        dest: "{out}/authorized_keys.again"
        mode: "0644"
      vars:
        __collector_server_ids: {{collector2: collector2, collector3: collector3}}
        __collector_push_keys: "{{{{ _collector_push_keys_in_texts }}}}"
        __collector_authorized_keys_texts:
          - "{{{{ lookup('ansible.builtin.file', '{out}/authorized_keys.first', rstrip=false) }}}}"

    - name: Write what the expressions gave
      ansible.builtin.copy:
        content: "{{{{ {{'kept': kept.results | map(attribute='msg') | list,
                        'pinned': pinned.results | map(attribute='msg') | list}} | to_json }}}}"
        dest: "{out}/results.json"
        mode: "0644"
"""


def run_role_expressions(tmp_path: Path) -> dict[str, Any]:
    inventory = {"collectors": {"children": {
        "main": {"hosts": {"collector1": None}},
        "secondary": {"hosts": {"collector2": None, "collector3": None}}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(PLAY.format(role=ROLE, out=tmp_path))
    extra = {"key_cases": [texts for _, texts, _ in KEY_CASES],
             "pin_cases": [text for _, text, _ in PIN_CASES],
             "first_keys": KEYS23,
             "ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    result = subprocess.run(
        [str(PLAYBOOK), "-i", str(tmp_path / "hosts.yml"), "-e", f"@{tmp_path / 'extra.json'}",
         str(tmp_path / "play.yml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PATH": f"{PLAYBOOK.parent}:/usr/bin:/bin", "HOME": str(tmp_path),
             "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return dict(json.loads((tmp_path / "results.json").read_text()))


Outputs = tuple[Path, dict[str, Any]]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    folder = tmp_path_factory.mktemp("partial_runs")
    return folder, run_role_expressions(folder)


@pytest.mark.parametrize("index", range(len(KEY_CASES)), ids=[c[0] for c in KEY_CASES])
def test_push_keys_are_read_back_from_any_line_shape(outputs: Outputs, index: int) -> None:
    assert outputs[1]["kept"][index] == KEY_CASES[index][2]


@pytest.mark.parametrize("index", range(len(PIN_CASES)), ids=[c[0] for c in PIN_CASES])
def test_a_pin_counts_only_for_the_mains_address(outputs: Outputs, index: int) -> None:
    assert outputs[1]["pinned"][index] is PIN_CASES[index][2]


def test_authorized_keys_read_back_renders_byte_identical(outputs: Outputs) -> None:
    folder = outputs[0]
    first = (folder / "authorized_keys.first").read_bytes()
    assert (folder / "authorized_keys.again").read_bytes() == first
    lines = [line for line in first.decode().splitlines() if line and not line.startswith("#")]
    assert lines == [LINE2, LINE3]
