"""`make bench` (merge part): `collector process` against the seed's approach, same files.

Generates an hour of 200,000 tweets per server for two servers (srv2 flatlines for seven
minutes) with `bench.make_chunks`, then runs, each in its own child process:

* the collector: `python -m collector --settings S process --hour H --force`;
* the yardstick, the seed's approach rebuilt: jq flattens each minute chunk to CSV, pandas
  concatenates them, drops duplicate ids and writes IDs, tweets and users with
  `compression="xz"` (xz's default preset, one thread).

Wall time comes from the clock, CPU time (user + system, children included) from `os.wait4`.
Peak memory is the largest sum of resident memory over the child and all its descendants
(helper interpreters, jq), sampled from /proc every 10 ms; `os.wait4`'s `ru_maxrss` (the
largest single process) is printed beside it. The collector's own split (reading / merging /
rendering / compressing) is parsed from its final log line.

    .venv/bin/python -m bench.bench_process [--tweets 200000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.make_chunks import write_hour

REPO = Path(__file__).resolve().parent.parent
HOUR_START = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)  # 2026-01-01T01 in CET
HOUR = "2026-01-01T01"

# The seed's flattening: one CSV row per message that has data, the tweets CSV's columns.
JQ_FILTER = r"""
select(.data != null) | .data as $t
| (((.includes.users // []) | map(select(.id == $t.author_id)) | .[0]) // {}) as $u
| [$t.id, $t.conversation_id, $t.author_id, $t.created_at, .__twarc.retrieved_at, $t.source,
   $t.lang, $t.text, ($t.referenced_tweets[0].type // "original"),
   ($t.referenced_tweets[0].id // ""), $u.created_at, $u.location, $u.name, $u.username,
   $u.verified, $u.protected, $u.public_metrics.followers_count,
   $u.public_metrics.following_count, $u.public_metrics.tweet_count,
   $u.public_metrics.listed_count] | @csv
"""

YARDSTICK = r"""
import subprocess, sys
from pathlib import Path
import pandas as pd
from collector.sources.x.schema import TWEET_COLUMNS, USER_COLUMNS
chunks_roots, out = [Path(p) for p in sys.argv[1:-1]], Path(sys.argv[-1])
jq_filter = sys.stdin.read()
frames = []
for root in chunks_roots:
    for chunk in sorted(root.rglob("*.jsonl")):
        csv_path = out / (chunk.name + ".csv")
        with open(csv_path, "wb") as handle:
            subprocess.run(["jq", "-r", jq_filter, str(chunk)], stdout=handle, check=True)
        frames.append(pd.read_csv(csv_path, names=list(TWEET_COLUMNS), dtype={"id": "int64"}))
        csv_path.unlink()
tweets = pd.concat(frames).drop_duplicates(subset="id").sort_values("id")
tweets.to_csv(out / "tweets.csv.xz", index=False, compression="xz")
users = tweets.drop_duplicates(subset="author_id", keep="last").sort_values("author_id")
users = users.rename(columns={"author_id": "author_id"})[list(USER_COLUMNS)]
users.to_csv(out / "users.csv.xz", index=False, compression="xz")
tweets["id"].to_csv(out / "IDs.txt.xz", index=False, header=False, compression="xz")
"""


@dataclass
class Run:
    wall: float
    cpu: float
    peak_mb: float  # largest sum over the process tree (sampled)
    max_single_mb: float  # wait4's ru_maxrss: the largest single process
    stderr: str


def _tree_rss_kb(pid: int) -> int:
    """Resident memory of `pid` and all its descendants, in KiB (0 once it is gone)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                total += next((int(line.split()[1]) for line in status
                               if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(c) for c in children.read().split())
        except (OSError, ValueError):
            continue
    return total


class TreeSampler(threading.Thread):
    """Samples the process tree's total resident memory until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.stopped = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.01):
            self.peak_kb = max(self.peak_kb, _tree_rss_kb(self.pid))


def measure(argv: list[str], stdin: str = "") -> Run:
    """Run one child; wall from the clock, CPU from wait4, memory from the tree sampler."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = TreeSampler(child.pid)
    sampler.start()
    assert child.stdin is not None and child.stderr is not None
    child.stdin.write(stdin.encode())
    child.stdin.close()
    err = child.stderr.read().decode(errors="replace")
    sampler.stopped.set()  # stderr closed: the child is exiting; its memory is sampled
    sampler.join()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        sys.exit(f"{argv[:4]} failed ({child.returncode}):\n{err[-2000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, sampler.peak_kb / 1024,
               usage.ru_maxrss / 1024, err)


def write_settings(root: Path) -> Path:
    keys = root / "keys"
    keys.mkdir(exist_ok=True)
    token = keys / "twitter_api.txt"
    token.write_text("bearer_token=bench\n")
    token.chmod(0o640)
    settings = root / "server_settings.txt"
    settings.write_text("\n".join((
        f"API_key_dst={keys}", f"data_storage_dst={root / 'data'}",
        f"data_vault_dst={root / 'vault'}", f"incoming_dst={root / 'incoming'}",
        "username=collector", "groupname=collector", "server_id=srv1", "role=main",
        "servers=srv1,srv2", "osf_enabled=False", "notifications=False",
    )) + "\n")
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tweets", type=int, default=200_000, help="tweets per server")
    parser.add_argument("--keep", type=Path, help="use (and keep) this folder")
    parser.add_argument("--collector-only", action="store_true",
                        help="skip the yardstick (for quick measurements; no ratio)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-process-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if not (root / "data").is_dir():
            print(f"generating {args.tweets} tweets per server under {root} ...", flush=True)
            size = write_hour({"srv1": root / "data", "srv2": root / "incoming" / "srv2"},
                              HOUR_START, ZoneInfo("CET"), args.tweets,
                              flatline={"srv2": (20, 26)})
            print(f"  {size / 1e6:.0f} MB of raw chunks", flush=True)
        for folder in (root / "data", root / "incoming" / "srv2"):
            mb = sum(p.stat().st_size for p in folder.rglob("*.jsonl")) / 1e6
            print(f"  {folder.relative_to(root)}: {mb:.0f} MB", flush=True)
        settings = write_settings(root)
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        shutil.rmtree(root / "vault", ignore_errors=True)
        shutil.rmtree(root / "data" / ".collector", ignore_errors=True)
        collector = measure([sys.executable, "-m", "collector", "--settings", str(settings),
                             "process", "--hour", HOUR, "--force"])
        if args.collector_only:
            print(f"collector: wall {collector.wall:.1f} s, CPU {collector.cpu:.1f} s, peak "
                  f"{collector.peak_mb:.0f} MB (largest process {collector.max_single_mb:.0f})"
                  f"\n{collector.stderr.strip().splitlines()[-1]}")
            return
        yard_out = root / "yardstick"
        shutil.rmtree(yard_out, ignore_errors=True)
        yard_out.mkdir()
        yardstick = measure([sys.executable, "-c", YARDSTICK, str(root / "data"),
                             str(root / "incoming" / "srv2"), str(yard_out)], JQ_FILTER)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average before the runs: {load}")
    print(f"{'':12}{'wall s':>9}{'CPU s':>9}{'peak MB':>9}{'max1 MB':>9}")
    for name, run in (("collector", collector), ("yardstick", yardstick)):
        print(f"{name:12}{run.wall:9.1f}{run.cpu:9.1f}{run.peak_mb:9.0f}{run.max_single_mb:9.0f}")
    print(f"ratio wall {collector.wall / yardstick.wall:.2f} (goal <= 0.30), "
          f"CPU {collector.cpu / yardstick.cpu:.2f}, peak memory "
          f"{collector.peak_mb / yardstick.peak_mb:.2f} ({collector.peak_mb:.0f} MB, "
          f"goal <= 200 MB)")
    split = re.search(r"reading ([\d.]+) s, merging ([\d.]+) s, rendering ([\d.]+) s, "
                      r"compressing ([\d.]+) s", collector.stderr)
    if split:
        print(f"collector split (wall s): reading {split[1]}, parsing+merging {split[2]} "
              f"(before compression starts), rendering {split[3]} (overlaps compression), "
              f"rendering+compressing+writing {split[4]}")


if __name__ == "__main__":
    main()
