"""Jetstream v1 events built from real ones (bluesky-social/jetstream test data, MIT), and chunk
lines written the capture's way: the event as received plus `__collector` at its end.

Varied posts keep a real post's shape (reply, embed, facets, langs) and get their own did,
rkey, cid, text and `time_us`, deterministically from a number, so tests and benchmarks agree
on what post number n is.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "data" / "jetstream-samples"
WINDOW = "production_v1_window.jsonl"  # 152 contiguous production events
GOLDEN = "golden_v1.jsonl"  # 10 hand-picked events of every shape
JETSTREAM_URL = "wss://jetstream.us-east.bsky.network/subscribe"


@lru_cache(maxsize=4)
def _sample_lines(name: str) -> tuple[bytes, ...]:
    return tuple(line for line in (SAMPLES_DIR / name).read_bytes().splitlines() if line)


def sample_events(name: str = WINDOW) -> list[dict[str, Any]]:
    """The events of a sample file, freshly parsed (callers may change them)."""
    return [orjson.loads(line) for line in _sample_lines(name)]


def sample_posts(name: str = WINDOW) -> list[dict[str, Any]]:
    """The post creates of a sample file."""
    return [e for e in sample_events(name) if e.get("kind") == "commit"
            and e["commit"]["operation"] == "create"
            and e["commit"]["collection"] == "app.bsky.feed.post"]


def retrieved(moment: datetime) -> str:
    """A receipt time as the capture writes it: ISO-8601 UTC with microseconds."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def capture_line(event: dict[str, Any], retrieved_at: str, url: str = JETSTREAM_URL) -> bytes:
    """One chunk line: the event with `__collector` added as its last key."""
    meta = {"retrieved_at": retrieved_at, "url": url}
    return orjson.dumps({**event, "__collector": meta}) + b"\n"


def _base32(n: int, salt: bytes, length: int) -> str:
    digest = hashlib.blake2b(n.to_bytes(8, "little"), digest_size=40, salt=salt).digest()
    return base64.b32encode(digest).decode().lower()[:length]


def varied_post(template: dict[str, Any], n: int, text: str | None = None) -> dict[str, Any]:
    """Post number `n`: the template's shape with its own did (a did:plc, 24 characters),
    rkey (13, like a TID), cid, `time_us` and, given one, text (no deep copy: nothing of
    the template is changed)."""
    commit = template["commit"]
    record = dict(commit["record"])
    if text is not None:
        record["text"] = text
    return {**template, "did": "did:plc:" + _base32(n, b"did", 24),
            "time_us": template["time_us"] + n,
            "commit": {**commit, "rkey": "3m" + _base32(n, b"rkey", 11),
                       "cid": "bafyrei" + _base32(n, b"cid", 52), "record": record}}


def delete_of(event: dict[str, Any]) -> dict[str, Any]:
    """The delete event of a created record, as Jetstream sends it (no record, no cid)."""
    commit = event["commit"]
    return {"did": event["did"], "time_us": event["time_us"] + 1, "kind": "commit",
            "commit": {"rev": commit.get("rev", ""), "operation": "delete",
                       "collection": commit["collection"], "rkey": commit["rkey"]}}


def uri_of(event: dict[str, Any]) -> str:
    commit = event["commit"]
    return f"at://{event['did']}/{commit['collection']}/{commit['rkey']}"
