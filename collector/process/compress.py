"""xz on every core, byte-identical whatever the number of threads.

liblzma releases the GIL, so the rows are cut into blocks of a fixed size (cut points depend
only on the bytes) and each block is compressed in a worker thread as its own complete .xz
stream. Concatenated .xz streams are a valid .xz file (`xz -d`, Python's `lzma`, pandas read
them whole). Each block is compressed with the configured preset (xz's default, 6, unless
`xz_preset` says otherwise) with the dictionary capped at the block's size: a larger
dictionary could never be used within one block, and capping it keeps each compressor at a
few tens of MB instead of the ~90 MB preset 6 allocates.
"""

from __future__ import annotations

import contextlib
import lzma
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from collector.fsutil import DISK_FULL_ERRNOS, disk_full_error, fsync_dir, temp_path

# Rows are cut into blocks of at least this many bytes before compression. Small enough that
# two compressors fit in memory beside the hour's records, large enough to cost under 1 % in
# compression ratio on tweet text.
BLOCK_SIZE = 4 * 1024 * 1024
_MIN_DICT = 64 * 1024


def compress_block(block: bytes, preset: int) -> bytes:
    """One block as a complete .xz stream (see module docstring for the dictionary cap)."""
    filters: list[dict[str, Any]] = [{"id": lzma.FILTER_LZMA2, "preset": preset}]
    default_dict = _preset_dict_size(preset)
    wanted = max(_MIN_DICT, len(block))
    if wanted < default_dict:
        filters[0]["dict_size"] = wanted
    return lzma.compress(block, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, filters=filters)


def _preset_dict_size(preset: int) -> int:
    # xz's table: presets 0-9 use 256 KiB, 1, 2, 4, 4, 8, 8, 16, 32, 64 MiB.
    sizes = (256 * 1024, 1 << 20, 2 << 20, 4 << 20, 4 << 20, 8 << 20, 8 << 20, 16 << 20,
             32 << 20, 64 << 20)
    return sizes[preset & 0x1F]


@dataclass
class CompressJob:
    """One output file: its final path and the blocks of its uncompressed content."""

    final: Path
    blocks: Iterable[bytes]


def _interleave(jobs: list[CompressJob]) -> Iterator[tuple[int, bytes]]:
    """Blocks of all jobs, round-robin, so short files don't wait behind the long one."""
    iterators = [iter(job.blocks) for job in jobs]
    alive = list(range(len(jobs)))
    while alive:
        for index in list(alive):
            block = next(iterators[index], None)
            if block is None:
                alive.remove(index)
            else:
                yield index, block


def compress_to_files(jobs: list[CompressJob], preset: int, pool: Executor,
                      in_flight: int, on_block: Callable[[int], None] | None = None) -> None:
    """Compress every job's blocks on `pool` and write each file atomically, in block order.

    At most `in_flight` blocks are pending at once, which bounds memory to a few blocks
    whatever the size of the hour. On failure every temporary is removed and nothing
    appears under a final name.
    """
    handles: list[IO[bytes]] = []
    temps = [temp_path(job.final) for job in jobs]
    pending: deque[tuple[int, Future[bytes]]] = deque()
    try:
        for job, temp in zip(jobs, temps, strict=True):
            job.final.parent.mkdir(parents=True, exist_ok=True)
            handles.append(open(temp, "wb"))  # noqa: SIM115 (closed in finally)

        def drain_one() -> None:
            index, future = pending.popleft()
            data = future.result()
            handles[index].write(data)
            if on_block is not None:
                on_block(len(data))

        for index, block in _interleave(jobs):
            pending.append((index, pool.submit(compress_block, block, preset)))
            while len(pending) >= in_flight:
                drain_one()
        while pending:
            drain_one()
        for handle in handles:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        for job, temp in zip(jobs, temps, strict=True):
            os.chmod(temp, 0o644)
            os.replace(temp, job.final)
        for folder in {job.final.parent for job in jobs}:
            fsync_dir(folder)
    except BaseException as error:
        for future_pair in pending:
            future_pair[1].cancel()
        for handle in handles:
            with contextlib.suppress(OSError):
                handle.close()
        for temp in temps:
            with contextlib.suppress(OSError):
                temp.unlink()
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(error, jobs[0].final.parent) from None
        raise
