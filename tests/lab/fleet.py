"""`make lab`: boot Debian hosts, deploy the fleet with Ansible, let it stream, run one cycle.

    python -m tests.lab.fleet up [--hosts N] [--seconds S] [--suites S,S]
                                           # LAB_HOSTS, LAB_SECONDS, LAB_SUITES

Hosts are Debian 12 (bookworm) unless LAB_SUITES lists suites: the first host gets the first
suite, the second host the second, further hosts cycle (LAB_SUITES=bookworm,trixie: a mixed
fleet of Debian 12 and 13).
    python -m tests.lab.fleet status
    python -m tests.lab.fleet down

Which lab: `Lab.from_env` reads COLLECTOR_LAB_NAME (default `lab`), COLLECTOR_LAB_INVENTORY
(default inventory/lab/), COLLECTOR_LAB_CACHE, COLLECTOR_LAB_RATE, COLLECTOR_LAB_MIRROR,
COLLECTOR_LAB_PREBUILT and COLLECTOR_LAB_SOURCE (or LAB_SOURCE: `x`, the default, or `bluesky`)
when a command runs; nothing is read at import. The fault suite builds its own `Lab`s
(tests/faults/run.py).

`LAB_SOURCE=bluesky make lab` runs the same fleet on the Bluesky source: instead of the fake
X API, two fake Jetstream instances (`JETSTREAM_INSTANCES`, one process each, the same events
from the same epoch, each with its own `time_us`), and the role gives each host a different
one, as it gives each host a different public instance.

`up` builds (or reuses) the cached image and the wheelhouse, starts the test doubles on this
machine's loopback (fake API with one token per host, fake OSF, SMTP), boots the hosts, writes
`inventory/lab/`, runs `playbooks/site.yml`, lets the fleet stream, then forces one cycle
(send on the secondaries; process of the current hour with --force, upload and report --send
on the main) and prints a summary. Everything it starts is written to the state file before
it is waited on, so `down` stops all of it, even after an `up` that failed half way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.lab import nspawn
from tools import wheelhouse

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = wheelhouse.DEFAULT_OUT
COLLECTOR = "/opt/collector/venv/bin/collector"
SETTINGS = "/etc/collector/server_settings.txt"
OSF_PROJECT = "lab01"
SMTP_USER = "lab"
SOURCES = ("x", "bluesky")
# The fake Jetstream instances of a Bluesky lab (state["processes"]["jetstream_<name>"]).
JETSTREAM_INSTANCES = ("east", "west")
# Their replay window: the real one is 36 h; two hours cover every outage the lab makes.
JETSTREAM_LOOKBACK_SECONDS = 7200
JETSTREAM_SEED = 1


# ---- pieces ----------------------------------------------------------------------------------

def build_wheelhouse(out: Path = WHEELHOUSE) -> Path:
    """`make wheelhouse`: every default target (Debian 12 and 13, x86_64 and aarch64)."""
    wheelhouse.build(wheelhouse.default_targets(), out)
    return out


def suites_for(count: int, suites: list[str]) -> list[str]:
    """The suite of each of `count` hosts: the listed suites in turn."""
    unknown = [suite for suite in suites if suite not in nspawn.SUITES]
    if not suites or unknown:
        raise ValueError(f"LAB_SUITES: unknown suite {', '.join(unknown) or '(none)'}; "
                         f"choose among {', '.join(nspawn.SUITES)}")
    return [suites[index % len(suites)] for index in range(count)]


def stop_process(state: dict[str, Any], name: str) -> None:
    """Stop one test double (SIGTERM, then SIGKILL); its port and arguments stay recorded."""
    nspawn.stop_pid(int(state["processes"][name]["pid"]), timeout=10)


def host_names(count: int) -> list[str]:
    return [f"collector{i}" for i in range(1, count + 1)]


def as_collector(subcommand: str) -> str:
    return f"runuser -u collector -- {COLLECTOR} --settings {SETTINGS} {subcommand}"


def osf_files(port: int, token: str) -> list[str]:
    """Every file path in the fake OSF project, walking folders like a client would."""
    found: list[str] = []
    pending = [f"http://127.0.0.1:{port}/v2/nodes/{OSF_PROJECT}/files/osfstorage/"]
    while pending:
        url: str | None = pending.pop()
        while url:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                page = json.load(response)
            for item in page.get("data", []):
                attributes = item.get("attributes", {})
                if attributes.get("kind") == "folder":
                    pending.append(item["relationships"]["files"]["links"]["related"]["href"])
                else:
                    found.append(attributes.get("materialized_path") or attributes.get("name"))
            url = page.get("links", {}).get("next")
    return sorted(found)


# ---- the lab ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lab:
    """One lab: its folder `cache_dir/name` (state file, logs, hosts), its inventory folder,
    and what its test doubles and images are made with. Two labs can live side by side
    (`make lab` and Molecule, the fault suite's labs): each has its own name and inventory."""

    name: str
    # The cache every lab shares: the images, the lab's SSH key, each lab's own folder.
    cache_dir: Path
    inventory_dir: Path
    # Messages per second the fake API streams (the real sampled stream averages about 60).
    fake_api_rate: float = 20.0
    # Where debootstrap fetches an image's packages when the cache lacks that image.
    mirror: str = nspawn.DEFAULT_MIRROR
    # Another lab just built the wheelhouse: use it as it is when it is complete.
    wheelhouse_prebuilt: bool = False
    # What the fleet captures: `x` (the fake X API) or `bluesky` (fake Jetstream instances);
    # the fake's rate is then events per second.
    source: str = "x"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Lab:
        """The lab the environment names (`make lab`, Molecule): COLLECTOR_LAB_NAME,
        COLLECTOR_LAB_CACHE, COLLECTOR_LAB_INVENTORY, COLLECTOR_LAB_RATE, COLLECTOR_LAB_MIRROR,
        COLLECTOR_LAB_PREBUILT=1, COLLECTOR_LAB_SOURCE (or LAB_SOURCE)."""
        source = environ.get("COLLECTOR_LAB_SOURCE") or environ.get("LAB_SOURCE") or "x"
        if source not in SOURCES:
            raise ValueError(f"LAB_SOURCE={source!r}: choose x or bluesky")
        return cls(name=environ.get("COLLECTOR_LAB_NAME", "lab"),
                   cache_dir=nspawn.cache_dir_from_env(environ),
                   inventory_dir=Path(environ.get("COLLECTOR_LAB_INVENTORY",
                                                  REPO / "inventory" / "lab")),
                   # Bluesky: events/s of every kind; posts are about a tenth of them.
                   fake_api_rate=float(environ.get("COLLECTOR_LAB_RATE",
                                                   "100" if source == "bluesky" else "20")),
                   mirror=nspawn.mirror_from_env(environ),
                   wheelhouse_prebuilt=environ.get("COLLECTOR_LAB_PREBUILT") == "1",
                   source=source)

    @property
    def lab_dir(self) -> Path:
        return self.cache_dir / self.name

    @property
    def state_file(self) -> Path:
        return self.lab_dir / "state.json"

    # ---- state -----------------------------------------------------------------------------------

    def load_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return {"hosts": {}, "processes": {}}

    def save_state(self, state: dict[str, Any]) -> None:
        self.lab_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self.state_file)

    # ---- pieces ----------------------------------------------------------------------------------

    def start_process(self, state: dict[str, Any], name: str, args: list[str],
                      port: int = 0) -> int:
        """Start one test double in its own session; record it before waiting for its port."""
        self.lab_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.lab_dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        with open(self.lab_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", *args, "--port", str(port),
                                        "--port-file", str(port_file)],
                                       cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        state["processes"][name] = {"pid": process.pid, "args": args}
        self.save_state(state)
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {self.lab_dir / (name + '.log')}")
            time.sleep(0.1)
        port = int(port_file.read_text().strip())
        state["processes"][name]["port"] = port
        self.save_state(state)
        return port

    def restart_process(self, state: dict[str, Any], name: str) -> int:
        """Start a stopped test double again on the port the hosts' settings point at."""
        record = state["processes"][name]
        port = int(record["port"])
        self.start_process(state, name, list(record["args"]), port=port)
        return port

    def write_inventory(self, state: dict[str, Any], main: str,
                        hosts: list[str] | None = None) -> None:
        """inventory/lab/: hosts on their loopback ports, the doubles' addresses, one token each.

        `hosts` is the fleet the inventory lists (default: every running host), `main` among
        them; a destroyed host (`destroy`) may still be listed, at its old address, as an
        operator's inventory still lists a host that just died. `state["inventory_vars"]` (set
        by the fault suite, e.g. a lab time zone) is written over the lab's group variables."""
        names = list(state["hosts"]) if hosts is None else list(hosts)
        if main not in names:
            raise ValueError(f"the main {main} is not among the inventory's hosts {names}")
        known = {**state.get("gone", {}), **state["hosts"]}
        ports = {name: record["port"] for name, record in state["processes"].items()}
        lines = ["---",
                 "# Written by `python -m tests.lab.fleet up`; the lab's own throw-away values.",
                 "collectors:", "  children:", "    main:", "      hosts:", f"        {main}:",
                 "    secondary:"]
        secondaries = [f"        {name}:" for name in names if name != main]
        lines += ["      hosts:", *secondaries] if secondaries else ["      hosts: {}"]
        (self.inventory_dir / "group_vars").mkdir(parents=True, exist_ok=True)
        (self.inventory_dir / "host_vars").mkdir(parents=True, exist_ok=True)
        (self.inventory_dir / "hosts.yml").write_text("\n".join(lines) + "\n")
        key = nspawn.controller_key(self.cache_dir)
        group_vars = {
            "ansible_host": "127.0.0.1",
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(key),
            # Lab hosts get new host keys on every boot: no prompts, nothing remembered.
            "ansible_ssh_common_args":
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "ansible_python_interpreter": "/usr/bin/python3",
            **self.source_vars(ports),
            # Lab time is compressed: a stream with heartbeats but no tweet for 20 s is stalled.
            "collector_stall_seconds": 20,
            "collector_osf_enabled": True,
            "collector_osf_project": OSF_PROJECT,
            "collector_osf_base_url": f"http://127.0.0.1:{ports['fake_osf']}/v2/",
            "collector_osf_token": state["osf_token"],
            "collector_notifications": True,
            "collector_email_server": "127.0.0.1",
            "collector_email_port": ports["smtp"],
            "collector_email_user": SMTP_USER,
            "collector_email_password": state["smtp_password"],
            "collector_email_fromaddr": "collector@lab.invalid",
            "collector_email_toaddr": "team@lab.invalid",
            "collector_email_starttls": False,
            # Labs run side by side with the same host names: each hands a main over on its own.
            "collector_handover_dir": str(self.lab_dir / "handover"),
            # As on a host with node_exporter: collector.prom every minute (Molecule checks it).
            "collector_metrics_textfile_dir": "/var/lib/prometheus/node-exporter",
            **state.get("inventory_vars", {}),
        }
        (self.inventory_dir / "group_vars" / "all.yml").write_text(
            "---\n# Written by the lab.\n" + "".join(
                f"{key}: {json.dumps(value)}\n" for key, value in group_vars.items()))
        for old in (self.inventory_dir / "host_vars").glob("*.yml"):
            if old.stem not in names:
                old.unlink()
        for name in names:
            token = (f"collector_bearer_token: {json.dumps(state['tokens'][name])}\n"
                     if self.source == "x" else "")
            (self.inventory_dir / "host_vars" / f"{name}.yml").write_text(
                f"---\nansible_port: {known[name]['port']}\n{token}")

    def source_vars(self, ports: Mapping[str, int]) -> dict[str, Any]:
        """The inventory variables that point the fleet at its source's test doubles."""
        if self.source == "bluesky":
            return {
                "collector_source": "bluesky",
                # The role gives host i the instance i modulo their number.
                "collector_jetstream_instances": [
                    f"ws://127.0.0.1:{ports['jetstream_' + name]}/subscribe"
                    for name in JETSTREAM_INSTANCES],
                "collector_jetstream_compress": True,
            }
        return {
            "collector_api_base_url": f"http://127.0.0.1:{ports['fake_api']}",
            # The fake serves backfill as the Enterprise tier does: a restart of every host at
            # once then loses nothing of what was in flight (tests/faults, kill9-all-hosts).
            "collector_backfill_minutes": 2,
        }

    def inventory_hosts(self) -> list[str]:
        """Every host the lab inventory lists (main first)."""
        lines = (self.inventory_dir / "hosts.yml").read_text().splitlines()
        return [line.strip().rstrip(":") for line in lines
                if line.startswith("        ") and line.strip().endswith(":")]

    def ansible_playbook(self, playbook: str, *extra: str, log: Path | None = None) -> None:
        """Run a playbook from the repo root (so ansible.cfg applies); fail on a non-zero exit."""
        env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", PATH=f"{Path(sys.executable).parent}:"
                   + os.environ.get("PATH", ""))
        command = [str(Path(sys.executable).parent / "ansible-playbook"),
                   "-i", str(self.inventory_dir), str(REPO / "playbooks" / playbook), *extra]
        if log is None:
            subprocess.run(command, check=True, cwd=REPO, env=env)
            return
        with open(log, "w") as out:
            result = subprocess.run(command, cwd=REPO, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise RuntimeError(f"{playbook} failed (rc {result.returncode}); see {log}")

    def on_host(self, state: dict[str, Any], name: str, command: str,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a shell command on a lab host as root."""
        host = nspawn.Host(**state["hosts"][name])
        return subprocess.run(host.ssh_command(nspawn.controller_key(self.cache_dir), command),
                              text=True, capture_output=True, check=check, timeout=600)

    # ---- the commands ----------------------------------------------------------------------------

    def up(self, count: int, seconds: float, suites: list[str]) -> int:
        """The whole `make lab`: start, converge, stream, one forced cycle."""
        if self.start(count, suites) != 0:
            return 1
        state = self.load_state()
        converge_started = time.monotonic()
        self.ansible_playbook("site.yml", log=self.lab_dir / "site.log")
        print(f"site.yml converged in {time.monotonic() - converge_started:.0f} s "
              f"(log {self.lab_dir / 'site.log'})", flush=True)
        print(f"streaming for {seconds:.0f} s ...", flush=True)
        time.sleep(seconds)
        self.cycle(state, self.main_of_inventory())
        return 0

    def main_of_inventory(self) -> str:
        """The host the lab inventory currently lists under `main`."""
        lines = (self.inventory_dir / "hosts.yml").read_text().splitlines()
        return lines[lines.index("    main:") + 2].strip().rstrip(":")

    def swap(self) -> int:
        """Move the main to the next host (inventory edit) and re-run site.yml."""
        state = self.load_state()
        names = list(state["hosts"])
        old = self.main_of_inventory()
        new = names[(names.index(old) + 1) % len(names)]
        self.write_inventory(state, new)
        self.ansible_playbook("site.yml", log=self.lab_dir / "swap.log")
        print(f"main moved from {old} to {new} (log {self.lab_dir / 'swap.log'})")
        return 0

    def destroy(self, state: dict[str, Any], name: str) -> None:
        """The host gone for good (`nspawn.destroy_host`: killed at once, data disk and root
        deleted). It leaves the running hosts; its address and token stay known (`state["gone"]`)
        so an inventory can still list it, and `recreate` can bring the same hardware back."""
        record = state["hosts"][name]
        nspawn.destroy_host(nspawn.Host(**record))
        del state["hosts"][name]
        state.setdefault("gone", {})[name] = {"port": record["port"], "destroyed_at": time.time(),
                                              "suite": record.get("suite", nspawn.SUITE)}
        self.save_state(state)

    def recreate(self, state: dict[str, Any], name: str) -> nspawn.Host:
        """A destroyed host's hardware back with an empty disk: a fresh root from the image (new
        host keys, no collector) and a fresh data disk, under the same name, on its old address
        when that port is still free. Not in the inventory until the caller writes it."""
        gone = state.get("gone", {}).get(name)
        if gone is None or name in state["hosts"]:
            raise ValueError(f"{name} is not a destroyed host of this lab")
        port = int(gone["port"]) if nspawn.port_free(int(gone["port"])) else nspawn.free_port()
        key = nspawn.controller_key(self.cache_dir)
        host = nspawn.start_host(name, self.lab_dir / "hosts", key,
                                 str(gone.get("suite", nspawn.SUITE)), port=port,
                                 cache=self.cache_dir, mirror=self.mirror)
        state["hosts"][name] = asdict(host)
        del state["gone"][name]
        self.save_state(state)  # recorded before waiting: a failed boot is still stopped by `down`
        nspawn.wait_until_up(host, key)
        return host

    def rotate(self) -> int:
        """Put the next token of every host in the inventory and run rotate_api_keys.yml."""
        if self.source != "x":
            print("a Bluesky fleet has no API keys to rotate", file=sys.stderr)
            return 1
        state = self.load_state()
        state["tokens"], state["next_tokens"] = state["next_tokens"], state["tokens"]
        self.save_state(state)
        self.write_inventory(state, self.main_of_inventory())
        self.ansible_playbook("rotate_api_keys.yml", log=self.lab_dir / "rotate.log")
        print(f"tokens rotated (log {self.lab_dir / 'rotate.log'})")
        return 0

    def start(self, count: int, suites: list[str]) -> int:
        """Images, wheelhouse, test doubles, hosts and inventory; no Ansible run yet."""
        state = self.load_state()
        if state["hosts"] or state["processes"]:
            print("a lab is already recorded; run `make lab-down` first", file=sys.stderr)
            return 1
        started = time.monotonic()
        host_suites = suites_for(count, suites)
        for suite in sorted(set(host_suites)):
            image = nspawn.build_image(self.cache_dir, self.mirror, suite=suite)
            print(f"image {image} ready after {time.monotonic() - started:.0f} s", flush=True)
        key = nspawn.controller_key(self.cache_dir)
        # A lab booted beside another (the fault suite's second lab) uses the wheelhouse the
        # first one just built: rebuilding it would pull it from under the other's site.yml.
        prebuilt = wheelhouse.is_built(wheelhouse.default_targets(), WHEELHOUSE)
        if not self.wheelhouse_prebuilt or not prebuilt:
            build_wheelhouse()
        names = host_names(count)
        # Two tokens per host: the one in use and the next one, for `rotate` (the fake API
        # knows both).
        state.update(tokens={name: f"lab-{name}-{secrets.token_hex(8)}" for name in names},
                     next_tokens={name: f"lab-{name}-{secrets.token_hex(8)}" for name in names},
                     osf_token=f"osf-{secrets.token_hex(8)}", smtp_password=secrets.token_hex(8),
                     maildir=str(self.lab_dir / "mail"))
        shutil.rmtree(self.lab_dir / "mail", ignore_errors=True)
        (self.lab_dir / "fake_osf.json").unlink(missing_ok=True)  # a new lab's OSF starts empty
        self.save_state(state)
        self.start_source_doubles(state)
        self.start_process(state, "fake_osf", ["tests.doubles.fake_osf", "--token",
                                               state["osf_token"], "--project", OSF_PROJECT,
                                               "--state-file", str(self.lab_dir / "fake_osf.json")])
        self.start_process(state, "smtp", ["tests.doubles.smtp", "--user", SMTP_USER,
                                           "--password", state["smtp_password"],
                                           "--maildir", state["maildir"]])
        hosts_dir = self.lab_dir / "hosts"
        booted = []
        for name, suite in zip(names, host_suites, strict=True):
            host = nspawn.start_host(name, hosts_dir, key, suite, cache=self.cache_dir,
                                     mirror=self.mirror)
            state["hosts"][name] = asdict(host)
            self.save_state(state)
            booted.append(host)
        for host in booted:
            nspawn.wait_until_up(host, key)
        print(f"{count} hosts up after {time.monotonic() - started:.0f} s", flush=True)
        self.write_inventory(state, names[0])
        return 0

    def start_source_doubles(self, state: dict[str, Any]) -> None:
        """The fake X API (one token per host, and the next one), or the fake Jetstream
        instances: one process each, the same events from the same epoch."""
        if self.source == "bluesky":
            state["jetstream_epoch"] = epoch = int(time.time())
            for number, name in enumerate(JETSTREAM_INSTANCES):
                self.start_process(state, f"jetstream_{name}", [
                    "tests.doubles.fake_jetstream", "--name", name, "--epoch", str(epoch),
                    "--seed", str(JETSTREAM_SEED), "--rate", str(self.fake_api_rate),
                    "--lookback", str(JETSTREAM_LOOKBACK_SECONDS),
                    "--offset-us", str(number * 1500)])
            return
        self.start_process(state, "fake_api", ["tests.doubles.fake_api", "--tokens",
                                               ",".join([*state["tokens"].values(),
                                                         *state["next_tokens"].values()]),
                                               "--rate", str(self.fake_api_rate)])

    def cycle(self, state: dict[str, Any], main: str) -> None:
        """One forced hour: push, process the current hour, upload, report; then the summary."""
        for name in state["hosts"]:
            if name != main:
                result = self.on_host(state, name, as_collector("send"), check=False)
                print(f"send on {name}: rc {result.returncode} {result.stderr.strip()[-200:]}")
        # The hour as the collector sees it (Python's zoneinfo, with the tzdata wheel): `TZ=CET
        # date` is UTC on Debian 13, whose tzdata moved CET to tzdata-legacy.
        hour = self.on_host(state, main, f"{COLLECTOR.removesuffix('collector')}python -c "
                            "\"import datetime, zoneinfo; print(datetime.datetime.now("
                            "zoneinfo.ZoneInfo('CET')).strftime('%Y-%m-%dT%H'))\"").stdout.strip()
        day = hour.split("T")[0]
        for subcommand in (f"process --hour {hour} --force", "upload",
                           f"report --day {day} --send"):
            result = self.on_host(state, main, as_collector(subcommand),
                                  check=False)
            print(f"{subcommand} on {main}: rc {result.returncode} {result.stderr.strip()[-300:]}")
        self.summary(state, main, hour.split("T")[0])

    def installed_target(self, state: dict[str, Any], name: str) -> str:
        """The wheelhouse target the host's venv runs (its Python and CPU), e.g. cp313-x86_64."""
        result = self.on_host(state, name, "/opt/collector/venv/bin/python -c "
                              "\"import platform, sys; print('cp%d%d-%s' % "
                              "(*sys.version_info[:2], platform.machine()))\"", check=False)
        return result.stdout.strip() or "?"

    def summary(self, state: dict[str, Any], main: str, day: str) -> None:
        print("\n== lab summary ==")
        for name in state["hosts"]:
            result = self.on_host(state, name,
                                  f"{COLLECTOR} --settings {SETTINGS} status --json", check=False)
            with contextlib.suppress(ValueError):
                status = json.loads(result.stdout)
                stream = status.get("stream", {})
                print(f"{name:12} {status.get('role'):9} {status.get('verdict'):8} "
                      f"{state['hosts'][name].get('suite', nspawn.SUITE):9} "
                      f"{self.installed_target(state, name):14} "
                      f"{self.record_name}={stream.get('tweets')} "
                      f"connected={stream.get('connected')}")
        report = self.on_host(state, main,
                              f"tail -n 2 /srv/collector/vault/{day}/{day}_report.txt",
                              check=False)
        print("report:\n" + (report.stdout.strip() or f"(none) {report.stderr.strip()}"))
        try:
            files = osf_files(state["processes"]["fake_osf"]["port"], state["osf_token"])
            print(f"files on the fake OSF ({len(files)}): " + ", ".join(files))
        except OSError as error:
            print(f"fake OSF not readable: {error}")
        mails = sorted(Path(state["maildir"]).glob("*.eml")) if state.get("maildir") else []
        print(f"mails received: {len(mails)}")

    @property
    def record_name(self) -> str:
        return "records" if self.source == "bluesky" else "tweets"

    def status(self) -> int:
        state = self.load_state()
        for name, record in state["processes"].items():
            alive = nspawn.pid_alive(int(record["pid"]))
            print(f"{name:10} pid {record['pid']} port {record.get('port')} "
                  f"{'running' if alive else 'gone'}")
        for name, host in state["hosts"].items():
            alive = nspawn.pid_alive(int(host["pid"]))
            print(f"{name:10} pid {host['pid']} ssh 127.0.0.1:{host['port']} "
                  f"{'running' if alive else 'gone'}")
        return 0

    def down(self) -> int:
        """Stop every host and process the state file records, then forget them."""
        state = self.load_state()
        for name, record in list(state["hosts"].items()):
            nspawn.stop_host(nspawn.Host(**record))
            del state["hosts"][name]
            self.save_state(state)
            print(f"stopped host {name}")
        for name, record in list(state["processes"].items()):
            nspawn.stop_pid(int(record["pid"]), timeout=10)
            del state["processes"][name]
            self.save_state(state)
            print(f"stopped {name}")
        self.state_file.unlink(missing_ok=True)
        # The generated inventory points at hosts that no longer exist (and holds lab tokens).
        for generated in [self.inventory_dir / "hosts.yml",
                          self.inventory_dir / "group_vars" / "all.yml",
                          *(self.inventory_dir / "host_vars").glob("*.yml")]:
            generated.unlink(missing_ok=True)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the nspawn lab of the collector fleet")
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("up", "start"):
        one = sub.add_parser(action)
        one.add_argument("--hosts", type=int, default=int(os.environ.get("LAB_HOSTS", "2")))
        one.add_argument("--seconds", type=float,
                         default=float(os.environ.get("LAB_SECONDS", "60")))
        one.add_argument("--suites", default=os.environ.get("LAB_SUITES") or nspawn.SUITE,
                         help="Debian suites of the hosts, in turn (bookworm,trixie)")
    sub.add_parser("down")
    sub.add_parser("swap", help="move the main to the next host and re-run site.yml")
    sub.add_parser("rotate", help="rotate every host's bearer token")
    sub.add_parser("status")
    sub.add_parser("cycle", help="force one more cycle on a running lab")
    args = parser.parse_args(argv)
    lab = Lab.from_env()
    if args.action in ("up", "start"):
        if args.hosts < 1:
            parser.error("--hosts must be at least 1")
        suites = [suite.strip() for suite in args.suites.split(",") if suite.strip()]
        try:
            suites_for(args.hosts, suites)
        except ValueError as error:
            parser.error(str(error))
        if args.action == "up":
            return lab.up(args.hosts, args.seconds, suites)
        return lab.start(args.hosts, suites)
    if args.action == "cycle":
        lab.cycle(lab.load_state(), lab.main_of_inventory())
        return 0
    actions = {"status": lab.status, "down": lab.down, "swap": lab.swap, "rotate": lab.rotate}
    return actions[args.action]()


if __name__ == "__main__":
    sys.exit(main())
