"""Fault scenarios of the reliability campaign and the lab handle they act through.

A scenario has four steps, which the runner calls in order around its measurement window:
`setup` (put the fleet in the state the fault needs), `inject` (cause the fault), `recover`
(end the fault the way an operator or the product itself would; the fault counts as ended
when it returns) and, implicitly, the measurement done by the runner (`tests.faults.run`).
Scenarios only touch the lab through `Lab`, which runs commands on the real hosts over SSH
and talks to the fake API's control endpoints.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tests.lab import nspawn
from tests.lab.fleet import COLLECTOR, JETSTREAM_INSTANCES, SETTINGS, as_collector
from tests.lab.fleet import Lab as FleetLab

STREAM_UNIT = "collector.service"
# Where the role puts the root-owned authorized_keys file that lets secondaries push.
PUSH_AUTHORIZED_KEYS = "/etc/ssh/authorized_keys/collector"
# The hosts' cron daemon: the suite stops it and runs the hourly jobs itself (see `Lab`).
CRON_UNIT = "cron.service"
# What a run refused by another run's lock prints (send, process and upload each have one).
LOCKED = re.compile(r"another collector \w+ is running")
LOCK_WAIT_SECONDS = 600.0
CHUNK_WAIT_SECONDS = 150.0


# The role's cron file on every host (roles/collector/vars/main.yml, _collector_cron_file).
CRON_FILE = "collector"
_CRON_COMMAND = re.compile(r"/collector --settings \S+ (\w+)")


def hourly_cron_commands(cron_file: str) -> tuple[str, ...]:
    """The collector subcommands of the cron entry that runs `process`, in its order."""
    for line in cron_file.splitlines():
        commands = tuple(_CRON_COMMAND.findall(line))
        if not line.lstrip().startswith("#") and "process" in commands:
            return commands
    return ()


def chunk_closed_after(names: Iterable[str], moment: float) -> bool:
    """Whether a listing of `mtime name` lines (find -printf '%T@ %p') holds a chunk closed
    after `moment`: a closed chunk is written last when it closes."""
    for line in names:
        stamp, _, name = line.strip().partition(" ")
        if name.endswith(".jsonl"):
            with contextlib.suppress(ValueError):
                if float(stamp) > moment:
                    return True
    return False


@dataclass
class Lab:
    """A running lab (its state file) and its `tests.lab.fleet.Lab`, whose helpers act on it.

    The hosts' cron daemon is stopped for the whole suite (`stop_cron`): every `send`,
    `process` and `upload` is then one the suite runs, at a moment it chose, so no scenario
    depends on where the hosts' cron minutes fall. The runner plays cron between scenarios
    (`hourly_cycle`), with the same commands, whenever an hour became due.
    """

    fleet: FleetLab
    state: dict[str, Any]
    main: str
    # Why the fleet was last found not healthy (host: problems), for the row's note.
    unhealthy: str = ""
    # When a collector command the suite ran last ended, by host and command (epoch seconds).
    last_run: dict[tuple[str, str], float] = field(default_factory=dict)
    # When this handle was made: the lab's own start-up cycle (`fleet.up`) ran before it.
    made_at: float = field(default_factory=time.time)
    # The time zone the fleet runs in when a scenario moved it to a lab zone for good (the
    # runner names the hours of later windows in it); None: the inventory's own (CET).
    zone: ZoneInfo | None = None
    # The fake API's connection records (their ids) of hosts destroyed so far: what those
    # received does not count as sent to the fleet, which promises only what a surviving
    # host captured (a host that comes back empty opens new records, which count).
    gone_connections: set[int] = field(default_factory=set)
    # The collector commands the main's hourly cron entry runs, in order (read from its cron
    # file when first needed, again after the main moved).
    _cron: tuple[str, tuple[str, ...]] = ("", ())

    def __post_init__(self) -> None:
        """A lab the fault suite moved to a lab time zone (`tests.faults.destruction`) keeps
        it: its inventory names it and the state file holds its compiled bytes."""
        name = self.state.get("inventory_vars", {}).get("collector_timezone", "")
        compiled = self.state.get("zones", {}).get(name)
        if self.zone is None and compiled:
            self.zone = ZoneInfo.from_file(io.BytesIO(base64.b64decode(compiled)), key=name)

    def last_ended(self, host: str, command: str) -> float:
        """When the suite's last `command` on `host` ended (or the handle was made)."""
        return self.last_run.get((host, command), self.made_at)

    @property
    def hosts(self) -> list[str]:
        return list(self.state["hosts"])

    @property
    def secondaries(self) -> list[str]:
        return [name for name in self.hosts if name != self.main]

    def run(self, host: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result: subprocess.CompletedProcess[str] = self.fleet.on_host(self.state, host, command,
                                                                      check=check)
        return result

    def collector(self, host: str, subcommand: str) -> subprocess.CompletedProcess[str]:
        """Run a collector subcommand as the service user. A run refused by another run's lock
        (a scenario's own background upload, say) is run again once that one is done."""
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            result = self.run(host, as_collector(subcommand), check=False)
            self.last_run[(host, subcommand.split()[0])] = time.time()
            if (result.returncode == 0 or not LOCKED.search(result.stderr)
                    or time.monotonic() > deadline):
                return result
            print(f"   {host}: {subcommand.split()[0]} waits for the run that holds its lock",
                  flush=True)
            time.sleep(2)

    def stop_cron(self) -> None:
        """Stop and disable every host's cron daemon (the boot after a power cut keeps it
        off; the role installs the cron entries but leaves the daemon alone)."""
        for host in self.hosts:
            self.run(host, f"systemctl disable --now {CRON_UNIT} 2>&1")

    def hourly_commands(self) -> tuple[str, ...]:
        """The collector subcommands of the main's hourly cron entry, in its order (`process`,
        `upload`, and `replicate` once the role schedules it), as the role wrote them."""
        if self._cron[0] != self.main:
            text = self.run(self.main, f"cat /etc/cron.d/{CRON_FILE}", check=False).stdout
            self._cron = (self.main, hourly_cron_commands(text) or ("process", "upload"))
        return self._cron[1]

    def hourly_cycle(self) -> bool:
        """What the hosts' cron jobs would have done by now: when the main has a due hour
        waiting, `send` on every secondary, then the main's hourly entry (`process`, `upload`
        and whatever else the role schedules there, in its order). Returns whether it ran."""
        waiting = self.status(self.main)[1].get("processing", {}).get("hours_waiting", 0)
        if not waiting:
            return False
        for host in self.secondaries:
            self.collector(host, "send")
        outcomes = [f"{command} rc {self.collector(self.main, command).returncode}"
                    for command in self.hourly_commands()]
        print(f"   hourly cycle, as cron would run it: {', '.join(outcomes)}", flush=True)
        return True

    def token(self, host: str) -> str:
        return str(self.state["tokens"][host])

    def _control(self, double: str, path: str, body: Any = None) -> Any:
        """A test double's control API on loopback: GET, or POST of `body` as JSON."""
        port = self.state["processes"][double]["port"]
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                         method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def _api(self, path: str, body: Any = None) -> Any:
        return self._control("fake_api", path, body)

    def api_log(self) -> dict[str, Any]:
        """The fake API's log; on a Bluesky lab, every fake Jetstream instance's log (by
        instance) and the moment it was read (the window of the network's events)."""
        if self.fleet.source == "bluesky":
            return {"at": time.time(),
                    "instances": {name: self.jetstream(name, "/_control/log")
                                  for name in JETSTREAM_INSTANCES}}
        log: dict[str, Any] = self._api("/_control/log")
        return log

    def jetstream(self, instance: str, path: str, body: Any = None) -> Any:
        """One fake Jetstream instance's control API (GET, or POST of `body`)."""
        return self._control(f"jetstream_{instance}", path, body)

    def api_faults(self, faults: list[dict[str, Any]]) -> None:
        self._api("/_control/faults", faults)

    def wait_faults_consumed(self, timeout: float = 180.0) -> bool:
        """Wait until the fake API has applied every queued fault."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.api_log()["pending_faults"]:
                    return True
            except OSError:
                pass  # a `refuse` fault closes the control port too
            time.sleep(0.5)
        return False

    def status(self, host: str) -> tuple[int, dict[str, Any]]:
        result = self.run(host, f"{COLLECTOR} --settings {SETTINGS} status --json",
                          check=False)
        try:
            return result.returncode, dict(json.loads(result.stdout))
        except ValueError:
            return result.returncode, {}

    def healthy(self, reconnected_since: dict[str, float] | None = None) -> bool:
        """Every host exits 0 from `collector status` and its stream is connected; a host in
        `reconnected_since` must also hold a connection opened after that moment (epoch), so
        a health record written before the fault does not count as a recovery. What was
        wrong is kept in `unhealthy`."""
        for host in self.hosts:
            code, status = self.status(host)
            stream = status.get("stream", {})
            since = (reconnected_since or {}).get(host)
            if code != 0 or not stream.get("connected"):
                problems = "; ".join(status.get("problems", [])) or "not connected"
                self.unhealthy = f"{host}: {problems}"[:300]
                return False
            if since is not None and float(stream.get("connected_since", 0)) < since:
                self.unhealthy = f"{host}: no new connection since the fault"
                return False
        self.unhealthy = ""
        return True

    def wait_healthy(self, timeout: float,
                     reconnected_since: dict[str, float] | None = None) -> float | None:
        """Seconds until the whole fleet is healthy, or None if it never was within timeout
        (`unhealthy` then says why)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.healthy(reconnected_since):
                return time.monotonic() - started
            time.sleep(1.0)
        return None

    def setting(self, host: str, key: str) -> str:
        """One value of the host's server_settings.txt (the file the role wrote)."""
        return self.run(host, f"sed -n 's/^{key}=//p' {SETTINGS}").stdout.strip()

    def stream_pid(self, host: str) -> str:
        """The stream service's main process on the host (as the host numbers it)."""
        return self.run(host, f"systemctl show -p MainPID --value {STREAM_UNIT}").stdout.strip()

    def init_pid(self, host: str) -> int:
        """The host's init (its systemd), as this machine numbers it: nspawn's child."""
        pid = int(self.state["hosts"][host]["pid"])
        return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])

    def kill_stream(self, host: str) -> None:
        """kill -9 of the stream's main process (systemd restarts it: Restart=always)."""
        self.run(host, f"kill -9 {self.stream_pid(host)}")

    def power_off(self, host: str) -> None:
        """Cut the power: SIGKILL the host's init, which kills every process of the host at
        once (its PID namespace ends), nothing shut down cleanly; then its data disk loses
        what the kernel had not written back yet (`nspawn.cut_data_disk`)."""
        record = self.state["hosts"][host]
        pid = int(record["pid"])
        os.kill(self.init_pid(host), 9)
        deadline = time.monotonic() + 60
        while nspawn.pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if nspawn.pid_alive(pid):
            raise RuntimeError(f"{host} did not power off")
        nspawn.cut_data_disk(Path(record["root"]))

    def power_on(self, host: str) -> None:
        """Boot the host again from its own disk (what it had written survives)."""
        record = self.state["hosts"][host]
        record["pid"] = nspawn.boot(Path(record["root"]), host, Path(record["log"]))
        self.fleet.save_state(self.state)
        nspawn.wait_until_up(nspawn.Host(**record), nspawn.controller_key(self.fleet.cache_dir))

    def destroy(self, host: str) -> None:
        """The host gone for good (`fleet.destroy`); what it received from the fake API stops
        counting as sent (`gone_connections`). Stays the main until a promotion says
        otherwise."""
        tokens = {self.state["tokens"][host], self.state["next_tokens"][host]}
        self.fleet.destroy(self.state, host)
        time.sleep(0.5)  # the fake API sees the connection close
        self.gone_connections.update(int(record["id"]) for record in self.api_log()["connections"]
                                     if record.get("token") in tokens)

    def recreate(self, host: str) -> None:
        """A destroyed host back with an empty disk (`fleet.recreate`), not yet configured."""
        self.fleet.recreate(self.state, host)

    def wait_for_closed_chunk(self, hosts: Iterable[str], after: float = 0.0) -> None:
        """Wait until each host holds a closed chunk last written after `after` (epoch).
        On a secondary, a chunk closed after its last `send` ended is one that send has not
        pushed yet (a secondary keeps what it pushed, until retention); on the main, a chunk
        closed after the last `process` ended holds lines no output has yet. Chunks close
        every minute; since the suite's own runs are the only ones, one usually already
        waits."""
        deadline = time.monotonic() + CHUNK_WAIT_SECONDS
        for host in hosts:
            folder = shlex.quote(self.setting(host, "data_storage_dst"))
            while True:
                listing = self.run(host, f"find {folder} -path '*/.*' -prune -o -name '*.jsonl' "
                                   "-printf '%T@ %p\\n'", check=False).stdout
                if chunk_closed_after(listing.splitlines(), after):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{host} closed no chunk within {CHUNK_WAIT_SECONDS:g} s")
                time.sleep(1.0)

    def wait_for_unsent_chunks(self) -> None:
        """Wait until every secondary holds a closed chunk not yet pushed, one closed after
        its last `send` (with nothing to push, `send` rightly succeeds without calling the
        main)."""
        for host in self.secondaries:
            self.wait_for_closed_chunk([host], self.last_ended(host, "send"))

    def send_all(self, expect_ok: bool, powered_off: str = "") -> None:
        """One `send` on every secondary that is running, as the hourly cron runs it."""
        for host in self.secondaries:
            if host == powered_off:
                continue
            result = self.collector(host, "send")
            if (result.returncode == 0) != expect_ok:
                raise RuntimeError(f"send on {host}: rc {result.returncode} "
                                   f"{result.stderr.strip()[-200:]}")


