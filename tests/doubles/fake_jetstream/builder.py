"""Event number i of the universe, built from a real sample of its kind: a new author,
record key, revision, CID and `createdAt`, and for posts a varied text.

`meta(i)` says what event i is (kind, operation, collection, DID, record key) without
building it, so a connection's filter and the oracle of the fault suite stay cheap.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from tests.doubles.fake_jetstream.ids import cid, iso_millis, number, plc_did, tid
from tests.doubles.fake_jetstream.mix import TARGET_KIND, Mix
from tests.doubles.fake_jetstream.samples import Template, templates
from tests.doubles.fake_jetstream.texts import post_text

COLLECTIONS = {
    "post": "app.bsky.feed.post", "like": "app.bsky.feed.like",
    "repost": "app.bsky.feed.repost", "follow": "app.bsky.graph.follow",
    "block": "app.bsky.graph.block",
}
SEQ_BASE = 31_527_015_000  # relay sequence numbers of the real window's era
ACCOUNT_STATUSES = ("deactivated", "takendown", "deleted", "suspended")


@dataclass(frozen=True)
class Meta:
    """What event i is: `kind` commit/identity/account; commits have the rest."""

    kind: str
    did: str
    operation: str | None = None
    collection: str | None = None
    rkey: str | None = None


class EventBuilder:
    """Builds the events of one seed; `due_us(i)` is event i's time in unix microseconds."""

    def __init__(self, seed: int, authors: int, due_us: Callable[[int], int]) -> None:
        self.seed = seed
        self.authors = authors
        self.due_us = due_us
        self.mix = Mix(seed)
        self.groups = templates()

    def author(self, index: int) -> str:
        return plc_did(self.seed, number(self.seed, "by", index) % self.authors)

    def rkey(self, index: int) -> str:
        """Event i's record key: a TID of its due time, unique per index."""
        return tid(self.due_us(index), index % 1024)

    def _template(self, group: str, index: int) -> Template:
        pool = self.groups[group]
        return pool[number(self.seed, "template", index) % len(pool)]

    def meta(self, index: int) -> Meta:
        kind = self.mix.slot(index).kind
        if kind in COLLECTIONS:
            return Meta("commit", self.author(index), "create", COLLECTIONS[kind],
                        self.rkey(index))
        if kind in TARGET_KIND:
            target = self.mix.delete_target(index)
            assert target is not None  # Mix.slot makes a delete without a target a like
            return Meta("commit", self.author(target), "delete",
                        COLLECTIONS[TARGET_KIND[kind]], self.rkey(target))
        if kind == "update":
            did = self.author(index)
            commit = self._copy(self._template("update", index), did)["commit"]
            return Meta("commit", did, "update", commit["collection"], commit["rkey"])
        return Meta(kind, self.author(index))

    def build(self, index: int) -> dict[str, Any]:
        """Event i as a dict in the v1 key order, without `time_us`."""
        meta = self.meta(index)
        rnd = random.Random(number(self.seed, "event", index))
        due = self.due_us(index)
        if meta.kind == "identity":
            return self._identity(meta.did, index, due, rnd)
        if meta.kind == "account":
            return self._account(meta.did, index, due, rnd)
        if meta.operation == "delete":
            return {"did": meta.did, "kind": "commit", "commit": {
                "rev": tid(due, number(self.seed, "rev", index) % 1024),
                "operation": "delete", "collection": meta.collection, "rkey": meta.rkey}}
        group = "update" if meta.operation == "update" else self.mix.slot(index).kind
        event = self._copy(self._template(group, index), meta.did)
        commit = event["commit"]
        commit["rev"] = tid(due, number(self.seed, "rev", index) % 1024)
        commit["rkey"] = meta.rkey
        commit["cid"] = cid(self.seed, index)
        record = commit["record"]
        if "createdAt" in record and meta.operation == "create":
            record["createdAt"] = iso_millis(due - rnd.randrange(0, 3_000_000))
        if group == "post":
            text, original = post_text(record.get("text", ""), rnd)
            record["text"] = text
            if not original:
                record.pop("facets", None)
        return event

    @staticmethod
    def _copy(template: Template, did: str) -> dict[str, Any]:
        """A fresh copy of a template with its author's DID replaced everywhere."""
        raw = template.raw.replace(template.did.encode(), did.encode())
        event: dict[str, Any] = orjson.loads(raw)
        return event

    def _identity(self, did: str, index: int, due: int,
                  rnd: random.Random) -> dict[str, Any]:
        body: dict[str, Any] = {"did": did}
        if rnd.random() < 0.5:
            body["handle"] = f"user{number(self.seed, 'handle', index) % 100000}.bsky.social"
        body.update({"seq": SEQ_BASE + index, "time": iso_millis(due)})
        return {"did": did, "kind": "identity", "identity": body}

    def _account(self, did: str, index: int, due: int,
                 rnd: random.Random) -> dict[str, Any]:
        active = rnd.random() < 0.7
        body: dict[str, Any] = {"active": active, "did": did, "seq": SEQ_BASE + index}
        if not active:
            body["status"] = rnd.choice(ACCOUNT_STATUSES)
        body["time"] = iso_millis(due)
        return {"did": did, "kind": "account", "account": body}
