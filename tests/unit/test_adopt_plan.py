"""`collector adopt`'s pure rules and its one primitive: what is a vault file, which ledger
entries are trusted, and a rename that never replaces."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import collector.transfer.adopt
from collector.layout import HourKey
from collector.transfer.adopt import clean_ledger_hours, is_vault_name, rename_noreplace


@pytest.mark.parametrize(("name", "ok"), [
    ("2026-02-03_10_IDs.txt.xz", True),
    ("2026-02-03_02b_tweets.csv.xz", True),
    ("2026-02-03_report.txt", True),
    ("2026-02-03_coverage.png", True),
    ("2026-02-04_10_IDs.txt.xz", False),  # another day's, in this day's folder
    ("2026-02-03_", False),
    ("passwd", False),
    (".2026-02-03_10_IDs.txt.xz.tmp-1", False),
    ("2026-02-03_10_IDs.txt.xz\n", False),
    ("2026-02-03_é.txt", False),
    ("2026-02-03_../x", False),
])
def test_vault_names(name: str, ok: bool) -> None:
    assert is_vault_name("2026-02-03", name) is ok


def test_only_well_formed_entries_of_published_hours_are_trusted() -> None:
    hours = {
        "2026-02-03T10": {"chunks": {"srv1/a.jsonl": 5}, "processed_at": "x"},
        "2026-02-03T11": {"pruned": True},
        "2026-02-03T12": {"chunks": {"srv1/a.jsonl": 5}},  # its outputs are not here
        "2026-02-03T13": {"chunks": {"srv1/a.jsonl": "5"}},
        "2026-02-03T14": {"chunks": {"srv1/a.jsonl": True}},
        "2026-02-03T15": {"pruned": "yes"},
        "2026-02-03T16": ["not", "a", "dict"],
        "2026-13-40T10": {"pruned": True},
        "yesterday": {"pruned": True},
    }
    published = {HourKey("2026-02-03", h) for h in ("10", "11", "13", "14", "15", "16")}
    assert clean_ledger_hours(hours, published.__contains__) == {
        "2026-02-03T10": hours["2026-02-03T10"], "2026-02-03T11": {"pruned": True}}
    assert clean_ledger_hours(["a list"], published.__contains__) == {}


@pytest.fixture(params=["renameat2", "fallback"])
def renamer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "fallback":  # a kernel or libc without renameat2
        monkeypatch.setattr(collector.transfer.adopt, "_libc", False)
    yield request.param


def test_a_rename_never_replaces(tmp_path: Path, renamer: str) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    source.mkdir()
    target.mkdir()
    (source / "x").write_bytes(b"replica")
    (target / "x").write_bytes(b"local")
    (source / "y").write_bytes(b"moves")
    src = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    dst = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            rename_noreplace(src, "x", dst, "x")
        rename_noreplace(src, "y", dst, "y")
        with pytest.raises(FileNotFoundError):
            rename_noreplace(src, "gone", dst, "gone")
    finally:
        os.close(src)
        os.close(dst)
    assert (target / "x").read_bytes() == b"local" and (source / "x").read_bytes() == b"replica"
    assert (target / "y").read_bytes() == b"moves" and not (source / "y").exists()