Step = Callable[[Lab], None]


def _nothing(_: Lab) -> None:
    return None


@dataclass
class Scenario:
    """One fault: its steps and what the table says about it."""

    name: str
    description: str
    inject: Step
    recover: Step = _nothing
    setup: Step = _nothing
    # The hosts whose stream the fault breaks: each must reconnect before the fleet counts
    # as recovered.
    reconnects: Callable[[Lab], list[str]] = lambda lab: []
    # Checks after the final flush (process on the main) beyond the id counts, such as "the
    # hour reached OSF" or "the alert was delivered"; returns what is wrong, or "" if nothing.
    verify: Callable[[Lab], str] = lambda lab: ""
    # Figures worth a line in the row that the checks found on the way (read after verify).
    notes: Callable[[], str] = lambda: ""
    # After the window is measured, before the next scenario: undo what setup changed (a
    # mount, a setting) so later scenarios find the fleet as it was.
    cleanup: Step = _nothing
    # The time zone the fleet runs in during the window when the scenario changes it (known
    # after setup). The window's hours are named in it and exist only while the fleet uses
    # it, so the scenario's cleanup processes them itself and the final flush leaves them be.
    zone: Callable[[], ZoneInfo | None] = lambda: None
    # The fleet must never stop streaming: no message of the window may be missed by every
    # host (the runner measures the longest such stretch from the fake API's record).
    gapless: bool = False
    # The lab it runs in: "" the first; a name (`b`, `c`) a lab of its own, booted side by
    # side with the first (`tests.faults.run`), for a long scenario whose time is mostly
    # waiting (a ten-minute power cut), so the campaign takes about as long as its first lab;
    # `d` for the rows that destroy hosts (tests.faults.destruction).
    lab: str = ""
    # Hosts its lab boots with (the largest of its lab's scenarios wins).
    hosts: int = 2
    # What its lab's fleet captures (`x`, or `bluesky` on fake Jetstream instances): a lab
    # runs scenarios of one source only (`tests.faults.bluesky`).
    source: str = "x"


