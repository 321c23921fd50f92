"""Hosts destroyed for good (docs/replication.md): every captured line lives on two hosts
until it is published, and a survivor can be promoted.

These rows destroy hosts, so they run in a lab of their own (`d`, three hosts), one after the
other, each leaving the lab as the next needs it:

1. `main-destroyed`: the main's host is killed at once and its data disk image and root are
   deleted (`tests.lab.nspawn.destroy_host`) in the middle of an hour, never to come back.
   Before that: sha256 of every file of its vault and the ids of every published hour, and
   the fake OSF's files (bytes and version counts, read through its API as a client would).
   Then the operator's promotion: the inventory is rewritten without the dead host, the first
   secondary in `main`, and site.yml runs (it cannot touch the dead host: no address of it is
   left); the secondaries push (`collector send`), the new main runs its hourly cron entry
   (`process`, `upload`, `replicate`). Every hour published before the loss is compared.
2. `promote-then-old-main-returns`: the destroyed host's hardware comes back with an empty
   disk (a fresh root from the image, new host keys, a fresh data disk image, the same name and
   address) and joins as a secondary through site.yml; its chunks must reach the new main, and
   the new main's replication must give it every vault file, the main's own chunks and the
   ledger.
3. `main-destroyed-during-catch-up`: processing is held back while an hour fills and ends (the
   backlog), then the main's catch-up starts (its cron entry, with the current hour forced
   after the due ones) and the main is destroyed while `process` writes the backlog hour's
   outputs (seen on its data disk from this machine, so the moment is exact); the host that came
   back empty in row 2 is promoted (what replication gave it since is all it has of the main);
   the same comparisons as row 1.
4. `secondary-destroyed`: the lab is first brought back to three hosts (the host lost in row 3
   returns empty); then a secondary is destroyed. The fleet carries on: pushes and processing
   work, replication to the others works, the main's `collector status` is degraded only as
   the design says (not before a replica is two hours behind), `playbooks/status.yml` shows the
   dead host unreachable. Then it is removed from the inventory and site.yml runs: its key line
   in the main's authorized_keys and its pin in every known_hosts must be gone, and its
   incoming folder on the main too unless it still holds chunks (kept until retention; the
   note says how many, and they must have a second copy on another host).

Counting: each window counts the ids the fake API sent whole to a host that is still alive
(`Lab.gone_connections`): the promise is that nothing a surviving host captured is lost.

The lab's hours are real hours and a row lasts minutes. So that a row has hours that are over
(all their chunks closed and pushed, published, on OSF) without waiting for the clock, the
fleet is moved to a lab time zone of a fixed UTC offset (compiled with `zic`, as the clock
rows do) whose current hour is the one after the old zone's: every stream stops (closing its
chunk), the secondaries push, and the streams start again in the new zone, in the next hour.
Row 1 merges the old zone's hours before the move (they are complete: nothing can join them
any more), row 3 leaves its old hour unmerged (the backlog). The restart asks the fake API for
the last `backfill_minutes` again; the new hour's first merge drops what the previous hour's
last ten minutes hold (`collector.process.LOOKBACK_MINUTES`), so the move waits, when the old
hour is not that far yet, until a restart can no longer repeat an id of the old hour. The new
zone goes into the inventory too, so every site.yml run keeps it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from collector.fsutil import TEMP_MARK
from collector.layout import hour_of
from collector.process.plan import LOOKBACK_MINUTES
from tests.faults import measure
from tests.faults.boundaries import _closed_chunks, _playbook
from tests.faults.hostfaults import compile_zone
from tests.faults.scenarios import STREAM_UNIT, Lab, Scenario
from tests.faults.services import _osf_get, _osf_port
from tests.lab import nspawn
from tests.lab.fleet import OSF_PROJECT, SETTINGS, as_collector

LAB = "d"
HOSTS = 3
ZONEINFO = "/usr/share/zoneinfo"
ZONE_PREFIX = "Lab/Move"
# The minute of the new zone's hour the fleet restarts at: row 1 destroys the main a minute
# later, in the middle of that hour; row 3 destroys it during the catch-up a minute or two
# after its own move.
FIRST_MINUTE = 30
SECOND_MINUTE = 25
AUTHORIZED_KEYS = "/etc/ssh/authorized_keys/collector"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
CATCH_UP_LOG = "/var/tmp/faults-catch-up"  # on the main: `.log` and `.rc` of the catch-up
CATCH_UP_TIMEOUT = 300.0
# Output names: `<day>_<HH>_IDs.txt.xz` (and tweets, users); a temporary is `.<name>.tmp-<pid>`.
_IDS_FILE = re.compile(r"(\d{4}-\d\d-\d\d)_(\d\db?)_IDs\.txt\.xz")
_OUTPUT = re.compile(r"(\d{4}-\d\d-\d\d)_(\d\db?)_(IDs\.txt|tweets\.csv|users\.csv)\.xz")

_findings: dict[str, list[str]] = {}
_notes: dict[str, list[str]] = {}


def _problem(name: str, text: str) -> None:
    print(f"   PROBLEM: {text}", flush=True)
    _findings.setdefault(name, []).append(text)


def _note(name: str, text: str) -> None:
    print(f"   {text}", flush=True)
    _notes.setdefault(name, []).append(text)


@dataclass
class Shared:
    """What the rows of lab d hand each other."""

    # Hours a zone move closed for good, and when (their last chunks closed then).
    closed: dict[str, float] = field(default_factory=dict)
    destroyed_main: str = ""  # row 1's dead main (row 2 brings it back)
    returned: str = ""  # the host that came back empty (row 3 promotes it)
    moved_at: float = 0.0  # when the streams last started in a new zone
    # Per row, what was published just before its loss (checked again after the flush).
    before: dict[str, Published] = field(default_factory=dict)


_shared = Shared()


# ---- what was published --------------------------------------------------------------------

@dataclass(frozen=True)
class Published:
    """What the fleet had published at a moment: every regular file of the main's vault (its
    sha256, by `day/name`), the ids of every hour's IDs file and when that file was written,
    and every file on OSF (sha256 and version count, by `YYYY/mm/dd/name`)."""

    files: dict[str, str]
    ids: dict[str, frozenset[str]]
    osf: dict[str, tuple[str, int]]
    written: dict[str, float] = field(default_factory=dict)

    def complete(self, closed: Mapping[str, float]) -> set[str]:
        """The published hours that cannot have had a new chunk since: closed for good (a
        zone move) before their IDs file was written."""
        return {hour for hour, moment in closed.items()
                if hour in self.written and self.written[hour] >= moment}


# Run on the main: every regular file of the vault's day folders, no dot entries (the upload
# ledger, temporaries), its sha256, and the ids of each IDs file.
_VAULT_SCRIPT = r"""
import hashlib, json, lzma, os, re, sys
vault = sys.argv[1]
files, ids, written = {}, {}, {}
for day in sorted(os.listdir(vault)):
    folder = os.path.join(vault, day)
    if day.startswith('.') or os.path.islink(folder) or not os.path.isdir(folder):
        continue
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith('.') or os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, 'rb') as handle:
            data = handle.read()
        files[day + '/' + name] = hashlib.sha256(data).hexdigest()
        found = re.fullmatch(r'(\d{4}-\d\d-\d\d)_(\d\db?)_IDs\.txt\.xz', name)
        if found:
            hour = found.group(1) + 'T' + found.group(2)
            ids[hour] = lzma.decompress(data).decode().split()
            written[hour] = os.stat(path).st_mtime
