"""Generate one hour of raw chunks per server, as the stream writes them, for the benchmark.

Every server receives the same deterministic message sequence (the fake API's, built from
real API responses by `tests.doubles.samples.MessageFactory`) and writes one chunk per minute
of receipt: each line is the message plus twarc's `__twarc` metadata. Optionally one server
flatlines for some minutes (no chunks, as when its connection is down).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

from collector.layout import chunk_path
from tests.doubles.samples import MessageFactory

TWARC_URL = "https://api.x.com/2/tweets/sample/stream"


def write_hour(roots: dict[str, Path], hour_start: datetime, zone: ZoneInfo, tweets: int,
               flatline: dict[str, tuple[int, int]] | None = None,
               factory: MessageFactory | None = None) -> int:
    """Write `tweets` messages spread evenly over the hour into each server's root.

    `flatline` maps a server id to (first minute, last minute) it captured nothing.
    Returns the number of bytes written.
    """
    factory = factory or MessageFactory(base_time=hour_start)
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
