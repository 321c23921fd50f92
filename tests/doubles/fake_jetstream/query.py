"""The v1 `/subscribe` query: `wantedCollections`, `wantedDids`, `cursor`, `compress`,
`maxMessageSizeBytes`, checked as Jetstream checks them (HTTP 400 and a one-line reason).

Faithful details: collections are NSIDs or prefixes ending in `.*` (at most 100), DIDs at
most 10,000; a cursor that is not a non-negative integer is a 400; `maxMessageSizeBytes`
that is empty, negative or not a number means no limit; `compress=true` exactly, or the
`Socket-Encoding: zstd` header, asks for zstd frames. The real service does NOT split
comma lists (`a,b` is one invalid NSID, a 400); `comma_lists=True` accepts them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from tests.doubles.fake_jetstream.builder import Meta
from tests.doubles.fake_jetstream.universe import wants_collection

SUBSCRIBE_PATH = "/subscribe"
MAX_COLLECTIONS = 100
MAX_DIDS = 10_000
NSID = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]*(\.[a-zA-Z0-9-]+){2,}$")
DID = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$")


class QueryError(ValueError):
    """A query Jetstream answers with HTTP 400."""


@dataclass(frozen=True)
class Subscription:
    """What one connection asked for."""

    collections: tuple[str, ...] = ()
    dids: frozenset[str] = field(default_factory=frozenset)
    cursor: int | None = None
    compress: bool = False
    max_message_size: int = 0

    def wants(self, meta: Meta) -> bool:
        """Jetstream's filter: DIDs apply to every event; collections only to commits
        (identity and account events always pass)."""
        if self.dids and meta.did not in self.dids:
            return False
        return meta.kind != "commit" or wants_collection(meta.collection, self.collections)


def parse(path: str, headers: Mapping[str, str], *, comma_lists: bool = False) -> Subscription:
    """The subscription a `/subscribe?...` request asks for; QueryError for a 400."""
    query = parse_qs(urlsplit(path).query, keep_blank_values=True)

    def values(name: str) -> list[str]:
        raw = query.get(name, [])
        if comma_lists:
            return [part for value in raw for part in value.split(",") if part]
        return raw

    collections = list(dict.fromkeys(values("wantedCollections")))
    for collection in collections:
        if not collection.endswith(".*") and not NSID.match(collection):
            raise QueryError(f"invalid collection: {collection}")
    if len(collections) > MAX_COLLECTIONS:
        raise QueryError(f"too many wanted collections: > {MAX_COLLECTIONS}")
    dids = frozenset(values("wantedDids"))
    for did in dids:
        if not DID.match(did):
            raise QueryError(f"invalid DID: {did}")
    if len(dids) > MAX_DIDS:
        raise QueryError(f"too many wanted DIDs: {len(dids)} > {MAX_DIDS}")
    cursor: int | None = None
    raw_cursor = query.get("cursor", [""])[0]
    if raw_cursor != "":
        if not re.fullmatch(r"-?[0-9]+", raw_cursor) or int(raw_cursor) < 0:
            raise QueryError(f"invalid cursor: {raw_cursor!r}")
        cursor = int(raw_cursor)
    raw_size = query.get("maxMessageSizeBytes", [""])[0]
    size = int(raw_size) if re.fullmatch(r"[0-9]+", raw_size) else 0
    compress = (query.get("compress", [""])[0] == "true"
                or headers.get("Socket-Encoding", "").lower() == "zstd")
    return Subscription(tuple(collections), dids, cursor, compress,
                        size if size < 1 << 32 else 0)
