"""`make bench` (replication part): what two copies of everything cost, per host and day.

Issue 11 keeps every chunk on two hosts until published: a secondary keeps its sent chunks
for `raw_retention_days`, and the main replicates its own chunks and its vault to every
secondary (`collector replicate`). This measures the inputs of that cost on the same data in
the same run, then prints the cost per host and day of a fleet of 1 main + 2 secondaries:

* one hour of raw chunks per server at the 1% stream's rate (`bench.make_chunks`, 200,000
  tweets an hour, about 60 messages/s), and the vault outputs `collector process` makes of it;
* the bytes rsync puts on the wire for one server's hour, plain (how `send` and `replicate`
  push today) against `-z --compress-choice=zstd` and `zlib`, with the CPU time each costs
  (local rsync between two folders: the same protocol and stream as over ssh, minus ssh);
* what compressing the kept chunks on disk would save: `zstd -3` and `zstd -19` of the hour.

The generator draws its tweets from a pool of a few thousand real API responses, so an hour
repeats texts far more than the real stream does: every compression ratio printed here is
optimistic (most for rsync's stream compression, which sees across files). So the ratios
the fleet table uses come from one chunk holding each pool message exactly once (no text
repeated, as in the real stream): `zstd -3` of that chunk, and rsync `-z` zstd pushing it.
The plain figures do not depend on it.

    .venv/bin/python -m bench.bench_replication [--tweets 200000] [--days 7] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

from bench.bench_process import HOUR, HOUR_START, write_settings
from bench.make_chunks import TWARC_URL, Completer, write_hour
from tests.doubles.samples import MessageFactory, load_pool

REPO = Path(__file__).resolve().parent.parent
GB = 1e9


@dataclass
class Measured:
    """One command's cost: bytes it produced (or put on the wire), wall and CPU seconds."""

    name: str
    nbytes: int
    wall: float
    cpu: float


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], **kwargs: object) -> tuple[subprocess.CompletedProcess[str], float,
                                                      float]:
    """Run `argv`; (result, wall seconds, CPU seconds of it and its children)."""
    cpu_before, started = children_cpu(), time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    wall, cpu = time.perf_counter() - started, children_cpu() - cpu_before
    if result.returncode != 0:
        sys.exit(f"{argv[:3]} failed ({result.returncode}): {result.stderr[-1000:]}")
    return result, wall, cpu


def tree_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


_SENT = re.compile(r"Total bytes sent: ([\d,.]+)")


def rsync_wire(source: Path, work: Path, name: str, options: list[str]) -> Measured:
    """Push `source` into an empty folder with rsync; bytes the sender wrote to the wire."""
    target = work / f"rsync-{name}"
    shutil.rmtree(target, ignore_errors=True)
    result, wall, cpu = timed(["rsync", "--recursive", "--times", "--stats", *options,
                               f"{source}/", f"{target}/"])
    match = _SENT.search(result.stdout)
    if match is None:
        sys.exit(f"rsync --stats printed no byte count:\n{result.stdout[-500:]}")
    shutil.rmtree(target)
    return Measured(name, int(match.group(1).replace(",", "").replace(".", "")), wall, cpu)


def zstd_disk(source: Path, work: Path, level: int) -> Measured:
    """Compress every chunk of the hour with zstd (what kept chunks would occupy)."""
    chunks = sorted(str(p) for p in source.rglob("*.jsonl"))
    out = work / f"zstd-{level}"
    out.mkdir()
    _, wall, cpu = timed(["zstd", "-q", f"-{level}", "--output-dir-flat", str(out), *chunks])
    size = tree_bytes(out)
    shutil.rmtree(out)
    return Measured(f"zstd -{level}", size, wall, cpu)


def pool_once_chunk(folder: Path) -> Path:
    """A chunk with every message of the sample pool once, completed like the hour's."""
    factory = MessageFactory(base_time=HOUR_START)
    completer = Completer()
    folder.mkdir(parents=True)
    path = folder / "pool_once.jsonl"
    with path.open("wb") as handle:
        for index in range(len(load_pool())):
            message = factory.message(index)
            completer.complete(message)
            message["__twarc"] = {"url": TWARC_URL, "version": "2.14.0",
                                  "retrieved_at": HOUR_START.isoformat()}
            handle.write(orjson.dumps(message) + b"\n")
    return path