# ---- 1. kill -9 of the stream ---------------------------------------------------------------

def _one_host(lab: Lab) -> list[str]:
    return [lab.secondaries[0] if lab.secondaries else lab.main]


def _every_host(lab: Lab) -> list[str]:
    return lab.hosts


def _kill_one(lab: Lab) -> None:
    for host in _one_host(lab):
        lab.kill_stream(host)


def _kill_all(lab: Lab) -> None:
    for host in lab.hosts:
        lab.kill_stream(host)


# ---- 7. the main swapped mid-day; the API keys rotated under load --------------------------

SWAP_PUSH_INTERVAL = 2.0


def _swap_main(lab: Lab) -> None:
    """Swap the main while every secondary pushes every few seconds, so that pushes meet the
    handover: one landing on the former main after its data was packed would be lost."""
    stop = threading.Event()
    outcomes: Counter[str] = Counter()

    def push(host: str) -> None:
        while not stop.is_set():
            outcomes["ok" if lab.collector(host, "send").returncode == 0 else "failed"] += 1
            stop.wait(SWAP_PUSH_INTERVAL)

    pushers = [threading.Thread(target=push, args=(host,), daemon=True)
               for host in lab.secondaries]
    for pusher in pushers:
        pusher.start()
    try:
        if lab.fleet.swap() != 0:
            raise RuntimeError("site.yml did not swap the main")
    finally:
        stop.set()
        for pusher in pushers:
            pusher.join()
    lab.main = lab.fleet.main_of_inventory()
    print(f"   pushes during the swap: {outcomes['ok']} succeeded, {outcomes['failed']} "
          "refused or failed", flush=True)


