"""Host faults of the reliability campaign: a full data disk, and a day with a clock change.

6. `disk-full-one-host`: a secondary's data_storage_dst becomes full while the stream runs.
   The folder is moved onto a small tmpfs inside that host (setup; the lab machine's own disk
   is never filled), a filler file takes every free byte for `FULL_SECONDS` (kept topped up
   in case something frees space meanwhile), then it is deleted. The stream must keep what
   it receives in memory, say so once (log line, `disk_full` in its health), write it all
   when space returns, and never restart or drop a message; the cleanup moves the folder
   back to the host's disk.

8. `clock-back` / `clock-forward`: the hosts share this machine's kernel clock, so the clock
   is not touched; instead every host gets a lab time zone, compiled with `zic`, whose
   daylight-saving change happens on a whole local hour, 35 to 95 s after the moment it is
   planned: going back, local hour HH happens twice (`HH`, then `HHb`, as collector.layout
   names it); going forward, HH is skipped. Setup first merges the fleet's own recent hours
   (the lab zone is hours away from the fleet's, and would make them look overdue), then
   plans the change, installs the zone and restarts every stream in it; if the fleet is not
   streaming in the zone 20 s before the change, it leaves the zone and plans again, so a
   slow setup costs time, never the row. The fleet streams across the change in that zone;
   the window's hours are named in it (`Scenario.zone`). They only exist while the fleet
   uses the zone, so the cleanup stops the streams (closing their chunks), sends, processes
   those hours on the main, then restores each host's own zone. The chosen hour avoids every
   label in use on the main and every label of the fleet's own zone up to an hour ahead, so
   the two zones' chunks never share an hour, and none of the lab zone's hours is due in the
   own zone while the suite runs (the hourly `process` would merge it again, wrongly).
"""

from __future__ import annotations

import base64
import io
import json
import shlex
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from collector.layout import hour_of
from collector.stream.run import WRITE_BATCH
from tests.faults import measure
from tests.faults.scenarios import STREAM_UNIT, Lab, Scenario
from tests.lab.fleet import SETTINGS

HEALTHY_TIMEOUT = 180.0


def _journal_since(lab: Lab, host: str, since: float) -> str:
    return lab.run(host, f"journalctl -u {STREAM_UNIT} --since @{int(since)} -o cat "
                   "--no-pager", check=False).stdout


def _health(lab: Lab, host: str, dst: str) -> dict[str, object]:
    """The stream's own health record (it holds more than `collector status` shows, such as
    the bytes held in memory and the messages dropped)."""
    text = lab.run(host, f"cat {shlex.quote(dst + '/.collector/stream_status.json')}",
                   check=False).stdout
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return dict(record) if isinstance(record, dict) else {}


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stderr.strip() or result.stdout.strip())[-200:]


# ---- 6. data_storage_dst full on one host ----------------------------------------------------

FULL_SECONDS = 60.0
TOP_UP_INTERVAL = 5.0
# Room the tmpfs has beyond what the folder holds at setup: minutes of stream at the lab's rate.
TMPFS_EXTRA_KIB = 16 * 1024
FILLER = ".fault-filler"  # hidden: never taken for a chunk by send or process

# Ids of the chunks below a folder, from chunk files written since a moment (run on a host).
_CHUNK_IDS = """
import json, os, sys
root, since = sys.argv[1], float(sys.argv[2])
for folder, _, names in os.walk(root):
    for name in names:
        path = os.path.join(folder, name)
        if not name.endswith('.jsonl') or os.stat(path).st_mtime < since:
            continue
        with open(path, 'rb') as handle:
            for line in handle:
                try:
                    print(json.loads(line)['data']['id'])
                except (ValueError, KeyError, TypeError):
                    pass
"""


