"""Trust boundaries of the reliability campaign: attacks from outside, partial Ansible runs,
real power cuts and a second stream (docs/replication.md).

Every attack is made the way an outsider would, never through the role's own code:

* `hostile-*`: on a secondary, as its collector account, with its real key
  (`ssh_identity_file`) and pinned known_hosts, plain `rsync` pushes to the main what a chunk
  never is: a FIFO and a symlink to `/dev/zero` named like chunks, a symlink leading out of
  the incoming folder followed by a file through it, a chunk-named file larger than any real
  chunk. The main's next `process` (bounded by `timeout`, so a hang is a failed row, not a
  hung suite) must finish, quarantine the entry and publish the hour's real chunks; for the
  escape, a checksummed listing of the vault, the other incoming folders, /etc/collector and
  /etc/ssh is the same before and after, and no pushed file exists anywhere outside the
  secondary's folder.
* `limit-*`: plain `ansible-playbook site.yml --limit <one host>`; what belongs to the hosts
  outside the play (the main's authorized keys, a secondary's pinned host key) is byte for
  byte what it was, and the next pushes work.
* `swap-limited-to-former-main`, `swap-new-main-unreachable`: the inventory moves the main,
  then site.yml runs limited to the former main, or with the new main unreachable (its sshd
  stopped and every open session killed, Ansible's persistent ones included); the former
  main's incoming chunks and vault must be untouched (checksummed listing); the full run
  afterwards completes the swap.
* `power-cut-*`: `Lab.power_off` is a real cut (the host's data disk loses what the kernel had
  not written back, `tests.lab.nspawn.cut_data_disk`). Right after a secondary's `send`
  deleted its chunks, the main loses power: every chunk the secondary deleted must be on the
  main after the boot. A secondary loses power in the middle of a minute: its open chunk's
  synced lines survive, the rest the other hosts hold. Each cut also drops a canary file
  written without fsync just before it; the row's note says whether the cut lost it.
* `second-stream-started`: `collector stream` run by hand beside the service must refuse with
  one line and leave the service's open chunks alone.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from collector.layout import hour_label
from tests.faults.scenarios import Lab, Scenario
from tests.lab import nspawn
from tests.lab.fleet import as_collector

ZONE = ZoneInfo("CET")  # the lab's inventory keeps the default timezone
DATA_DIR = "/srv/collector"
INCOMING = f"{DATA_DIR}/incoming"
VAULT = f"{DATA_DIR}/vault"
QUARANTINE = f"{INCOMING}/.quarantine"
AUTHORIZED_KEYS = "/etc/ssh/authorized_keys/collector"
PROCESS_TIMEOUT = 120  # seconds; a real hour of the lab is processed in a few
CANARY = f"{DATA_DIR}/.power-cut-canary"
# Larger than any real chunk: the main's limit (collector.settings) plus a little.
OVERSIZE_BYTES = (512 << 20) + (1 << 20)

# Per scenario, what a check found that the counts cannot show (read by verify).
_findings: dict[str, list[str]] = {}
_notes: dict[str, list[str]] = {}


def _problem(name: str, text: str) -> None:
    print(f"   PROBLEM: {text}", flush=True)
    _findings.setdefault(name, []).append(text)


def _note(name: str, text: str) -> None:
    print(f"   {text}", flush=True)
    _notes.setdefault(name, []).append(text)


def _verify(name: str) -> Callable[[Lab], str]:
    def verify(_: Lab) -> str:
        return "; ".join(_findings.pop(name, []))
    return verify


def _notes_of(name: str) -> Callable[[], str]:
    return lambda: "; ".join(_notes.pop(name, []))


# ---- pushing from a secondary as an attacker holding its key ---------------------------------

def _rsync_as_secondary(lab: Lab, host: str, prepare: str, rsync_args: str) -> int:
    """Run `prepare` in a fresh folder on `host`, then plain rsync with the host's own push key
    to the main as the collector account; returns rsync's exit code. `{remote}` in
    `rsync_args` is the main's `user@host`."""
    ssh = (f"ssh -p {lab.setting(host, 'main_port')} -i {lab.setting(host, 'ssh_identity_file')}"
           f" -o BatchMode=yes -o StrictHostKeyChecking=yes"
           f" -o UserKnownHostsFile={lab.setting(host, 'ssh_known_hosts_file')}")
    remote = f"{lab.setting(host, 'main_user') or 'collector'}@{lab.setting(host, 'main_host')}"
    script = (f"work=$(mktemp -d) && cd $work && {prepare} && chown -R collector $work && "
              f"runuser -u collector -- rsync -e {shlex.quote(ssh)} "
              f"{rsync_args.format(remote=remote)}; rc=$?; cd /; rm -rf $work; exit $rc")
    result = lab.run(host, f"bash -c {shlex.quote(script)}", check=False)
    last = result.stderr.strip().splitlines()[-1:] or [""]
    print(f"   plain rsync from {host}: rc {result.returncode} {last[0][:160]}", flush=True)
    return result.returncode