print(json.dumps({'files': files, 'ids': ids, 'written': written}))
"""


def vault_state(lab: Lab, host: str) -> Published:
    """The host's vault (no OSF part)."""
    vault = lab.setting(host, "data_vault_dst")
    result = lab.run(host, f"python3 -c {shlex.quote(_VAULT_SCRIPT)} {shlex.quote(vault)}")
    data = json.loads(result.stdout)
    return Published(dict(data["files"]),
                     {hour: frozenset(ids) for hour, ids in data["ids"].items()}, {},
                     {hour: float(moment) for hour, moment in data["written"].items()})


def osf_state(lab: Lab) -> dict[str, tuple[str, int]]:
    """sha256 and version count of every file on the fake OSF, by `YYYY/mm/dd/name`, walked
    and downloaded through its API as a client would (`current_version` of the listing)."""
    found: dict[str, tuple[str, int]] = {}
    pending = [f"http://127.0.0.1:{_osf_port(lab)}/v2/nodes/{OSF_PROJECT}"
               "/files/osfstorage/"]
    while pending:
        url: str | None = pending.pop()
        while url:
            page = json.loads(_osf_get(lab, url))
            for item in page.get("data", []):
                attributes = item.get("attributes", {})
                if attributes.get("kind") == "folder":
                    pending.append(item["relationships"]["files"]["links"]["related"]["href"])
                else:
                    data = _osf_get(lab, item["links"]["download"])
                    found[attributes["materialized_path"].strip("/")] = (
                        hashlib.sha256(data).hexdigest(), int(attributes["current_version"]))
            url = page.get("links", {}).get("next")
    return found


def published(lab: Lab, host: str) -> Published:
    vault = vault_state(lab, host)
    return Published(vault.files, vault.ids, osf_state(lab), vault.written)


def osf_path(vault_path: str) -> str:
    """The OSF path of a vault file: `2026-12-02/x` is `2026/12/02/x`."""
    day, _, name = vault_path.partition("/")
    return f"{day.replace('-', '/')}/{name}"


def hour_of_file(vault_path: str) -> str:
    """`YYYY-mm-ddTHH` of an hour's output file (IDs, tweets, users), "" for other files."""
    found = _OUTPUT.fullmatch(vault_path.rpartition("/")[2])
    return f"{found.group(1)}T{found.group(2)}" if found else ""


