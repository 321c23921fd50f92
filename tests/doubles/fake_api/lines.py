"""The wire lines of the stream, fast enough for 20,000 messages/s on a busy machine.

`MessageFactory.line` alone (~45,000 lines/s) leaves too little headroom, so lines are cached
in a ring shared by all connections and built from per-sample templates. A template is
message i serialised with marks in place of the parts that vary with i (tweet id,
`created_at`); it is used only after it reproduced `factory.line(i)` exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime

import orjson

from tests.doubles.fake_api.wire import MAX_CHUNK_BYTES
from tests.doubles.samples import (
    MISSING_AUTHOR_EVERY,
    PARTIAL_ERROR_EVERY,
    MessageFactory,
    snowflake,
)

CACHE_SLOTS = 1 << 16


def _created_at(base_ms: int, position: int) -> str:
    """`created_at` as MessageFactory writes it for a sequence position."""
    millis = base_ms + position * 10
    return (datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{millis % 1000:03d}Z")


class Lines:
    """Wire lines (JSON + CRLF) of one factory, by message index."""

    ID_MARK = "\x00id\x00"
    CREATED_MARK = "\x00created_at\x00"

    def __init__(self, factory: MessageFactory, slots: int = CACHE_SLOTS) -> None:
        self.factory = factory
        self.slots: list[tuple[int, bytes] | None] = [None] * slots
        self.templates: dict[tuple[int, bool, bool], bytes | None] = {}
        self.id_wire = orjson.dumps(self.ID_MARK)[1:-1]
        self.created_wire = orjson.dumps(self.CREATED_MARK)[1:-1]

    def line(self, index: int) -> bytes:
        slot = index % len(self.slots)
        cached = self.slots[slot]
        if cached is not None and cached[0] == index:
            return cached[1]
        line = self._build(index)
        self.slots[slot] = (index, line)  # one list store: safe under the GIL
        return line

    def _build(self, index: int) -> bytes:
        factory = self.factory
        position = factory._source_index(index)
        key = (position % len(factory.pool), position % MISSING_AUTHOR_EVERY == 0,
               position % PARTIAL_ERROR_EVERY == 0)
        tweet_id = str(snowflake(position, factory.base_ms)).encode()
        created = _created_at(factory.base_ms, position).encode()
        if key in self.templates:
            template = self.templates[key]
            if template is not None:
                return template.replace(self.id_wire, tweet_id).replace(
                    self.created_wire, created)
            return factory.line(index)
        line = factory.line(index)
        template = self._template(index, tweet_id.decode(), created.decode())
        if template.replace(self.id_wire, tweet_id).replace(self.created_wire, created) != line:
            self.templates[key] = None  # this sample does not fit a template: build each time
        else:
            self.templates[key] = template
        return line

    def _template(self, index: int, tweet_id: str, created: str) -> bytes:
        message = self.factory.message(index)
        data = message["data"]
        for name in ("id", "conversation_id"):
            if data.get(name) == tweet_id:
                data[name] = self.ID_MARK
        if data.get("edit_history_tweet_ids") == [tweet_id]:
            data["edit_history_tweet_ids"] = [self.ID_MARK]
        if data.get("created_at") == created:
            data["created_at"] = self.CREATED_MARK
        return orjson.dumps(message) + b"\r\n"

    def batch(self, first: int, limit: int) -> tuple[bytes, int]:
        """Up to `limit` lines from `first`, at most about MAX_CHUNK_BYTES; (bytes, count)."""
        parts: list[bytes] = []
        size = 0
        while len(parts) < limit and (not parts or size < MAX_CHUNK_BYTES):
            line = self.line(first + len(parts))
            parts.append(line)
            size += len(line)
        return b"".join(parts), len(parts)


class LineCache:
    """One `Lines` per requested field selection, shared by every connection that asks."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._lines: dict[tuple[tuple[str, ...], ...], Lines] = {}

    def get(self, tweet_fields: Iterable[str], user_fields: Iterable[str],
            expansions: Iterable[str]) -> Lines:
        key = (tuple(tweet_fields), tuple(user_fields), tuple(expansions))
        with self._lock:
            lines = self._lines.get(key)
            if lines is None:
                lines = self._lines[key] = Lines(MessageFactory(*key))
            return lines
