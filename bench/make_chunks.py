"""Generate one hour of raw chunks per server, as the stream writes them, for the benchmark.

Every server receives the same deterministic message sequence (the fake API's, built from
real API responses by `tests.doubles.samples.MessageFactory`) and writes one chunk per minute
of receipt: each line is the message plus twarc's `__twarc` metadata. Optionally one server
flatlines for some minutes (no chunks, as when its connection is down).

Completeness: about a third of the sample tweets come from older captures that lack fields
the collector requests and the API always returns (`conversation_id`, `lang`, `source`; the
author's `protected`, `verified`, `public_metrics`). Such messages would be smaller than real
ones, so the generator completes them from real values of the same pool (each missing field
from a tweet or author that has it, chosen by id so an author stays consistent); optional
fields (`location`, `referenced_tweets`) stay absent when absent. That gives the ~170 MB per
server and hour of 200,000 tweets the issue measures; nothing is padded.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from collector.layout import chunk_path
from tests.doubles.samples import MessageFactory, load_pool

TWARC_URL = "https://api.x.com/2/tweets/sample/stream"


class Completer:
    """Fills the requested fields an older sample lacks with real values from the pool."""

    TWEET_FIELDS = ("lang", "source")
    USER_FIELDS = ("protected", "verified", "public_metrics")

    def __init__(self) -> None:
        pool = load_pool()
        self.tweet_donors = [t for t, _ in pool if all(k in t for k in self.TWEET_FIELDS)]
        self.user_donors = [u for _, u in pool
                            if u is not None and all(k in u for k in self.USER_FIELDS)]

    def complete(self, message: dict[str, Any]) -> None:
        tweet = message["data"]
        if "conversation_id" not in tweet:
            tweet["conversation_id"] = tweet["id"]  # a tweet that starts its conversation
        if any(k not in tweet for k in self.TWEET_FIELDS):
            donor = self.tweet_donors[int(tweet["id"]) % len(self.tweet_donors)]
            for key in self.TWEET_FIELDS:
                tweet.setdefault(key, donor[key])
        for user in message.get("includes", {}).get("users", []):
            if any(k not in user for k in self.USER_FIELDS):
                donor = self.user_donors[int(user["id"]) % len(self.user_donors)]
                for key in self.USER_FIELDS:
                    user.setdefault(key, donor[key])


def write_hour(roots: dict[str, Path], hour_start: datetime, zone: ZoneInfo, tweets: int,
               flatline: dict[str, tuple[int, int]] | None = None,
               factory: MessageFactory | None = None) -> int:
    """Write `tweets` messages spread evenly over the hour into each server's root.

    `flatline` maps a server id to (first minute, last minute) it captured nothing.
    Returns the number of bytes written.
    """
    factory = factory or MessageFactory(base_time=hour_start)
    completer = Completer()
    flatline = flatline or {}
    step = 3600.0 / tweets
    handles: dict[str, tuple[Path, list[bytes]]] = {}
    written = 0

    def flush(server: str) -> None:
        nonlocal written
        path, lines = handles.pop(server)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(lines)
        path.write_bytes(data)
        written += len(data)

    for index in range(tweets):
        message = factory.message(index)
        completer.complete(message)
        for offset, (server, root) in enumerate(roots.items()):
            received = hour_start + timedelta(seconds=index * step + 0.05 + 0.2 * offset)
            minute = int((received - hour_start).total_seconds() // 60)
            first, last = flatline.get(server, (-1, -1))
            if first <= minute <= last:
                continue
            message["__twarc"] = {"url": TWARC_URL, "version": "2.14.0",
                                  "retrieved_at": received.isoformat()}
            path = chunk_path(root, server, received, zone)
            current = handles.get(server)
            if current is not None and current[0] != path:
                flush(server)
                current = None
            if current is None:
                handles[server] = (path, [])
            handles[server][1].append(orjson.dumps(message) + b"\n")
    for server in list(handles):
        flush(server)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path, help="folder for data/ and incoming/")
    parser.add_argument("--tweets", type=int, default=200_000)
    parser.add_argument("--hour", default="2026-01-01T00:00:00+00:00", help="UTC start")
    args = parser.parse_args()
    hour_start = datetime.fromisoformat(args.hour).astimezone(UTC)
    roots = {"srv1": args.root / "data", "srv2": args.root / "incoming" / "srv2"}
    size = write_hour(roots, hour_start, ZoneInfo("CET"), args.tweets,
                      flatline={"srv2": (20, 26)})
    print(f"wrote {size / 1e6:.0f} MB of chunks under {args.root}")


if __name__ == "__main__":
    main()