def mount_tmpfs_script(dst: str, extra_kib: int) -> str:
    """Shell: stop the stream, move the folder's content onto a tmpfs mounted over it (owner
    and mode kept), start the stream. The stream unit's private mount namespace is made at
    its start, so it must start after the mount to see it."""
    q, stash = shlex.quote(dst), shlex.quote(dst + ".fault-stash")
    return "\n".join([
        "set -e",
        f"systemctl stop {STREAM_UNIT}",
        f"rm -rf {stash}",
        # `cp -a stash/. dst/` gives dst the stash's owner and mode: make them the folder's.
        f"mkdir {stash} && chown --reference={q} {stash} && chmod --reference={q} {stash}",
        f"mode=$(stat -c %a {q}); uid=$(stat -c %u {q}); gid=$(stat -c %g {q})",
        f"used=$(du -sk {q} | cut -f1)",
        f"find {q} -mindepth 1 -maxdepth 1 -exec mv -t {stash} {{}} +",
        f"mount -t tmpfs -o size=$((used + {extra_kib}))k,mode=$mode,uid=$uid,gid=$gid "
        f"collector-fault {q}",
        f"cp -a {stash}/. {q}/",
        f"rm -rf {stash}",
        f"systemctl start {STREAM_UNIT}",
    ])


def unmount_tmpfs_script(dst: str) -> str:
    """Shell: the reverse of `mount_tmpfs_script` (nothing to do when no tmpfs is there)."""
    q, stash = shlex.quote(dst), shlex.quote(dst + ".fault-stash")
    return "\n".join([
        "set -e",
        # Not mounted: at most a stash left by a setup that failed half way goes back.
        f"if ! mountpoint -q {q}; then if [ -d {stash} ]; then cp -a {stash}/. {q}/ && "
        f"rm -rf {stash} && systemctl start {STREAM_UNIT}; fi; exit 0; fi",
        f"systemctl stop {STREAM_UNIT}",
        f"rm -f {q}/{FILLER}",
        f"rm -rf {stash}",
        f"mkdir {stash} && chown --reference={q} {stash} && chmod --reference={q} {stash}",
        f"cp -a {q}/. {stash}/",
        f"umount {q}",
        f"cp -a {stash}/. {q}/",
        f"rm -rf {stash}",
        f"systemctl start {STREAM_UNIT}",
    ])


def fill_script(dst: str) -> str:
    """Shell: grow the filler until ENOSPC (big blocks, then pages); print the bytes left.
    Refuses (exit 1) unless `dst` is a tmpfs mount: the host's own disk is this machine's."""
    q, filler = shlex.quote(dst), shlex.quote(f"{dst}/{FILLER}")
    return "\n".join(
        [f'mountpoint -q {q} && [ "$(stat -f -c %T {q})" = tmpfs ] || '
         f'{{ echo "{dst} is not a tmpfs: not filling it" >&2; exit 1; }}']
        + [f"dd if=/dev/zero of={filler} bs={size} oflag=append conv=notrunc status=none "
         "2>/dev/null || true" for size in ("1M", "4k")]
        + [f"df --output=avail -B1 {shlex.quote(dst)} | tail -n 1"])


def token_indices(log: Mapping[str, Any], token: str) -> set[int]:
    """Message indices the fake API sent whole on the connections of one token."""
    return measure.whole_indices({"connections": [record for record in log.get("connections", [])
                                                  if record.get("token") == token]})


