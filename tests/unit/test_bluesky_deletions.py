"""The daily deletions pass on a small vault: which rows go, which files are not touched."""

from __future__ import annotations

import csv
import io
import logging
import lzma
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.csvrows import blocks_of, csv_line, header_line
from collector.process.compress import BLOCK_SIZE, compress_block
from collector.settings import Settings, load_settings
from collector.sources.bluesky import BLUESKY_SOURCE
from collector.sources.bluesky.deletions import rows_with_text, window_days
from collector.sources.bluesky.schema import POST_COLUMNS
from tests.conftest import SettingsWriter

NOW = datetime(2026, 3, 10, 0, 30, tzinfo=UTC)  # 01:30 on 2026-03-10 in CET
WINDOW = 2  # days 03-07 .. 03-10 are read (the window and one day more)


def uri(n: int, collection: str = "app.bsky.feed.post") -> str:
    return f"at://did:plc:user{n}/{collection}/3rkey{n}"


def row(n: int, text: str = "") -> bytes:
    cells = [uri(n), f"cid{n}", f"did:plc:user{n}", f"3rkey{n}", "2026-03-01T00:00:00Z",
             str(1_700_000_000_000_000 + n), "2026-03-01T00:00:00.000001+00:00", "en",
             text or f"post {n}", "", "", "", ""]
    return (csv_line(cells) + "\n").encode()


def xz_as_process_writes(rows: list[bytes], header: bytes = header_line(POST_COLUMNS)) -> bytes:
    return b"".join(compress_block(b, 6) for b in blocks_of(rows, BLOCK_SIZE, header))


def put(vault: Path, day: str, hour: str, kind: str, data: bytes) -> Path:
    path = vault / day / f"{day}_{hour}_{kind}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # an old mtime, to see it kept
    return path


def deletes(*uris: str) -> bytes:
    return lzma.compress("".join(u + "\n" for u in uris).encode())


@pytest.fixture
def settings(tmp_path: Path, write_settings: SettingsWriter) -> Settings:
    path = write_settings(role="main", source="bluesky", API_key_dst=None,
                          data_vault_dst=str(tmp_path / "vault"),
                          incoming_dst=str(tmp_path / "incoming"), osf_enabled="False",
                          main_host=None, main_user=None, deletion_window_days=str(WINDOW))
    return load_settings(path)


MULTI_LINE = f"first line\n{uri(2)},looks like a row\n\"quoted\", and\r\nlast"


def test_rows_of_deleted_posts_go_only_within_the_window(settings: Settings,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    vault = settings.data_vault_dst
    assert vault is not None
    kept_rows = [row(1, MULTI_LINE), row(3, "a, b"), row(5, "x\ny")]
    hit = put(vault, "2026-03-07", "23", "posts.csv.xz",
              xz_as_process_writes([kept_rows[0], row(2, "gone\nwith newline"), kept_rows[1],
                                    row(4), kept_rows[2]]))
    clean = put(vault, "2026-03-09", "10", "posts.csv.xz",
                xz_as_process_writes([row(6, MULTI_LINE), row(7)]))
    before_window = put(vault, "2026-03-06", "12", "posts.csv.xz",
                        xz_as_process_writes([row(2), row(8)]))
    corrupt = put(vault, "2026-03-10", "00", "posts.csv.xz", b"\xfd7zXZ\x00 broken")
    put(vault, "2026-03-09", "02b", "deletes.txt.xz",
        deletes(uri(2), uri(6, "app.bsky.feed.like")))
    put(vault, "2026-03-10", "00", "deletes.txt.xz", deletes(uri(4), uri(99)))
    put(vault, "2026-03-06", "05", "deletes.txt.xz", deletes(uri(7)))  # before the window
    put(vault, "2026-03-09", "03", "deletes.txt.xz", b"not xz")
    untouched = {p: (p.read_bytes(), p.stat().st_mtime_ns)
                 for p in (clean, before_window, corrupt)}

    with caplog.at_level(logging.INFO, logger="collector.process"):
        assert BLUESKY_SOURCE.daily is not None
        summary = BLUESKY_SOURCE.daily(settings, NOW)

    assert hit.read_bytes() == xz_as_process_writes(kept_rows)
    frame = list(csv.reader(io.StringIO(lzma.decompress(hit.read_bytes()).decode(),
                                        newline="")))
    assert [r[0] for r in frame[1:]] == [uri(1), uri(3), uri(5)]
    assert frame[1][8] == MULTI_LINE
    for path, (data, mtime) in untouched.items():
        assert (path.read_bytes(), path.stat().st_mtime_ns) == (data, mtime)
    assert summary == ("3 deleted posts in the deletes files of 2026-03-07..2026-03-10 "
                       "(1 unreadable): 3 posts files checked, 1 rewritten, 2 rows removed, "
                       "1 unreadable")
    messages = [r.getMessage() for r in caplog.records]
    assert "deletions: removed 2 deleted posts from 2026-03-07_23_posts.csv.xz" in messages
    assert sum("cannot read" in m for m in messages) == 2
    assert not [p for p in (vault / "2026-03-07").iterdir() if ".tmp-" in p.name]


def test_no_deletes_reads_no_posts_file(settings: Settings) -> None:
    vault = settings.data_vault_dst
    assert vault is not None
    put(vault, "2026-03-10", "00", "posts.csv.xz", b"never read")
    assert BLUESKY_SOURCE.daily is not None
    assert BLUESKY_SOURCE.daily(settings, NOW).endswith(
        "0 posts files checked, 0 rewritten, 0 rows removed, 0 unreadable")


def test_a_file_without_the_posts_header_is_left_alone(settings: Settings) -> None:
    vault = settings.data_vault_dst
    assert vault is not None
    odd = put(vault, "2026-03-10", "01", "posts.csv.xz",
              xz_as_process_writes([row(2)], header=b"uri,text\n"))
    put(vault, "2026-03-10", "01", "deletes.txt.xz", deletes(uri(2)))
    data = odd.read_bytes()
    assert BLUESKY_SOURCE.daily is not None
    assert BLUESKY_SOURCE.daily(settings, NOW).endswith("0 rewritten, 0 rows removed, "
                                                        "1 unreadable")
    assert odd.read_bytes() == data


def test_rows_with_text_gives_each_rows_exact_lines() -> None:
    text = 'a,"b\nc",d\n"x""y",\r\n,"\r"\nlast'
    rows = list(rows_with_text(iter(io.StringIO(text, newline=""))))
    assert [r for r, _ in rows] == [["a", "b\nc", "d"], ['x"y', ""], ["", "\r"], ["last"]]
    assert "".join(t for _, t in rows) == text


def test_the_window_is_its_days_and_one_more_oldest_first() -> None:
    assert window_days(datetime(2026, 3, 1).date(), 2) == [
        "2026-02-26", "2026-02-27", "2026-02-28", "2026-03-01"]
