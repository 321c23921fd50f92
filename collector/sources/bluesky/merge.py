"""Merging one hour of Bluesky: chunk lines in, the hour's AT-URIs, posts and deletes out (pure).

Like X's merge it runs in two passes (see `HourIndex`): pass 1 parses every line and keeps one
small entry per distinct created record; pass 2 reads the kept lines of the posts back in uri
order and renders each row once, straight into the compressors.

The rules (SPEC section 8):

* a record of the hour is a distinct AT-URI created (`operation` `create`) in it, in any
  collection captured: they make the IDs file and the report's `total`;
* the posts file holds one row per created `app.bsky.feed.post` that was not deleted in the
  same hour; a post created and deleted within the hour stays in the IDs file (it was
  created, and published ids stay published) and is listed in the deletes file;
* the deletes file lists every distinct AT-URI deleted in the hour, whatever its collection;
* updates are no creates: they neither add an id nor change a row (the row shows the
  version created); identity and account events are no records. Neither is an error: both
  are only counted for the log line;
* repeats (an instance's replay after a reconnect, several instances, several servers) are
  removed by AT-URI. The copy kept is the one retrieved first (`__collector.retrieved_at`),
  ties going to the first one read; chunks are always read in the same order (servers in
  settings order, then chunk name, then line), so every output byte is deterministic. Every
  create or delete line after the first of its AT-URI counts as a duplicate.
"""

from __future__ import annotations

import struct
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from collector.lines import SKIP_NOT_JSON, SKIP_TORN, parse_json_line, split_chunk
from collector.sources import LineReader
from collector.sources.bluesky.packed import PackedUris
from collector.sources.bluesky.schema import (
    CREATE,
    NOT_RECORDS,
    UPDATE,
    is_post_uri,
    record_action,
    render_post_row,
    retrieval_key,
)
from collector.sources.entries import EntryIndex

MAX_SERVERS = 64

# Pass 1 keeps, per distinct created AT-URI, one `bytes` entry: this header (server mask,
# chunk number, line offset, line length), then the retrieval key (8 bytes, the rest).
ENTRY = struct.Struct("<QIII")
ENTRY_SIZE = ENTRY.size
# Where pass 2 finds a post's line: an entry's header without the mask.
LOCATION = struct.Struct("<III")