class DiskFull:
    """Scenario 6's steps, sharing what they observed (for `verify`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.host = ""
        self.dst = ""
        self.problems: list[str] = []
        self.setup_at = 0.0
        self.pid = ""
        self.full_at = 0.0
        self.before: dict[str, Any] = {}
        self.during: dict[str, Any] = {}
        self.token = ""

    def scenario(self) -> Scenario:
        return Scenario(
            "disk-full-one-host",
            f"6. data_storage_dst of one secondary full (a tmpfs filled to ENOSPC) for "
            f"{FULL_SECONDS:g} s while streaming, then the filler is deleted",
            self.inject, self.recover, self.setup, verify=self.verify, cleanup=self.cleanup)

    def setup(self, lab: Lab) -> None:
        self.reset()
        self.host = lab.secondaries[0] if lab.secondaries else lab.main
        self.dst = lab.setting(self.host, "data_storage_dst")
        self.setup_at = time.time()
        try:
            # What a previous, interrupted run may have left mounted goes back first.
            lab.run(self.host, unmount_tmpfs_script(self.dst))
            if self.host != lab.main:
                # The hourly push empties the folder first, so the tmpfs stays small.
                result = lab.collector(self.host, "send")
                if result.returncode != 0:
                    self.problems.append(f"send before the fault failed: {_tail(result)}")
            lab.run(self.host, mount_tmpfs_script(self.dst, TMPFS_EXTRA_KIB))
        except subprocess.CalledProcessError as error:
            self.problems.append(f"setup failed: {(error.stderr or '').strip()[-200:]}")
        if lab.wait_healthy(HEALTHY_TIMEOUT) is None:
            self.problems.append("fleet not healthy after moving the folder onto a tmpfs")
        self.pid = lab.stream_pid(self.host)

    def inject(self, lab: Lab) -> None:
        self.token = lab.token(self.host)
        self.before = lab.api_log()
        self.full_at = time.time()
        seen_full = False
        largest_backlog = 0
        left = ""
        while time.time() - self.full_at < FULL_SECONDS:
            filled = lab.run(self.host, fill_script(self.dst), check=False)
            if filled.returncode != 0:
                raise RuntimeError(_tail(filled))
            left = filled.stdout.strip()
            code, status = lab.status(self.host)
            # What monitoring sees: `collector status` degraded (exit 1), naming the disk.
            seen_full = seen_full or (code == 1 and bool(status.get("stream", {})
                                                         .get("disk_full")))
            health = _health(lab, self.host, self.dst)
            largest_backlog = max(largest_backlog, int(str(health.get("backlog_bytes", 0))))
            time.sleep(TOP_UP_INTERVAL)
        self.during = lab.api_log()
        print(f"   {self.host}: {left} bytes free at the end, largest backlog held "
              f"{largest_backlog} bytes", flush=True)
        if not seen_full:
            raise RuntimeError(f"`collector status` on {self.host} never said degraded, "
                               "disk full, while its disk was full")
        if largest_backlog == 0:
            raise RuntimeError(f"{self.host} reported no backlog held in memory")

    def recover(self, lab: Lab) -> None:
        lab.run(self.host, f"rm -f {shlex.quote(self.dst + '/' + FILLER)}")

    def cleanup(self, lab: Lab) -> None:
        """Check the stream's own account of the fault, then put the folder back on disk."""
        health = _health(lab, self.host, self.dst)
        if health.get("dropped_messages") != 0:
            self.problems.append(f"{self.host} dropped {health.get('dropped_messages')} "
                                 "messages")
        # Under load a little always waits for the next write (every 0.5 s); the held
        # backlog is gone when less than one write batch waits.
        if health.get("disk_full") or int(str(health.get("backlog_bytes", 0))) >= WRITE_BATCH:
            self.problems.append(f"{self.host} still holds {health.get('backlog_bytes')} bytes "
                                 "after space returned")
        if lab.stream_pid(self.host) != self.pid:
            self.problems.append(f"the stream on {self.host} restarted during the fault")
        journal = _journal_since(lab, self.host, self.setup_at).splitlines()
        # One error line from the stream (its alert repeats it as an ALERT line).
        full = [line for line in journal if "collector.stream" in line and "is full" in line]
        if len(full) != 1:
            self.problems.append(f"{len(full)} 'is full' lines from the stream instead of one")
        if not any("has room again" in line for line in journal):
            self.problems.append(f"the stream on {self.host} never said the disk had room again")
        # Emailed, or held back by the once-an-hour rule; never failed.
        failed = [line for line in journal if "alert disk_full not emailed:" in line]
        if failed:
            self.problems.append(f"disk_full alert not emailed ({failed[0].split(': ')[-1]})")
        if any("Traceback" in line for line in journal):
            self.problems.append(f"a traceback in the journal of {self.host}")
        try:
            lab.run(self.host, unmount_tmpfs_script(self.dst))
        except subprocess.CalledProcessError as error:
            self.problems.append(f"tmpfs not removed: {(error.stderr or '').strip()[-200:]}")
        if lab.wait_healthy(HEALTHY_TIMEOUT) is None:
            self.problems.append("fleet not healthy after moving the folder back")

    def verify(self, lab: Lab) -> str:
        """Every message the full host received while its disk was full is in its chunks."""
        problems = list(self.problems)
        if self.during:
            received = (token_indices(self.during, self.token)
                        - token_indices(self.before, self.token))
            wanted = {measure.tweet_id(index) for index in received}
            if self.host == lab.main:
                root = self.dst
            else:
                root = (f"{lab.setting(lab.main, 'incoming_dst')}/"
                        f"{lab.setting(self.host, 'server_id')}")
            found = set(lab.run(lab.main, f"python3 -c {shlex.quote(_CHUNK_IDS)} "
                                f"{shlex.quote(root)} {self.full_at - 120:.0f}").stdout.split())
            missing = wanted - found
            print(f"   {self.host} received {len(wanted)} ids while full; "
                  f"{len(wanted) - len(missing)} are in its chunks on the main", flush=True)
            if not wanted:
                problems.append(f"{self.host} received nothing while full")
            elif missing:
                problems.append(f"{len(missing)} of the {len(wanted)} ids {self.host} received "
                                "while full are missing from its chunks")
        return "; ".join(problems)


