"""`make faults`: run fault scenarios on the nspawn lab and write docs/RELIABILITY.md.

    python -m tests.faults.run [--scenario NAME ...] [--one-lab] [--reuse] [--keep] [--list]

Scenarios run in labs side by side, each two hosts with its own test doubles: a scenario
whose time is mostly waiting (a ten-minute power cut) runs in another lab (`Scenario.lab`:
`b`, `c`) with a few short ones after it, the rows that destroy hosts in a lab of three of
their own (`d`, `tests.faults.destruction`), all others one after the other in the first lab
(`faults`; env COLLECTOR_LAB_NAME renames it, the others take its name plus `-b`, `-c`), so
the campaign takes about as long as the first lab alone. The labs share nothing but this
machine (the image and the wheelhouse are built once, before any of them boots); each other
lab is this runner again in a child process (`--one-lab --results FILE`), whose output is
shown prefixed with its lab's name. `--one-lab` runs every chosen scenario in one lab, in order.

In each lab the hosts' cron daemon is stopped: the runner plays cron between scenarios (the
same commands, when an hour is due), so no scenario depends on where the cron minutes fall.
For each scenario: wait for a healthy fleet, snapshot the fake API's log, let the fleet
stream, inject the fault, recover, time the recovery, snapshot again. One flush per lab at
the end (every stream stopped, which closes its open chunk; `send` on the secondaries;
`process --force` of every hour involved on the main) and the counts per scenario: the ids
the fake sent whole in the scenario's window against the main's outputs. A lab is brought
down at the end unless `--keep`. Root only (nspawn).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tests.faults import bluesky, measure
from tests.faults.scenarios import STREAM_UNIT, Lab, Scenario, all_scenarios
from tests.lab import nspawn
from tests.lab.fleet import Lab as FleetLab
from tests.lab.fleet import build_wheelhouse

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "docs" / "RELIABILITY.md"
LAB_NAME = "faults"
LEAD_SECONDS = 5.0  # streaming before the fault, so the window holds data on both sides
TAIL_SECONDS = 5.0
HEALTHY_TIMEOUT = 240.0
ZONE = ZoneInfo("CET")  # the lab's inventory keeps the default timezone
# The hosts have no xz binary; their python3 has lzma.
UNXZ = ("python3 -c 'import lzma, sys; "
        "sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())'")


@dataclass
class Window:
    """What the runner recorded while one scenario ran."""

    scenario: Scenario
    sent: set[str]
    hours: list[str]
    recovery_seconds: float | None
    note: str
    failed: bool  # a fault step failed or a promise was broken (the note says which)
    evidence: dict[str, Any]
    flushed: bool = False  # the scenario processed its hours itself (its own time zone)


@dataclass
class LabRun:
    """What one lab's run produced: its rows (with whether each failed) and its size."""

    rows: list[measure.Outcome]
    failed: list[bool]
    hosts: int


def load_fleet(environ: Mapping[str, str] = os.environ) -> FleetLab:
    """The environment's lab (`FleetLab.from_env`) with this suite's own defaults: its own
    lab name and an inventory in its lab's folder."""
    env = dict(environ)
    env.setdefault("COLLECTOR_LAB_NAME", LAB_NAME)
    # The sampled stream's real average rate, so "under load" means what it says.
    env.setdefault("COLLECTOR_LAB_RATE", "60")
    env.setdefault("COLLECTOR_LAB_INVENTORY",
                   str(nspawn.cache_dir_from_env(env) / env["COLLECTOR_LAB_NAME"] / "inventory"))
    return FleetLab.from_env(env)