def _hostile_name(server_id: str, second: int = 59) -> tuple[str, str, str]:
    """(day, hour, name) of a chunk name in the current hour that no stream writes: a minute
    already past, opened at `second` (a stream only opens mid-minute on a restart; each
    scenario takes its own second, so two of them in one minute never share a name)."""
    moment = datetime.now(UTC) - timedelta(seconds=90)
    day, hour = hour_label(moment, ZONE)
    minute = moment.astimezone(ZONE).minute
    return day, hour, f"{server_id}_{day}_{hour}-{minute:02d}-{second:02d}.jsonl"


def _process_bounded(lab: Lab, name: str, hour: str) -> float:
    """The main's `process` of the hour, which must end on its own within PROCESS_TIMEOUT;
    returns how long it took."""
    command = (f"timeout {PROCESS_TIMEOUT} "
               + as_collector(f"process --hour {hour} --force"))
    started = time.monotonic()
    result = lab.run(lab.main, command, check=False)
    seconds = time.monotonic() - started
    if result.returncode == 124:
        _problem(name, f"process of {hour} did not end within {PROCESS_TIMEOUT} s")
    elif result.returncode != 0:
        _problem(name, f"process of {hour} failed (rc {result.returncode}): "
                       f"{result.stderr.strip().splitlines()[-1:]}")
    else:
        print(f"   process of {hour} ended in {seconds:.1f} s", flush=True)
    return seconds


def _quarantined(lab: Lab, entry: str) -> str:
    """The entry's type in the main's quarantine (`find -printf %y`), "" if it is not there."""
    listing = lab.run(lab.main, f"find {QUARANTINE} -name {shlex.quote(entry + '.*')} "
                      "-printf '%y\\n' 2>/dev/null", check=False).stdout
    return " ".join(listing.split())


def _hostile_chunk(name: str, make: str, rsync_options: str,
                   second: int) -> Callable[[Lab], None]:
    """Push an entry named like a chunk (`make` creates it as `$entry`), then process."""
    def inject(lab: Lab) -> None:
        host = lab.secondaries[0]
        server_id = lab.setting(host, "server_id") or host
        day, hour, entry = _hostile_name(server_id, second)
        prepare = f"mkdir -p {day}/{hour}; entry={day}/{hour}/{entry}; {make}"
        _rsync_as_secondary(lab, host, prepare, f"{rsync_options} {day} {{remote}}:")
        seconds = _process_bounded(lab, name, f"{day}T{hour}")
        kind = _quarantined(lab, entry)
        if not kind:
            _problem(name, f"{entry} is not in the main's quarantine after process")
        else:
            _note(name, f"the entry (find type {kind}) quarantined by a process run of "
                        f"{seconds:.1f} s")
        left = lab.run(lab.main, f"find {INCOMING}/{server_id} -name {shlex.quote(entry)}",
                       check=False).stdout.strip()
        if left:
            _problem(name, f"{entry} is still in the incoming folder after process")
    return inject


# ---- checksummed listings --------------------------------------------------------------------

def _listing(lab: Lab, host: str, roots: list[str], prune: list[str]) -> str:
    """Every entry under `roots` (but `prune`) with its type, link target and checksum."""
    pruned = " ".join(f"-path {shlex.quote(path)} -prune -o" for path in prune)
    command = (f"find {' '.join(roots)} {pruned} -printf '%y %m %u %p -> %l\\n' 2>/dev/null "
               f"| sort; find {' '.join(roots)} {pruned} -type f -print0 2>/dev/null "
               f"| sort -z | xargs -0 -r sha256sum")
    return lab.run(host, command, check=False).stdout


def _diff(before: str, after: str) -> str:
    old, new = set(before.splitlines()), set(after.splitlines())
    changed = sorted(old ^ new)
    return "; ".join(changed[:4]) + (f" (+{len(changed) - 4} more)" if len(changed) > 4 else "")


