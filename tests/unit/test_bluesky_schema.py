"""Bluesky's source description, AT-URI id lines, retrieval keys and packed ids."""

from __future__ import annotations

import pytest

from collector.csvrows import header_line
from collector.process.fewer_ids import compare_ids
from collector.sources import source_named
from collector.sources.bluesky import BLUESKY_SOURCE
from collector.sources.bluesky.packed import PackedUris
from collector.sources.bluesky.schema import (
    NO_RETRIEVED_AT,
    POST_COLUMNS,
    id_line,
    parse_id,
    retrieval_key,
)
from tests.doubles.bluesky_events import sample_posts, uri_of, varied_post


def test_the_source_is_registered_with_its_outputs_and_report_columns() -> None:
    assert source_named("bluesky") is BLUESKY_SOURCE
    assert [o.suffix for o in BLUESKY_SOURCE.outputs] == [
        "IDs.txt.xz", "posts.csv.xz", "deletes.txt.xz"]
    assert BLUESKY_SOURCE.outputs[1].columns == POST_COLUMNS
    assert BLUESKY_SOURCE.outputs[2].columns == ()  # no header: one AT-URI a line
    assert BLUESKY_SOURCE.published == ("IDs.txt.xz", "deletes.txt.xz")
    assert BLUESKY_SOURCE.report_columns[:2] == ("deletes", "duplicates")
    assert header_line(POST_COLUMNS) == (
        b"uri,cid,did,rkey,created_at,time_us,retrieved_at,langs,text,reply_root_uri,"
        b"reply_parent_uri,embed_type,embed_uri\n")


def test_ids_lines_read_back_and_the_fewer_ids_guard_compares_them() -> None:
    uris = sorted(uri_of(varied_post(sample_posts()[0], n)).encode() for n in range(5))
    assert [parse_id(id_line(u)[:-1]) for u in uris] == uris
    for line in (b"", b"at:/x", b"at://a b", b"at://a\tb", b"https://x", b"at://\x7f"):
        assert parse_id(line) is None
    lines = [id_line(u) for u in uris]
    found = compare_ids(lines, uris[1:], set(), parse_id)
    assert (found.published, found.missing, found.examples) == (5, 1, (uris[0],))
    assert compare_ids(lines, uris, set(), parse_id).missing == 0


def test_packed_uris_read_like_a_list_of_the_uris() -> None:
    uris = [b"at://a/b/1", b"at://a/b/22", b"at://c/d/333"]
    packed = PackedUris(uris)
    assert list(packed) == uris and len(packed) == 3
    assert [packed[i] for i in (0, 1, 2, -1, -3)] == [*uris, uris[2], uris[0]]
    assert packed[1:] == uris[1:] and packed.text == b"".join(u + b"\n" for u in uris)
    with pytest.raises(IndexError):
        packed[3]
    empty = PackedUris([])
    assert list(empty) == [] and len(empty) == 0 and empty.text == b""


def test_retrieval_keys_compare_in_time_order_whatever_the_text() -> None:
    texts = ["2026-01-01T00:59:59+01:00", "2026-01-01T00:00:00+00:00",
             "2026-01-01T00:00:00.000001+00:00", "2026-01-01T00:00:00.5Z",
             "2026-01-01T00:00:01", "2026-01-01T01:00:00.000002+01:00"]
    keys = [retrieval_key({"__collector": {"retrieved_at": t}}) for t in texts]
    assert sorted(range(6), key=keys.__getitem__) == [0, 1, 2, 5, 3, 4]
    assert all(len(k) == 8 for k in keys)
    for odd in ({}, {"__collector": {"retrieved_at": "yesterday"}},
                {"__collector": {"retrieved_at": 5}}, {"__collector": "x"}):
        assert retrieval_key(odd) == NO_RETRIEVED_AT > max(keys)