def _rotate_keys(lab: Lab) -> None:
    if lab.fleet.rotate() != 0:
        raise RuntimeError("rotate_api_keys.yml failed")
    lab.state = lab.fleet.load_state()  # the new tokens (the API faults pick them per host)


# ---- 3. SSH from the secondaries to the main blocked for three cycles -----------------------

SSH_BLOCKED_CYCLES = 3


def _block_ssh(lab: Lab) -> None:
    lab.wait_for_unsent_chunks()
    lab.run(lab.main, f"mv {PUSH_AUTHORIZED_KEYS} {PUSH_AUTHORIZED_KEYS}.blocked")
    for _ in range(SSH_BLOCKED_CYCLES):
        lab.send_all(expect_ok=False)


def _unblock_ssh(lab: Lab) -> None:
    lab.run(lab.main, f"mv {PUSH_AUTHORIZED_KEYS}.blocked {PUSH_AUTHORIZED_KEYS}")
    lab.send_all(expect_ok=True)  # the next hourly cycle: the blocked cycles' backlog goes


# ---- 2. a host powered off for ten minutes --------------------------------------------------

POWER_OFF_SECONDS = 600.0


def power_off_seconds() -> float:
    """How long a power cut lasts: FAULTS_POWER_OFF_SECONDS shortens it for a quick trial
    (read when the scenarios are listed and run); the table's rows use the default."""
    return float(os.environ.get("FAULTS_POWER_OFF_SECONDS", str(POWER_OFF_SECONDS)))


