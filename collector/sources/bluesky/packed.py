"""An hour's AT-URIs for pass 2, packed into one bytes object instead of one object each.

Why: pass 1's entries and their AT-URI keys are allocated interleaved, so if pass 2 kept the
key objects (200,000 of them, ~112 bytes each), nearly every memory arena of the index would
stay partly used and none could be given back when the index is dropped: ~60 MB that would
sit beside the compressors. Packed, the ids cost ~75 bytes each in two flat buffers, and the
index's memory is freed whole.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Iterator, Sequence
from typing import overload


class PackedUris(Sequence[bytes]):
    """AT-URIs in the given order (ascending for the ids file), one newline after each."""

    def __init__(self, uris: Sequence[bytes]) -> None:
        self.text = b"\n".join(uris) + b"\n" if uris else b""  # the ids file's content
        self.starts = array("Q", itertools.accumulate((len(u) + 1 for u in uris), initial=0))

    def __len__(self) -> int:
        return len(self.starts) - 1

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("AT-URI index out of range")
        return self.text[self.starts[index]: self.starts[index + 1] - 1]

    def __iter__(self) -> Iterator[bytes]:
        text, starts = self.text, self.starts
        for start, end in itertools.pairwise(starts):
            yield text[start: end - 1]