def _escape(lab: Lab) -> None:
    name = "hostile-symlink-escape"
    host = lab.secondaries[0]
    server_id = lab.setting(host, "server_id") or host
    # The main's own chunks change as its stream writes; the find below covers them.
    outside = [VAULT, INCOMING, "/etc/collector", "/etc/ssh"]
    prune = [f"{INCOMING}/{server_id}"]
    before = _listing(lab, lab.main, outside, prune)
    _rsync_as_secondary(lab, host, f"ln -s {VAULT} esc", "-l esc {remote}:")
    _rsync_as_secondary(lab, host, "mkdir esc; echo evil > esc/evil.txt",
                        "-R --no-implied-dirs esc/evil.txt {remote}:/")
    _rsync_as_secondary(lab, host, f"ln -s {DATA_DIR} up", "-l up {remote}:")
    _rsync_as_secondary(lab, host, "mkdir -p up/vault; echo evil > up/vault/evil2.txt",
                        "-R --no-implied-dirs up/vault/evil2.txt {remote}:/")
    after = _listing(lab, lab.main, outside, prune)
    if before != after:
        _problem(name, f"outside the secondary's folder, entries changed: {_diff(before, after)}")
    found = lab.run(lab.main, f"find / -xdev \\( -name evil.txt -o -name evil2.txt \\) "
                              f"-not -path '{INCOMING}/{server_id}/*' 2>/dev/null; "
                              f"find {DATA_DIR} \\( -name evil.txt -o -name evil2.txt \\) "
                              f"-not -path '{INCOMING}/{server_id}/*'", check=False).stdout
    if found.strip():
        _problem(name, f"the pushed file landed outside the folder: {found.split()[:3]}")
    else:
        _note(name, f"{len(before.splitlines())} entries outside the folder unchanged")
    day, hour, _ = _hostile_name(server_id)
    _process_bounded(lab, name, f"{day}T{hour}")


# ---- partial Ansible runs ----------------------------------------------------------------------

def _playbook(lab: Lab, log_name: str, *extra: str) -> bool:
    try:
        lab.fleet.ansible_playbook("site.yml", *extra, log=lab.fleet.lab_dir / log_name)
    except RuntimeError as error:
        print(f"   {error}", flush=True)
        return False
    return True


def _limited_run(name: str, what: str, host_of: Callable[[Lab], str],
                 path_of: Callable[[Lab, str], str]) -> Callable[[Lab], None]:
    """`site.yml --limit <one host>`: `what`, a file there that belongs to the hosts outside
    the play, must be byte for byte what it was, and the next pushes must work."""
    def inject(lab: Lab) -> None:
        host = host_of(lab)
        path = path_of(lab, host)

        def digest() -> str:
            return lab.run(host, f"sha256sum {path}", check=False).stdout

        before = digest()
        if not _playbook(lab, f"{name}.log", "--limit", host):
            _problem(name, f"site.yml --limit {host} failed")
        after = digest()
        if not before or after != before:
            _problem(name, f"{what} on {host} changed or is missing: {before.split()[:1]} -> "
                           f"{after.split()[:1]}")
        lab.wait_for_unsent_chunks()
        lab.send_all(expect_ok=True)
    return inject


# ---- moving the main, partly ---------------------------------------------------------------

def _main_data(lab: Lab, host: str) -> str:
    return _listing(lab, host, [INCOMING, VAULT], [f"{INCOMING}/.quarantine"])


def _other_host(lab: Lab) -> str:
    return lab.secondaries[0]


@contextlib.contextmanager
def _unreachable(lab: Lab, host: str) -> Iterator[None]:
    """The host cannot be reached over SSH meanwhile: sshd stopped and every open session
    killed, including the master connections Ansible keeps open (ControlPersist), which
    would otherwise still reach it. Its stream keeps running."""
    nsenter = ["nsenter", "-t", str(lab.init_pid(host)), "-a"]
    nspawn.run([*nsenter, "sh", "-c", "systemctl stop ssh.service ssh.socket; "
                "pkill -KILL -x sshd; true"])
    try:
        yield
    finally:
        nspawn.run([*nsenter, "systemctl", "start", "ssh.service"])


