"""`make faults`: run fault scenarios on the nspawn lab and write docs/RELIABILITY.md.

    python -m tests.faults.run [--scenario NAME ...] [--reuse] [--keep] [--list]

Boots its own lab (name `faults`, env COLLECTOR_LAB_NAME overrides it) unless `--reuse` finds
one running, then for each scenario: waits for a healthy fleet, snapshots the fake API's log,
lets the fleet stream, injects the fault, recovers, times the recovery, snapshots the log
again. One flush at the end (every open chunk closed at a minute boundary, `send` on the
secondaries, `process --force` of every hour involved on the main) and the counts per
scenario: the ids the fake sent whole in the scenario's window against the main's outputs.
The lab is brought down at the end unless `--keep`. Root only (nspawn).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

from tests.faults import measure
from tests.faults.scenarios import Lab, Scenario, all_scenarios

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "docs" / "RELIABILITY.md"
LAB_NAME = "faults"
LEAD_SECONDS = 8.0  # streaming before the fault, so the window holds data on both sides
TAIL_SECONDS = 8.0
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


def load_fleet() -> ModuleType:
    """tests.lab.fleet with this suite's own lab name and inventory (read at import time)."""
    os.environ.setdefault("COLLECTOR_LAB_NAME", LAB_NAME)
    # The sampled stream's real average rate, so "under load" means what it says.
    os.environ.setdefault("COLLECTOR_LAB_RATE", "60")
    cache = Path(os.environ.get("COLLECTOR_LAB_CACHE", "/var/tmp/collector-lab"))
    os.environ.setdefault("COLLECTOR_LAB_INVENTORY",
                          str(cache / os.environ["COLLECTOR_LAB_NAME"] / "inventory"))
    return importlib.import_module("tests.lab.fleet")


def run_scenario(lab: Lab, scenario: Scenario) -> Window:
    print(f"== {scenario.name}: {scenario.description}", flush=True)
    notes: list[str] = []  # figures worth a line in the table
    problems: list[str] = []  # what makes the row fail
    if scenario.quiet_seconds:
        try:
            lab.wait_clear_of_cron(scenario.quiet_seconds)
        except RuntimeError as error:
            problems.append(str(error))
    if lab.wait_healthy(HEALTHY_TIMEOUT) is None:
        problems.append("fleet not healthy before the fault")
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
    time.sleep(TAIL_SECONDS)
    after = lab.api_log()
    sent = measure.sent_ids(before, after)
    hours = measure.hours_between(started, time.time(), zone or ZONE)
    if scenario.gapless:
        missed = measure.longest_unreceived_run(before, after)
        seconds = missed / lab.fleet.FAKE_API_RATE
        notes.append(f"longest stretch no host received: {seconds:.1f} s ({missed} messages)")
        if missed:
            problems.append("the fleet stopped streaming")
    try:
        scenario.cleanup(lab)
    except (RuntimeError, OSError) as error:
        problems.append(f"cleanup failed: {error}")
    print(f"   sent {len(sent)} ids, recovery "
          f"{'none' if recovery is None else f'{recovery:.1f} s'}", flush=True)
    return Window(scenario, sent, hours, recovery, "; ".join(problems + notes), bool(problems),
                  {"started": started, "injected": injected, "before": before, "after": after},
                  flushed=zone is not None)


def flush(lab: Lab, hours: list[str]) -> None:
    """Close every open chunk (minute boundary), push them, merge every hour involved."""
    lab.wait_for_closed_chunk()
    for host in lab.secondaries:
        result = lab.collector(host, "send")
        print(f"send on {host}: rc {result.returncode}", flush=True)
    for hour in hours:
        result = lab.collector(lab.main, f"process --hour {hour} --force")
        print(f"process {hour} on {lab.main}: rc {result.returncode} "
              f"{result.stderr.strip()[-200:]}", flush=True)


