"""The fleet's source (SPEC section 8) as the role handles it, run by the real ansible-playbook
on this machine (local connection, nothing outside a temporary folder is touched).

The play applies a role built for the test from the collector role's own files: its defaults,
vars, argument specs and templates as they are, and a tasks/main.yml made of its source,
preflight and token tasks taken by name from tasks/*.yml, so inventory values override the role
defaults exactly as in site.yml, and `hostvars` shows what it shows there.

- A Bluesky fleet: each host streams from a different public Jetstream instance by default
  (its position in the sorted fleet), an explicit collector_jetstream_url is respected, two
  hosts on one instance get a warning, and no host needs or keeps an X token.
- A fleet whose hosts differ in source stops, `--limit` runs too, with one line naming every
  host's source, before anything is written.
- An X fleet renders server_settings.txt byte for byte as before the second source.
- Every rendered file is accepted by collector.settings.load_settings.
- playbooks/rotate_api_keys.yml ends cleanly on a Bluesky fleet: there is no key to rotate.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "collector"
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
HOSTS = ("collector1", "collector2", "collector3")
SITE = yaml.safe_load((ROOT / "playbooks" / "site.yml").read_text())[0]

US_EAST = "wss://jetstream.us-east.bsky.network/subscribe"
US_WEST = "wss://jetstream.us-west.bsky.network/subscribe"
US_EAST_1 = "wss://jetstream1.us-east.bsky.network/subscribe"
OWN = "wss://jetstream.example.org/subscribe"

PREFLIGHT_TASKS = [
    "Check that the fleet collects one source",
    "Assert a distinct bearer token per host",
    "Map every collector to its server id",
    "Work out every collector's Jetstream instance (bluesky)",
    "Stop unless every collector has a valid Jetstream endpoint (bluesky)",
    "Assert this host's Jetstream collections are valid (bluesky)",
    "Warn where collectors share a Jetstream instance (bluesky)",
    "Work out where secondaries push to",
    "Work out where the main pushes its replicas to",
    "Note that there is nowhere to replicate to (no secondary)",
]
TOKEN_TASKS = [
    "Write the API bearer token (source x)",
    "Remove the API bearer token where none is used (source bluesky)",
]
SHARED_WARNING = "stream from the same instance"

# server_settings.txt of an X fleet as the role rendered it before the second source (the
# template at commit d3a627d), for this test's inventory: a file that changes would restart
# every running X stream when the role is upgraded.
X_MAIN = """#
# Ansible managed
#
# Settings of the collector on collector1; see `collector --help`.
library_dst=/opt/collector/venv/lib/python3.11/site-packages
API_key_dst=/etc/collector/keys
OSF_key_dst=/etc/collector/keys
data_storage_dst=/srv/collector/data
username=collector
groupname=collector
server_id=collector1
role=main
servers=collector1,collector2,collector3
api_base_url=https://api.x.com
timezone=CET
tweet_fields=author_id,conversation_id,created_at,id,lang,text,referenced_tweets,source
user_fields=created_at,id,location,name,protected,public_metrics,username,verified
expansions=author_id
backfill_minutes=0
stall_seconds=300
read_timeout_seconds=20
notifications=True
email_credentials_dst=/etc/collector/keys
raw_retention_days=7
replica_dst=/srv/collector/replica
ssh_identity_file=/etc/collector/ssh/id_ed25519
ssh_known_hosts_file=/etc/collector/ssh/known_hosts
data_vault_dst=/srv/collector/vault
incoming_dst=/srv/collector/incoming
process_grace_minutes=10
xz_preset=6
max_chunk_mb=512
osf_enabled=True
osf_project=abc12
osf_storage=osfstorage
osf_base_url=https://api.osf.io/v2/
replicas=collector2@10.0.0.2:22,collector3@10.0.0.3:2203
"""
X_SECONDARY = """#
# Ansible managed
#
# Settings of the collector on collector2; see `collector --help`.
library_dst=/opt/collector/venv/lib/python3.11/site-packages
API_key_dst=/etc/collector/keys
data_storage_dst=/srv/collector/data
username=collector
groupname=collector
server_id=collector2
role=secondary
servers=collector1,collector2,collector3
api_base_url=https://api.x.com
timezone=CET
tweet_fields=author_id,conversation_id,created_at,id,lang,text,referenced_tweets,source
user_fields=created_at,id,location,name,protected,public_metrics,username,verified
expansions=author_id
backfill_minutes=0
stall_seconds=300
read_timeout_seconds=20
notifications=True
email_credentials_dst=/etc/collector/keys
raw_retention_days=7
replica_dst=/srv/collector/replica
ssh_identity_file=/etc/collector/ssh/id_ed25519
ssh_known_hosts_file=/etc/collector/ssh/known_hosts
osf_enabled=False
main_host=10.0.0.1
main_port=22
main_user=collector
"""


def role_tasks(file: str, names: list[str]) -> list[dict[str, Any]]:
    """The role's own tasks, by name, exactly as tasks/<file> has them."""
    tasks = {task["name"]: task for task in yaml.safe_load((ROLE / "tasks" / file).read_text())}
    return [tasks[name] for name in names]


