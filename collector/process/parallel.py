"""Pass 1 of a large hour in helper interpreters, one per core.

A helper (`python -m collector.process.parallel --index REQUEST`) indexes a consecutive group
of chunks, read through the parent's descriptors (`/proc/<pid>/fd/<n>`), and writes its
partial index, pickled, to stdout; the parent merges the partial indexes in chunk order.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import time

import orjson

from collector.errors import CollectorError
from collector.process.memory import tune_malloc
from collector.sources import HourIndex, Source, source_named

# (chunk number, server number, minute, path to read it by, bytes to read: fstat's at open)
IndexJob = tuple[int, int, int, str, int]


def split_jobs(jobs: list[IndexJob], groups: int) -> list[list[IndexJob]]:
    """Consecutive groups of about equal count, cut only where (server, minute) changes."""
    if groups <= 1 or len(jobs) < 2:
        return [jobs]
    result: list[list[IndexJob]] = [[]]
    target = len(jobs) / groups
    for job in jobs:
        current = result[-1]
        if (len(current) >= target and len(result) < groups
                and current[-1][1:3] != job[1:3]):
            result.append([])
        result[-1].append(job)
    return result


def index_chunks(source: Source, servers: tuple[str, ...], jobs: list[IndexJob]
                 ) -> tuple[HourIndex, float]:
    """Index the chunks of `jobs` in order; returns the index and the seconds spent reading."""
    index = source.new_index(servers)
    reading = 0.0
    for chunk_no, server_index, minute, path, size in jobs:
        started = time.perf_counter()
        # The path is this process's descriptor of a file checked to be regular: no FIFO
        # or device can be reached through it, and no more than fstat's size is read.
        with open(path, "rb") as handle:
            data = handle.read(size)
        reading += time.perf_counter() - started
        index.add_chunk(server_index, data, minute, chunk_no)
    return index, reading


def start_helper(source: Source, servers: tuple[str, ...], jobs: list[IndexJob]
                 ) -> subprocess.Popen[bytes]:
    request = orjson.dumps({"source": source.name, "servers": servers, "jobs": jobs}).decode()
    command = [sys.executable, "-m", "collector.process.parallel", "--index", request]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def helper_result(source: Source, helper: subprocess.Popen[bytes]) -> tuple[HourIndex, float]:
    out, err = helper.communicate()
    if helper.returncode != 0 or not out:
        last = (err.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise CollectorError(f"indexing helper failed ({helper.returncode}): {last}")
    index, reading = pickle.loads(out)
    if not isinstance(index, type(source.new_index(()))):  # the source's index class
        raise CollectorError("indexing helper returned no index")
    return index, float(reading)


def index_helper_main(request: str) -> None:
    """Entry of a helper: index the chunks named in `request`, pickle the result to stdout."""
    tune_malloc()
    data = orjson.loads(request)
    result = index_chunks(source_named(data["source"]), tuple(data["servers"]),
                          [(int(a), int(b), int(c), str(d), int(e))
                           for a, b, c, d, e in data["jobs"]])
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()


if __name__ == "__main__" and sys.argv[1:2] == ["--index"]:
    index_helper_main(sys.argv[2])