def compare(before: Published, after: Published,
            complete: Iterable[str]) -> tuple[list[str], list[str]]:
    """What is wrong (findings) and worth saying (notes) about the outputs after a loss and a
    catch-up, against those published before it. `complete`: hours that can have had no new
    chunk since (a zone move closed them); each must be byte-identical in the vault, its IDs
    file on OSF without a new version. Every hour keeps at least its ids; every file on OSF
    before is still there, and an unchanged one has no new version; after the catch-up's
    upload, OSF holds each publishable file of the vault as it is."""
    done = set(complete)
    findings: list[str] = []
    notes: list[str] = []
    for hour, ids in sorted(before.ids.items()):
        if hour not in after.ids:
            findings.append(f"{hour}: its IDs file is gone")
        elif missing := ids - after.ids[hour]:
            findings.append(f"{hour}: {len(missing)} of its {len(ids)} published ids are gone "
                            f"(e.g. {min(missing)})")
        elif grown := after.ids[hour] - ids:
            notes.append(f"{hour} grew by {len(grown)} ids")
    identical = 0
    for path, digest in sorted(before.files.items()):
        hour = hour_of_file(path)
        if path not in after.files:
            findings.append(f"vault file {path} is gone")
        elif after.files[path] == digest:
            identical += 1 if hour in done else 0
        elif hour in done:
            findings.append(f"{path} of {hour}, complete before the loss, changed")
    if done & set(before.ids):
        notes.append(f"{identical} output files of the {len(done & set(before.ids))} complete "
                     "hours byte-identical")
    versions_kept = 0
    for path, (digest, versions) in sorted(before.osf.items()):
        if path not in after.osf:
            findings.append(f"OSF lost {path}")
            continue
        new_digest, new_versions = after.osf[path]
        if new_digest == digest and new_versions != versions:
            findings.append(f"OSF has a new version of the unchanged {path} "
                            f"({versions} -> {new_versions})")
        elif new_digest == digest:
            versions_kept += 1
        elif _IDS_FILE.fullmatch(path.rpartition("/")[2]):
            notes.append(f"OSF {path}: version {versions} -> {new_versions} (the hour grew)")
    notes.append(f"{versions_kept} of {len(before.osf)} OSF files unchanged, no new version")
    for path, digest in sorted(after.files.items()):
        publishable = _IDS_FILE.fullmatch(path.rpartition("/")[2]) or path.endswith("_report.txt")
        if publishable and after.osf.get(osf_path(path), ("", 0))[0] != digest:
            findings.append(f"OSF does not hold {path} as the vault does after the catch-up")
    return findings, notes


def fewer_ids(before: Published, ids_now: Mapping[str, frozenset[str]]) -> list[str]:
    """Hours published before a loss whose ids are not all in `ids_now` (the final outputs)."""
    return [f"{hour}: {len(ids - ids_now.get(hour, frozenset()))} ids published before the "
            "loss are not in the final outputs"
            for hour, ids in sorted(before.ids.items()) if ids - ids_now.get(hour, frozenset())]


# ---- moving the fleet to the next hour (a lab time zone) -------------------------------------