def token_tasks(out: Path) -> list[dict[str, Any]]:
    """configure.yml's token tasks (their modules, conditions and modes as they are), writing to
    out/<host>/keys, owned by the user running the test, without the restart they notify."""
    owner = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    tasks = []
    for task in role_tasks("configure.yml", TOKEN_TASKS):
        task = {key: value for key, value in task.items() if key != "notify"}
        module = next(key for key in task if key.startswith("ansible.builtin."))
        if "owner" in task[module]:
            task[module] = {**task[module], "owner": owner, "group": group}
        task["vars"] = {"collector_keys_dir": f"{out}/{{{{ inventory_hostname }}}}/keys"}
        tasks.append(task)
    return tasks


def make_role(roles: Path, out: Path) -> None:
    """roles/collector for the test: the real defaults, vars, argument specs and templates; as
    tasks, the real source, preflight and token tasks, then the real settings template."""
    role = roles / "collector"
    (role / "tasks").mkdir(parents=True)
    for folder in ("defaults", "vars", "meta", "templates"):
        (role / folder).symlink_to(ROLE / folder)
    (role / "tasks" / "fleet_source.yml").symlink_to(ROLE / "tasks" / "fleet_source.yml")
    tasks = [
        {"name": "Know the hosts' Python without gathering facts",
         "ansible.builtin.set_fact": {"python": {"version": {"major": 3, "minor": 11}},
                                      "cacheable": True}},
        *role_tasks("preflight.yml", PREFLIGHT_TASKS),
        {"name": "Create this host's folder", "ansible.builtin.file": {
            "path": f"{out}/{{{{ inventory_hostname }}}}/keys", "state": "directory",
            "mode": "0755"}},
        *token_tasks(out),
        {"name": "Render server_settings.txt", "ansible.builtin.template": {
            "src": "server_settings.txt.j2",
            "dest": f"{out}/{{{{ inventory_hostname }}}}/server_settings.txt", "mode": "0644"}},
    ]
    (role / "tasks" / "main.yml").write_text(yaml.safe_dump(tasks, sort_keys=False))


def inventory(source: str, host_vars: dict[str, dict[str, Any]] | None = None, *,
              tokens: bool = True) -> dict[str, Any]:
    """Three hosts, collector1 the main; `source` for all of them (group_vars), `host_vars`
    per host on top."""
    hosts: dict[str, dict[str, Any]] = {
        "collector1": {"ansible_host": "10.0.0.1"},
        "collector2": {"ansible_host": "10.0.0.2"},
        "collector3": {"ansible_host": "10.0.0.3", "ansible_port": 2203}}
    for host in HOSTS:
        if tokens:
            hosts[host]["collector_bearer_token"] = f"token-of-{host}"
        hosts[host].update((host_vars or {}).get(host, {}))
    return {"collectors": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "ansible_become": False, "collector_source": source,
                 "collector_osf_project": "abc12"},
        "children": {"main": {"hosts": {"collector1": hosts["collector1"]}},
                     "secondary": {"hosts": {"collector2": hosts["collector2"],
                                             "collector3": hosts["collector3"]}}}}}


