"""`collector status`: verdicts from the files the other commands leave, and exact output."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from collector import osf, send
from collector.cli import main
from collector.health import STATUS_FILE, HealthFile, StreamHealth
from collector.layout import chunk_path
from collector.settings import load_settings
from tests.conftest import SettingsWriter


def running_stream(state_dir: Path) -> None:
    now = time.time()
    health = StreamHealth(connected=True, connected_since=now - 60, last_message_at=now,
                          last_tweet_at=now, open_chunk="srv1_x.jsonl.part")
    HealthFile(state_dir / STATUS_FILE).write(health)


def chunk(root: Path, server: str, moment: datetime, age_seconds: float = 0) -> Path:
    path = chunk_path(root, server, moment, ZoneInfo("CET"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"data": {"id": "1"}}\n')
    when = time.time() - age_seconds
    os.utime(path, (when, when))
    return path


def test_never_run_is_down_with_exact_output(write_settings: SettingsWriter,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write_settings()
    assert main(["--settings", str(path), "status"]) == 2
    assert capsys.readouterr().out == (
        "host             srv1 (secondary)\n"
        "verdict          down\n"
        "stream           not running\n"
        "last message     never\n"
        "last tweet       never\n"
        "open chunk       -\n"
        "chunks not sent  0\n"
        "last push        never\n"
        "failed pushes    0\n"
        "problem          the stream has never run on this host\n"
    )


def test_secondary_healthy_then_degraded_by_old_chunks_and_failed_pushes(
    write_settings: SettingsWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(write_settings())
    running_stream(settings.state_dir)
    chunk(settings.data_storage_dst, "srv1", datetime.now(UTC))
    assert main(["--settings", str(settings.source), "status", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["verdict"] == "healthy" and report["chunks_waiting"] == 1
    assert report["stream"]["connected"] is True

    chunk(settings.data_storage_dst, "srv1", datetime.now(UTC) - timedelta(hours=3),
          age_seconds=3 * 3600)
    send.save_send_state(settings.state_dir / send.STATE_FILE,
                         send.SendState(consecutive_failures=3, last_error="connection refused"))
    assert main(["--settings", str(settings.source), "status", "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["problems"][0].startswith("chunks wait to be sent for 3.0 h")
    assert report["problems"][1] == "3 pushes to the main failed in a row: connection refused"


def test_main_counts_due_hours_and_reports_a_failed_upload(
    write_settings: SettingsWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_settings(role="main", data_vault_dst=str(tmp_path / "vault"),
                          incoming_dst=str(tmp_path / "incoming"),
                          OSF_key_dst=str(tmp_path / "keys"), osf_project="abc12")
    settings = load_settings(path)
    running_stream(settings.state_dir)
    start = datetime.now(UTC).replace(minute=5, second=0, microsecond=0)
    for hours_ago in (5, 4, 3):
        chunk(settings.data_storage_dst, "srv1", start - timedelta(hours=hours_ago))
    vault_state = tmp_path / "vault" / ".collector"
    ledger = osf.Ledger(osf.ledger_target(settings),
                        last_run={"at": "2026-11-27T10:00:00+00:00", "ok": False,
                                  "error": "OSF answered 507: quota exceeded"})
    osf.save_ledger(vault_state / osf.LEDGER_NAME, ledger)
    assert main(["--settings", str(path), "status", "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["processing"]["hours_waiting"] == 3
    assert report["processing"]["last_hour_processed"] == ""
    assert report["problems"] == [
        f"3 due hours are not processed (oldest {report['processing']['oldest_hour_waiting']})",
        "the last upload failed: OSF answered 507: quota exceeded",
    ]


def test_a_full_disk_shows_the_memory_backlog_and_dropped_messages_degrade(
    write_settings: SettingsWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(write_settings())
    now = time.time()
    health = StreamHealth(connected=True, connected_since=now - 60, last_message_at=now,
                          last_tweet_at=now, open_chunk="srv1_x.jsonl.part", disk_full=True,
                          backlog_bytes=5_120, dropped_messages=3)
    HealthFile(settings.state_dir / STATUS_FILE).write(health)
    assert main(["--settings", str(settings.source), "status"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "waiting in memory  5120 bytes" in out
    assert out[-2:] == [
        "problem            data_storage_dst is full; messages wait in memory",
        "problem            3 message(s) dropped since the stream started: the disk was full "
        "and memory too",
    ]
    assert main(["--settings", str(settings.source), "status", "--json"]) == 1
    stream = orjson.loads(capsys.readouterr().out)["stream"]
    assert (stream["backlog_bytes"], stream["dropped_messages"]) == (5_120, 3)