def next_hour_offset(now: float, offset: int, minute: int) -> int:
    """The UTC offset (seconds, whole minutes) whose local time at `now` is minute `minute` of
    the hour after the one `offset` gives at `now` (so its label follows the old one)."""
    local_minutes = (int(now) + offset) // 60
    next_hour = (local_minutes // 60 + 1) * 60
    return offset + (next_hour + minute - local_minutes) * 60


def restart_not_before(stopped_at: float, zone: ZoneInfo, backfill_minutes: int) -> float:
    """The earliest restart of streams stopped at `stopped_at` whose backfill repeats no id
    the next hour's merge would publish again: either the backfill starts after the stop, or
    it starts within the stopped hour's last LOOKBACK_MINUTES (which that merge reads)."""
    margin = 2.0
    clean = stopped_at + backfill_minutes * 60 + margin
    local = datetime.fromtimestamp(stopped_at, UTC).astimezone(zone)
    if local.minute < 60 - LOOKBACK_MINUTES:
        return clean
    lookback_start = stopped_at - (local.minute - (60 - LOOKBACK_MINUTES)) * 60 - local.second \
        - local.microsecond / 1e6
    return min(clean, lookback_start + backfill_minutes * 60 + margin)


def utc_offset(offset: int) -> str:
    """`+1:23` / `-0:45` for an offset in seconds (whole minutes), as zic reads it."""
    minutes = abs(offset) // 60
    return f"{'-' if offset < 0 else '+'}{minutes // 60}:{minutes % 60:02d}"


def zone_source(name: str, offset: int) -> str:
    """The zic source of a zone that keeps one UTC offset for ever."""
    return (f"# Lab zone of the fault suite (lab {LAB}): a fixed UTC offset\n"
            f"Zone {name} {utc_offset(offset).lstrip('+')} - LABD\n")


def _zone_of(lab: Lab) -> ZoneInfo:
    """The fleet's zone: a lab zone it was moved to, or the inventory's own."""
    return lab.zone or ZoneInfo(lab.setting(lab.main, "timezone"))


def _install_zones(lab: Lab, host: str) -> None:
    """Every lab zone of this lab on the host (the current one is what its settings name)."""
    for name, encoded in lab.state.get("zones", {}).items():
        target = shlex.quote(f"{ZONEINFO}/{name}")
        lab.run(host, f"mkdir -p $(dirname {target}) && echo {encoded} | base64 -d > "
                      f"{target}.new && mv -f {target}.new {target}")


def _labels_with_chunks(lab: Lab) -> set[str]:
    """Hour labels of the chunks the main holds (its own and every incoming folder)."""
    folders = " ".join(shlex.quote(lab.setting(lab.main, key))
                       for key in ("data_storage_dst", "incoming_dst"))
    listing = lab.run(lab.main, f"find {folders} -path '*/.*' -prune -o -name '*.jsonl' "
                      "-printf '%h\\n' | sort -u", check=False).stdout
    return {f"{parts[-2]}T{parts[-1]}" for parts in (line.split("/") for line in
                                                      listing.split()) if len(parts) > 2}


def move_to_next_hour(lab: Lab, name: str, minute: int, merge: bool) -> list[str]:
    """Move the fleet to a new lab zone whose current hour follows the old zone's (module
    docstring); returns the old zone's hours that hold chunks (closed for good now: recorded
    in `_shared.closed`). With `merge` they are processed (forced), uploaded and replicated
    before the move."""
    old = _zone_of(lab)
    backfill = int(lab.setting(lab.main, "backfill_minutes") or 0)
    for host in lab.hosts:
        lab.run(host, f"systemctl stop {STREAM_UNIT}")
    stopped_at = time.time()
    for host in lab.secondaries:
        result = lab.collector(host, "send")
        if result.returncode != 0:
            _problem(name, f"move: send on {host}: {result.stderr.strip()[-200:]}")
    recent = set(measure.hours_between(stopped_at - 7200, stopped_at, old))
    closed = sorted(_labels_with_chunks(lab) & recent)
    for hour in closed:  # an hour closed by an earlier move keeps that moment
        _shared.closed.setdefault(hour, stopped_at)
    if merge:
        for hour in closed:
            result = lab.collector(lab.main, f"process --hour {hour} --force")
            if result.returncode != 0:
                _problem(name, f"move: process {hour}: {result.stderr.strip()[-200:]}")
        for command in lab.hourly_commands():
            if command != "process" and (result := lab.collector(lab.main, command)).returncode:
                _problem(name, f"move: {command}: {result.stderr.strip()[-200:]}")
    waited = max(0.0, restart_not_before(stopped_at, old, backfill) - time.time())
    time.sleep(waited)
    zones = lab.state.setdefault("zones", {})
    zone_name = f"{ZONE_PREFIX}{len(zones) + 1}"
    now = time.time() + 3  # the streams start in a few seconds
    current = datetime.fromtimestamp(now, UTC).astimezone(old).utcoffset()
    offset = next_hour_offset(now, int(current.total_seconds()) if current else 0, minute)
    compiled = compile_zone(zone_name, zone_source(zone_name, offset))
    zone = ZoneInfo.from_file(io.BytesIO(compiled), key=zone_name)
    zones[zone_name] = base64.b64encode(compiled).decode()
    lab.state.setdefault("inventory_vars", {})["collector_timezone"] = zone_name
    lab.fleet.save_state(lab.state)
    lab.fleet.write_inventory(lab.state, lab.main, lab.fleet.inventory_hosts())
    for host in lab.hosts:
        _install_zones(lab, host)
        lab.run(host, f"sed -i 's|^timezone=.*|timezone={zone_name}|' {SETTINGS}")
    for host in lab.hosts:
        lab.run(host, f"systemctl start {STREAM_UNIT}")
    lab.zone = zone
    started = hour_of(datetime.now(UTC), zone)
    _shared.moved_at = time.time()
    _note(name, f"fleet moved to {zone_name} (UTC{utc_offset(offset)}), now in {started}; "
                f"closed {', '.join(closed) or 'no hour'}"
                f"{' (merged, uploaded, replicated)' if merge else ' (left unmerged)'}; the "
                f"move took {time.time() - stopped_at:.0f} s, {waited:.0f} s of it waiting "
                "out the backfill")
    if lab.wait_healthy(180) is None:
        _problem(name, f"fleet not healthy in {zone_name}: {lab.unhealthy}")
    return closed


# ---- identities and their traces -------------------------------------------------------------

def identity(lab: Lab, host: str) -> dict[str, str]:
    """The host's server id, its push key (what it authenticates with when it pushes: chunks
    as a secondary, replicas as the main) and its SSH host key, as `type base64`."""
    key_file = lab.setting(host, "ssh_identity_file")
    push = lab.run(host, f"cat {shlex.quote(key_file)}.pub", check=False).stdout.split()[:2] \
        if key_file else []
    host_key = lab.run(host, f"cat {HOST_KEY}", check=False).stdout.split()[:2]
    return {"server_id": lab.setting(host, "server_id") or host, "push_key": " ".join(push),
            "host_key": " ".join(host_key)}


def key_traces(texts: Mapping[str, str], who: Mapping[str, str]) -> list[str]:
    """Where a key of `who` (its push key, its host key) still appears, by file: `texts` maps
    `host:path` to that file's content."""
    found = []
    for where, text in sorted(texts.items()):
        for kind in ("push_key", "host_key"):
            key = who.get(kind, "").split()
            if len(key) == 2 and key[1] in text:
                found.append(f"{where} still holds {who['server_id']}'s {kind.replace('_', ' ')}")
    return found


def _trust_files(lab: Lab, hosts: Iterable[str]) -> dict[str, str]:
    """Every host's authorized_keys of the collector account and its pinned known_hosts."""
    texts = {}
    for host in hosts:
        for path in (AUTHORIZED_KEYS, lab.setting(host, "ssh_known_hosts_file")):
            if path:
                texts[f"{host}:{path}"] = lab.run(host, f"cat {shlex.quote(path)}",
                                                  check=False).stdout
    return texts


def _check_gone(lab: Lab, name: str, who: Mapping[str, str]) -> None:
    """No surviving host trusts the dead host any more (its keys are nowhere)."""
    if not who.get("push_key"):
        _note(name, f"{who['server_id']} had no push key to look for")
    traces = key_traces(_trust_files(lab, lab.hosts), who)
    for trace in traces:
        _problem(name, trace)
    if not traces:
        _note(name, f"no host trusts {who['server_id']}'s keys any more")


# ---- promotion and catching up ---------------------------------------------------------------

def promote(lab: Lab, name: str, dead: str, new_main: str) -> None:
    """The operator's promotion: the inventory without the dead host, `new_main` in `main`,
    site.yml. Raises if site.yml failed (nothing else of the row can work then)."""
    hosts = [new_main, *(host for host in lab.fleet.inventory_hosts()
                         if host not in (dead, new_main))]
    lab.fleet.write_inventory(lab.state, new_main, hosts)
    log = f"{name}-promote.log"
    started = time.monotonic()
    if not _playbook(lab, log):
        raise RuntimeError(f"site.yml promoting {new_main} failed (see {log})")
    lab.main = new_main
    recap = _recap_hosts((lab.fleet.lab_dir / log).read_text())
    if recap != set(hosts):
        _problem(name, f"site.yml played {sorted(recap)}, not {sorted(hosts)}")
    _note(name, f"promoted {new_main} (site.yml {time.monotonic() - started:.0f} s on "
                f"{', '.join(hosts)})")


def _recap_hosts(log: str) -> set[str]:
    """The hosts of an ansible-playbook log's PLAY RECAP."""
    recap = log.rpartition("PLAY RECAP")[2]
    return set(re.findall(r"^(\S+)\s+:\s+ok=", recap, flags=re.MULTILINE))


def catch_up(lab: Lab, name: str) -> None:
    """What the next hourly cron runs do: `send` on every secondary, then the main's entry."""
    for host in lab.secondaries:
        result = lab.collector(host, "send")
        if result.returncode != 0:
            _problem(name, f"send on {host}: {result.stderr.strip()[-200:]}")
    for command in lab.hourly_commands():
        started = time.monotonic()
        result = lab.collector(lab.main, command)
        last = (result.stderr.strip().splitlines() or [""])[-1]
        print(f"   {command} on {lab.main}: rc {result.returncode} in "
              f"{time.monotonic() - started:.1f} s: {last[-160:]}", flush=True)
        if result.returncode != 0:
            _problem(name, f"{command} on {lab.main}: {last[-200:]}")


def _compare(lab: Lab, name: str, before: Published) -> None:
    after = published(lab, lab.main)
    findings, notes = compare(before, after, before.complete(_shared.closed))
    for finding in findings:
        _problem(name, finding)
    if notes:
        _note(name, "; ".join(notes))


# ---- 1. the main destroyed in the middle of an hour ------------------------------------------

def _main_setup(lab: Lab) -> None:
    name = "main-destroyed"
    move_to_next_hour(lab, name, FIRST_MINUTE, merge=True)


def _main_inject(lab: Lab) -> None:
    name = "main-destroyed"
    dead = lab.main
    # Something of the hour exists only on the main: its own closed chunks since the move
    # (replication runs hourly) and the secondaries' latest push.
    lab.wait_for_closed_chunk([dead], after=_shared.moved_at)
    for host in lab.secondaries:
        lab.collector(host, "send")
    _shared.before[name] = before = published(lab, dead)
    who = identity(lab, dead)
    hour = hour_of(datetime.now(UTC), _zone_of(lab))
    own = _closed_chunks(lab, dead, lab.setting(dead, "data_storage_dst"))
    current = [chunk for chunk in own if f"_{hour.day}_{hour.hour}-" in chunk]
    lab.destroy(dead)
    _shared.destroyed_main = dead
    minute = datetime.now(UTC).astimezone(_zone_of(lab)).minute
    _note(name, f"{dead} destroyed at minute {minute} of {hour} with {len(current)} chunks of "
                f"its own of that hour; before: {len(before.ids)} hours published, "
                f"{len(before.files)} vault files, {len(before.osf)} files on OSF")
    _who[name] = who


_who: dict[str, dict[str, str]] = {}


def _main_recover(lab: Lab) -> None:
    name = "main-destroyed"
    dead = _shared.destroyed_main
    promote(lab, name, dead, sorted(lab.secondaries)[0])
    catch_up(lab, name)
    _compare(lab, name, _shared.before[name])
    _check_gone(lab, name, _who[name])
    _replica_leftovers(lab, name)


def _replica_leftovers(lab: Lab, name: str) -> None:
    """What `collector adopt` left in the new main's replica folder (regular files)."""
    replica = lab.setting(lab.main, "replica_dst")
    if not replica:
        _problem(name, f"{lab.main} has no replica_dst: nothing could be adopted")
        return
    left = lab.run(lab.main, f"find {shlex.quote(replica)} -type f | wc -l",
                   check=False).stdout.strip()
    _note(name, f"{left or '?'} files left in {lab.main}'s replica folder after adopt")


# ---- 2. the destroyed host comes back empty and joins as a secondary -------------------------

def _return_inject(lab: Lab) -> None:
    name = "promote-then-old-main-returns"
    host = _shared.destroyed_main or next(iter(lab.state.get("gone", {})), "")
    if not host:
        raise RuntimeError("no destroyed host to bring back")
    lab.recreate(host)
    _install_zones(lab, host)
    lab.fleet.write_inventory(lab.state, lab.main, [*lab.fleet.inventory_hosts(), host])
    if not _playbook(lab, f"{name}.log"):
        raise RuntimeError(f"site.yml with {host} back failed (see {name}.log)")
    _shared.returned = host
    _note(name, f"{host} back with an empty disk, joined by site.yml")


def _return_recover(lab: Lab) -> None:
    name = "promote-then-old-main-returns"
    host = _shared.returned
    server_id = lab.setting(host, "server_id") or host
    lab.wait_for_closed_chunk([host])
    own = _closed_chunks(lab, host, lab.setting(host, "data_storage_dst"))
    # What the main's replication can send: its own chunks closed before its hourly run.
    main_own = _closed_chunks(lab, lab.main, lab.setting(lab.main, "data_storage_dst"))
    catch_up(lab, name)
    on_main = _closed_chunks(lab, lab.main, f"{lab.setting(lab.main, 'incoming_dst')}/{server_id}")
    if missing := sorted(own - on_main):
        _problem(name, f"{len(missing)} of {host}'s {len(own)} chunks are not on the main "
                       f"(e.g. {missing[0]})")
    elif not own:
        _problem(name, f"{host} closed no chunk")
    _check_replica(lab, name, host, main_own)
    who = identity(lab, host)
    texts = _trust_files(lab, [lab.main])
    trusted = key_traces(texts, who)
    if not any("push key" in line and AUTHORIZED_KEYS in line for line in trusted):
        _problem(name, f"the main does not authorize {host}'s new push key")
    if not any("host key" in line and AUTHORIZED_KEYS not in line for line in trusted):
        _problem(name, f"the main does not pin {host}'s new host key")
    _note(name, f"{len(own & on_main)} chunks of {host} on the main")


def _check_replica(lab: Lab, name: str, host: str, own: set[str]) -> None:
    """After the main's replication: the host holds every vault file of the main as it is,
    every closed chunk of the main's own that closed before it (`own`), and the main's
    ledger."""
    replica = lab.setting(host, "replica_dst")
    if not replica:
        _problem(name, f"{host} has no replica_dst")
        return
    main_id = lab.setting(lab.main, "server_id") or lab.main
    main_files = vault_state(lab, lab.main).files
    copy = lab.run(host, f"cd {shlex.quote(replica)}/vault 2>/dev/null && "
                         "find . -type f ! -name '.*' -print0 | xargs -0 -r sha256sum",
                   check=False).stdout
    copied = {path.removeprefix("./"): digest for digest, path in
              (line.split(None, 1) for line in copy.splitlines() if line.strip())}
    differ = sorted(path for path, digest in main_files.items() if copied.get(path) != digest)
    if differ:
        _problem(name, f"{len(differ)} of the main's {len(main_files)} vault files are not on "
                       f"{host} as they are on the main (e.g. {differ[0]})")
    replicated = _closed_chunks(lab, host, f"{replica}/chunks/{main_id}")
    if missing := sorted(own - replicated):
        _problem(name, f"{len(missing)} of the main's {len(own)} own chunks are not on {host} "
                       f"(e.g. {missing[0]})")
    ledger = lab.setting(lab.main, "data_storage_dst") + "/.collector/process_ledger.json"
    digests = [lab.run(where, f"sha256sum {shlex.quote(path)}", check=False).stdout.split()[:1]
               for where, path in ((lab.main, ledger),
                                   (host, f"{replica}/state/process_ledger.json"))]
    if not digests[1] or digests[0] != digests[1]:
        _problem(name, f"{host}'s copy of the main's ledger is missing or differs")
    _note(name, f"{host} holds {len(copied)} vault files, {len(replicated)} chunks of the main "
                "and its ledger")


# ---- 3. the main destroyed while it works through a backlog ----------------------------------

def _catch_up_setup(lab: Lab) -> None:
    name = "main-destroyed-during-catch-up"
    closed = move_to_next_hour(lab, name, SECOND_MINUTE, merge=False)
    processing = lab.status(lab.main)[1].get("processing", {})
    # The old zone's last hour, now over and left unmerged.
    _backlog[:] = closed[-1:]
    if not processing.get("hours_waiting") or not closed:
        _problem(name, "no hour was due after the move: there is no backlog")
    else:
        _note(name, f"backlog: {processing.get('hours_waiting')} due hour(s) waiting, the "
                    f"oldest {processing.get('oldest_hour_waiting')}")


_backlog: list[str] = []


def caught_mid_run(names: Iterable[str], hour: str) -> str:
    """The name of a temporary output of `hour` (`YYYY-mm-ddTHH`) among a vault day folder's
    entries, "" if there is none: while it exists, `process` is writing that hour."""
    prefix = "." + hour.replace("T", "_") + "_"
    return next((entry for entry in names if entry.startswith(prefix) and TEMP_MARK in entry), "")


def _catch_up_inject(lab: Lab) -> None:
    name = "main-destroyed-during-catch-up"
    dead = lab.main
    if not _backlog:
        raise RuntimeError("no backlog hour")
    for host in lab.secondaries:
        lab.collector(host, "send")
    _shared.before[name] = before = published(lab, dead)
    _who[name] = identity(lab, dead)
    current = hour_of(datetime.now(UTC), _zone_of(lab))
    # The cron entry, with the current hour forced after the due ones.
    commands = [as_collector(command) if command != "process" else
                f"{as_collector('process')}; "
                f"{as_collector(f'process --hour {current} --force')}"
                for command in lab.hourly_commands()]
    script = f"( {'; '.join(commands)} ) > {CATCH_UP_LOG}.log 2>&1; echo $? > {CATCH_UP_LOG}.rc"
    record = lab.state["hosts"][dead]
    root = Path(record["root"])
    mount = nspawn.data_disk(root)[1]
    vault = mount / Path(lab.setting(dead, "data_vault_dst")).relative_to(nspawn.DATA_DIR)
    hour = _backlog[-1]
    folder = vault / hour.split("T")[0]
    rc_file = root / CATCH_UP_LOG.lstrip("/")
    rc_file = rc_file.with_name(rc_file.name + ".rc")
    rc_file.unlink(missing_ok=True)
    lab.run(dead, f"setsid sh -c {shlex.quote(script)} < /dev/null > /dev/null 2>&1 &")
    started = time.monotonic()
    caught = ""
    while time.monotonic() - started < CATCH_UP_TIMEOUT and not rc_file.exists():
        with contextlib.suppress(OSError):
            caught = caught_mid_run(os.listdir(folder), hour)
        if caught:
            break
        time.sleep(0.002)
    seconds = time.monotonic() - started
    entries = sorted(os.listdir(folder)) if folder.is_dir() else []
    lab.destroy(dead)
    _shared.destroyed_main = dead
    if caught:
        _note(name, f"{dead} destroyed {seconds:.1f} s into its catch-up, while process wrote "
                    f"{hour}'s {caught.split(TEMP_MARK)[0].lstrip('.')} "
                    f"({len(entries)} entries in {folder.name}/)")
    else:
        _problem(name, f"the catch-up {'ended' if rc_file.exists() else 'wrote nothing'} "
                       f"within {seconds:.0f} s: the main was not destroyed mid-run")
    _note(name, f"before: {len(before.ids)} hours published")


def _catch_up_recover(lab: Lab) -> None:
    name = "main-destroyed-during-catch-up"
    dead = _shared.destroyed_main
    new_main = (_shared.returned if _shared.returned in lab.secondaries
                else sorted(lab.secondaries)[0])
    promote(lab, name, dead, new_main)
    catch_up(lab, name)
    _compare(lab, name, _shared.before[name])
    ids = vault_state(lab, lab.main).ids
    for hour in _backlog:
        if not ids.get(hour):
            _problem(name, f"the backlog hour {hour} is not published after the catch-up")
    _check_gone(lab, name, _who[name])
    _replica_leftovers(lab, name)


# ---- 4. a secondary destroyed --------------------------------------------------------------

def _secondary_setup(lab: Lab) -> None:
    """Three hosts again first: a destroyed host comes back empty and joins."""
    name = "secondary-destroyed"
    gone = sorted(lab.state.get("gone", {}))
    if len(lab.hosts) >= HOSTS or not gone:
        return
    host = gone[0]
    lab.recreate(host)
    _install_zones(lab, host)
    lab.fleet.write_inventory(lab.state, lab.main, [*lab.fleet.inventory_hosts(), host])
    if not _playbook(lab, f"{name}-join.log"):
        _problem(name, f"site.yml with {host} back failed")
    catch_up(lab, name)
    _shared.returned = host
    _note(name, f"{host} back empty first (three hosts)")


def _secondary_inject(lab: Lab) -> None:
    name = "secondary-destroyed"
    choices = [host for host in sorted(lab.secondaries) if host != _shared.returned]
    victim = (choices or sorted(lab.secondaries))[0]
    who = identity(lab, victim)
    _who[name] = who
    lab.destroy(victim)
    _victim[:] = [victim]
    # The fleet carries on: the next hourly runs.
    lab.wait_for_unsent_chunks()
    for host in lab.secondaries:
        result = lab.collector(host, "send")
        if result.returncode != 0:
            _problem(name, f"send on {host} after the loss: {result.stderr.strip()[-200:]}")
    for command in lab.hourly_commands():
        result = lab.collector(lab.main, command)
        last = (result.stderr.strip().splitlines() or [""])[-1]
        if command == "replicate":
            if result.returncode == 0:
                _problem(name, f"replicate to the dead {victim} did not fail")
            else:
                # The message without the log line's time and logger, cut at its end.
                _note(name, f"replicate: rc {result.returncode}: "
                            f"{(last.partition(': ')[2] or last)[:160]}")
        elif result.returncode != 0:
            _problem(name, f"{command} on the main after the loss: {last[-200:]}")
    code, status = lab.status(lab.main)
    targets = status.get("replication", {}).get("targets", {})
    if code != 0:
        _problem(name, f"the main's status is {status.get('verdict')} right after the loss: "
                       f"{'; '.join(status.get('problems', []))[:200]}")
    dead = targets.get(who["server_id"], {})
    if not dead.get("last_error"):
        _problem(name, f"the main's status shows no failing replication to {victim}: "
                       f"{json.dumps(targets)[:200]}")
    _note(name, f"main's status right after: {status.get('verdict')}; replication " + "; ".join(
        f"{server}: {target.get('chunks_waiting')} waiting, "
        + (f"error {str(target.get('last_error'))[:80]}" if target.get("last_error")
           else f"last success {target.get('last_success_at')}")
        for server, target in sorted(targets.items())))
    _status_table(lab, name, victim)


_victim: list[str] = []


def status_rows(log: str) -> dict[str, list[str]]:
    """The fleet table `playbooks/status.yml` prints (its debug message), by host: the cells of
    each row (split where two or more spaces separate them)."""
    rows: dict[str, list[str]] = {}
    lines = log.rpartition('"msg": [')[2].splitlines()[1:]
    for line in lines:
        if line.strip() == "]":
            break
        found = re.fullmatch(r'\s*"(.*)",?\s*', line)
        cells = re.split(r"\s{2,}", found.group(1).strip()) if found else []
        if cells and cells[0] != "host":
            rows[cells[0]] = cells
    return rows


def _status_table(lab: Lab, name: str, victim: str) -> None:
    log = lab.fleet.lab_dir / f"{name}-status.log"
    with contextlib.suppress(RuntimeError):  # an unreachable host may make it exit non-zero
        lab.fleet.ansible_playbook("status.yml", log=log)
    rows = status_rows(log.read_text() if log.exists() else "")
    dead = rows.get(victim, [])
    if "unreachable" not in dead and "down" not in dead:
        _problem(name, f"status.yml does not show {victim} down: {dead or 'no row'}")
    for host in lab.hosts:
        if host not in rows:
            _problem(name, f"status.yml has no row for {host}")
    _note(name, "status.yml: " + "; ".join(" ".join(cells[:4]) for cells in rows.values()))


def _secondary_recover(lab: Lab) -> None:
    name = "secondary-destroyed"
    victim = _victim[0]
    who = _who[name]
    lab.fleet.write_inventory(lab.state, lab.main,
                              [host for host in lab.fleet.inventory_hosts() if host != victim])
    if not _playbook(lab, f"{name}.log"):
        raise RuntimeError(f"site.yml without {victim} failed")
    catch_up(lab, name)
    _check_gone(lab, name, who)
    server_id = who["server_id"]
    for key in ("servers", "replicas"):
        if re.search(rf"(^|[,@]){re.escape(server_id)}([,@:]|$)", lab.setting(lab.main, key)):
            _problem(name, f"the main's {key} still names {server_id}")
    folder = f"{lab.setting(lab.main, 'incoming_dst')}/{server_id}"
    exists = lab.run(lab.main, f"test -d {shlex.quote(folder)}", check=False).returncode == 0
    kept = _closed_chunks(lab, lab.main, folder) if exists else set()
    if exists and not kept:
        _problem(name, f"{folder} on the main is empty but still there")
    elif kept:
        copies = {host: _closed_chunks(lab, host, f"{lab.setting(host, 'replica_dst')}/chunks/"
                                                  f"{server_id}") for host in lab.secondaries}
        second = [host for host, names in copies.items() if kept <= names]
        _note(name, f"{folder} keeps {len(kept)} chunks until retention "
                    f"(raw_retention_days={lab.setting(lab.main, 'raw_retention_days')}); "
                    f"a second copy on {', '.join(second) or 'no host'}")
        if not second:
            _problem(name, f"the {len(kept)} chunks of the departed {server_id} have no second "
                           "copy on another host")
    else:
        _note(name, f"no incoming folder of {server_id} left on the main")
    leftovers = lab.run(lab.main, f"grep -rl -- {shlex.quote(server_id)} "
                        f"{shlex.quote(lab.setting(lab.main, 'data_storage_dst'))}/.collector "
                        "/etc/collector 2>/dev/null", check=False).stdout.split()
    if leftovers:
        _note(name, f"files on the main still naming {server_id}: "
                    + ", ".join(path.rpartition("/")[2] for path in leftovers[:6]))


# ---- the rows --------------------------------------------------------------------------------

def _verify(name: str) -> Callable[[Lab], str]:
    """The row's findings, and after the final flush: every hour published before its loss
    still has every id it had, in the last main's outputs."""
    def verify(lab: Lab) -> str:
        problems = list(_findings.pop(name, []))
        before = _shared.before.get(name)
        if before is not None:
            problems += fewer_ids(before, vault_state(lab, lab.main).ids)
        return "; ".join(problems)
    return verify


def _notes_of(name: str) -> Callable[[], str]:
    return lambda: "; ".join(_notes.pop(name, []))


def _row(name: str, description: str, inject: Callable[[Lab], None],
         recover: Callable[[Lab], None], setup: Callable[[Lab], None] | None = None,
         reconnects: Callable[[Lab], list[str]] = lambda lab: []) -> Scenario:
    def set_up(lab: Lab) -> None:
        _findings.pop(name, None)
        _notes.pop(name, None)
        if setup is not None:
            setup(lab)
    return Scenario(name, f"§7: {description}", inject, recover, setup=set_up,
                    verify=_verify(name), notes=_notes_of(name), reconnects=reconnects,
                    lab=LAB, hosts=HOSTS)


def scenarios() -> list[Scenario]:
    """The four rows, in the order they must run in their lab."""
    return [
        _row("main-destroyed", "the main's host killed and its disk deleted in the middle of "
             "an hour, never back; a secondary promoted (inventory, site.yml), pushes, the new "
             "main's hourly jobs; every hour published before compared (checksums, ids, OSF "
             "versions)", _main_inject, _main_recover, _main_setup),
        _row("promote-then-old-main-returns", "the destroyed host back with an empty disk "
             "(same name), joined as a secondary by site.yml: its chunks reach the new main, "
             "the main replicates its vault, chunks and ledger to it", _return_inject,
             _return_recover, reconnects=lambda lab: [_shared.returned]),
        _row("main-destroyed-during-catch-up", "the main destroyed while `process` works "
             "through a held-back hour (its outputs half written); the host that came back "
             "empty promoted; the same comparisons", _catch_up_inject, _catch_up_recover,
             _catch_up_setup),
        _row("secondary-destroyed", "a secondary destroyed for good: the fleet carries on "
             "(status.yml shows it down), then it leaves the inventory (site.yml): no key or "
             "pin of it left, its incoming folder gone or kept with a second copy",
             _secondary_inject, _secondary_recover, _secondary_setup),
    ]
