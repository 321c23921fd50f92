"""The sha256 of every file `collector process` writes, on fixed benchmark data.

A restructuring of the package must not change a byte of what it publishes. This script
generates the data once (`generate`), then runs `collector process` on a copy of it and prints
one `sha256  path` line per output file (`digest`). Run `digest` with the old tree and the new
one (`--pythonpath`) and compare the two listings.

The data:
* the benchmark hour of `make bench-process`: two servers of 200,000 tweets each, one of them
  silent for minutes 20 to 26 (2026-01-01T01 in CET);
* both clock-change days of 2026 in CET, every local hour of them (23 on 2026-03-29, 25 on
  2026-10-25 with the repeated `02b`), 2,000 tweets per server and hour.

Files that record when a run happened (the ledgers and state under `.collector/`, the
stream's status) are not outputs and are left out; everything under the vault is listed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.bench_process import HOUR, HOUR_START, write_settings
from bench.make_chunks import write_hour

ZONE = ZoneInfo("CET")
CLOCK_CHANGE_DAYS = ("2026-03-29", "2026-10-25")
TWEETS_PER_DST_HOUR = 2_000


def local_hours(day: str) -> list[tuple[datetime, str]]:
    """Every UTC hour start that falls on `day` in CET, with its `--hour` name."""
    start = datetime.fromisoformat(day).replace(tzinfo=ZONE).astimezone(UTC)
    hours: list[tuple[datetime, str]] = []
    seen: set[str] = set()
    moment = start
    while moment.astimezone(ZONE).date().isoformat() == day:
        name = moment.astimezone(ZONE).strftime("%Y-%m-%dT%H")
        hours.append((moment, name + "b" if name in seen else name))
        seen.add(name)
        moment += timedelta(hours=1)
    return hours


def generate(root: Path) -> None:
    roots = {"srv1": root / "data", "srv2": root / "incoming" / "srv2"}
    write_hour(roots, HOUR_START, ZONE, 200_000, flatline={"srv2": (20, 26)})
    for day in CLOCK_CHANGE_DAYS:
        for start, _name in local_hours(day):
            write_hour(roots, start, ZONE, TWEETS_PER_DST_HOUR)


def digest(source: Path, work: Path, pythonpath: str | None) -> list[str]:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work, symlinks=True)
    settings = write_settings(work)
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    hours = [HOUR] + [name for day in CLOCK_CHANGE_DAYS for _, name in local_hours(day)]
    for hour in hours:
        subprocess.run([sys.executable, "-m", "collector", "--settings", str(settings),
                        "process", "--hour", hour, "--force"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = []
    for path in sorted((work / "vault").rglob("*")):
        if path.is_file():
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            lines.append(f"{sha}  {path.relative_to(work)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write the raw chunks into ROOT")
    gen.add_argument("root", type=Path)
    dig = sub.add_parser("digest", help="process a copy of ROOT, print sha256 of every output")
    dig.add_argument("root", type=Path)
    dig.add_argument("--work", type=Path, required=True, help="scratch folder (replaced)")
    dig.add_argument("--pythonpath", help="run the collector from this tree")
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.root)
    else:
        print("\n".join(digest(args.root, args.work, args.pythonpath)))


if __name__ == "__main__":
    main()