# ---- 8. a day with a clock change ------------------------------------------------------------

# The change is planned at the first whole minute at least this long after the fleet's own
# hours are merged (the zone is then installed and every stream restarted in it, seconds);
# the window then streams this long past it.
CHANGE_LEAD_SECONDS = 35
AFTER_CHANGE_SECONDS = 30.0
# The fleet must be streaming in the zone this long before the change (the runner's lead,
# then the check of the open chunks 8 s before it); later than that, the zone is left again
# and the change planned anew, at most this many times.
READY_BEFORE_CHANGE = 20.0
ZONE_ATTEMPTS = 3
# Labels of the fleet's own zone within this span around setup are never reused.
AVOID_BEFORE = timedelta(hours=6)
AVOID_AFTER = timedelta(hours=1)
# Preferred hours (the repeated hour going back, the skipped one going forward).
CANDIDATE_HOURS = {kind: (*first, *(hour for hour in range(1, 23) if hour not in first))
                   for kind, first in (("back", (1, 13, 7, 19)), ("forward", (2, 14, 8, 20)))}
ZONE_NAMES = {"back": "Lab/Back", "forward": "Lab/Forward"}
ZONEINFO = "/usr/share/zoneinfo"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class ClockPlan:
    """A lab time zone: UTC offset `before` until `change_at` (a whole minute), `after` then."""

    kind: str  # "back" (the local hour `hour` happens twice) or "forward" (it is skipped)
    change_at: int
    before: int  # seconds east of UTC
    after: int
    day: str  # local day of the change
    hour: int

    def label(self, hour: int, second_pass: bool = False) -> str:
        return f"{self.day}T{hour:02d}{'b' if second_pass else ''}"

    @property
    def label_before(self) -> str:
        """The hour just before the change."""
        return self.label(self.hour if self.kind == "back" else self.hour - 1)

    @property
    def label_after(self) -> str:
        """The hour just after the change."""
        return self.label(self.hour, True) if self.kind == "back" else self.label(self.hour + 1)

    @property
    def labels(self) -> set[str]:
        """Every label the zone gives around the change (with a neighbour either side)."""
        near = {self.label(self.hour + step) for step in (-1, 0, 1)}
        return near | {self.label_before, self.label_after}


def plan_clock_change(kind: str, change_at: int, avoid: set[str],
                      later_than: str = "") -> ClockPlan:
    """Offsets that put a change of `kind` at `change_at` on a whole local hour, for the
    first candidate hour whose labels are not in `avoid` and all sort after `later_than` (an
    offset and the same offset less a day give two days to choose from; both stay within
    Python's +-24 h). Labels are `YYYY-mm-ddTHH[b]`, so text order is time order."""
    seconds_of_day = change_at % 86400
    for hour in CANDIDATE_HOURS[kind]:
        # Local wall time just before the change: the end of the repeated hour going back,
        # the start of the skipped hour going forward.
        wall = (hour + 1 if kind == "back" else hour) * 3600
        base = (wall - seconds_of_day) % 86400
        for before in (base, base - 86400):
            after = before - 3600 if kind == "back" else before + 3600
            if not (abs(before) < 86400 and abs(after) < 86400):
                continue
            day = f"{datetime.fromtimestamp(change_at + before, UTC):%Y-%m-%d}"
            plan = ClockPlan(kind, change_at, before, after, day, hour)
            if not plan.labels & avoid and min(plan.labels) > later_than:
                return plan
    raise RuntimeError(f"no candidate hour avoids {sorted(avoid)} and comes after {later_than}")


def _offset(seconds: int) -> str:
    sign = "-" if seconds < 0 else ""
    minutes = abs(seconds) // 60
    return f"{sign}{minutes // 60}:{minutes % 60:02d}"


