"""The pure parts of `collector upload`: which files are published, where, and the ledger."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from collector.errors import CollectorError
from collector.layout import HourKey
from collector.publish.files import file_md5, is_publishable, remote_path, select_files
from collector.publish.ledger import UploadLedger, load_ledger, save_ledger
from collector.publish.osf_api import RetryPolicy

DAY = "2026-10-25"


@pytest.mark.parametrize(("name", "published"), [
    (f"{DAY}_00_IDs.txt.xz", True),
    (f"{DAY}_02b_IDs.txt.xz", True),
    (f"{DAY}_report.txt", True),
    (f"{DAY}_00_tweets.csv.xz", False),
    (f"{DAY}_00_users.csv.xz", False),
    (f".{DAY}_report.txt.tmp", False),
    (f".{DAY}_00_IDs.txt.xz", False),
    ("2026-10-24_00_IDs.txt.xz", False),  # another day's file in the wrong folder
    (f"{DAY}_00_IDs.txt", False),
    (f"{DAY}_report.png", False),
])
def test_only_ids_files_and_reports_are_published(name: str, published: bool) -> None:
    assert is_publishable(DAY, name) is published


@pytest.mark.parametrize(("name", "published"), [
    (f"{DAY}_00_IDs.txt.xz", True),
    (f"{DAY}_00_deletes.txt.xz", True),
    (f"{DAY}_02b_deletes.txt.xz", True),
    (f"{DAY}_report.txt", True),
    (f"{DAY}_00_posts.csv.xz", False),
    (f"{DAY}_00_deletes.txt", False),
])
def test_bluesky_publishes_ids_deletes_and_reports(name: str, published: bool) -> None:
    assert is_publishable(DAY, name, ("IDs.txt.xz", "deletes.txt.xz")) is published
    assert is_publishable(DAY, name) is (published and "deletes" not in name)


def test_remote_path_is_year_month_day() -> None:
    assert remote_path(DAY, "x.txt") == "2026/10/25/x.txt"
    with pytest.raises(ValueError, match="not a day"):
        remote_path("2026-10", "x.txt")


def _vault(tmp_path: Path) -> Path:
    vault = tmp_path / "vault"
    for day in (DAY, "2026-10-26"):
        (vault / day).mkdir(parents=True)
        for hour in ("02", "02b"):
            for kind in ("IDs.txt.xz", "tweets.csv.xz", "users.csv.xz"):
                (vault / day / f"{day}_{hour}_{kind}").write_bytes(b"data")
        (vault / day / f"{day}_report.txt").write_text("hour\n")
    (vault / ".collector").mkdir()
    (vault / ".collector" / f"{DAY}_03_IDs.txt.xz").write_bytes(b"hidden")
    (vault / "notes").mkdir()
    return vault


def test_select_files_finds_every_publishable_file_in_order(tmp_path: Path) -> None:
    selected = [f.remote for f in select_files(_vault(tmp_path))]
    assert selected == [
        "2026/10/25/2026-10-25_02_IDs.txt.xz", "2026/10/25/2026-10-25_02b_IDs.txt.xz",
        "2026/10/25/2026-10-25_report.txt",
        "2026/10/26/2026-10-26_02_IDs.txt.xz", "2026/10/26/2026-10-26_02b_IDs.txt.xz",
        "2026/10/26/2026-10-26_report.txt",
    ]


def test_select_files_for_one_hour(tmp_path: Path) -> None:
    vault = _vault(tmp_path)
    selected = [f.remote for f in select_files(vault, HourKey(DAY, "02b"))]
    assert selected == ["2026/10/25/2026-10-25_02b_IDs.txt.xz",
                        "2026/10/25/2026-10-25_report.txt"]
    with pytest.raises(CollectorError, match="nothing to upload for 2026-10-25T04"):
        select_files(vault, HourKey(DAY, "04"))


def test_missing_vault_selects_nothing(tmp_path: Path) -> None:
    assert select_files(tmp_path / "absent") == []


def test_ledger_skips_recorded_files_and_notices_changes(tmp_path: Path) -> None:
    vault = _vault(tmp_path)
    report = next(f for f in select_files(vault) if f.remote.endswith("25_report.txt"))
    ledger = UploadLedger("target")
    assert not ledger.is_current(report)
    ledger.record(report, file_md5(report.path))
    assert ledger.is_current(report)

    os.utime(report.path, ns=(1, 1))  # touched, same bytes: still current
    touched = next(f for f in select_files(vault) if f.remote == report.remote)
    assert ledger.is_current(touched)
    assert ledger.files[report.remote]["mtime_ns"] == 1

    report.path.write_text("hour\n00\n")  # grown
    grown = next(f for f in select_files(vault) if f.remote == report.remote)
    assert not ledger.is_current(grown)


def test_ledger_round_trip_and_target_guard(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.json"
    ledger = UploadLedger("a|p|s", files={"2026/01/02/x": {"md5": "m", "size": 1, "mtime_ns": 2}},
                    folders={"2026": {"new_folder": "n", "upload": "u", "files_url": "f"}})
    save_ledger(path, ledger)
    assert load_ledger(path, "a|p|s") == ledger
    assert [p.name for p in path.parent.iterdir()] == ["ledger.json"]  # no temp file left
    # Another project: nothing in the ledger may be trusted.
    assert load_ledger(path, "a|other|s").files == {}


def test_unreadable_ledger_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    assert load_ledger(path, "t") == UploadLedger("t")
    path.write_text(json.dumps(["a list"]))
    assert load_ledger(path, "t") == UploadLedger("t")


def test_retry_delays_repeat_the_last_backoff() -> None:
    policy = RetryPolicy(attempts=5, backoff=(1.0, 4.0))
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 4.0, 4.0, 4.0]
