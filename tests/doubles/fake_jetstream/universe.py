"""The universe: the one network every fake instance relays. Event i is due at
`epoch + i / rate` and is the same event (DID, collection, rkey, CID, record) in every
instance started with the same seed, epoch and rate; only `time_us` is the instance's own.

Pure functions of (seed, epoch, rate, i): `event(i)`, `meta(i)`, `at_uri(event)`, and the
AT-URIs created or deleted among given indices, which is what the fault suite compares a
collector's output with.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from tests.doubles.fake_jetstream.builder import EventBuilder, Meta
from tests.doubles.fake_jetstream.wire import join_event, split_event

AUTHORS = 4000
BODY_CACHE = 20_000  # serialised events kept per universe (the live tail and recent replays)


def wants_collection(collection: str | None, wanted: Sequence[str]) -> bool:
    """Jetstream's collection filter: no list is everything; `x.y.*` is a prefix."""
    if not wanted or collection is None:
        return True
    for pattern in wanted:
        if pattern.endswith(".*"):
            if collection.startswith(pattern[:-1]):
                return True
        elif collection == pattern:
            return True
    return False


def at_uri(event: dict[str, Any]) -> str:
    """`at://<did>/<collection>/<rkey>` of a commit event (the identity of its record)."""
    commit = event["commit"]
    return f"at://{event['did']}/{commit['collection']}/{commit['rkey']}"


class Universe:
    """The events of one (seed, epoch, rate)."""

    def __init__(self, *, seed: int = 1, epoch: float, rate: float = 50.0,
                 authors: int = AUTHORS) -> None:
        if rate <= 0 or authors < 1:
            raise ValueError("rate > 0 and authors >= 1 are required")
        self.seed = seed
        self.epoch = float(epoch)
        self.rate = float(rate)
        self.epoch_us = round(self.epoch * 1_000_000)
        self._builder = EventBuilder(seed, authors, self.due_us)
        self._parts = lru_cache(maxsize=BODY_CACHE)(self._split)
        self.meta = lru_cache(maxsize=BODY_CACHE)(self._builder.meta)

    def due_us(self, index: int) -> int:
        """When event `index` is due, in unix microseconds."""
        return self.epoch_us + int(index * 1_000_000 / self.rate)

    def index_at_us(self, when_us: int) -> int:
        """The first index due at or after `when_us` (0 before the epoch)."""
        index = max(0, math.ceil((when_us - self.epoch_us) * self.rate / 1_000_000))
        while index > 0 and self.due_us(index - 1) >= when_us:
            index -= 1
        while self.due_us(index) < when_us:
            index += 1
        return index

    def event(self, index: int) -> dict[str, Any]:
        """Event `index` as a fresh dict, without `time_us`."""
        return self._builder.build(index)

    def stamped(self, index: int, time_us: int) -> dict[str, Any]:
        """Event `index` with `time_us` in its place (the second key)."""
        event = self.event(index)
        return {"did": event.pop("did"), "time_us": time_us, **event}

    def wire(self, index: int, time_us: int) -> bytes:
        """Event `index` as the JSON an instance sends."""
        return join_event(self._parts(index), time_us)

    def _split(self, index: int) -> tuple[bytes, bytes]:
        return split_event(self.event(index))

    def created_uris(self, indices: Iterable[int],
                     collections: Sequence[str] = ()) -> list[str]:
        """Sorted distinct AT-URIs created (operation create) by these events in the wanted
        collections (Jetstream's filter syntax; empty is every collection)."""
        return self._uris(indices, collections, "create")

    def deleted_uris(self, indices: Iterable[int],
                     collections: Sequence[str] = ()) -> list[str]:
        """Sorted distinct AT-URIs deleted by these events in the wanted collections."""
        return self._uris(indices, collections, "delete")

    def _uris(self, indices: Iterable[int], collections: Sequence[str],
              operation: str) -> list[str]:
        uris = set()
        for index in set(indices):
            meta: Meta = self.meta(index)
            if meta.operation == operation and wants_collection(meta.collection, collections):
                uris.add(f"at://{meta.did}/{meta.collection}/{meta.rkey}")
        return sorted(uris)
