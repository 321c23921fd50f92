"""Fault scenarios of the reliability campaign and the lab handle they act through.

A scenario has four steps, which the runner calls in order around its measurement window:
`setup` (put the fleet in the state the fault needs), `inject` (cause the fault), `recover`
(end the fault the way an operator or the product itself would; the fault counts as ended
when it returns) and, implicitly, the measurement done by the runner (`tests.faults.run`).
Scenarios only touch the lab through `Lab`, which runs commands on the real hosts over SSH
and talks to the fake API's control endpoints.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

STREAM_UNIT = "collector.service"
# Where the role puts the root-owned authorized_keys file that lets secondaries push.
PUSH_AUTHORIZED_KEYS = "/etc/ssh/authorized_keys/collector"


@dataclass
class Lab:
    """A running lab (its state file) and the helpers of `tests.lab.fleet` to act on it."""

    fleet: ModuleType
    state: dict[str, Any]
    main: str

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
        return self.run(host, self.fleet.as_collector(subcommand), check=False)

    def token(self, host: str) -> str:
        return str(self.state["tokens"][host])

    def _api(self, path: str, body: Any = None) -> Any:
        port = self.state["processes"]["fake_api"]["port"]
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                         method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def api_log(self) -> dict[str, Any]:
        log: dict[str, Any] = self._api("/_control/log")
        return log

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
        result = self.run(host, f"{self.fleet.COLLECTOR} --settings {self.fleet.SETTINGS} "
                          "status --json", check=False)
        try:
            return result.returncode, dict(json.loads(result.stdout))
        except ValueError:
            return result.returncode, {}

    def healthy(self, reconnected_since: dict[str, float] | None = None) -> bool:
        """Every host exits 0 from `collector status` and its stream is connected; a host in
        `reconnected_since` must also hold a connection opened after that moment (epoch), so
        a health record written before the fault does not count as a recovery."""
        for host in self.hosts:
            code, status = self.status(host)
            stream = status.get("stream", {})
            if code != 0 or not stream.get("connected"):
                return False
            since = (reconnected_since or {}).get(host)
            if since is not None and float(stream.get("connected_since", 0)) < since:
                return False
        return True

    def wait_healthy(self, timeout: float,
                     reconnected_since: dict[str, float] | None = None) -> float | None:
        """Seconds until the whole fleet is healthy, or None if it never was within timeout."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.healthy(reconnected_since):
                return time.monotonic() - started
            time.sleep(1.0)
        return None

    def kill_stream(self, host: str) -> None:
        """kill -9 of the stream's main process (systemd restarts it: Restart=always)."""
        self.run(host, f"kill -9 $(systemctl show -p MainPID --value {STREAM_UNIT})")


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


# ---- 3. SSH from the secondaries to the main blocked for three cycles -----------------------

SSH_BLOCKED_CYCLES = 3


def _block_ssh(lab: Lab) -> None:
    lab.run(lab.main, f"mv {PUSH_AUTHORIZED_KEYS} {PUSH_AUTHORIZED_KEYS}.blocked")
    for _ in range(SSH_BLOCKED_CYCLES):
        for host in lab.secondaries:
            result = lab.collector(host, "send")
            if result.returncode == 0:
                raise RuntimeError(f"send on {host} succeeded although SSH was blocked")


def _unblock_ssh(lab: Lab) -> None:
    lab.run(lab.main, f"mv {PUSH_AUTHORIZED_KEYS}.blocked {PUSH_AUTHORIZED_KEYS}")
    # The next hourly cycle: the backlog of the blocked cycles goes through.
    for host in lab.secondaries:
        result = lab.collector(host, "send")
        if result.returncode != 0:
            raise RuntimeError(f"send on {host} failed after SSH came back: "
                               f"{result.stderr.strip()[-200:]}")


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
}


def all_scenarios() -> list[Scenario]:
    scenarios = [
        Scenario("kill9-one-host", "1. kill -9 of the stream on one host", _kill_one,
                 reconnects=_one_host),
        Scenario("kill9-all-hosts", "1. kill -9 of the stream on all hosts at once", _kill_all,
                 reconnects=_every_host),
        Scenario("ssh-blocked-3-cycles",
                 "3. SSH from the secondaries to the main refused for three `send` runs",
                 _block_ssh, _unblock_ssh),
    ]
    for name, faults in API_FAULTS.items():
        kinds = ", ".join(str(fault["kind"]) + (f" {fault['status']}" if "status" in fault
                                                else "") for fault in faults)
        # Bad lines and a stall shorter than the stall limit need not end the connection.
        keeps_connection = name in ("api-silent-stall", "api-malformed-line")
        breaks = (lambda lab: []) if keeps_connection else _every_host
        scenarios.append(Scenario(name, f"4. fake API fault on every host: {kinds}",
                                  _api_fault(*faults), reconnects=breaks))
    return scenarios
