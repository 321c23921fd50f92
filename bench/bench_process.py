"""`make bench` (merge part): `collector process` against the seed's approach, same files.

Generates an hour of 200,000 tweets per server for two servers (srv2 flatlines for seven
minutes) with `bench.make_chunks`, then runs, each in its own child process:

* the collector: `python -m collector --settings S process --hour H --force`;
* the yardstick, the seed's approach rebuilt: jq flattens each minute chunk to CSV, pandas
  concatenates them, drops duplicate ids and writes IDs, tweets and users with
  `compression="xz"` (xz's default preset, one thread).

Wall time, CPU time (user + system, children included) and peak resident memory come from
`os.wait4` on each child. The collector's own split (reading / merging / compressing) is
parsed from its final log line.

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
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.make_chunks import write_hour

REPO = Path(__file__).resolve().parent.parent
HOUR_START = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)  # 2026-01-01T01 in CET
HOUR = "2026-01-01T01"

# The seed's flattening: one CSV row per message that has data, columns of SPEC section 3.
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
from collector.merge import TWEET_COLUMNS, USER_COLUMNS
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
    peak_mb: float
    stderr: str


def measure(argv: list[str], stdin: str = "") -> Run:
    """Run one child; wall from the clock, CPU and peak memory from wait4 (its own tree)."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdin is not None and child.stderr is not None
    child.stdin.write(stdin.encode())
    child.stdin.close()
    err = child.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        sys.exit(f"{argv[:4]} failed ({child.returncode}):\n{err[-2000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, err)


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
        settings = write_settings(root)
        shutil.rmtree(root / "vault", ignore_errors=True)
        shutil.rmtree(root / "data" / ".collector", ignore_errors=True)
        collector = measure([sys.executable, "-m", "collector", "--settings", str(settings),
                             "process", "--hour", HOUR, "--force"])
        yard_out = root / "yardstick"
        shutil.rmtree(yard_out, ignore_errors=True)
        yard_out.mkdir()
        yardstick = measure([sys.executable, "-c", YARDSTICK, str(root / "data"),
                             str(root / "incoming" / "srv2"), str(yard_out)], JQ_FILTER)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'':12}{'wall s':>9}{'CPU s':>9}{'peak MB':>9}")
    for name, run in (("collector", collector), ("yardstick", yardstick)):
        print(f"{name:12}{run.wall:9.1f}{run.cpu:9.1f}{run.peak_mb:9.0f}")
    print(f"ratio wall {collector.wall / yardstick.wall:.2f} (goal <= 0.30), "
          f"CPU {collector.cpu / yardstick.cpu:.2f}, peak memory "
          f"{collector.peak_mb / yardstick.peak_mb:.2f} (goal <= 200 MB)")
    split = re.search(r"reading ([\d.]+) s, merging ([\d.]+) s, compressing ([\d.]+) s",
                      collector.stderr)
    if split:
        print(f"collector split (wall s): reading {split[1]}, merging {split[2]}, "
              f"compressing {split[3]}")


if __name__ == "__main__":
    main()