def _partial_swap(name: str, how: str, limit_to_former: bool = False,
                  meanwhile: Callable[[Lab, str], AbstractContextManager[None]] | None = None,
                  ) -> Callable[[Lab], None]:
    """Move the main in the inventory and run site.yml in a way that cannot complete the
    handover (limited to the former main, or with `meanwhile` done to the new main): the
    former main's incoming chunks and vault must be untouched. A full run afterwards must
    complete the swap."""
    def inject(lab: Lab) -> None:
        former, new = lab.main, _other_host(lab)
        lab.wait_for_unsent_chunks()
        lab.send_all(expect_ok=True)
        before = _main_data(lab, former)
        lab.fleet.write_inventory(lab.state, new)
        with meanwhile(lab, new) if meanwhile else contextlib.nullcontext():
            limit = ("--limit", former) if limit_to_former else ()
            finished = _playbook(lab, f"{name}.log", *limit)
            after = _main_data(lab, former)
        if not before.strip():
            _problem(name, f"the former main {former} held no incoming chunks or vault")
        elif before != after:
            _problem(name, f"{how}: the former main's data changed: {_diff(before, after)}")
        else:
            _note(name, f"{how}: site.yml {'finished' if finished else 'stopped'}, the former "
                        f"main's {len(before.splitlines())} entries of incoming and vault "
                        "untouched")
        if not _playbook(lab, f"{name}-full.log"):
            raise RuntimeError("the full site.yml afterwards did not finish the swap")
        lab.main = lab.fleet.main_of_inventory()
        _check_kept_chunks_reach_the_main(lab, name)
    return inject


def _check_kept_chunks_reach_the_main(lab: Lab, name: str) -> None:
    """After a swap, one `send` puts every chunk each secondary keeps on the new main: a
    confirmation recorded for that host in an earlier stint (before it was the main, or
    before the main moved away and back) must not make send skip a chunk the main no
    longer holds (its incoming folder went with a handover)."""
    kept = {host: _closed_chunks(lab, host, lab.setting(host, "data_storage_dst"))
            for host in lab.secondaries}
    lab.send_all(expect_ok=True)
    incoming = lab.setting(lab.main, "incoming_dst")
    for host, names in kept.items():
        server_id = lab.setting(host, "server_id") or host
        on_main = _closed_chunks(lab, lab.main, f"{incoming}/{server_id}")
        if missing := sorted(names - on_main):
            _problem(name, f"{len(missing)} of the {len(names)} chunks {host} keeps are not on "
                           f"the new main {lab.main} after its send (e.g. {missing[0]})")
        else:
            _note(name, f"all {len(names)} chunks {host} keeps are on the new main after its "
                        "send")


# ---- real power cuts ---------------------------------------------------------------------------

def _canary(lab: Lab, host: str) -> None:
    """A file written without fsync just before the cut: a real cut loses it."""
    lab.run(host, f"echo canary > {CANARY}", check=False)


def _canary_note(lab: Lab, name: str, host: str) -> None:
    kept = lab.run(host, f"test -s {CANARY} && echo kept; rm -f {CANARY}", check=False).stdout
    _note(name, "the cut " + ("kept" if "kept" in kept else "lost") +
          " a file written without fsync just before it")


def _closed_chunks(lab: Lab, host: str, root: str) -> set[str]:
    listing = lab.run(host, f"find {root} -path '*/.*' -prune -o -name '*.jsonl' -printf '%f\\n'",
                      check=False).stdout
    return set(listing.split())


def _confirmed_on_main(lab: Lab, host: str) -> set[str]:
    """Chunk names `send` on `host` recorded as confirmed on the main (send_ledger.json)."""
    ledger = f"{lab.setting(host, 'data_storage_dst')}/.collector/send_ledger.json"
    text = lab.run(host, f"cat {ledger} 2>/dev/null || echo '{{}}'").stdout
    return {name.rsplit("/", 1)[-1] for name in json.loads(text or "{}").get("chunks", {})}


def _cut_main_after_push(lab: Lab) -> None:
    name = "power-cut-main-after-push"
    host = lab.secondaries[0]
    server_id = lab.setting(host, "server_id") or host
    lab.wait_for_unsent_chunks()
    before = _confirmed_on_main(lab, host)
    if lab.collector(host, "send").returncode != 0:
        raise RuntimeError(f"send on {host} failed")
    confirmed = _confirmed_on_main(lab, host) - before
    _canary(lab, lab.main)
    lab.power_off(lab.main)
    lab.power_on(lab.main)
    on_main = _closed_chunks(lab, lab.main, f"{INCOMING}/{server_id}")
    missing = sorted(confirmed - on_main)
    if not confirmed:
        _problem(name, f"send on {host} confirmed no chunk, so the cut proved nothing")
    elif missing:
        _problem(name, f"{len(missing)} chunks the main confirmed to {host} are not on the "
                       f"main after the cut (e.g. {missing[0]})")
    else:
        _note(name, f"all {len(confirmed)} chunks the main confirmed to {host} (which may now "
                    "delete them after retention) were on the main after the cut")
    _canary_note(lab, name, lab.main)


