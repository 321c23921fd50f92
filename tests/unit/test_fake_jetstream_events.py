"""The fake Jetstream's universe as pure functions: the same seed, epoch and rate give the
same events everywhere; records have the real identifier shapes and unique AT-URIs; deletes
remove records created earlier, once; post texts carry what breaks naive CSV; the real mix;
and one instance's cursor arithmetic (first event at a time_us, clamping, live tail).
"""

from __future__ import annotations

import collections
import itertools
import json
import re

import pytest
import zstandard

from tests.doubles.fake_jetstream import DICTIONARY_ID, Universe, at_uri, dictionary
from tests.doubles.fake_jetstream.query import QueryError, Subscription, parse
from tests.doubles.fake_jetstream.timeline import Timeline
from tests.doubles.fake_jetstream.universe import wants_collection
from tests.doubles.fake_jetstream.wire import go_json

EPOCH = 1_790_000_000.0
N = 12_000
DID = re.compile(r"^did:plc:[a-z2-7]{24}$")
TID = re.compile(r"^[2-7a-z]{13}$")
CID = re.compile(r"^bafyrei[a-z2-7]{52}$")


@pytest.fixture(scope="module")
def universe() -> Universe:
    return Universe(seed=7, epoch=EPOCH, rate=50)


@pytest.fixture(scope="module")
def events(universe: Universe) -> list[dict[str, object]]:
    return [universe.event(i) for i in range(N)]


def test_same_parameters_same_events_other_seed_other_events(
        universe: Universe, events: list[dict[str, object]]) -> None:
    again = Universe(seed=7, epoch=EPOCH, rate=50)
    assert [again.event(i) for i in range(0, N, 7)] == events[::7]
    other = Universe(seed=8, epoch=EPOCH, rate=50)
    assert sum(other.event(i) == events[i] for i in range(500)) == 0
    assert all("time_us" not in event for event in events)


def test_event_i_is_due_at_epoch_plus_i_over_rate(universe: Universe) -> None:
    assert universe.due_us(0) == round(EPOCH * 1e6)
    assert universe.due_us(50) == round(EPOCH * 1e6) + 1_000_000
    for index in (0, 1, 49, 50, 12345):
        due = universe.due_us(index)
        assert universe.index_at_us(due) == index
        assert universe.index_at_us(due + 1) == index + 1
    assert universe.index_at_us(0) == 0  # before the epoch: the first event


def test_identifiers_have_the_real_shapes_and_creates_are_unique(
        universe: Universe, events: list[dict[str, object]]) -> None:
    creates = []
    for event in events:
        assert DID.match(str(event["did"]))
        if event["kind"] != "commit":
            continue
        commit = event["commit"]
        assert isinstance(commit, dict)
        if commit["operation"] == "create":
            assert TID.match(commit["rkey"]) and TID.match(commit["rev"])
            assert CID.match(commit["cid"]) and commit["record"]["$type"] == commit["collection"]
            creates.append(at_uri(event))
    assert len(creates) == len(set(creates)) > 0.9 * N
    assert len({event["did"] for event in events}) > 2000  # a pool of a few thousand authors
    assert universe.created_uris(range(N)) == sorted(creates)


def test_deletes_remove_earlier_creates_once_mostly_posts(
        universe: Universe, events: list[dict[str, object]]) -> None:
    created_at = {at_uri(e): i for i, e in enumerate(events)
                  if e["kind"] == "commit" and e["commit"]["operation"] == "create"}  # type: ignore[index]
    deleted: list[str] = []
    for index, event in enumerate(events):
        commit = event.get("commit")
        if isinstance(commit, dict) and commit["operation"] == "delete":
            assert set(commit) == {"rev", "operation", "collection", "rkey"}  # no record/cid
            uri = at_uri(event)
            assert created_at[uri] < index
            deleted.append(uri)
    assert len(deleted) == len(set(deleted)) > 0.02 * N
    posts = sum("/app.bsky.feed.post/" in uri for uri in deleted)
    assert posts / len(deleted) > 0.6
    assert universe.deleted_uris(range(N), ["app.bsky.feed.post"]) == sorted(
        uri for uri in deleted if "/app.bsky.feed.post/" in uri)


def test_the_mix_is_the_real_one(events: list[dict[str, object]]) -> None:
    kinds = collections.Counter(
        (e["commit"]["operation"], e["commit"]["collection"]) if e["kind"] == "commit"  # type: ignore[index]
        else (e["kind"], None) for e in events)
    share = {key: count / N for key, count in kinds.items()}
    assert 0.65 < share["create", "app.bsky.feed.like"] < 0.72
    assert 0.10 < share["create", "app.bsky.feed.post"] < 0.12
    assert 0.09 < share["create", "app.bsky.feed.repost"] < 0.11
    assert share["create", "app.bsky.graph.follow"] > 0.03
    assert 0 < share["identity", None] < 0.01 and 0 < share["account", None] < 0.01
    assert sum(v for (op, _), v in share.items() if op == "update") > 0.01