def run(folder: Path, playbook: Path, hosts: dict[str, Any],
        *args: str) -> subprocess.CompletedProcess[str]:
    (folder / "hosts.yml").write_text(yaml.safe_dump(hosts))
    return subprocess.run(
        [str(PLAYBOOK), "-i", str(folder / "hosts.yml"), str(playbook), *args],
        cwd=folder, capture_output=True, text=True, timeout=300,
        env={"PATH": f"{PLAYBOOK.parent}:/usr/bin:/bin", "HOME": str(folder),
             "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0",
             "ANSIBLE_ROLES_PATH": str(folder / "roles")})


class Fleet:
    """A three-host fleet whose files live in one folder; `run` applies the test role."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.out = folder / "hosts"
        make_role(folder / "roles", self.out)
        (folder / "play.yml").write_text(yaml.safe_dump([{
            "name": "Apply the role's source, preflight and token tasks and render the settings",
            "hosts": "collectors", "gather_facts": False, "roles": ["collector"],
            # As site.yml: one host's failed preflight stops every host.
            "any_errors_fatal": SITE["any_errors_fatal"]}]))

    def run(self, hosts: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
        return run(self.folder, self.folder / "play.yml", hosts, *args)

    def converge(self, hosts: dict[str, Any], *args: str) -> str:
        result = self.run(hosts, *args)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        return result.stdout

    def settings_text(self, host: str) -> str:
        return (self.out / host / "server_settings.txt").read_text()

    def keys(self, host: str) -> list[str]:
        return sorted(path.name for path in (self.out / host / "keys").iterdir())


def one_line(text: str) -> str:
    return " ".join(text.split())


def keys_of(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


def test_each_bluesky_host_streams_from_a_different_instance_without_a_token(fleet: Fleet) -> None:
    # A token file left from an X fleet goes; no host needs collector_bearer_token.
    (fleet.out / "collector2" / "keys").mkdir(parents=True)
    (fleet.out / "collector2" / "keys" / "twitter_api.txt").write_text("bearer_token=old\n")
    stdout = fleet.converge(inventory("bluesky", tokens=False))
    assert SHARED_WARNING not in stdout
    urls = {}
    for host in HOSTS:
        settings = load_settings(fleet.out / host / "server_settings.txt")
        assert settings.source == "bluesky"
        assert settings.API_key_dst is None
        assert settings.jetstream_collections == ("app.bsky.feed.post",)
        assert settings.jetstream_compress is True
        assert settings.deletion_window_days == 7
        urls[host] = settings.jetstream_url
        raw = keys_of(fleet.settings_text(host))
        assert not {"API_key_dst", "api_base_url", "tweet_fields", "user_fields", "expansions",
                    "backfill_minutes"} & set(raw)
        assert fleet.keys(host) == []
    # Position in the sorted fleet: the first three public instances, in the defaults' order.
    assert urls == {"collector1": US_EAST, "collector2": US_WEST, "collector3": US_EAST_1}
    assert load_settings(fleet.out / "collector1" / "server_settings.txt").is_main


def test_an_explicit_instance_is_respected_and_the_rest_keep_theirs(fleet: Fleet) -> None:
    # collector3: its own instance, and collections as a comma string rather than a list.
    fleet.converge(inventory("bluesky", {"collector3": {
        "collector_jetstream_url": OWN,
        "collector_jetstream_collections": "app.bsky.feed.*, app.bsky.graph.follow",
        "collector_jetstream_compress": False, "collector_deletion_window_days": 30}}))
    one = load_settings(fleet.out / "collector1" / "server_settings.txt")
    three = load_settings(fleet.out / "collector3" / "server_settings.txt")
    assert one.jetstream_url == US_EAST
    assert load_settings(fleet.out / "collector2" / "server_settings.txt").jetstream_url == US_WEST
    assert three.jetstream_url == OWN
    assert three.jetstream_collections == ("app.bsky.feed.*", "app.bsky.graph.follow")
    assert three.jetstream_compress is False and three.deletion_window_days == 30


def test_the_instance_list_wraps_around_and_can_be_replaced(fleet: Fleet) -> None:
    two = ["ws://127.0.0.1:6008/subscribe", "ws://127.0.0.1:6009/subscribe"]
    hosts = inventory("bluesky")
    hosts["collectors"]["vars"]["collector_jetstream_instances"] = two
    stdout = fleet.converge(hosts)
    urls = {host: load_settings(fleet.out / host / "server_settings.txt").jetstream_url
            for host in HOSTS}
    assert urls == {"collector1": two[0], "collector2": two[1], "collector3": two[0]}
    assert (f"WARNING: collector1 and collector3 stream from the same instance {two[0]}: an "
            "outage of that instance would stop all of them at once") in one_line(stdout)


def test_two_hosts_given_the_same_instance_is_allowed_with_a_warning(fleet: Fleet) -> None:
    stdout = fleet.converge(inventory("bluesky", {
        "collector2": {"collector_jetstream_url": OWN},
        "collector3": {"collector_jetstream_url": OWN}}))
    assert (f"WARNING: collector2 and collector3 stream from the same instance {OWN}: an outage "
            "of that instance would stop all of them at once") in one_line(stdout)
    for host in ("collector2", "collector3"):
        assert load_settings(fleet.out / host / "server_settings.txt").jetstream_url == OWN


@pytest.mark.parametrize(("limit", "sources"), [
    (None, {"collector2": "bluesky"}),
    ("collector1", {"collector2": "bluesky"}),
    ("collector3", {"collector1": "bluesky", "collector2": "bluesky"}),
])
def test_a_fleet_of_mixed_sources_stops_before_anything_is_written(
        fleet: Fleet, limit: str | None, sources: dict[str, str]) -> None:
    hosts = inventory("x", {host: {"collector_source": source}
                           for host, source in sources.items()})
    result = fleet.run(hosts, *(["--limit", limit] if limit else []))
    assert result.returncode != 0
    listed = ", ".join(f"{host}={sources.get(host, 'x')}" for host in HOSTS)
    assert (f"The fleet collects one source, but collector_source differs: {listed}; nothing "
            "was changed; set one collector_source for every host of group 'collectors' "
            "(its group_vars)") in one_line(result.stdout), result.stdout[-3000:]
    assert not fleet.out.exists()


def test_the_role_default_counts_for_a_host_that_sets_no_source(fleet: Fleet) -> None:
    hosts = inventory("bluesky")
    del hosts["collectors"]["vars"]["collector_source"]
    hosts["collectors"]["children"]["main"]["hosts"]["collector1"]["collector_source"] = "bluesky"
    result = fleet.run(hosts, "--limit", "collector1")
    assert result.returncode != 0
    assert ("collector_source differs: collector1=bluesky, collector2=x, collector3=x"
            in one_line(result.stdout))


@pytest.mark.parametrize(("host_vars", "message"), [
    ({"collector2": {"collector_jetstream_url": "https://jetstream.example.org/subscribe"}},
     "collector2: 'https://jetstream.example.org/subscribe': collector_jetstream_url (or the "
     "host's entry of collector_jetstream_instances) must be a ws:// or wss:// Jetstream "
     "/subscribe URL without a query or credentials; nothing was changed"),
    ({"collector2": {"collector_jetstream_url": "wss://me:hunter2@jetstream.example.org/subscribe"}},
     "collector2: a URL with user:password@ (not shown): collector_jetstream_url"),
    ({"collector3": {"collector_jetstream_url": f"{OWN}?wantedCollections=app.bsky.feed.post"}},
     f"collector3: '{OWN}?wantedCollections=app.bsky.feed.post': collector_jetstream_url"),
    ({"collector1": {"collector_jetstream_collections": ["app.bsky.feed.post", "posts"]}},
     "collector_jetstream_collections on collector1 must list 1 to 100 collection NSIDs or "
     "prefixes such as app.bsky.feed.post or app.bsky.feed.* (it has 2; not such a name: posts)"),
    ({"collector2": {"collector_jetstream_collections": [f"app.bsky.c{n}" for n in range(101)]}},
     "collector_jetstream_collections on collector2 must list 1 to 100 collection NSIDs"),
])
def test_a_bad_endpoint_or_collection_list_stops_the_run(
        fleet: Fleet, host_vars: dict[str, dict[str, Any]], message: str) -> None:
    result = fleet.run(inventory("bluesky", host_vars))
    assert result.returncode != 0
    assert message in one_line(result.stdout), result.stdout[-3000:]
    assert "hunter2" not in result.stdout + result.stderr
    assert not (fleet.out / "collector1" / "server_settings.txt").exists()


def test_an_x_fleet_renders_as_before_and_keeps_its_tokens(fleet: Fleet) -> None:
    fleet.converge(inventory("x"))
    assert fleet.settings_text("collector1") == X_MAIN
    assert fleet.settings_text("collector2") == X_SECONDARY
    for host in HOSTS:
        settings = load_settings(fleet.out / host / "server_settings.txt")
        assert settings.source == "x"
        assert fleet.keys(host) == ["twitter_api.txt"]
        token = fleet.out / host / "keys" / "twitter_api.txt"
        assert token.read_text().splitlines()[-1] == f"bearer_token=token-of-{host}"
        assert token.stat().st_mode & 0o777 == 0o640


def test_an_x_fleet_still_needs_a_token_per_host(fleet: Fleet) -> None:
    result = fleet.run(inventory("x", tokens=False))
    assert result.returncode != 0
    assert "Every collector needs its own non-empty collector_bearer_token" in result.stdout
    assert "token-of-" not in result.stdout + result.stderr


def rotate(folder: Path, hosts: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    (folder / "roles").mkdir()
    (folder / "roles" / "collector").symlink_to(ROLE)
    return run(folder, ROOT / "playbooks" / "rotate_api_keys.yml", hosts, *args)


def test_rotating_the_keys_of_a_bluesky_fleet_ends_cleanly(tmp_path: Path) -> None:
    result = rotate(tmp_path, inventory("bluesky", tokens=False))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    text = one_line(result.stdout)
    for host in HOSTS:
        assert (f"{host} collects Bluesky's Jetstream (collector_source=bluesky), which needs "
                "no API key: nothing to rotate, nothing was changed") in text
    recap = [line.split() for line in result.stdout.splitlines() if " : ok=" in line]
    assert len(recap) == 3 and all("changed=0" in line and "failed=0" in line for line in recap)


def test_rotating_the_keys_of_an_x_fleet_still_writes_each_token(tmp_path: Path) -> None:
    """In check mode (nothing is written, no stream restarts): past the one-source check,
    every host's token task runs, and no token shows, even with --diff."""
    hosts = inventory("x")
    hosts["collectors"]["vars"].update(
        collector_keys_dir=f"{tmp_path}/{{{{ inventory_hostname }}}}/keys",
        collector_group=grp.getgrgid(os.getgid()).gr_name)
    result = rotate(tmp_path, hosts, "--check", "--diff")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert one_line(result.stdout).count("TASK [collector : Write the new API bearer token]") == 3
    assert "changed: [collector3]" in result.stdout
    assert "nothing to rotate" not in result.stdout
    assert "token-of-" not in result.stdout + result.stderr
    assert not any(tmp_path.glob("collector*/keys"))


def test_rotating_the_keys_of_a_mixed_fleet_stops_with_the_sources(tmp_path: Path) -> None:
    result = rotate(tmp_path, inventory("x", {"collector3": {"collector_source": "bluesky"}}))
    assert result.returncode != 0
    assert ("collector_source differs: collector1=x, collector2=x, collector3=bluesky"
            in one_line(result.stdout))
    assert "token-of-" not in result.stdout + result.stderr


def test_the_inventory_example_of_a_bluesky_fleet_is_one_source(tmp_path: Path) -> None:
    example = ROOT / "inventory" / "example" / "bluesky-three-servers"
    result = subprocess.run(
        [str(PLAYBOOK.parent / "ansible-inventory"), "-i", str(example), "--list"],
        capture_output=True, text=True, timeout=120,
        env={"PATH": f"{PLAYBOOK.parent}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    hostvars = listed["_meta"]["hostvars"]
    assert sorted(hostvars) == ["collector-a", "collector-b", "collector-c"]
    assert {hostvars[host]["collector_source"] for host in hostvars} == {"bluesky"}
    assert not any("collector_bearer_token" in hostvars[host] for host in hostvars)
