"""Pass 2: an hour's outputs rendered into the compressors, its coverage and its report line."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from collector.csvrows import blocks_of, header_line
from collector.fsutil import remove_stale_temps
from collector.layout import HourKey
from collector.process.compress import BLOCK_SIZE, CompressJob, compress_to_files
from collector.process.fewer_ids import check_fewer_ids
from collector.process.memory import release_free_memory
from collector.process.read import HourRead
from collector.process.result import HourResult, Timings
from collector.report.coverage import write_hour_coverage
from collector.report.day import HourLine, update_report
from collector.settings import Settings
from collector.sources import HourIndex, source_for


def reported_servers(servers: tuple[str, ...], all_ids: tuple[str, ...],
                     present: set[str]) -> tuple[str, ...]:
    """The servers an hour's report line and coverage counts show (pure): every server of
    `servers` (one without chunks shows 0: it missed the hour), then each departed server
    that has chunks in the hour. A departed server after its death is no missing capture,
    just no longer part of the fleet: counting it would make every later tweet a `diff`."""
    return (*servers, *(s for s in all_ids if s not in servers and s in present))


def report_line(hour: HourKey, index: HourIndex, skip_reasons: Sequence[str],
                quarantined: int = 0, shown: tuple[str, ...] | None = None) -> HourLine:
    """The hour's report line over the servers `shown` (default: all the index's); `diff`
    counts the tweets that not every shown server captured."""
    shown = tuple(index.servers) if shown is None else shown
    counts = dict(zip(index.servers, index.server_counts(), strict=True))
    bits = sum(1 << n for n, server in enumerate(index.servers) if server in shown)
    masks = Counter(entry[:8] for entry in index.entries.values())
    diff = sum(n for mask, n in masks.items() if int.from_bytes(mask, "little") & bits != bits)
    extra = dict(index.counts())
    extra.update({"duplicates": index.duplicates, "chunks": index.chunks})
    extra.update({reason: index.skipped.get(reason, 0) for reason in skip_reasons})
    extra["quarantined"] = quarantined
    return HourLine(hour.hour, {server: counts[server] for server in shown},
                    len(index.entries), diff, extra)


def _timed(rows: Iterator[bytes], timings: Timings) -> Iterator[bytes]:
    """The rows, adding the time spent producing them to `timings.rendering`."""
    while True:
        started = time.perf_counter()
        row = next(rows, None)
        timings.rendering += time.perf_counter() - started
        if row is None:
            return
        yield row


def write_hour(hour: HourKey, read: HourRead, settings: Settings, vault: Path,
               pool: ThreadPoolExecutor, workers: int, timings: Timings,
               quarantined: int = 0, shown: tuple[str, ...] | None = None) -> HourResult:
    """Pass 2: render the rows into the compressors and write the hour's three files, its
    coverage counts and its report line; all atomically.

    Unless the hour's IDs file already holds ids this merge lacks (`check_fewer_ids`): then
    nothing is written and the result says so (`fewer_ids`), so an hour is never published
    again with fewer ids than before. `shown` are the servers of the report line and the
    coverage counts (`reported_servers`; default every server of the index).
    """
    source = source_for(settings)
    index, lines = read.index, read.lines
    try:
        started = time.perf_counter()
        line = report_line(hour, index, source.skip_reasons, quarantined, shown)
        minute_counts = {server: minutes for server, minutes in index.minute_counts().items()
                         if server in line.per_server}
        plan = index.plan()
        # Pass 2 needs only the plan: give the index's memory back before the compressors
        # take theirs.
        read.index = source.new_index(index.servers)
        del index
        release_free_memory()
        ids_path, *row_paths = source.output_paths(vault, hour)
        fewer = check_fewer_ids(hour, ids_path, plan.ids, read.earlier_ids, source.parse_id)
        timings.merging += time.perf_counter() - started
        if fewer is not None:
            return HourResult(hour, len(plan.ids), plan.summary(), line, fewer)

        started = time.perf_counter()
        remove_stale_temps(ids_path.parent)
        jobs = [CompressJob(path, blocks_of(_timed(rows, timings), BLOCK_SIZE,
                                            header_line(output.columns) if output.columns
                                            else b""))
                for path, output, rows in zip(row_paths, source.outputs[1:],
                                              plan.output_rows(lines.read_line), strict=True)]
        jobs.append(CompressJob(ids_path, blocks_of(map(source.id_line, plan.ids), BLOCK_SIZE)))
        # One block more than there are compressors: the next block is rendered while
        # every compressor is busy, and memory stays at a few blocks.
        compress_to_files(jobs, settings.xz_preset, pool, in_flight=workers + 1)
        write_hour_coverage(ids_path.parent, hour, minute_counts)
        update_report(ids_path.parent, hour.day, line, settings.servers,
                      source.report_columns)
        timings.compressing += time.perf_counter() - started
    finally:
        lines.close()
    return HourResult(hour, len(plan.ids), plan.summary(), line)
