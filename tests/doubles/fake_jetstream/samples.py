"""The real Jetstream v1 events the fake is built from, and the zstd dictionary of
`compress=true`, read from `tests/data/jetstream-samples/` (verbatim copies of production
events and of the dictionary from the bluesky-social/jetstream repository, MIT licence).

The fake reads its own copy of the dictionary, not the one the collector ships in its
package, so a wrong copy there fails the tests instead of agreeing with itself.
Templates are grouped by what they are (post, like, ..., identity, account) so the universe
can pick a real shape for every event it makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import orjson

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "data" / "jetstream-samples"
SAMPLE_FILES = ("production_v1_window.jsonl", "golden_v1.jsonl")
DICTIONARY_FILE = "legacy_subscribe.zdict"
DICTIONARY_ID = 1612007021

# Template groups: a create's collection gives its group; updates, deletes, identity and
# account events are grouped by kind or operation.
CREATE_GROUPS = {
    "app.bsky.feed.post": "post",
    "app.bsky.feed.like": "like",
    "app.bsky.feed.repost": "repost",
    "app.bsky.graph.follow": "follow",
    "app.bsky.graph.block": "block",
}


def samples_dir() -> Path:
    """`tests/data/jetstream-samples`; a clear error when a file is missing."""
    if not (SAMPLES_DIR / SAMPLE_FILES[0]).is_file():
        raise FileNotFoundError(f"Jetstream samples not found in {SAMPLES_DIR}")
    return SAMPLES_DIR


@dataclass(frozen=True)
class Template:
    """One real event: its JSON bytes (time_us removed) and the DID it belongs to, so a copy
    can be given another author by replacing that DID wherever it occurs."""

    did: str
    raw: bytes


@lru_cache(maxsize=1)
def templates() -> dict[str, tuple[Template, ...]]:
    """Every sample event, grouped: post, like, repost, follow, block, update, delete,
    identity, account (file order; creates of other collections are left out)."""
    groups: dict[str, list[Template]] = {}
    folder = samples_dir()
    for name in SAMPLE_FILES:
        for line in (folder / name).read_bytes().splitlines():
            if not line.strip():
                continue
            event = orjson.loads(line)
            event.pop("time_us", None)
            group = _group(event)
            if group is not None:
                groups.setdefault(group, []).append(Template(event["did"], orjson.dumps(event)))
    return {group: tuple(items) for group, items in groups.items()}


def _group(event: dict[str, object]) -> str | None:
    kind = event.get("kind")
    if kind in ("identity", "account"):
        return str(kind)
    commit = event.get("commit")
    if not isinstance(commit, dict):
        return None
    operation = commit.get("operation")
    if operation == "create":
        return CREATE_GROUPS.get(str(commit.get("collection")))
    return str(operation) if operation in ("update", "delete") else None


@lru_cache(maxsize=1)
def dictionary() -> bytes:
    """The zstd dictionary `/subscribe?compress=true` frames are compressed with."""
    return (samples_dir() / DICTIONARY_FILE).read_bytes()