def commit() -> str:
    """The commit the suite runs (`+changes` when the work tree differs from it)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_scenario(lab: Lab, scenario: Scenario) -> Window:
    print(f"== {scenario.name}: {scenario.description}", flush=True)
    began = time.monotonic()
    notes: list[str] = []  # figures worth a line in the table
    problems: list[str] = []  # what makes the row fail
    if lab.wait_healthy(HEALTHY_TIMEOUT) is None:
        problems.append(f"fleet not healthy before the fault ({lab.unhealthy})")
    scenario.setup(lab)
    zone = scenario.zone()
    before = lab.api_log()
    started = time.time()
    time.sleep(LEAD_SECONDS)
    injected = time.time()
    try:
        scenario.inject(lab)
    except Exception as error:  # any failure of a step is the row's finding
        problems.append(f"fault step failed: {error}")
    # The fault ends when its cause is removed; what `recover` then does (boot a host, the
    # next push) is part of the fleet's recovery time.
    fault_ended = time.monotonic()
    try:
        scenario.recover(lab)
    except Exception as error:
        problems.append(f"recovery step failed: {error}")
    recovery = lab.wait_healthy(HEALTHY_TIMEOUT, {host: injected
                                                  for host in scenario.reconnects(lab)})
    if recovery is not None:
        recovery = time.monotonic() - fault_ended
    else:
        problems.append(f"not healthy {HEALTHY_TIMEOUT:g} s after the fault ({lab.unhealthy})")
    time.sleep(TAIL_SECONDS)
    after = lab.api_log()
    if lab.fleet.source == "bluesky":  # every post the network created in the window
        sent = bluesky.sent_in_window(lab, before, after)
    else:  # only what a host still alive received (a destroyed host's records are left out)
        sent = measure.sent_ids(before, after, lab.gone_connections)
    hours = measure.hours_between(started, time.time(), zone or lab.zone or ZONE)
    if scenario.gapless and lab.fleet.source == "x":
        missed = measure.longest_unreceived_run(before, after)
        seconds = missed / lab.fleet.fake_api_rate
        notes.append(f"longest stretch no host received: {seconds:.1f} s ({missed} messages)")
        if missed:
            problems.append("the fleet stopped streaming")
    try:
        scenario.cleanup(lab)
    except (RuntimeError, OSError) as error:
        problems.append(f"cleanup failed: {error}")
    print(f"   sent {len(sent)} ids, recovery "
          f"{'none' if recovery is None else f'{recovery:.1f} s'}; the scenario took "
          f"{time.monotonic() - began:.0f} s", flush=True)
    return Window(scenario, sent, hours, recovery, "; ".join(problems + notes), bool(problems),
                  {"started": started, "injected": injected, "before": before, "after": after},
                  flushed=zone is not None)


def flush(lab: Lab, hours: list[str]) -> None:
    """Stop every stream (it closes its open chunk), push them, merge every hour involved."""
    for host in lab.hosts:
        lab.run(host, f"systemctl stop {STREAM_UNIT}")
    for host in lab.secondaries:
        result = lab.collector(host, "send")
        print(f"send on {host}: rc {result.returncode}", flush=True)
    for hour in hours:
        result = lab.collector(lab.main, f"process --hour {hour} --force")
        print(f"process {hour} on {lab.main}: rc {result.returncode} "
              f"{result.stderr.strip()[-200:]}", flush=True)


def outputs(lab: Lab, vault: str, hour: str) -> tuple[Counter[str], Counter[str]]:
    """Id counts of the hour's IDs file and its records file (tweets, or Bluesky's posts,
    keyed by AT-URI) on the main (empty if missing)."""
    day, hh = hour.split("T")
    base = f"{vault}/{day}/{day}_{hh}"
    ids = lab.run(lab.main, f"{UNXZ} {base}_IDs.txt.xz", check=False).stdout
    records, key = (("posts", "uri") if lab.fleet.source == "bluesky" else ("tweets", "id"))
    rows = lab.run(lab.main, f"{UNXZ} {base}_{records}.csv.xz", check=False).stdout
    return (measure.ids_file_counts(ids),
            measure.tweets_file_counts(rows, key) if rows else Counter())


def write_evidence(path: Path, windows: list[Window],
                   counted: dict[str, tuple[Counter[str], Counter[str]]]) -> None:
    """Per scenario: the lost ids with the fake's message indices and the connection records
    of its window, so a loss can be traced to a host and a moment."""
    published = {key for ids, _ in counted.values() for key in ids}
    report = {}
    for window in windows:
        lost = sorted(window.sent - published)
        if "instances" in window.evidence["after"]:  # Bluesky: the instances' records
            report[window.scenario.name] = {
                "started": window.evidence["started"],
                "injected": window.evidence["injected"], "lost_uris": lost,
                "connections": {name: [record for record in log["connections"]
                                       if record not in window.evidence["before"]["instances"]
                                       [name]["connections"]]
                                for name, log in window.evidence["after"]["instances"].items()}}
            continue
        indices = sorted(index for index in measure.whole_indices(window.evidence["after"])
                         if measure.tweet_id(index) in set(lost))
        report[window.scenario.name] = {
            "started": window.evidence["started"], "injected": window.evidence["injected"],
            "lost_ids": lost, "lost_indices": indices,
            "connections": [record for record in window.evidence["after"]["connections"]
                            if record not in window.evidence["before"]["connections"]]}
    path.write_text(json.dumps(report, indent=1))
    print(f"evidence: {path}", flush=True)


def run_lab(fleet: FleetLab, chosen: list[Scenario], run_at: str, reuse: bool,
            keep: bool) -> LabRun | None:
    """Boot (or reuse) one lab, run the scenarios in order, flush, count; None if the lab
    did not come up. The lab is brought down at the end unless `keep`."""
    hosts = max([2, *(scenario.hosts for scenario in chosen)])
    booted = reuse and fleet.load_state()["hosts"]
    if not booted and fleet.up(hosts, 20, [nspawn.SUITE]) != 0:
        return None
    try:
        lab = Lab(fleet, fleet.load_state(), fleet.main_of_inventory())
        lab.stop_cron()
        windows = []
        for scenario in chosen:
            lab.hourly_cycle()
            windows.append(run_scenario(lab, scenario))
        hours = list(dict.fromkeys(hour for window in windows for hour in window.hours))
        flush(lab, [hour for hour in hours if not any(hour in window.hours and window.flushed
                                                      for window in windows)])
        vault = lab.setting(lab.main, "data_vault_dst")
        counted = {hour: outputs(lab, vault, hour) for hour in hours}
        for window in windows:
            problem = window.scenario.verify(lab)
            if problem:
                window.note = "; ".join(filter(None, [problem, window.note]))
                window.failed = True
            window.note = "; ".join(filter(None, [window.note, window.scenario.notes()]))
        rows = [measure.outcome(window.scenario.name, window.sent,
                                [counted[hour][0] for hour in window.hours],
                                [counted[hour][1] for hour in window.hours],
                                window.recovery_seconds, window.note, run_at)
                for window in windows]
        write_evidence(fleet.lab_dir / "faults-evidence.json", windows, counted)
        if keep:  # a lab left running is a working one
            for host in lab.hosts:
                lab.run(host, f"systemctl start {STREAM_UNIT} cron.service", check=False)
        return LabRun(rows, [window.failed for window in windows], hosts)
    finally:
        if not keep:
            fleet.down()


def start_other_lab(fleet: FleetLab, suffix: str, group: list[Scenario],
                    args: argparse.Namespace,
                    results: Path) -> tuple[subprocess.Popen[str], threading.Thread]:
    """This runner again, for the lab `<first lab>-<suffix>` (the first lab's cache and rate,
    its scenarios' source), its output prefixed with the lab's name."""
    name = f"{fleet.name}-{suffix}"
    names = [scenario.name for scenario in group]
    env = dict(os.environ, COLLECTOR_LAB_NAME=name, COLLECTOR_LAB_PREBUILT="1",
               COLLECTOR_LAB_SOURCE=lab_source(group),
               COLLECTOR_LAB_CACHE=str(fleet.cache_dir),
               COLLECTOR_LAB_RATE=repr(fleet.fake_api_rate),
               COLLECTOR_LAB_INVENTORY=str(fleet.cache_dir / name / "inventory"))
    command = [sys.executable, "-m", "tests.faults.run", "--one-lab", "--results", str(results),
               *(f"--scenario={scenario}" for scenario in names),
               *(["--reuse"] if args.reuse else []), *(["--keep"] if args.keep else [])]
    child = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def relay() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            print(f"[{name}] {line}", end="", flush=True)

    relaying = threading.Thread(target=relay, daemon=True)
    relaying.start()
    return child, relaying


def other_lab_rows(results: Path) -> LabRun | None:
    try:
        data = json.loads(results.read_text())
    except (OSError, ValueError):
        return None
    return LabRun([measure.Outcome(**row) for row in data["rows"]], data["failed"],
                  data["hosts"])


def lab_source(group: list[Scenario]) -> str:
    """The source a lab's fleet captures: its scenarios', which must agree."""
    sources = {scenario.source for scenario in group}
    if len(sources) > 1:
        raise ValueError("x and bluesky scenarios cannot share a lab: run them without "
                         "--one-lab, or one source at a time")
    return sources.pop() if sources else "x"


def by_lab(chosen: list[Scenario], one_lab: bool) -> dict[str, list[Scenario]]:
    """The chosen scenarios by the lab they run in, in their order; the first lab ("") runs
    the rest, or, when no scenario is left for it, the scenarios of the first other lab."""
    labs: dict[str, list[Scenario]] = {"": []}
    for scenario in chosen:
        labs.setdefault("" if one_lab else scenario.lab, []).append(scenario)
    if not labs[""] and len(labs) > 1:
        labs[""] = labs.pop(next(name for name in labs if name))
    return labs


def main(argv: list[str] | None = None) -> int:
    scenarios = {scenario.name: scenario for scenario in all_scenarios()}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=list(scenarios),
                        help="run only this scenario (repeatable)")
    parser.add_argument("--one-lab", action="store_true",
                        help="run every chosen scenario in one lab, in order")
    parser.add_argument("--reuse", action="store_true", help="use the running lab of this name")
    parser.add_argument("--keep", action="store_true", help="leave the lab running at the end")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)  # another lab's rows
    args = parser.parse_args(argv)
    if args.list:
        for scenario in scenarios.values():
            lab = f" (in lab {scenario.lab})" if scenario.lab else ""
            print(f"{scenario.name:34} {scenario.description}{lab}")
        return 0
    chosen = [scenarios[name] for name in args.scenario or scenarios]
    fleet = load_fleet()
    run_at = f"{datetime.now(UTC):%Y-%m-%d %H:%M} {commit()}"
    suite_started = time.monotonic()
    labs = by_lab(chosen, args.one_lab)
    try:
        fleet = replace(fleet, source=lab_source(labs[""]))
        for group in labs.values():
            lab_source(group)
    except ValueError as error:
        parser.error(str(error))
    others = {suffix: group for suffix, group in labs.items() if suffix}
    children = []
    with tempfile.TemporaryDirectory(prefix="faults-") as folder:
        if others:
            # Built once, before any lab boots: two builds at once collide.
            nspawn.build_image(fleet.cache_dir, fleet.mirror)
            build_wheelhouse()
            fleet = replace(fleet, wheelhouse_prebuilt=True)
            for suffix, group in others.items():
                results = Path(folder) / f"lab-{suffix}.json"
                children.append((results, *start_other_lab(fleet, suffix, group, args,
                                                           results)))
        try:
            mine = run_lab(fleet, labs[""], run_at, args.reuse, args.keep)
        finally:
            for _, child, relaying in children:
                child.wait()
                relaying.join(timeout=10)
        theirs = [other_lab_rows(results) for results, _, _ in children]
    if args.results:  # this is another lab: its rows go back to the first lab's runner
        if mine is not None:
            args.results.write_text(json.dumps({"rows": [asdict(row) for row in mine.rows],
                                                "failed": mine.failed, "hosts": mine.hosts}))
        return 1 if mine is None or any(mine.failed) else 0
    if mine is None or None in theirs:
        print("a lab did not come up or its runner failed: no rows written", file=sys.stderr)
        return 1
    runs = [mine, *(run for run in theirs if run is not None)]
    order = {name: index for index, name in enumerate(scenarios)}
    pairs = sorted(((row, flag) for run in runs
                    for row, flag in zip(run.rows, run.failed, strict=True)),
                   key=lambda pair: order[pair[0].scenario])
    rows = [row for row, _ in pairs]
    minutes = (time.monotonic() - suite_started) / 60
    sizes = {suffix: run.hosts for suffix, run in zip(others, theirs, strict=True)
             if run is not None and run.hosts != mine.hosts}
    write_report(scenarios, rows, mine.hosts, fleet.fake_api_rate, run_at, minutes,
                 {suffix: [s.name for s in group] for suffix, group in others.items()}, sizes)
    return 1 if any(row.lost or row.duplicated or row.recovery_seconds is None or flag
                    for row, flag in pairs) else 0


def write_report(scenarios: dict[str, Scenario], rows: list[measure.Outcome], hosts: int,
                 rate: float, run_at: str, minutes: float, others: dict[str, list[str]],
                 sizes: dict[str, int] | None = None) -> None:
    """docs/RELIABILITY.md: this run's rows, and the other scenarios' rows of earlier runs."""
    previous = measure.parse_rows(REPORT.read_text()) if REPORT.exists() else []
    table = measure.merge(previous, rows, list(scenarios))
    descriptions = "\n".join(f"- `{row.scenario}`: {scenarios[row.scenario].description}"
                             for row in table if row.scenario in scenarios)
    side_by_side = (f" in {len(others) + 1} labs side by side ("
                    + "; ".join(f"lab {suffix} ran {', '.join(names)}"
                                for suffix, names in others.items())
                    + ", the first lab all others)" if others else " in one lab")
    other_sizes = "".join(f", {size} in lab {suffix}" for suffix, size in (sizes or {}).items())
    context = (f"{hosts} hosts per lab{other_sizes}, fake API at {rate:g} messages/s (the "
               "sampled stream's average), `backfill_minutes=2` (the Enterprise tier's reconnect "
               "backfill: without it, a kill of every host at once loses the few messages in "
               "flight, 4 to 11 at 20 messages/s when measured), `stall_seconds=20`; the hosts' "
               "cron is stopped and the suite runs the hourly jobs itself. Each host's data "
               "folders (`/srv/collector`) are an ext4 disk image of their own; a power cut "
               "(`power-*`) kills the host's init and boots it again on a copy of that image "
               "taken at the cut, so what the kernel had not written back is lost, as in a "
               "real one. The *run* column "
               "gives the date (UTC) and the commit of the run that produced the row; "
               f"the last run ({run_at}) ran {len(rows)} of the {len(scenarios)} "
               f"scenarios{side_by_side} in {minutes:.0f} minutes"
               + ("; the other rows come from earlier runs. "
                  if len(rows) < len(scenarios) else ". ")
               + "Regenerate with `make faults` (all scenarios) or `python -m tests.faults.run "
               "--scenario NAME` (that row only). Evidence of each run (lost ids, fake API "
               "connection records): `faults-evidence.json` in each lab's folder. "
               "The `bluesky-*` rows run on a Bluesky fleet (`source=bluesky`) in a lab of "
               "their own: two fake Jetstream instances serving the same network at the same "
               "rate in events/s (about a tenth of them posts, the only collection wanted), "
               "each host on its own instance; there *sent* is every post the network created "
               "during the window, whether or not an instance ever sent it to a host "
               "(`tests/faults/bluesky.py`).\n\n"
               + descriptions)
    REPORT.write_text(measure.render(table, context))
    print(measure.render(rows, context))


if __name__ == "__main__":
    sys.exit(main())