def zone_source(name: str, plan: ClockPlan) -> str:
    """The zic source of the plan's zone (the change given in UTC, `u`)."""
    moment = datetime.fromtimestamp(plan.change_at, UTC)
    until = f"{moment.year} {_MONTHS[moment.month - 1]} {moment.day} {moment:%H:%M}u"
    return (f"# Lab zone of the fault suite: clocks go {plan.kind} at {moment:%H:%M} UTC\n"
            f"Zone {name} {_offset(plan.before)} - LABA {until}\n"
            f"\t{_offset(plan.after)} - LABB\n")


def compile_zone(name: str, source: str) -> bytes:
    """The TZif file `zic` makes of `source` (zic is in libc-bin, on every Debian)."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "zone.zi").write_text(source)
        subprocess.run(["zic", "-d", folder, str(Path(folder) / "zone.zi")], check=True,
                       capture_output=True, text=True)
        return (Path(folder) / name).read_bytes()


# Hour labels the main holds chunks (data, incoming) or outputs (vault) of, run on the main.
_LABELS_IN_USE = """
import glob, os, sys
data, incoming, vault = sys.argv[1:4]
for path in glob.glob(data + '/*/*') + glob.glob(incoming + '/*/*/*'):
    print(os.path.basename(os.path.dirname(path)) + 'T' + os.path.basename(path))
for path in glob.glob(vault + '/*/*_IDs.txt.xz') if vault else []:
    day, hour = os.path.basename(path).split('_')[:2]
    print(day + 'T' + hour)
"""


def _labels_in_use(lab: Lab, outputs: bool = True) -> set[str]:
    """Labels with chunks (and, with `outputs`, outputs) on the main already: an earlier run
    of a clock scenario on this lab used them at another moment, and reusing one would mix
    two real hours."""
    folders = [lab.setting(lab.main, key)
               for key in ("data_storage_dst", "incoming_dst", "data_vault_dst")]
    if not outputs:
        folders[2] = ""
    return set(lab.run(lab.main, f"python3 -c {shlex.quote(_LABELS_IN_USE)} "
                       + " ".join(shlex.quote(folder) for folder in folders)).stdout.split())


def _open_chunk_hours(lab: Lab) -> dict[str, str]:
    """The hour label in each host's open chunk name (`server_day_HH-MM...`), '' if none."""
    found = {}
    for host in lab.hosts:
        name = str(lab.status(host)[1].get("stream", {}).get("open_chunk", ""))
        parts = name.split(".")[0].rsplit("_", 2)
        found[host] = f"{parts[1]}T{parts[2].split('-')[0]}" if len(parts) == 3 else ""
    return found


