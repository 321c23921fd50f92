"""8. The Bluesky fleet (SPEC section 8): the same faults on a fleet that captures Jetstream.

These rows run in a lab of their own (`BLUESKY_LAB`), booted with `COLLECTOR_LAB_SOURCE=bluesky`
(`tests.lab.fleet`): two fake Jetstream instances serving the same network from the same
epoch, each host on a different one (the role's default), as a real fleet would sit on
`jetstream.us-east` and `jetstream.us-west`.

What counts as sent is stronger than for X: every post the *network* created while the
window was open (the fakes' shared universe, `created_between`), whether or not an instance
ever sent it to a host. A post that no host received, because every host was down, counts
as lost unless the cursor replay brought it back; lost 0 therefore means the fleet published
every post created in the window.

* `bluesky-kill9-one-host`: kill -9 of one host's stream; systemd restarts it and it resumes
  from the cursor its chunks hold.
* `bluesky-all-stopped`: every host's stream stopped (`systemctl stop`) for ten minutes, then
  started again: nothing was captured meanwhile, by anyone; each resumes from its cursor and
  the instances replay the gap.
* `bluesky-instance-fails`: the main's instance closes its connection with 1011 and then
  refuses connections for a minute, while the other host's instance keeps serving.
* `bluesky-replay-repeats`: both instances repeat the last 200 events they sent, then close
  (1011), so the reconnect's rewound cursor repeats more: the merge must publish each once.
* `bluesky-power-off-main`: the main's power cut for two minutes (what its disk had not
  written back is lost, `Lab.power_off`); the secondary keeps capturing, the main resumes
  from what its disk kept.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from tests.doubles.fake_jetstream.universe import Universe
from tests.faults.scenarios import STREAM_UNIT, Lab, Scenario
from tests.lab.fleet import JETSTREAM_INSTANCES, JETSTREAM_SEED

BLUESKY_LAB = "e"
OUTAGE_SECONDS = 600.0
POWER_OFF_SECONDS = 120.0
COLLECTIONS = ("app.bsky.feed.post",)  # the lab inventory keeps the role's default


def outage_seconds() -> float:
    """How long every stream is stopped: FAULTS_BLUESKY_OUTAGE_SECONDS shortens it for a
    quick trial; the table's row uses the default."""
    return float(os.environ.get("FAULTS_BLUESKY_OUTAGE_SECONDS", str(OUTAGE_SECONDS)))


# ---- the measure ---------------------------------------------------------------------------

def created_between(epoch: float, rate: float, start: float, end: float,
                    collections: Iterable[str] = COLLECTIONS) -> set[str]:
    """AT-URIs the network created (the fakes' universe) in events due from `start` to
    `end` (epoch seconds)."""
    universe = Universe(seed=JETSTREAM_SEED, epoch=epoch, rate=rate)
    first = universe.index_at_us(int(start * 1_000_000))
    last = universe.index_at_us(int(end * 1_000_000))
    return set(universe.created_uris(range(max(first, 0), max(last, 0)), tuple(collections)))


def sent_in_window(lab: Lab, before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """The window's posts: every create the network made between the two log snapshots."""
    return created_between(float(lab.state["jetstream_epoch"]), lab.fleet.fake_api_rate,
                           float(before["at"]), float(after["at"]))


# ---- the faults ----------------------------------------------------------------------------

def instance_of(lab: Lab, host: str) -> str:
    """The fake instance the host's settings point at (by its port)."""
    port = urlparse(lab.setting(host, "jetstream_url")).port
    for name in JETSTREAM_INSTANCES:
        if int(lab.state["processes"][f"jetstream_{name}"]["port"]) == port:
            return name
    raise RuntimeError(f"{host} streams from no fake instance of this lab (port {port})")


def _queue(lab: Lab, instance: str, faults: list[dict[str, Any]],
           timeout: float = 180.0) -> None:
    """Queue faults on one instance and wait until it applied them all."""
    lab.jetstream(instance, "/_control/faults", faults)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not lab.jetstream(instance, "/_control/log")["pending_faults"]:
                return
        except OSError:
            pass  # a `refuse` fault closes the control port too
        time.sleep(0.5)
    raise RuntimeError(f"instance {instance} did not apply its faults in time")


def _kill_one(lab: Lab) -> None:
    lab.kill_stream(lab.secondaries[0])


def _stop_every_stream(lab: Lab) -> None:
    for host in lab.hosts:
        lab.run(host, f"systemctl stop {STREAM_UNIT}")
    time.sleep(outage_seconds())


def _start_every_stream(lab: Lab) -> None:
    for host in lab.hosts:
        lab.run(host, f"systemctl start {STREAM_UNIT}")


def _fail_main_instance(lab: Lab) -> None:
    _queue(lab, instance_of(lab, lab.main),
           [{"kind": "close", "after": 20, "code": 1011, "reason": "upstream lost"},
            {"kind": "refuse", "seconds": 60}])


def _repeat_then_close(lab: Lab) -> None:
    for instance in {instance_of(lab, host) for host in lab.hosts}:
        _queue(lab, instance, [{"kind": "repeat", "after": 20, "count": 200},
                               {"kind": "close", "after": 40, "code": 1011,
                                "reason": "upstream lost"}])


def _power_off_main(lab: Lab) -> None:
    lab.power_off(lab.main)
    time.sleep(POWER_OFF_SECONDS)


def _power_on_main(lab: Lab) -> None:
    lab.power_on(lab.main)
    lab.send_all(expect_ok=True)


def _the_main(lab: Lab) -> list[str]:
    return [lab.main]


def scenarios() -> list[Scenario]:
    def bluesky(name: str, description: str, **steps: Any) -> Scenario:
        return Scenario(name, f"8. Bluesky: {description}", lab=BLUESKY_LAB, source="bluesky",
                        **steps)

    minutes = outage_seconds() / 60
    return [
        bluesky("bluesky-kill9-one-host", "kill -9 of the stream on one host",
                inject=_kill_one, reconnects=lambda lab: [lab.secondaries[0]]),
        bluesky("bluesky-all-stopped", f"every host's stream stopped for {minutes:g} minutes "
                "(nothing captured meanwhile; the cursor replay brings it back)",
                inject=_stop_every_stream, recover=_start_every_stream,
                reconnects=lambda lab: lab.hosts),
        bluesky("bluesky-instance-fails", "the main's instance closes (1011) and refuses "
                "connections for 60 s; the other host's instance keeps serving",
                inject=_fail_main_instance, reconnects=_the_main),
        bluesky("bluesky-replay-repeats", "both instances repeat their last 200 events, then "
                "close (1011): the rewound cursor repeats more", inject=_repeat_then_close,
                reconnects=lambda lab: lab.hosts),
        bluesky("bluesky-power-off-main", f"the main's power cut for {POWER_OFF_SECONDS / 60:g} "
                "minutes (its unwritten data lost; the secondary keeps capturing)",
                inject=_power_off_main, recover=_power_on_main, reconnects=_the_main),
    ]
