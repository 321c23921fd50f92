"""Generate one hour of Bluesky chunks per server, as the capture writes them, for the benchmark.

Every post is one of the real window's 17 posts (`tests.doubles.bluesky_events`: its reply,
embed, facets and langs) with its own did, rkey, cid and a text of 4-40 words drawn from the
real posts' words (several scripts, emoji, newlines), deterministically from its number. Each
chunk line is the event plus `__collector` (receipt time, instance url); one chunk per
server and minute of receipt.

What the servers see, so the merge has all its work to do: most posts reach both servers
(0.2 s apart); every 50th only srv1, the next only srv2; srv1 reconnects at minute 30 and
the instance replays the last 60 s again; every 200th post is deleted five minutes later
(both servers see the delete).
"""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from collector.layout import chunk_path
from tests.doubles.bluesky_events import (
    capture_line,
    delete_of,
    retrieved,
    sample_posts,
    varied_post,
)

ONLY_SRV1, ONLY_SRV2, EVERY = 1, 2, 50  # n % EVERY: who receives post n
DELETE_EVERY = 200
REPLAY_AT_MINUTE, REPLAY_SECONDS = 30, 60


def _words() -> list[str]:
    words = [w for post in sample_posts() for w in post["commit"]["record"]["text"].split(" ")]
    return [w for w in words if w] + ["\n", "\n\n", "😊", "👍🏽", '"quoted"', "a,b"]


def post_events(posts: int) -> list[dict[str, Any]]:
    """Post `n` for n < posts: a real post's shape with its own identity and text."""
    templates, words = sample_posts(), _words()
    events = []
    for n in range(posts):
        pick = random.Random(n)
        text = " ".join(pick.choices(words, k=pick.randint(4, 40)))
        events.append(varied_post(templates[n % len(templates)], n, text))
    return events


def receivers(n: int) -> tuple[str, ...]:
    share = n % EVERY
    return ("srv1",) if share == ONLY_SRV1 else ("srv2",) if share == ONLY_SRV2 else (
        "srv1", "srv2")


def write_hour(roots: dict[str, Path], hour_start: datetime, zone: ZoneInfo,
               posts: int) -> int:
    """Write the hour's chunks into each server's root; returns the bytes written."""
    step = 3599.0 / posts  # the last post and its second copy still inside the hour
    by_chunk: dict[Path, list[tuple[datetime, bytes]]] = {}

    def receive(server: str, moment: datetime, event: dict[str, Any]) -> None:
        path = chunk_path(roots[server], server, moment, zone)
        by_chunk.setdefault(path, []).append((moment, capture_line(event, retrieved(moment))))

    reconnect = hour_start + timedelta(minutes=REPLAY_AT_MINUTE)
    replayed_from = reconnect - timedelta(seconds=REPLAY_SECONDS)
    hour_end = hour_start + timedelta(hours=1)
    for n, event in enumerate(post_events(posts)):
        seen = hour_start + timedelta(seconds=n * step + 0.05)
        for offset, server in enumerate(receivers(n)):
            receive(server, seen + timedelta(seconds=0.2 * offset), event)
        if "srv1" in receivers(n) and replayed_from <= seen < reconnect:
            # the replay comes fast: the last minute again within six seconds
            receive("srv1", reconnect + timedelta(seconds=1) + (seen - replayed_from) / 10,
                    event)
        deleted_at = seen + timedelta(minutes=5)
        if n % DELETE_EVERY == 0 and deleted_at < hour_end:
            for server in ("srv1", "srv2"):
                receive(server, deleted_at, delete_of(event))
    written = 0
    for path, lines in by_chunk.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(line for _, line in sorted(lines, key=lambda pair: pair[0]))
        path.write_bytes(data)
        written += len(data)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path, help="folder for data/ and incoming/")
    parser.add_argument("--posts", type=int, default=200_000, help="posts per server")
    parser.add_argument("--hour", default="2026-01-01T00:00:00+00:00", help="UTC start")
    args = parser.parse_args()
    roots = {"srv1": args.root / "data", "srv2": args.root / "incoming" / "srv2"}
    start = datetime.fromisoformat(args.hour).astimezone(UTC)
    size = write_hour(roots, start, ZoneInfo("CET"), args.posts)
    print(f"  {size / 1e6:.0f} MB of raw chunks under {args.root}")


if __name__ == "__main__":
    main()