def _cut_secondary_mid_minute(lab: Lab) -> None:
    name = "power-cut-secondary-mid-minute"
    host = lab.secondaries[0]
    now = time.time()
    time.sleep((30 - now % 60) % 60)  # second 30 of a minute: the open chunk is half full
    _canary(lab, host)
    lab.power_off(host)
    lab.power_on(host)
    _canary_note(lab, name, host)


# ---- a second stream on one host ---------------------------------------------------------------

def _part_files(lab: Lab, host: str) -> str:
    root = lab.setting(host, "data_storage_dst")
    return lab.run(host, f"find {root} -name '*.part' | sort", check=False).stdout


def _second_stream(lab: Lab) -> None:
    name = "second-stream-started"
    host = lab.main
    parts = _part_files(lab, host)
    result = lab.run(host, f"timeout 60 {as_collector('stream')}", check=False)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    if result.returncode in (0, 124):
        _problem(name, f"a second stream did not refuse (rc {result.returncode})")
    elif len(lines) != 1 or "Traceback" in result.stderr:
        _problem(name, f"the refusal is not one line: {lines[:3]}")
    else:
        _note(name, f"refused: {lines[0][:120]}")
    if _part_files(lab, host) != parts:
        _problem(name, "the service's open chunks changed while the second stream ran")


def _row(name: str, description: str, inject: Callable[[Lab], None], lab: str,
         reconnects: Callable[[Lab], list[str]] = lambda lab: []) -> Scenario:
    """A scenario whose checks report through `_problem` and `_note` under its name."""
    return Scenario(name, f"§7: {description}", inject, verify=_verify(name),
                    notes=_notes_of(name), reconnects=reconnects, lab=lab)


def scenarios() -> list[Scenario]:
    def hostile(name: str, description: str, make: str, options: str,
                second: int) -> Scenario:
        return _row(name, description, _hostile_chunk(name, make, options, second), "b")

    return [
        hostile("hostile-fifo", "a FIFO named like a chunk pushed with a secondary's key "
                "(`rsync -rl --specials`)", "mkfifo $entry", "-rl --specials", 59),
        hostile("hostile-symlink-devzero", "a chunk-named symlink to /dev/zero pushed with a "
                "secondary's key (`rsync -rl`)", "ln -s /dev/zero $entry", "-rl", 58),
        _row("hostile-symlink-escape", "a symlink out of the incoming folder, then files "
             "pushed through it (`rsync -R --no-implied-dirs`)", _escape, "b"),
        hostile("hostile-oversize", f"a chunk-named file larger than any real chunk "
                f"({OVERSIZE_BYTES >> 20} MiB, sparse) pushed with a secondary's key",
                f"truncate -s {OVERSIZE_BYTES} $entry", "-r --sparse", 57),
        _row("second-stream-started", "`collector stream` started by hand beside the running "
             "service", _second_stream, "b"),
        _row("power-cut-main-after-push", "a real power cut of the main right after a "
             "secondary's push (what was not written back is lost)", _cut_main_after_push,
             "b", reconnects=lambda lab: [lab.main]),
        _row("power-cut-secondary-mid-minute", "a real power cut of a secondary in the middle "
             "of a minute", _cut_secondary_mid_minute, "b",
             reconnects=lambda lab: [lab.secondaries[0]]),
        _row("limit-main", "`site.yml --limit <the main>`",
             _limited_run("limit-main", "the secondaries' authorized keys",
                          lambda lab: lab.main, lambda lab, host: AUTHORIZED_KEYS), "c"),
        _row("limit-secondary", "`site.yml --limit <a secondary>`",
             _limited_run("limit-secondary", "the main's pinned host key",
                          lambda lab: lab.secondaries[0],
                          lambda lab, host: lab.setting(host, "ssh_known_hosts_file")), "c"),
        _row("swap-limited-to-former-main", "the main moved in the inventory, site.yml "
             "limited to the former main, then run in full",
             _partial_swap("swap-limited-to-former-main", "--limit <the former main>",
                           limit_to_former=True), "c"),
        _row("swap-new-main-unreachable", "the main moved in the inventory while the new "
             "main's sshd is stopped, then site.yml again once it is back",
             _partial_swap("swap-new-main-unreachable", "the new main unreachable",
                           meanwhile=_unreachable), "c"),
    ]