def test_post_texts_carry_what_breaks_naive_csv(events: list[dict[str, object]]) -> None:
    texts = [e["commit"]["record"]["text"] for e in events  # type: ignore[index]
             if e["kind"] == "commit" and e["commit"]["operation"] == "create"  # type: ignore[index]
             and e["commit"]["collection"] == "app.bsky.feed.post"]  # type: ignore[index]
    assert len(set(texts)) > 100
    for needle in ("\n", "\r\n", '"', ",", "\t", "&", "<", "\u2028", "\u200d"):
        assert any(needle in text for text in texts), needle
    assert "" in texts
    assert any(any(ord(ch) > 0xFFFF for ch in text) for text in texts)  # emoji
    assert any(any("\u0590" <= ch <= "\u06ff" for ch in text) for text in texts)  # RTL


def test_wire_json_is_compact_go_style_with_time_us_second(universe: Universe) -> None:
    for index in range(400):
        data = universe.wire(index, 1_790_000_000_123_456)
        event = json.loads(data)
        assert list(event)[:3] == ["did", "time_us", "kind"]
        assert event["time_us"] == 1_790_000_000_123_456
        assert universe.stamped(index, 1_790_000_000_123_456) == event
        assert b"&" not in data and b"<" not in data and b">" not in data
        assert "\u2028".encode() not in data
    assert go_json({"t": "a&b<c>\u2028é"}) == b'{"t":"a\\u0026b\\u003cc\\u003e\\u2028\xc3\xa9"}'


def test_dictionary_is_the_v1_one() -> None:
    assert zstandard.ZstdCompressionDict(dictionary()).dict_id() == DICTIONARY_ID


def test_collection_filter_with_prefixes() -> None:
    assert wants_collection("app.bsky.feed.post", [])
    assert wants_collection("app.bsky.feed.post", ["app.bsky.feed.*"])
    assert not wants_collection("app.bsky.feedx.post", ["app.bsky.feed.*"])
    assert not wants_collection("app.bsky.feed.like", ["app.bsky.feed.post"])


def test_query_parsing_as_jetstream_checks_it() -> None:
    sub = parse("/subscribe?wantedCollections=app.bsky.feed.post&wantedCollections="
                "app.bsky.graph.*&cursor=123&compress=true&maxMessageSizeBytes=-5", {})
    assert sub == Subscription(("app.bsky.feed.post", "app.bsky.graph.*"), frozenset(), 123,
                               True, 0)
    assert parse("/subscribe", {"Socket-Encoding": "zstd"}).compress
    for bad in ("wantedCollections=app.bsky.feed.post,app.bsky.feed.like", "cursor=abc",
                "cursor=-1", "wantedDids=alice", "wantedCollections=app.bsky.fo*"):
        with pytest.raises(QueryError):
            parse(f"/subscribe?{bad}", {})
    lenient = parse("/subscribe?wantedCollections=app.bsky.feed.post,app.bsky.feed.like", {},
                    comma_lists=True)
    assert lenient.collections == ("app.bsky.feed.post", "app.bsky.feed.like")


def test_cursor_start_clamp_and_live_tail(universe: Universe) -> None:
    timeline = Timeline(universe, "east", offset_us=5_000, jitter_us=30_000,
                        lookback_seconds=300)
    now = universe.due_us(50 * 600)  # ten minutes after the epoch
    stamps = [timeline.stamp(i) for i in range(20_000, 20_200)]
    assert any(b < a for a, b in itertools.pairwise(stamps))  # not monotonic
    cursor = timeline.stamp(25_000)
    start = timeline.resolve(cursor, now)
    assert not start.clamped and not start.live and start.index <= 25_000
    assert timeline.stamp(start.index) >= cursor
    assert all(timeline.stamp(i) < cursor for i in range(start.index))
    old = timeline.resolve(universe.epoch_us, now)  # older than the 300 s kept
    assert old.clamped and old.index == universe.index_at_us(now - 300_000_000)
    assert timeline.resolve(None, now).live and timeline.resolve(now + 10**6, now).live
    timeline.set_lookback(36 * 3600)  # the whole history is retained: nothing to clamp
    assert timeline.resolve(universe.epoch_us - 10**9, now) == old.__class__(0, False, False)
    timeline.add_missing(100, 110)
    timeline.add_missing(105, 120)
    assert timeline.missing() == [[100, 120]]
    assert timeline.is_missing(100) and timeline.is_missing(120) and not timeline.is_missing(121)
