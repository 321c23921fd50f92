"""What every source's pass 1 keeps the same way: one `bytes` entry per distinct record id.

An entry starts with the 8-byte little-endian mask of the servers that captured the record;
what follows is the source's (where the kept line is, its retrieval key). On top of the
entries, every source counts duplicates, skipped lines, chunks and the distinct records per
server and minute (the coverage plot). `EntryIndex` holds that part once; a source's
`HourIndex` subclasses it, adds its `add_chunk` and `plan`, and says where an entry's
retrieval key is (`entry_key`): a repeat wins only when retrieved strictly earlier.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

MASK_BYTES = 8


def with_servers(kept: bytes, entry: bytes) -> bytes:
    """The mask of both entries' servers (pure)."""
    return (int.from_bytes(kept[:MASK_BYTES], "little")
            | int.from_bytes(entry[:MASK_BYTES], "little")).to_bytes(MASK_BYTES, "little")


@dataclass
class EntryIndex:
    """Pass 1's bookkeeping shared by the sources (see the module docstring).

    Chunks of one server and minute are adjacent in reading order (servers in `servers`
    order, then chunk name), so one set of ids at a time counts each minute's distinct
    records (`start_chunk`, then `minute_ids.add` for each record).
    """

    servers: Sequence[str]
    entries: dict[Any, bytes] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    lines: int = 0
    chunks: int = 0
    # server -> minute of the hour -> distinct records the server captured in that minute
    coverage: dict[str, dict[int, int]] = field(default_factory=dict)
    _minute_key: tuple[int, int] | None = field(default=None, repr=False)
    minute_ids: set[Any] = field(default_factory=set, repr=False)

    @staticmethod
    def entry_key(entry: bytes) -> bytes:
        """The entry's retrieval key: the earlier copy sorts first."""
        raise NotImplementedError

    def start_chunk(self, server_index: int, minute: int, chunk_no: int | None) -> int:
        """Count one more chunk and enter its (server, minute); returns its chunk number (by
        default, how many chunks came before), which pass 2's line reader receives back."""
        if chunk_no is None:
            chunk_no = self.chunks
        self.chunks += 1
        key = (server_index, minute)
        if key != self._minute_key:
            self._close_minute()
            self._minute_key = key
        return chunk_no

    def _close_minute(self) -> None:
        if self._minute_key is not None:
            server_index, minute = self._minute_key
            minutes = self.coverage.setdefault(self.servers[server_index], {})
            minutes[minute] = minutes.get(minute, 0) + len(self.minute_ids)
        self.minute_ids = set()
        self._minute_key = None

    def minute_counts(self) -> dict[str, dict[int, int]]:
        """Distinct records per server and minute (servers without any included)."""
        self._close_minute()
        counts: dict[str, dict[int, int]] = {server: {} for server in self.servers}
        for server, minutes in self.coverage.items():
            counts[server].update({m: n for m, n in minutes.items() if n})
        return counts

    def server_counts(self) -> list[int]:
        """Distinct records each server captured, in `servers` order."""
        by_mask = Counter(entry[:MASK_BYTES] for entry in self.entries.values())
        masks = {int.from_bytes(mask, "little"): n for mask, n in by_mask.items()}
        return [sum(n for mask, n in masks.items() if mask >> i & 1)
                for i in range(len(self.servers))]

    def drop_received_earlier(self, earlier_ids: set[Any]) -> int:
        """Remove the records the previous hour already received; returns how many.

        A record belongs to the hour of its first receipt by any server: a copy received
        again in this hour (a backfill or replay after a reconnect, or two servers' clocks
        either side of the hour) would otherwise be published in two hours. Each removed
        one counts as a duplicate; the coverage counts keep it (they describe capture).
        """
        entries = self.entries
        dropped = [record_id for record_id in earlier_ids if record_id in entries]
        for record_id in dropped:
            del entries[record_id]
        self.duplicates += len(dropped)
        return len(dropped)

    def absorb(self, later: Self) -> None:
        """Merge in the index of the chunks that come after this one's in reading order.

        Gives exactly what indexing all chunks in one object would: the kept copy is the
        first one with the smallest retrieval key, so `later`'s wins only when strictly
        earlier; every occurrence after a record's first counts as a duplicate. `later` must
        start at a new (server, minute), so coverage counts simply add up.
        """
        self._close_minute()
        later._close_minute()
        entries, key = self.entries, self.entry_key
        for record_id, entry in later.entries.items():
            kept = entries.get(record_id)
            if kept is None:
                entries[record_id] = entry
                continue
            self.duplicates += 1
            winner = entry if key(entry) < key(kept) else kept
            entries[record_id] = with_servers(kept, entry) + winner[MASK_BYTES:]
        self.duplicates += later.duplicates
        self.skipped.update(later.skipped)
        self.lines += later.lines
        self.chunks += later.chunks
        for server, minutes in later.coverage.items():
            mine = self.coverage.setdefault(server, {})
            for minute, count in minutes.items():
                mine[minute] = mine.get(minute, 0) + count