class ClockChange:
    """Scenario 8's steps for one direction, sharing what they observed."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = ZONE_NAMES[kind]
        self.reset()

    def reset(self) -> None:
        self.plan: ClockPlan | None = None
        self.zone: ZoneInfo | None = None
        self.original: dict[str, str] = {}
        self.problems: list[str] = []
        self.restarted_at = 0.0

    def scenario(self) -> Scenario:
        what = ("an hour happens twice (HH, then HHb)" if self.kind == "back"
                else "an hour is skipped")
        return Scenario(
            f"clock-{self.kind}",
            f"8. clocks go {self.kind} a minute or two into the window: every host in a lab "
            f"time zone (zic) where {what}; hours processed in that zone",
            self.inject, setup=self.setup, verify=self.verify, cleanup=self.cleanup,
            zone=lambda: self.zone)

    def setup(self, lab: Lab) -> None:
        """Merge the fleet's own recent hours, then move every host into a lab zone whose
        change is planned from that moment. Without the merge, the lab zone (hours away from
        the fleet's own) would make the own zone's current hour, and the previous one until
        its hourly run, look overdue: the main then rightly reports "2 due hours are not
        processed" and the fleet is not healthy in the zone."""
        self.reset()
        self._merge_own_hours(lab)
        for attempt in range(1, ZONE_ATTEMPTS + 1):
            if not self._enter_zone(lab) or time.time() <= self.change_at - READY_BEFORE_CHANGE:
                return
            print(f"   {self.name}: streaming in the zone only "
                  f"{self.change_at - time.time():.0f} s before its change "
                  f"(attempt {attempt}): leaving it, planning again", flush=True)
            self._leave_zone(lab)
            self.plan, self.zone = None, None
        self.problems.append(f"the fleet was never streaming in {self.name} "
                             f"{READY_BEFORE_CHANGE:g} s before the change")

    @property
    def change_at(self) -> int:
        return self.plan.change_at if self.plan is not None else 0

    def _merge_own_hours(self, lab: Lab) -> None:
        """Push, then merge (--force) the last two hours of the fleet's own zone that hold
        chunks, so none of them is due unmerged while the fleet runs in the lab zone."""
        for host in lab.secondaries:
            lab.collector(host, "send")
        own = ZoneInfo(lab.setting(lab.main, "timezone"))
        now = time.time()
        recent = measure.hours_between(now - 3600, now, own)
        with_chunks = _labels_in_use(lab, outputs=False)
        for hour in recent:
            if hour in with_chunks:
                result = self._process(lab, hour)
                if result.returncode != 0:
                    self.problems.append(f"process {hour} before the zone change: "
                                         f"{_tail(result)}")

    def _enter_zone(self, lab: Lab) -> bool:
        """Plan a change from now, install the zone on every host, restart every stream in
        it and wait until the fleet is healthy. False if the zone could not be made."""
        now = time.time()
        change_at = int(now + CHANGE_LEAD_SECONDS) // 60 * 60 + 60
        own = ZoneInfo(lab.setting(lab.main, "timezone"))
        start = datetime.fromtimestamp(now, UTC)
        avoid = set(measure.hours_between((start - AVOID_BEFORE).timestamp(),
                                          (start + AVOID_AFTER).timestamp(), own))
        # Every label of the lab zone lies in the fleet's own future: once the own zone is
        # back, none of its hours is due there (merged again with the own zone's lookback,
        # an id of `01` and `01b` would be published twice).
        later_than = str(hour_of(start + AVOID_AFTER, own))
        try:
            avoid |= _labels_in_use(lab)
            plan = plan_clock_change(self.kind, change_at, avoid, later_than)
            compiled = compile_zone(self.name, zone_source(self.name, plan))
        except (RuntimeError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", "") or str(error)
            self.problems.append(f"no lab zone: {detail.strip()[-200:]}")
            return False
        zone = ZoneInfo.from_file(io.BytesIO(compiled), key=self.name)
        seen = (str(hour_of(datetime.fromtimestamp(change_at - 30, UTC), zone)),
                str(hour_of(datetime.fromtimestamp(change_at + 30, UTC), zone)))
        if seen != (plan.label_before, plan.label_after):
            self.problems.append(f"the compiled zone gives {seen}, not the plan's labels")
            return False
        self.plan, self.zone = plan, zone
        print(f"   {self.name}: UTC{_offset(plan.before)} -> UTC{_offset(plan.after)} at "
              f"{datetime.fromtimestamp(change_at, UTC):%H:%M} UTC: {plan.label_before} -> "
              f"{plan.label_after}", flush=True)
        encoded = base64.b64encode(compiled).decode()
        target = shlex.quote(f"{ZONEINFO}/{self.name}")
        self.restarted_at = time.time()
        try:
            for host in lab.hosts:
                self.original.setdefault(host, lab.setting(host, "timezone"))
                lab.run(host, f"mkdir -p {ZONEINFO}/Lab && echo {encoded} | base64 -d > "
                        f"{target}.new && mv -f {target}.new {target} && "
                        f"sed -i 's|^timezone=.*|timezone={self.name}|' {SETTINGS} "
                        f"&& systemctl restart {STREAM_UNIT}")
        except subprocess.CalledProcessError as error:
            self.problems.append(f"zone not installed: {(error.stderr or '').strip()[-200:]}")
        if lab.wait_healthy(HEALTHY_TIMEOUT) is None:
            self.problems.append(f"fleet not healthy in {self.name}: {lab.unhealthy}")
        return True

    def inject(self, lab: Lab) -> None:
        """Stream across the change; every host's open chunk moves to the right label."""
        plan = self.plan
        if plan is None:
            raise RuntimeError("no lab zone installed")
        for moment, label in ((plan.change_at - 8, plan.label_before),
                              (plan.change_at + 8, plan.label_after)):
            time.sleep(max(0.0, moment - time.time()))
            hours: dict[str, str] = {}
            for _ in range(10):
                hours = _open_chunk_hours(lab)
                if all(hour == label for hour in hours.values()):
                    break
                time.sleep(1.0)
            else:
                self.problems.append(f"open chunks {hours}, expected {label}")
        time.sleep(max(0.0, plan.change_at + AFTER_CHANGE_SECONDS - time.time()))

    def cleanup(self, lab: Lab) -> None:
        """Close, send and process the zone's hours while the fleet still uses the zone
        (`--hour 01b` exists nowhere else), then give every host its own zone back."""
        self._leave_zone(lab, check_skipped=True)

    def _leave_zone(self, lab: Lab, check_skipped: bool = False) -> None:
        try:
            if self.zone is not None:
                for host in lab.hosts:
                    lab.run(host, f"systemctl stop {STREAM_UNIT}")
                for host in lab.secondaries:
                    result = lab.collector(host, "send")
                    if result.returncode != 0:
                        self.problems.append(f"send on {host}: {_tail(result)}")
                for hour in measure.hours_between(self.restarted_at, time.time(), self.zone):
                    result = self._process(lab, hour)
                    if result.returncode != 0:
                        self.problems.append(f"process {hour}: {_tail(result)}")
                if check_skipped and self.plan is not None and self.kind == "forward":
                    self._check_skipped_hour_refused(lab, self.plan.label(self.plan.hour))
        except subprocess.CalledProcessError as error:
            self.problems.append(f"closing the zone's hours failed: "
                                 f"{(error.stderr or '').strip()[-200:]}")
        finally:
            for host, zone in self.original.items():
                result = lab.run(host, f"sed -i 's|^timezone=.*|timezone={zone}|' "
                                 f"{SETTINGS} && systemctl restart {STREAM_UNIT} && "
                                 f"rm -f {shlex.quote(ZONEINFO + '/' + self.name)}", check=False)
                if result.returncode != 0:
                    self.problems.append(f"{host} not given back {zone}: {_tail(result)}")
            if lab.wait_healthy(HEALTHY_TIMEOUT) is None:
                self.problems.append(f"fleet not healthy back in its own zone: {lab.unhealthy}")

    @staticmethod
    def _process(lab: Lab, hour: str) -> subprocess.CompletedProcess[str]:
        return lab.collector(lab.main, f"process --hour {hour} --force")

    def _check_skipped_hour_refused(self, lab: Lab, hour: str) -> None:
        result = self._process(lab, hour)
        if result.returncode == 0 or "does not exist" not in result.stderr:
            self.problems.append(f"process --hour {hour} (skipped) was not refused: "
                                 f"{_tail(result)}")
        if "Traceback" in result.stderr:
            self.problems.append(f"process --hour {hour} ended with a traceback")

    def verify(self, lab: Lab) -> str:
        """Output files and report lines are named as docs/process.md says for the change."""
        from tests.faults.run import outputs  # the runner imports this module's scenarios

        problems = list(self.problems)
        plan = self.plan
        if plan is None:
            return "; ".join(problems)
        vault = lab.setting(lab.main, "data_vault_dst")
        folder = shlex.quote(f"{vault}/{plan.day}")
        files = lab.run(lab.main, f"ls {folder}", check=False).stdout.split()
        report = lab.run(lab.main, f"cat {folder}/{plan.day}_report.txt", check=False).stdout
        lines = [line.split("\t")[0] for line in report.splitlines()[1:]]

        def prefix(label: str) -> str:
            return label.replace("T", "_") + "_"

        for label in (plan.label_before, plan.label_after):
            if not any(name.startswith(prefix(label)) for name in files):
                problems.append(f"no output files for {label}")
            if label.split("T")[1] not in lines:
                problems.append(f"no report line for {label}")
        if plan.kind == "back":
            first = outputs(lab, vault, plan.label_before)
            second = outputs(lab, vault, plan.label_after)
            both = first[0].keys() & second[0].keys()
            if both:
                problems.append(f"{len(both)} ids in both {plan.label_before} and "
                                f"{plan.label_after}")
            hour, again = plan.label_before.split("T")[1], plan.label_after.split("T")[1]
            if hour in lines and again in lines and lines.index(again) != lines.index(hour) + 1:
                problems.append(f"report lines in the order {lines}")
        else:
            skipped = plan.label(plan.hour)
            if any(name.startswith(prefix(skipped)) for name in files):
                problems.append(f"output files for the skipped hour {skipped}")
            if skipped.split("T")[1] in lines:
                problems.append(f"a report line for the skipped hour {skipped}")
        print(f"   {plan.day} report hours: {' '.join(lines)}", flush=True)
        return "; ".join(problems)


def scenarios() -> list[Scenario]:
    return [DiskFull().scenario(), ClockChange("back").scenario(),
            ClockChange("forward").scenario()]