def _power_cycle(pick: Callable[[Lab], str]) -> Step:
    def inject(lab: Lab) -> None:
        host = pick(lab)
        seconds = power_off_seconds()
        lab.power_off(host)
        time.sleep(seconds / 2)
        # The hourly push falls in the outage: it fails if the main is the one that is off.
        lab.send_all(expect_ok=host != lab.main, powered_off=host)
        time.sleep(seconds / 2)
    return inject


def _power_on(pick: Callable[[Lab], str]) -> Step:
    def recover(lab: Lab) -> None:
        lab.power_on(pick(lab))
        lab.send_all(expect_ok=True)  # the next cycle catches up
    return recover


def _a_secondary(lab: Lab) -> str:
    return lab.secondaries[0]


def _the_main(lab: Lab) -> str:
    return lab.main


# ---- 4. stream faults of the fake API, both hosts connected ---------------------------------

def _api_fault(*faults: dict[str, Any]) -> Step:
    """Queue the faults once per host token (staggered), then wait until all were applied."""
    def inject(lab: Lab) -> None:
        queued = []
        for number, host in enumerate(lab.hosts):
            for fault in faults:
                one = dict(fault, token=lab.token(host))
                if "after" in one:
                    one["after"] = int(one["after"]) + 20 * number
                queued.append(one)
        lab.api_faults(queued)
        if not lab.wait_faults_consumed():
            raise RuntimeError("the fake API did not apply every fault in time")
    return inject