@dataclass
class HourIndex(EntryIndex):
    """Pass 1 of an hour's merge: where the kept copy of every created record is, and the
    hour's deleted AT-URIs.

    An entry is 28 bytes beside its AT-URI key (~70 bytes), so an hour of 200,000 posts
    holds ~40 MB of index; the deletes are a set of AT-URIs (a few percent of the events),
    since only their existence matters. The coverage counts are per server and minute.

    Call `add_chunk` for every chunk in a fixed order (servers in `servers` order, then
    chunk name), which makes the copy kept for a repeated AT-URI deterministic. The
    previous hour's tail (`drop_received_earlier`) removes creates only: a delete seen in
    both hours is listed in both deletes files, which says nothing wrong.
    """

    entries: dict[bytes, bytes] = field(default_factory=dict)
    deletes: set[bytes] = field(default_factory=set)
    # events that are no records (updates, identity and account events), by kind
    not_records: Counter[str] = field(default_factory=Counter)

    @staticmethod
    def entry_key(entry: bytes) -> bytes:
        return _key(entry)

    def add_chunk(self, server_index: int, data: bytes, minute: int = 0,
                  chunk_no: int | None = None) -> int:
        """Index every line of one chunk of server number `server_index`; returns the
        chunk's number (by default, how many chunks came before), which pass 2's line
        reader receives back. `minute` is the chunk's minute, for the coverage counts."""
        chunk_no = self.start_chunk(server_index, minute, chunk_no)
        minute_ids = self.minute_ids
        mask = 1 << server_index
        entries, deletes = self.entries, self.deletes
        offset = 0
        for line, maybe_torn in split_chunk(data):
            line_offset = offset
            offset += len(line) + 1
            if not line.strip():
                continue  # a blank line: no event
            self.lines += 1
            event = parse_json_line(line)
            action, uri = record_action(event)
            if uri is None:
                if action in NOT_RECORDS:
                    self.not_records[action] += 1
                else:
                    self.skipped[SKIP_TORN if maybe_torn and event is None else
                                 SKIP_NOT_JSON if event is None else action] += 1
                continue
            if action != CREATE:  # a delete
                if uri in deletes:
                    self.duplicates += 1
                else:
                    deletes.add(uri)
                continue
            minute_ids.add(uri)
            kept = entries.get(uri)
            new_key = retrieval_key(event)
            if kept is None:
                entries[uri] = ENTRY.pack(mask, chunk_no, line_offset, len(line)) + new_key
                continue
            # A repeat: it replaces the kept copy only if it was retrieved first.
            self.duplicates += 1
            both = int.from_bytes(kept[:8], "little") | mask
            if new_key < kept[ENTRY_SIZE:]:
                entries[uri] = ENTRY.pack(both, chunk_no, line_offset, len(line)) + new_key
            else:
                entries[uri] = both.to_bytes(8, "little") + kept[8:]
        return chunk_no

    def counts(self) -> dict[str, int]:
        """The report's `deletes`: distinct AT-URIs deleted in the hour."""
        return {"deletes": len(self.deletes)}

    def absorb(self, later: HourIndex) -> None:
        """`EntryIndex.absorb`, and the deletes: an AT-URI deleted in both counts once more
        as a duplicate."""
        super().absorb(later)
        self.duplicates += len(self.deletes & later.deletes)
        self.deletes |= later.deletes
        self.not_records.update(later.not_records)

    def plan(self) -> MergePlan:
        """What pass 2 needs, compactly, so the index can be dropped (and its memory given
        back whole: see `PackedUris`) before compression: the AT-URIs ascending, the
        positions and line locations of the posts to render, and the deletes ascending."""
        ids = sorted(self.entries)
        deletes = self.deletes
        entries = self.entries
        posts = array("I")
        locations = bytearray()
        for position, uri in enumerate(ids):
            if uri not in deletes and is_post_uri(uri):
                posts.append(position)
                locations += entries[uri][8:ENTRY_SIZE]
        return MergePlan(PackedUris(ids), posts, bytes(locations),
                         PackedUris(sorted(deletes)), dict(self.not_records))


def _key(entry: bytes) -> bytes:
    """An entry's retrieval key (`schema.retrieval_key`)."""
    return entry[ENTRY_SIZE:]


@dataclass
class MergePlan:
    """Pass 2's input: AT-URIs ascending, the posts to render (positions in `ids`, and
    `LOCATION` records in the same order), and the deleted AT-URIs ascending."""

    ids: PackedUris
    posts: array[int]
    locations: bytes
    deletes: PackedUris
    not_records: dict[str, int]

    def post_rows(self, read_line: LineReader) -> Iterator[bytes]:
        """The posts CSV rows, ascending by uri, rendered from the kept lines."""
        for number, position in enumerate(self.posts):
            chunk_no, offset, length = LOCATION.unpack_from(self.locations,
                                                            number * LOCATION.size)
            uri = self.ids[position]
            event = parse_json_line(read_line(chunk_no, offset, length))
            if record_action(event) != (CREATE, uri):
                raise RuntimeError(f"the line of {uri.decode()} changed on disk during the "
                                   f"merge")
            yield render_post_row(uri, event)

    def delete_rows(self) -> Iterator[bytes]:
        return (uri + b"\n" for uri in self.deletes)

    def output_rows(self, read_line: LineReader) -> list[Iterator[bytes]]:
        """The posts rows, then the deletes lines (the order of `BLUESKY_SOURCE.outputs`)."""
        return [self.post_rows(read_line), self.delete_rows()]

    def summary(self) -> str:
        updates = self.not_records.get(UPDATE, 0)
        others = sum(self.not_records.values()) - updates
        return (f"{len(self.ids)} records, {len(self.posts)} posts, {len(self.deletes)} "
                f"deletes; not merged: {updates} updates, {others} identity/account events")
