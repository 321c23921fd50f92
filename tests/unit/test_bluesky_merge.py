"""Bluesky's merge on real Jetstream events: repeats, order, deletes, skips, rows, absorb.

Expected rows are rendered a second, independent way here (`expected_row`: plain dict
lookups and the csv module) and compared with pass 2's bytes.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
from typing import Any

import orjson
import pandas as pd
import pytest

from collector.csvrows import header_line
from collector.lines import SKIP_NOT_JSON, SKIP_TORN
from collector.sources.bluesky.merge import ENTRY, HourIndex
from collector.sources.bluesky.schema import (
    POST_COLUMNS,
    SKIP_BAD_COMMIT,
    SKIP_NOT_EVENT,
    created_uris_in,
    id_line,
)
from tests.doubles.bluesky_events import (
    GOLDEN,
    capture_line,
    delete_of,
    sample_events,
    sample_posts,
    uri_of,
    varied_post,
)


def _stamp(second: int) -> str:
    return f"2026-01-01T00:00:{second:02d}.000000+00:00"


def chunk(*events: dict[str, Any] | bytes, second: int = 1) -> bytes:
    """Capture lines of `events` (bytes are written as they are), all retrieved at `second`."""
    return b"".join(e if isinstance(e, bytes) else capture_line(e, _stamp(second))
                    for e in events)


class HourMerge(HourIndex):
    """Both passes over chunks held in memory (pass 2 reads lines back as `process` does)."""

    def __init__(self, servers: tuple[str, ...] = ("a",)) -> None:
        super().__init__(servers)
        self.data: list[bytes] = []

    def add_chunk(self, server_index: int, data: bytes, minute: int = 0,
                  chunk_no: int | None = None) -> int:
        self.data.append(data)
        return super().add_chunk(server_index, data, minute, len(self.data) - 1)

    def read_line(self, chunk_no: int, offset: int, length: int) -> bytes:
        return self.data[chunk_no][offset: offset + length]

    def outputs(self) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """IDs lines, posts rows and deletes lines, as `collector process` writes them."""
        plan = self.plan()
        posts, deletes = plan.output_rows(self.read_line)
        return [id_line(uri) for uri in plan.ids], list(posts), list(deletes)

    def kept_event(self, uri: str) -> dict[str, Any]:
        _, chunk_no, offset, length = ENTRY.unpack_from(self.entries[uri.encode()])
        event: dict[str, Any] = orjson.loads(self.read_line(chunk_no, offset, length))
        return event


# ---- the independent rendering ------------------------------------------------------------

def expected_row(event: dict[str, Any]) -> bytes:
    """A post's row from the parsed event, by plain lookups and the csv module (which quotes
    CR and LF only when they are in its line terminator, hence `\\r\\n`, cut afterwards)."""
    commit, record = event["commit"], event["commit"].get("record", {})
    embed, reply = record.get("embed", {}), record.get("reply", {})
    if "external" in embed:
        embed_uri = embed["external"]["uri"]
    elif "record" in embed:
        embed_uri = embed["record"].get("uri") or embed["record"]["record"]["uri"]
    else:
        embed_uri = ""
    cells = [uri_of(event), commit.get("cid", ""), event["did"], commit["rkey"],
             record.get("createdAt", ""), str(event["time_us"]),
             event["__collector"]["retrieved_at"], ",".join(record.get("langs", [])),
             record.get("text", ""), reply.get("root", {}).get("uri", ""),
             reply.get("parent", {}).get("uri", ""), embed.get("$type", ""), embed_uri]
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()[:-2].encode() + b"\n"


def expected_window(events: list[dict[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """IDs, post uris and deletes of one copy of a window of events, plainly."""
    commits = [e for e in events if e["kind"] == "commit"]
    created = {uri_of(e) for e in commits if e["commit"]["operation"] == "create"}
    deleted = {uri_of(e) for e in commits if e["commit"]["operation"] == "delete"}
    posts = {u for u in created if "/app.bsky.feed.post/" in u} - deleted
    return sorted(created), sorted(posts), sorted(deleted)


# ---- tests ----------------------------------------------------------------------------------


def test_a_real_window_gives_its_creates_posts_and_deletes_with_independent_rows() -> None:
    events = sample_events()
    merge = HourMerge()
    merge.add_chunk(0, chunk(*events))
    ids, posts, deletes = merge.outputs()
    want_ids, want_posts, want_deletes = expected_window(events)
    assert len(want_ids) == 144 and len(want_deletes) == 4  # the manifest's counts
    assert [i.decode() for i in ids] == [u + "\n" for u in want_ids]
    assert [d.decode() for d in deletes] == [u + "\n" for u in want_deletes]
    by_uri = {uri_of(e): e for e in events if e["kind"] == "commit"}
    lines = {uri_of(e): orjson.loads(capture_line(e, _stamp(1))) for e in by_uri.values()}
    assert posts == [expected_row(lines[u]) for u in want_posts]
    assert len(posts) == 17
    assert merge.skipped == {} and merge.duplicates == 0
    assert merge.not_records == {"update": 2, "identity": 1, "account": 1}
    assert merge.counts() == {"deletes": 4}
    assert merge.plan().summary() == ("144 records, 17 posts, 4 deletes; not merged: "
                                      "2 updates, 2 identity/account events")


def test_golden_events_every_shape() -> None:
    events = sample_events(GOLDEN)
    merge = HourMerge()
    merge.add_chunk(0, chunk(*events))
    ids, posts, deletes = merge.outputs()
    assert len(ids) == 5 and len(posts) == 1 and len(deletes) == 1  # a non-bsky delete
    assert b"org.hypercerts.claim.activity" in deletes[0]
    [row] = list(csv.reader(io.StringIO(posts[0].decode())))
    values = dict(zip(POST_COLUMNS, row, strict=True))
    assert values["reply_root_uri"].startswith("at://did:plc:j76trmiofvaxxpvx2vnb2vwf/")
    assert values["langs"] == "en" and values["embed_type"] == ""


def test_repeats_across_servers_and_replays_keep_the_first_retrieved_copy() -> None:
    template = sample_posts()[0]
    first, second, third = (varied_post(template, n, f"post {n}") for n in range(3))
    late = copy.deepcopy(first)
    late["commit"]["record"]["text"] = "replayed, later"
    tie = copy.deepcopy(second)
    tie["commit"]["record"]["text"] = "same moment, read later"
    merge = HourMerge(("a", "b"))
    merge.add_chunk(0, chunk(late, second, second, second=5))  # a replay within server a
    merge.add_chunk(1, chunk(first, third, second=2) + chunk(tie, second=5))
    assert merge.kept_event(uri_of(first))["commit"]["record"]["text"] == "post 0"
    assert merge.kept_event(uri_of(second))["commit"]["record"]["text"] == "post 1"
    assert merge.duplicates == 3
    assert merge.server_counts() == [2, 3]
    _, posts, _ = merge.outputs()
    cells = {row[0]: row for row in csv.reader(io.StringIO(b"".join(posts).decode()))}
    retrieved_at = POST_COLUMNS.index("retrieved_at")
    assert cells[uri_of(first)][retrieved_at] == _stamp(2)
    assert cells[uri_of(second)][retrieved_at] == _stamp(5)
    again = HourMerge(("a", "b"))  # the same chunks give the same bytes
    for number, data in enumerate(merge.data):
        again.add_chunk(number, data)
    assert again.outputs() == merge.outputs()


def test_ids_and_rows_ascend_in_byte_order() -> None:
    template = sample_posts()[1]
    dids = ["did:web:Z.example", "did:plc:zzz", "did:plc:aaa", "did:web:a.example",
            "did:plc:AAA", "did:plc:aa"]
    events = [{**varied_post(template, n), "did": did} for n, did in enumerate(dids)]
    like = {**sample_events(GOLDEN)[0], "did": "did:plc:aaa"}
    merge = HourMerge()
    merge.add_chunk(0, chunk(*events, like))
    ids, posts, _ = merge.outputs()
    want = sorted([uri_of(e).encode() for e in [*events, like]])
    assert [i[:-1] for i in ids] == want
    assert [row.split(b",", 1)[0] for row in posts] == [u for u in want if b"feed.post" in u]


def test_a_post_created_and_deleted_in_the_hour_keeps_its_id_and_loses_its_row() -> None:
    posts = [varied_post(sample_posts()[0], n) for n in range(3)]
    merge = HourMerge(("a", "b"))
    merge.add_chunk(0, chunk(posts[0], posts[1], delete_of(posts[1])))
    merge.add_chunk(1, chunk(delete_of(posts[1]), delete_of(posts[2]), posts[0]))
    ids, rows, deletes = merge.outputs()
    assert [i[:-1].decode() for i in ids] == sorted(uri_of(p) for p in posts[:2])
    assert [r.split(b",", 1)[0].decode() for r in rows] == [uri_of(posts[0])]
    assert [d[:-1].decode() for d in deletes] == sorted(uri_of(p) for p in posts[1:])
    assert merge.counts() == {"deletes": 2}
    assert merge.duplicates == 2  # post 0 seen twice, post 1 deleted twice


def test_updates_identity_and_account_events_are_no_records_and_no_errors() -> None:
    post = varied_post(sample_posts()[0], 1, "the version created")
    update = copy.deepcopy(post)
    update["commit"]["operation"] = "update"
    update["commit"]["record"]["text"] = "edited"
    identity, account = (e for e in sample_events(GOLDEN) if e["kind"] != "commit")
    merge = HourMerge()
    merge.add_chunk(0, chunk(update, post, update, identity, account))
    ids, rows, deletes = merge.outputs()
    assert len(ids) == 1 and deletes == [] and b"the version created" in rows[0]
    assert merge.not_records == {"update": 2, "identity": 1, "account": 1}
    assert merge.skipped == {} and merge.duplicates == 0


def test_malformed_and_torn_lines_are_counted_by_reason() -> None:
    post = sample_posts()[0]

    def bad(**commit: Any) -> dict[str, Any]:
        return {**post, "commit": {**post["commit"], **commit}}

    merge = HourMerge()
    merge.add_chunk(0, chunk(
        post, b"not json\n", b"[1, 2]\n", b"\n", {"time_us": 1}, {**post, "kind": "sync"},
        {**post, "did": "did:plc:a b"}, {**post, "did": 7}, {**post, "commit": "x"},
        bad(rkey="a/b"), bad(rkey=""), bad(collection=None), bad(operation="merge"),
        bad(rkey="tab\there"), bad(rkey="nul\x00"), bad(rkey="nbsp\u00a0"),
    ) + capture_line(varied_post(post, 2), _stamp(1))[:60])
    ids, _, _ = merge.outputs()
    assert ids == [id_line(uri_of(post).encode())]
    assert merge.skipped == {SKIP_NOT_JSON: 1, SKIP_NOT_EVENT: 3, SKIP_BAD_COMMIT: 10,
                             SKIP_TORN: 1}


def _grouped() -> list[tuple[int, int, bytes]]:
    """(server, minute, chunk): ties, earlier copies read later, repeats within a chunk and
    across servers, deletes repeated across groups and bad lines."""
    p = [varied_post(sample_posts()[0], n, f"text {n}") for n in range(7)]
    like = sample_events(GOLDEN)[0]
    return [
        (0, 0, chunk(p[1], p[2], p[2], second=5)),
        (0, 0, chunk(p[3], delete_of(p[6]), b"junk\n", second=7)),
        (0, 1, chunk(p[1], like, second=5) + capture_line(p[4], "")),
        (1, 0, chunk(p[1], p[5], delete_of(p[6]), second=2)),
        (1, 1, chunk(p[3], p[4], delete_of(p[5]), second=7)),
        (1, 2, chunk(p[2], p[6], delete_of(p[5]), second=0)),
    ]


def _index(parts: list[tuple[int, int, bytes]], first_no: int = 0) -> HourIndex:
    index = HourIndex(("a", "b"))
    for number, (server, minute, data) in enumerate(parts, start=first_no):
        index.add_chunk(server, data, minute, number)
    return index


def _summary(index: HourIndex) -> tuple[Any, ...]:
    return (index.entries, index.deletes, index.duplicates, dict(index.skipped),
            dict(index.not_records), index.lines, index.chunks, index.minute_counts(),
            index.server_counts(), index.counts())


@pytest.mark.parametrize("cuts", [(1,), (2,), (3,), (5,), (2, 4), (1, 3, 5)])
def test_indexes_of_consecutive_chunk_groups_merge_exactly_like_one_pass(
        cuts: tuple[int, ...]) -> None:
    grouped = _grouped()
    whole = _index(grouped)
    bounds = [0, *cuts, len(grouped)]
    parts = [_index(grouped[a:b], a) for a, b in itertools.pairwise(bounds)]
    merged = parts[0]
    for later in parts[1:]:
        merged.absorb(later)
    assert _summary(merged) == _summary(whole)
    assert whole.duplicates == 8 and whole.counts() == {"deletes": 2}
    kept_chunk = {u: ENTRY.unpack_from(e)[1] for u, e in whole.entries.items()}
    posts = [varied_post(sample_posts()[0], n) for n in range(7)]
    # earliest retrieval wins; a tie stays with the first read; no time loses to any time
    assert {uri_of(posts[n]).encode(): c for n, c in
            {1: 3, 2: 5, 3: 1, 4: 4, 5: 3, 6: 5}.items()}.items() <= kept_chunk.items()


def test_the_previous_hours_tail_takes_its_creates_and_leaves_deletes() -> None:
    posts = [varied_post(sample_posts()[0], n) for n in range(3)]
    tail = chunk(posts[0], delete_of(posts[1]), sample_events(GOLDEN)[7], b"junk\n")
    earlier = created_uris_in(tail)
    assert earlier == {uri_of(posts[0]).encode()}
    merge = HourMerge(("a", "b"))
    merge.add_chunk(0, chunk(posts[0], posts[1], delete_of(posts[1])))
    assert merge.drop_received_earlier(earlier) == 1
    ids, _, deletes = merge.outputs()
    assert [i[:-1].decode() for i in ids] == [uri_of(posts[1])]
    assert len(deletes) == 1 and merge.duplicates == 1
    assert merge.minute_counts() == {"a": {0: 2}, "b": {}}  # coverage keeps what was seen


def test_minute_counts_are_distinct_created_records_per_server_and_minute() -> None:
    p = [varied_post(sample_posts()[0], n) for n in range(4)]
    index = HourIndex(("a", "b", "c"))
    index.add_chunk(0, chunk(p[0], p[1], p[1], delete_of(p[3])), 0)
    index.add_chunk(0, chunk(p[1], p[2], b"not json\n"), 0)  # same minute, reopened
    index.add_chunk(0, chunk(p[0]), 1)  # seen again a minute later: counted there too
    index.add_chunk(1, chunk(p[0], sample_events(GOLDEN)[8]), 5)
    assert index.minute_counts() == {"a": {0: 3, 1: 1}, "b": {5: 1}, "c": {}}


HOSTILE_TEXTS = [
    "line one\nline two", "carriage\rreturn and \r\n both", 'she said "hi", then left',
    "comma, separated, values", "tab\there", "emoji 😊💙👍🏽 and 中文, Ελληνικά, العربية",
    "  leading and trailing spaces  ", "=SUM(A1:A2)", " =1+1", '"', ",", "", "\\N", "NA",
    "null", "\n", "#not a comment", "\u2028 line separator",
]


def test_hostile_texts_render_like_the_csv_module_and_survive_pandas() -> None:
    template = next(p for p in sample_posts()  # a real post with an external link
                    if "external" in p["commit"]["record"].get("embed", {}))
    events = [varied_post(template, n, text) for n, text in enumerate(HOSTILE_TEXTS)]
    merge = HourMerge()
    merge.add_chunk(0, chunk(*events))
    _, rows, _ = merge.outputs()
    lines = {uri_of(e): orjson.loads(capture_line(e, _stamp(1))) for e in events}
    assert rows == [expected_row(lines[u]) for u in sorted(lines)]
    frame = pd.read_csv(io.BytesIO(header_line(POST_COLUMNS) + b"".join(rows)), dtype=str,
                        keep_default_na=False)
    want = {uri_of(e): e["commit"]["record"]["text"] for e in events}
    assert dict(zip(frame["uri"], frame["text"], strict=True)) == want
    assert set(frame["embed_type"]) == {"app.bsky.embed.external"}


@pytest.mark.parametrize(("embed", "uri"), [
    ({"$type": "app.bsky.embed.record", "record": {"cid": "c", "uri": "at://q/p/1"}},
     "at://q/p/1"),
    ({"$type": "app.bsky.embed.recordWithMedia", "media": {"$type": "app.bsky.embed.images"},
      "record": {"record": {"cid": "c", "uri": "at://q/p/2"}}}, "at://q/p/2"),
    ({"$type": "app.bsky.embed.external", "external": {"uri": "https://x.example/a,b"}},
     "https://x.example/a,b"),
    ({"$type": "app.bsky.embed.images", "images": []}, ""),
])
def test_embed_type_and_uri(embed: dict[str, Any], uri: str) -> None:
    event = varied_post(sample_posts()[0], 1)
    event["commit"]["record"]["embed"] = embed
    merge = HourMerge()
    merge.add_chunk(0, chunk(event))
    [row] = merge.outputs()[1]
    assert row == expected_row(orjson.loads(capture_line(event, _stamp(1))))
    values = dict(zip(POST_COLUMNS, next(csv.reader(io.StringIO(row.decode()))), strict=True))
    assert values["embed_type"] == embed["$type"] and values["embed_uri"] == uri