API_FAULTS: dict[str, tuple[dict[str, Any], ...]] = {
    "api-rst": ({"kind": "rst", "after": 40},),
    "api-drop-mid-line": ({"kind": "drop_mid_line", "after": 40},),
    "api-clean-end": ({"kind": "clean_end", "after": 40},),
    "api-partial-then-end": ({"kind": "partial_then_end", "after": 40},),
    "api-malformed-line": ({"kind": "malformed_line", "after": 40},
                           {"kind": "non_json_line", "after": 20}),
    "api-operational-disconnect": ({"kind": "operational_disconnect", "after": 40,
                                    "variant": "UpstreamOperationalDisconnect"},),
    "api-silent-stall": ({"kind": "silent_stall", "after": 40, "seconds": 15},),
    "api-503-on-reconnect": ({"kind": "rst", "after": 40},
                             {"kind": "status", "status": 503, "count": 2}),
    # The whole endpoint refuses connections for a while (once per host: 2 x 10 s).
    "api-refused-on-reconnect": ({"kind": "rst", "after": 40}, {"kind": "refuse", "seconds": 10}),
    "api-no-headers-on-reconnect": ({"kind": "rst", "after": 40},
                                    {"kind": "no_headers", "seconds": 30}),
    "api-429-on-reconnect": ({"kind": "rst", "after": 40}, {"kind": "status", "status": 429}),
    "api-401-on-reconnect": ({"kind": "rst", "after": 40}, {"kind": "status", "status": 401}),
    "api-403-on-reconnect": ({"kind": "rst", "after": 40}, {"kind": "status", "status": 403}),
    "api-500-on-reconnect": ({"kind": "rst", "after": 40}, {"kind": "status", "status": 500}),
    "api-operational-disconnect-legacy": ({"kind": "operational_disconnect", "after": 40,
                                           "variant": "OperationalDisconnect"},),
    # Heartbeats only for a while (messages due meanwhile are never sent by the fake).
    # Longer than the lab's stall_seconds (20): the collector must give up and reconnect.
    "api-heartbeat-stall": ({"kind": "heartbeat_stall", "after": 40, "seconds": 35},),
}


# ---- the same faults injected from outside (kernel, process signals, services) --------------
# Each mirrors a scenario above whose fault the fake API or the runner plays; the rows should
# match, which shows the fakes' faults stand for the real ones.

def _api_port(lab: Lab) -> int:
    return int(lab.state["processes"]["fake_api"]["port"])


def _destroy_stream_sockets(lab: Lab) -> None:
    """Like `api-rst`: the kernel aborts each host's stream socket (`ss -K`), host by host."""
    port = _api_port(lab)
    for host in lab.hosts:
        # The host sees only its own processes, so this finds its collector's connection.
        found = lab.run(host, f"ss -tnpH state established dport = :{port}").stdout
        sports = [line.split()[2].rsplit(":", 1)[1] for line in found.splitlines()
                  if "collector" in line or "python" in line]
        if not sports:
            raise RuntimeError(f"{host}: no stream connection to port {port} found")
        for sport in sports:
            # From the machine: the hosts share its network but lack CAP_NET_ADMIN.
            nspawn.run(["ss", "-K", "state", "established", "dport", "=", f":{port}",
                        "sport", "=", f":{sport}"], stdout=subprocess.DEVNULL)
        time.sleep(3)