def outputs(lab: Lab, vault: str, hour: str) -> tuple[Counter[str], Counter[str]]:
    """Id counts of the hour's IDs file and tweets file on the main (empty if missing)."""
    day, hh = hour.split("T")
    base = f"{vault}/{day}/{day}_{hh}"
    ids = lab.run(lab.main, f"{UNXZ} {base}_IDs.txt.xz", check=False).stdout
    tweets = lab.run(lab.main, f"{UNXZ} {base}_tweets.csv.xz", check=False).stdout
    return (measure.ids_file_counts(ids),
            measure.tweets_file_counts(tweets) if tweets else Counter())


def write_evidence(path: Path, windows: list[Window],
                   counted: dict[str, tuple[Counter[str], Counter[str]]]) -> None:
    """Per scenario: the lost ids with the fake's message indices and the connection records
    of its window, so a loss can be traced to a host and a moment."""
    published = {key for ids, _ in counted.values() for key in ids}
    report = {}
    for window in windows:
        lost = sorted(window.sent - published)
        indices = sorted(index for index in measure.whole_indices(window.evidence["after"])
                         if measure.tweet_id(index) in set(lost))
        report[window.scenario.name] = {
            "started": window.evidence["started"], "injected": window.evidence["injected"],
            "lost_ids": lost, "lost_indices": indices,
            "connections": [record for record in window.evidence["after"]["connections"]
                            if record not in window.evidence["before"]["connections"]]}
    path.write_text(json.dumps(report, indent=1))
    print(f"evidence: {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    scenarios = {scenario.name: scenario for scenario in all_scenarios()}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=list(scenarios),
                        help="run only this scenario (repeatable)")
    parser.add_argument("--reuse", action="store_true", help="use the running lab of this name")
    parser.add_argument("--keep", action="store_true", help="leave the lab running at the end")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        for scenario in scenarios.values():
            print(f"{scenario.name:28} {scenario.description}")
        return 0
    chosen = [scenarios[name] for name in args.scenario or scenarios]
    fleet = load_fleet()
    if not (args.reuse and fleet.load_state()["hosts"]) and fleet.up(2, 20) != 0:
        return 1
    try:
        lab = Lab(fleet, fleet.load_state(), fleet.main_of_inventory())
        run_at = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
        suite_started = time.monotonic()
        windows = [run_scenario(lab, scenario) for scenario in chosen]
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
        rows = [measure.outcome(window.scenario.name, window.sent,
                                [counted[hour][0] for hour in window.hours],
                                [counted[hour][1] for hour in window.hours],
                                window.recovery_seconds, window.note, run_at)
                for window in windows]
        write_evidence(fleet.LAB_DIR / "faults-evidence.json", windows, counted)
    finally:
        if not args.keep:
            fleet.down()
    # A run of some scenarios keeps the other scenarios' rows of earlier runs (dated).
    previous = measure.parse_rows(REPORT.read_text()) if REPORT.exists() else []
    table = measure.merge(previous, rows, list(scenarios))
    descriptions = "\n".join(f"- `{row.scenario}`: {scenarios[row.scenario].description}"
                             for row in table if row.scenario in scenarios)
    minutes = (time.monotonic() - suite_started) / 60
    context = (f"{len(lab.hosts)} hosts, fake API at {fleet.FAKE_API_RATE:g} messages/s (the "
               "sampled stream's average), `backfill_minutes=2` (the Enterprise tier's reconnect "
               "backfill: without it, a kill of every host at once loses the few messages in "
               "flight, 4 to 11 at 20 messages/s when measured), `stall_seconds=20`; "
               f"the last run ({run_at} UTC) ran {len(rows)} of the {len(scenarios)} "
               f"scenarios in {minutes:.0f} minutes"
               + ("; the other rows come from earlier runs (their dates). "
                  if len(rows) < len(scenarios) else ". ")
               + "Regenerate with `make faults` (all scenarios) or `python -m tests.faults.run "
               "--scenario NAME` (that row only). Evidence of each run (lost ids, fake API "
               "connection records): `faults-evidence.json` in the lab folder.\n\n"
               + descriptions)
    REPORT.write_text(measure.render(table, context))
    print(measure.render(rows, context))
    return 1 if any(row.lost or row.duplicated or row.recovery_seconds is None or window.failed
                    for row, window in zip(rows, windows, strict=True)) else 0


if __name__ == "__main__":
    sys.exit(main())
