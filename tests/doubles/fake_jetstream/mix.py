"""Which kind of event each index of the universe is: the real mix, laid out in blocks.

Every block of `BLOCK` consecutive indices holds exactly the counts of `COMPOSITION` (the
real window's mix: about 68% likes, 11% posts, 10% reposts, some follows, blocks, updates
and deletes, rare identity and account events), shuffled by the seed. A fixed count per
block keeps the mix exact at any scale and lets a delete name its target without search:

delete slot k of block b removes the k-th post (or follow) created in block b - lag[k].
Each target is removed once at most, always by a later event. When block b - lag[k] would
come before index 0, the target is the (last - k)-th post (or follow) of block b - 1
instead (a different one, so still at most once); in block 0 a delete slot is a like.
The lags reach from one block to an hour of events at 50/s, so deletes of fresh and of
older records, across chunk and hour boundaries, both occur.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from tests.doubles.fake_jetstream.ids import number

BLOCK = 200
COMPOSITION = (
    ("like", 136), ("post", 22), ("repost", 20), ("follow", 8), ("block", 2), ("update", 4),
    ("delete_post", 4), ("delete_follow", 2), ("identity", 1), ("account", 1),
)
DELETE_LAGS = {"delete_post": (1, 2, 15, 900), "delete_follow": (1, 30)}
TARGET_KIND = {"delete_post": "post", "delete_follow": "follow"}
COUNTS = dict(COMPOSITION)


@dataclass(frozen=True)
class Slot:
    """An index's place in its block: its kind and its ordinal among that kind there."""

    kind: str
    ordinal: int


class Mix:
    """The block layout of one seed (cached: a block is laid out once)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._layout = lru_cache(maxsize=4096)(self._build_layout)

    def _build_layout(self, block: int) -> tuple[tuple[Slot, ...], dict[str, list[int]]]:
        kinds = [kind for kind, count in COMPOSITION for _ in range(count)]
        random.Random(number(self.seed, "block", block)).shuffle(kinds)
        seen: dict[str, int] = {}
        slots: list[Slot] = []
        offsets: dict[str, list[int]] = {}
        for offset, kind in enumerate(kinds):
            slots.append(Slot(kind, seen.get(kind, 0)))
            seen[kind] = seen.get(kind, 0) + 1
            offsets.setdefault(kind, []).append(offset)
        return tuple(slots), offsets

    def slot(self, index: int) -> Slot:
        """The kind of event `index` is; a delete with nothing earlier to delete is a like."""
        block, offset = divmod(index, BLOCK)
        slot = self._layout(block)[0][offset]
        if slot.kind in TARGET_KIND and self.delete_target(index) is None:
            return Slot("like", -1)
        return slot

    def index_of(self, block: int, kind: str, ordinal: int) -> int:
        """The index of the `ordinal`-th event of `kind` in `block`."""
        return block * BLOCK + self._layout(block)[1][kind][ordinal]

    def delete_target(self, index: int) -> int | None:
        """The index of the create a delete slot removes (None outside delete slots)."""
        block, offset = divmod(index, BLOCK)
        slot = self._layout(block)[0][offset]
        target_kind = TARGET_KIND.get(slot.kind)
        if target_kind is None:
            return None
        source = block - DELETE_LAGS[slot.kind][slot.ordinal]
        if source >= 0:
            return self.index_of(source, target_kind, slot.ordinal)
        if block == 0:
            return None
        return self.index_of(block - 1, target_kind, COUNTS[target_kind] - 1 - slot.ordinal)