def _freeze_api(lab: Lab) -> None:
    """Like `api-silent-stall` then `api-no-headers`: the API process stops (SIGSTOP) for
    longer than the read timeout, so streams go silent and reconnects get no answer."""
    pid = int(lab.state["processes"]["fake_api"]["pid"])
    os.kill(pid, 19)  # SIGSTOP
    try:
        time.sleep(30)
    finally:
        os.kill(pid, 18)  # SIGCONT


def _stop_main_sshd(lab: Lab) -> None:
    """Like `ssh-blocked-3-cycles`: the main's sshd is stopped for three pushes."""
    lab.wait_for_unsent_chunks()
    lab.run(lab.main, "systemctl stop ssh.socket ssh.service 2>/dev/null; "
            "systemctl stop ssh.service", check=False)
    try:
        for _ in range(SSH_BLOCKED_CYCLES):
            lab.send_all(expect_ok=False)
    finally:
        # The lab reaches its hosts over that sshd: start it again through the machine.
        nspawn.run(["nsenter", "-t", str(lab.init_pid(lab.main)), "-a",
                    "systemctl", "start", "ssh.service"])



def all_scenarios() -> list[Scenario]:
    off_minutes = power_off_seconds() / 60
    scenarios = [
        Scenario("kill9-one-host", "1. kill -9 of the stream on one host", _kill_one,
                 reconnects=_one_host),
        Scenario("kill9-all-hosts", "1. kill -9 of the stream on all hosts at once", _kill_all,
                 reconnects=_every_host),
        Scenario("power-off-secondary",
                 f"2. a secondary powered off for {off_minutes:g} minutes",
                 _power_cycle(_a_secondary), _power_on(_a_secondary),
                 reconnects=lambda lab: [_a_secondary(lab)], lab="b"),
        Scenario("power-off-main",
                 f"2. the main powered off for {off_minutes:g} minutes (the "
                 "secondary keeps capturing; the main catches up when back)",
                 _power_cycle(_the_main), _power_on(_the_main),
                 reconnects=lambda lab: [_the_main(lab)], lab="c"),
        Scenario("ssh-blocked-3-cycles",
                 "3. SSH from the secondaries to the main refused for three `send` runs",
                 _block_ssh, _unblock_ssh),
        Scenario("swap-main-mid-day",
                 "7. the main moved to the other host (inventory edit, site.yml) mid-day, "
                 "the secondaries pushing every few seconds meanwhile",
                 _swap_main),
        Scenario("rotate-keys-under-load",
                 "7. every host's bearer token rotated (rotate_api_keys.yml) while streaming; "
                 "the note gives the longest stretch of messages no host received",
                 _rotate_keys, reconnects=_every_host, gapless=True),
    ]
    for name, faults in API_FAULTS.items():
        kinds = ", ".join(str(fault["kind"]) + (f" {fault['status']}" if "status" in fault
                                                else "") for fault in faults)
        # Bad lines and a stall shorter than the stall limit need not end the connection.
        keeps_connection = name in ("api-silent-stall", "api-malformed-line")
        breaks = (lambda lab: []) if keeps_connection else _every_host
        scenarios.append(Scenario(name, f"4. fake API fault on every host: {kinds}",
                                  _api_fault(*faults), reconnects=breaks))
    scenarios += [
        Scenario("outside-socket-abort", "4 from outside: each host's stream socket aborted "
                 "by the kernel (`ss -K`), as api-rst", _destroy_stream_sockets,
                 reconnects=_every_host),
        Scenario("outside-api-frozen", "4 from outside: the API process stopped (SIGSTOP) "
                 "for 30 s, as api-silent-stall and api-no-headers", _freeze_api,
                 reconnects=_every_host),
        Scenario("outside-sshd-stopped", "3 from outside: the main's sshd stopped for three "
                 "`send` runs, as ssh-blocked-3-cycles", _stop_main_sshd,
                 lambda lab: lab.send_all(expect_ok=True)),
    ]
    # Scenarios kept in their own modules (imported here: they import this module).
    from tests.faults import bluesky, boundaries, destruction, hostfaults, services
    return (scenarios + services.scenarios() + hostfaults.scenarios() + boundaries.scenarios()
            + destruction.scenarios() + bluesky.scenarios())
