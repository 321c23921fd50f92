"""The daily pass that honours deletions: posts deleted since their receipt leave the vault.

Bluesky's developer guidelines ask every service to delete what a user deleted
(research/bluesky.md section 8). The hourly merge already leaves out posts deleted within
their own hour; this pass, run by `process` once a local day under its lock
(`collector.process.daily`), removes the rows of posts deleted later:

* it collects the AT-URIs of the deletes files of the last `deletion_window_days` + 1 local
  days (the run that first sees a delete made late on day D is the first run of day D + 1,
  and the post may be from day D - window), including today's;
* every posts file of those days is read (streamed, its CSV rows parsed, so quoted
  multi-line text never fools it); one that holds none of them is not touched at all, one
  that does is written again without those rows (each kept row's bytes unchanged, cut into
  blocks and compressed exactly as `process` writes), atomically;
* the published IDs files stay as they are: the deletes files tell consumers what to drop.

A posts file written again by a later re-merge of its hour (a late chunk) has the rows back
until the next daily pass removes them again, as long as the delete is inside the window.
"""

from __future__ import annotations

import csv
import io
import logging
import lzma
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO

from collector.csvrows import blocks_of, header_line
from collector.fsutil import write_atomic
from collector.process.compress import BLOCK_SIZE, compress_block
from collector.settings import Settings
from collector.sources.bluesky.schema import POST_COLUMNS, is_post_uri, parse_id

log = logging.getLogger("collector.process")

_HOUR_FILE = r"\d{4}-\d{2}-\d{2}_\d{2}b?_"
POSTS_FILE = re.compile(_HOUR_FILE + r"posts\.csv\.xz")
DELETES_FILE = re.compile(_HOUR_FILE + r"deletes\.txt\.xz")
_HEADER = header_line(POST_COLUMNS).decode()

# What reading a damaged vault file can raise (the file is then left alone, with one warning);
# ValueError covers text that is no UTF-8 and a posts file without its header.
UNREADABLE = (OSError, lzma.LZMAError, EOFError, ValueError, csv.Error)


class NotAPostsFile(ValueError):
    """A file named like a posts file whose header is not the posts header."""


def window_days(today: date, window: int) -> list[str]:
    """The local days whose deletes and posts the pass reads, oldest first (pure)."""
    return [(today - timedelta(days=back)).isoformat() for back in range(window + 1, -1, -1)]


def hour_files(vault: Path, days: list[str], pattern: re.Pattern[str]) -> list[Path]:
    """The files of those days' folders whose names match `pattern`, in name order."""
    found: list[Path] = []
    for day in days:
        folder = vault / day
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir()
                            if pattern.fullmatch(p.name) and p.name.startswith(day))
    return found


def deleted_posts(paths: list[Path]) -> tuple[set[bytes], int]:
    """The post AT-URIs of these deletes files, and how many files could not be read (each
    is logged once and ignored as a whole: a damaged file's lines cannot be trusted)."""
    found: set[bytes] = set()
    unreadable = 0
    for path in paths:
        try:
            with lzma.open(path, "rb") as handle:
                uris = {uri for line in handle
                        if (uri := parse_id(line.rstrip(b"\n"))) is not None}
        except UNREADABLE as error:
            log.warning("deletions: cannot read %s (%s); its deletes are ignored today",
                        path.name, type(error).__name__)
            unreadable += 1
            continue
        found |= {uri for uri in uris if is_post_uri(uri)}
    return found, unreadable


def rows_with_text(lines: Iterator[str]) -> Iterator[tuple[list[str], str]]:
    """Each CSV row parsed, with the exact text it was read from (one or more lines: a
    quoted cell may hold newlines); the csv module reads a line only when it needs one."""
    consumed: list[str] = []

    def feed() -> Iterator[str]:
        for line in lines:
            consumed.append(line)
            yield line

    for row in csv.reader(feed()):
        text = "".join(consumed)
        consumed.clear()
        yield row, text


def posts_rows(handle: IO[str]) -> Iterator[tuple[str, str]]:
    """(uri, row text) of every row of a posts file after its header (streamed)."""
    rows = rows_with_text(iter(handle))
    first = next(rows, None)
    if first is None or first[1] != _HEADER:
        raise NotAPostsFile("no posts header")
    for row, text in rows:
        yield (row[0] if row else ""), text


def _open_text(path: Path) -> IO[str]:
    return io.TextIOWrapper(lzma.open(path, "rb"), encoding="utf-8", newline="")


def count_deleted(path: Path, deleted: set[str]) -> int:
    """How many rows of a posts file name a deleted uri (reads it once, keeps nothing)."""
    with _open_text(path) as handle:
        return sum(1 for uri, _ in posts_rows(handle) if uri in deleted)


def rewrite_without(path: Path, deleted: set[str], preset: int) -> int:
    """Write a posts file again without the rows of deleted uris, atomically; the rows kept
    are their own bytes, blocks cut and compressed as `process` does (so the file is what
    the merge would have written without those rows). Returns the rows removed."""
    removed = 0

    def kept_rows(handle: IO[str]) -> Iterator[bytes]:
        nonlocal removed
        yield _HEADER.encode()
        for uri, text in posts_rows(handle):
            if uri in deleted:
                removed += 1
            else:
                yield text.encode()

    def write(out: IO[bytes]) -> None:
        with _open_text(path) as handle:
            for block in blocks_of(kept_rows(handle), BLOCK_SIZE):
                out.write(compress_block(block, preset))

    write_atomic(path, write)
    return removed


def honour_deletions(vault: Path, today: date, window: int, preset: int) -> str:
    """The pass over the vault for local day `today`; returns its one-line summary."""
    days = window_days(today, window)
    deleted_bytes, bad_deletes = deleted_posts(hour_files(vault, days, DELETES_FILE))
    deleted = {uri.decode() for uri in deleted_bytes}
    checked = rewritten = removed = unreadable = 0
    for path in hour_files(vault, days, POSTS_FILE) if deleted else []:
        checked += 1
        try:
            found = count_deleted(path, deleted)
        except UNREADABLE as error:
            log.warning("deletions: cannot read %s (%s); left as it is", path.name,
                        type(error).__name__)
            unreadable += 1
            continue
        if not found:
            continue
        # Read whole just now: a failure from here on is the disk's, not the file's (and
        # fails the pass, which the next run retries).
        gone = rewrite_without(path, deleted, preset)
        rewritten += 1
        removed += gone
        log.info("deletions: removed %d deleted posts from %s", gone, path.name)
    return (f"{len(deleted)} deleted posts in the deletes files of {days[0]}..{days[-1]}"
            f"{f' ({bad_deletes} unreadable)' if bad_deletes else ''}: {checked} posts files "
            f"checked, {rewritten} rewritten, {removed} rows removed, {unreadable} unreadable")


def daily(settings: Settings, now: datetime) -> str:
    """`Source.daily` of Bluesky: honour deletions for the local day of `now`."""
    if settings.data_vault_dst is None:
        return "no vault (data_vault_dst) on this host: nothing to do"
    today = now.astimezone(settings.timezone).date()
    return honour_deletions(settings.data_vault_dst, today, settings.deletion_window_days,
                            settings.xz_preset)