def fleet_cost(raw_hour: int, vault_hour: int, days: int, wire_ratio: float,
               disk_ratio: float) -> list[tuple[str, float, float, float, float]]:
    """Per day, 1 main + 2 secondaries: (what, main now, main before, secondary now,
    secondary before) in GB; "before" is the fleet as it was before issue 11.

    Disk is the steady state held with retention `days` (before, a secondary deleted each
    chunk once the main held it: about an hour's worth); network is per day. `wire_ratio`
    and `disk_ratio` scale raw chunk bytes on the wire and in kept copies (1.0 = plain).
    The vault copy grows by a day of outputs a day and is kept for good.
    """
    raw_day, vault_day = 24 * raw_hour, 24 * vault_hour
    kept = raw_day * days * disk_ratio
    wire_day = raw_day * wire_ratio
    return [
        # main: its own + 2 secondaries' chunks, as before; a secondary: its own kept
        # chunks + the main's replicated ones (was: about one unsent hour).
        ("disk: raw chunks held", 3 * kept, 3 * raw_day * days, 2 * kept, raw_hour),
        ("disk: vault (growth a day)", vault_day, vault_day, vault_day, 0.0),
        # main sends its own chunks and the vault to each secondary; a secondary its own.
        ("network out a day", 2 * (wire_day + vault_day), 0.0, wire_day, raw_day),
        ("network in a day", 2 * wire_day, 2 * raw_day, wire_day + vault_day, 0.0),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tweets", type=int, default=200_000, help="tweets per server-hour")
    parser.add_argument("--days", type=int, default=7, help="raw_retention_days")
    parser.add_argument("--keep", type=Path, help="use (and keep) this folder")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-replication-"))
    try:
        print(f"generating {args.tweets} tweets per server under {root} ...", flush=True)
        roots = {"srv1": root / "data", "srv2": root / "incoming" / "srv2"}
        write_hour(roots, HOUR_START, ZoneInfo("CET"), args.tweets,
                   flatline={"srv2": (20, 26)})
        raw_hour = tree_bytes(roots["srv1"])
        settings = write_settings(root)
        _, process_wall, _ = timed([sys.executable, "-m", "collector", "--settings",
                                    str(settings), "process", "--hour", HOUR, "--force"],
                                   cwd=REPO)
        vault_hour = tree_bytes(root / "vault")
        work = root / "work"
        work.mkdir(exist_ok=True)
        wire = [rsync_wire(roots["srv1"], work, "plain", []),
                rsync_wire(roots["srv1"], work, "zstd", ["-z", "--compress-choice=zstd"]),
                rsync_wire(roots["srv1"], work, "zlib", ["-z", "--compress-choice=zlib"])]
        disk = [zstd_disk(roots["srv1"], work, 3), zstd_disk(roots["srv1"], work, 19)]
        once = pool_once_chunk(work / "pool-once").parent
        once_bytes = tree_bytes(once)
        once_wire = rsync_wire(once, work, "zstd", ["-z", "--compress-choice=zstd"])
        once_disk = zstd_disk(once, work, 3)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"one server-hour: {raw_hour / 1e6:.0f} MB of raw chunks; its vault outputs "
          f"(2 servers merged, {process_wall:.0f} s): {vault_hour / 1e6:.1f} MB")
    print(f"{'one server-hour':24}{'MB':>9}{'ratio':>8}{'wall s':>8}{'CPU s':>8}")
    plain = wire[0].nbytes
    for item in (*wire, *disk):
        kind = "wire" if item in wire else "disk"
        print(f"{kind + ': ' + item.name:24}{item.nbytes / 1e6:9.1f}{item.nbytes / plain:8.3f}"
              f"{item.wall:8.1f}{item.cpu:8.1f}")
    wire_ratio, disk_ratio = once_wire.nbytes / once_bytes, once_disk.nbytes / once_bytes
    print(f"each pool message once ({once_bytes / 1e6:.1f} MB, no repeated text): rsync -z "
          f"zstd {wire_ratio:.3f}, zstd -3 on disk {disk_ratio:.3f} (used below)")
    for label, on_wire, kept in (
            ("plain (as built)", 1.0, 1.0),
            ("rsync -z zstd on the wire", wire_ratio, 1.0),
            ("zstd on the wire and zstd -3 kept chunks", wire_ratio, disk_ratio)):
        print(f"\nfleet of 1 main + 2 secondaries, retention {args.days} days, {label}:")
        print(f"{'GB':30}{'main':>8}{'before':>8}{'each sec.':>10}{'before':>8}")
        for what, *figures in fleet_cost(raw_hour, vault_hour, args.days, on_wire,
                                         kept):
            print(f"{what:30}" + "".join(f"{value / GB:{width}.2f}" for value, width in
                                        zip(figures, (8, 8, 10, 8), strict=True)))
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
