"""`make bench-bluesky`: `collector process` (source=bluesky) against plain pandas, same files.

Generates (in a child) an hour of 200,000 posts per server for two servers with
`bench.make_bluesky_chunks` (most posts on both, some on one only, a replay, deletes), then
runs, each in its own child process:

* the collector: `python -m collector --settings S process --hour H --force`;
* the yardstick, the plain approach: every chunk's JSON lines parsed with json, flattened
  with `pandas.json_normalize`, duplicate AT-URIs dropped keeping the first retrieved,
  sorted, and IDs, posts and deletes written with `compression="xz"`.

Wall time, CPU time and peak memory (the largest sum of resident memory over the child's
process tree) are measured by `bench.bench_process.measure`. Afterwards the three files of
both are compared, decompressed.

    .venv/bin/python -m bench.bench_bluesky_merge [--posts 200000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import lzma
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.bench_process import REPO, Run, measure, write_settings

HOUR_START = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)  # 2026-01-01T01 in CET
HOUR = "2026-01-01T01"

YARDSTICK = r"""
import json, sys
from pathlib import Path
import pandas as pd
roots, out = [Path(p) for p in sys.argv[1:-1]], Path(sys.argv[-1])
events = []
for root in roots:
    for chunk in sorted(root.rglob("*.jsonl")):
        with open(chunk, "rb") as handle:
            for line in handle:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
frame = pd.json_normalize(events)
del events
frame = frame[frame["kind"] == "commit"]
frame["uri"] = ("at://" + frame["did"] + "/" + frame["commit.collection"] + "/"
                + frame["commit.rkey"])
creates = frame[frame["commit.operation"] == "create"]
creates = creates.sort_values("__collector.retrieved_at", kind="stable")
creates = creates.drop_duplicates("uri").sort_values("uri")
deletes = frame.loc[frame["commit.operation"] == "delete", "uri"].drop_duplicates()
deletes = deletes.sort_values()
posts = creates[(creates["commit.collection"] == "app.bsky.feed.post")
                & ~creates["uri"].isin(set(deletes))]
def column(name):
    return posts[name] if name in posts else pd.Series("", index=posts.index)
embed_uri = column("commit.record.embed.external.uri").fillna(
    column("commit.record.embed.record.uri")).fillna(
    column("commit.record.embed.record.record.uri"))
table = pd.DataFrame({
    "uri": posts["uri"], "cid": posts["commit.cid"], "did": posts["did"],
    "rkey": posts["commit.rkey"], "created_at": posts["commit.record.createdAt"],
    "time_us": posts["time_us"], "retrieved_at": posts["__collector.retrieved_at"],
    "langs": column("commit.record.langs").map(
        lambda v: ",".join(v) if isinstance(v, list) else ""),
    "text": posts["commit.record.text"],
    "reply_root_uri": column("commit.record.reply.root.uri"),
    "reply_parent_uri": column("commit.record.reply.parent.uri"),
    "embed_type": column("commit.record.embed.$type"), "embed_uri": embed_uri})
table.to_csv(out / "posts.csv.xz", index=False, compression="xz")
creates["uri"].to_csv(out / "IDs.txt.xz", index=False, header=False, compression="xz")
deletes.to_csv(out / "deletes.txt.xz", index=False, header=False, compression="xz")
"""


def compare(collector_out: Path, yardstick_out: Path) -> str:
    """Whether both wrote the same IDs, posts and deletes (decompressed)."""
    prefix = HOUR.replace("T", "_")
    found = []
    for name in ("IDs.txt.xz", "posts.csv.xz", "deletes.txt.xz"):
        mine = lzma.decompress((collector_out / f"{prefix}_{name}").read_bytes())
        theirs = lzma.decompress((yardstick_out / name).read_bytes())
        lines = mine.count(b"\n")
        found.append(f"{name} {'identical' if mine == theirs else 'DIFFERENT'} ({lines} lines)")
    return ", ".join(found)


def show(name: str, run: Run) -> str:
    return f"{name:12}{run.wall:9.1f}{run.cpu:9.1f}{run.peak_mb:9.0f}{run.max_single_mb:9.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=200_000, help="posts per server")
    parser.add_argument("--keep", type=Path, help="use (and keep) this folder")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-bluesky-"))
    root.mkdir(parents=True, exist_ok=True)
    roots = {"srv1": root / "data", "srv2": root / "incoming" / "srv2"}
    try:
        if not roots["srv1"].is_dir():
            # In a child, so this process stays small: a child started later would count
            # its size in wait4's ru_maxrss.
            print(f"generating {args.posts} posts per server under {root} ...", flush=True)
            subprocess.run([sys.executable, "-m", "bench.make_bluesky_chunks", str(root),
                            "--posts", str(args.posts), "--hour", HOUR_START.isoformat()],
                           cwd=REPO, check=True)
        settings = write_settings(root)
        settings.write_text(settings.read_text() + "source=bluesky\n")
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        shutil.rmtree(root / "vault", ignore_errors=True)
        shutil.rmtree(root / "data" / ".collector", ignore_errors=True)
        collector = measure([sys.executable, "-m", "collector", "--settings", str(settings),
                             "process", "--hour", HOUR, "--force"])
        yard_out = root / "yardstick"
        shutil.rmtree(yard_out, ignore_errors=True)
        yard_out.mkdir()
        hour_folders = [folder / HOUR[:10] / HOUR[11:] for folder in roots.values()]
        yardstick = measure([sys.executable, "-c", YARDSTICK, *map(str, hour_folders),
                             str(yard_out)])
        agreement = compare(root / "vault" / HOUR[:10], yard_out)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average before the runs: {load}")
    print(f"{'':12}{'wall s':>9}{'CPU s':>9}{'peak MB':>9}{'max1 MB':>9}")
    print(show("collector", collector))
    print(show("pandas", yardstick))
    print(f"ratio wall {collector.wall / yardstick.wall:.2f} (goal <= 0.30), "
          f"CPU {collector.cpu / yardstick.cpu:.2f}, peak memory "
          f"{collector.peak_mb / yardstick.peak_mb:.2f} ({collector.peak_mb:.0f} MB, "
          f"goal <= 200 MB)")
    print(f"outputs: {agreement}")
    print(f"collector: {collector.stderr.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
