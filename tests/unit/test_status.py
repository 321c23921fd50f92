"""`collector status`: verdicts from the files the other commands leave, and exact output."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from collector import status
from collector.cli import main
from collector.publish import ledger as osf
from collector.settings import Settings, load_settings
from collector.stream.health import STATUS_FILE, HealthFile, StreamHealth
from collector.transfer import replicate, send
from collector.transfer.rsync import ConfirmedLedger
from tests.conftest import SettingsWriter
from tests.unit.helpers import chunk, replica_host, running_stream, stamp


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
        "kept chunks      0\n"
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
    assert main(["--settings", str(settings.path), "status", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["verdict"] == "healthy" and report["chunks_waiting"] == 1
    assert report["stream"]["connected"] is True

    chunk(settings.data_storage_dst, "srv1", datetime.now(UTC) - timedelta(hours=3),
          age_seconds=3 * 3600)
    send.save_send_state(settings.state_dir / send.STATE_FILE,
                         send.SendState(consecutive_failures=3, last_error="connection refused"))
    assert main(["--settings", str(settings.path), "status", "--json"]) == 1
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
    ledger = osf.UploadLedger(osf.ledger_target(settings),
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
    assert main(["--settings", str(settings.path), "status"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "waiting in memory  5120 bytes" in out
    assert out[-2:] == [
        "problem            data_storage_dst is full; messages wait in memory",
        "problem            3 message(s) dropped since the stream started: the disk was full "
        "and memory too",
    ]
    assert main(["--settings", str(settings.path), "status", "--json"]) == 1
    stream = orjson.loads(capsys.readouterr().out)["stream"]
    assert (stream["backlog_bytes"], stream["dropped_messages"]) == (5_120, 3)


# ---- two copies until published (issue 11) ---------------------------------------------------


def test_secondary_counts_only_what_the_current_main_has_not_confirmed(
    write_settings: SettingsWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(write_settings())
    running_stream(settings.state_dir)
    root = settings.data_storage_dst
    old = chunk(root, "srv1", datetime.now(UTC) - timedelta(hours=3), age_seconds=3 * 3600)
    fresh = chunk(root, "srv1", datetime.now(UTC))
    ledger = send.load_send_ledger(settings)
    ledger.chunks[old.relative_to(root).as_posix()] = stamp(old)
    ledger.save()

    assert main(["--settings", str(settings.path), "status", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert (report["chunks_waiting"], report["kept_chunks"]) == (1, 1)
    assert report["oldest_chunk_waiting"] == fresh.name
    assert report["replica"] == {} and report["replication"] == {}

    # Confirmed by another main: waits again (send offers it to the current main).
    ledger.label = "incoming@other-main:22"
    ledger.save()
    assert main(["--settings", str(settings.path), "status", "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert (report["chunks_waiting"], report["kept_chunks"]) == (2, 0)
    assert report["problems"] == [f"chunks wait to be sent for 3.0 h (oldest {old.name})"]


def main_with_replicas(write_settings: SettingsWriter, tmp_path: Path) -> Settings:
    settings = load_settings(write_settings(
        role="main", main_host=None, main_user=None, osf_enabled="False",
        data_vault_dst=str(tmp_path / "vault"), incoming_dst=str(tmp_path / "incoming"),
        replicas="srv2@10.0.0.2:2222"))
    running_stream(settings.state_dir)
    return settings


def test_main_shows_what_waits_per_replica_host_and_degrades_when_behind(
    write_settings: SettingsWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = main_with_replicas(write_settings, tmp_path)
    root = settings.data_storage_dst
    fresh = chunk(root, "srv1", datetime.now(UTC))
    fresh_key = "srv1/" + fresh.relative_to(root).as_posix()

    assert main(["--settings", str(settings.path), "status", "--json"]) == 0
    target = orjson.loads(capsys.readouterr().out)["replication"]["targets"]["srv2"]
    assert target["behind_seconds"] < 60
    assert {key: value for key, value in target.items() if key != "behind_seconds"} == {
        "label": "srv2@10.0.0.2:2222", "chunks_waiting": 1, "oldest_chunk_waiting": fresh_key,
        "last_attempt_at": "", "last_success_at": "", "consecutive_failures": 0,
        "last_error": ""}

    departed = chunk(tmp_path / "incoming" / "srv9", "srv9",
                     datetime.now(UTC) - timedelta(hours=3), age_seconds=3 * 3600)
    departed_key = "srv9/" + departed.relative_to(tmp_path / "incoming" / "srv9").as_posix()
    assert main(["--settings", str(settings.path), "status", "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["replication"]["targets"]["srv2"]["chunks_waiting"] == 2
    assert report["problems"][-1] == (
        f"replication to srv2@10.0.0.2:2222 is 3.0 h behind: 2 chunks wait (oldest "
        f"{departed_key}); last success never")

    # Both confirmed there: nothing waits. Then the ledger changes after a success 3 h ago.
    confirmed = ConfirmedLedger(replicate.target_ledger_path(settings.state_dir, "srv2"),
                                "target", "srv2@10.0.0.2:2222",
                                {fresh_key: stamp(fresh), departed_key: stamp(departed)})
    confirmed.save()
    assert main(["--settings", str(settings.path), "status", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["replication"]["targets"]["srv2"]["chunks_waiting"] == 0
    assert report["problems"] == []

    success = (datetime.now(UTC) - timedelta(hours=3)).isoformat(timespec="seconds")
    replicate.save_replicate_state(settings.state_dir / replicate.STATE_FILE, {
        "srv2": replicate.TargetState(label="srv2@10.0.0.2:2222", last_success_at=success,
                                      last_attempt_at=success)})
    (settings.state_dir / "process_ledger.json").write_text('{"version": 1, "hours": {}}')
    assert main(["--settings", str(settings.path), "status", "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["problems"][-1] == (
        "replication to srv2@10.0.0.2:2222 is 3.0 h behind: the vault and ledger changed "
        f"since; last success {success}")

    # Failing runs with nothing to catch up on still show.
    os.utime(settings.state_dir / "process_ledger.json", (time.time() - 4 * 3600,) * 2)
    replicate.save_replicate_state(settings.state_dir / replicate.STATE_FILE, {
        "srv2": replicate.TargetState(label="srv2@10.0.0.2:2222", last_success_at=success,
                                      consecutive_failures=3, last_error="connection refused")})
    assert main(["--settings", str(settings.path), "status", "--json"]) == 1
    assert orjson.loads(capsys.readouterr().out)["problems"][-1] == (
        "3 replications to srv2@10.0.0.2:2222 failed in a row: connection refused")


def test_main_without_replicas_says_so(write_settings: SettingsWriter, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = write_settings(role="main", main_host=None, main_user=None, osf_enabled="False",
                          data_vault_dst=str(tmp_path / "vault"),
                          incoming_dst=str(tmp_path / "incoming"))
    running_stream(load_settings(path).state_dir)
    assert main(["--settings", str(path), "status", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["replication"] == {"configured": False,
                                                                    "targets": {}}


def test_replica_host_is_fresh_for_two_hours_then_needs_the_mains_copies(
    write_settings: SettingsWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = replica_host(write_settings, tmp_path)
    replica = tmp_path / "replica"

    def report() -> tuple[int, dict[str, object]]:
        code = main(["--settings", str(settings.path), "status", "--json"])
        return code, orjson.loads(capsys.readouterr().out)

    code, shown = report()
    assert code == 0
    replica_part = shown["replica"]
    assert isinstance(replica_part, dict)
    assert replica_part.pop("set_up_age") < 60
    assert replica_part == {"path": str(replica), "received": False, "chunks_held": 0,
                            "chunks_by_server": {}, "newest_chunk": "",
                            "newest_chunk_age": None, "ledger_age": None, "age": None}

    three_hours_ago = time.time() - 3 * 3600
    os.utime(replica / "state", (three_hours_ago, three_hours_ago))
    code, shown = report()
    assert code == 1
    assert shown["problems"] == [
        f"no replica received from the main in the 3.0 h since {replica} was set up"]

    ledger = replica / "state" / "process_ledger.json"
    ledger.write_text('{"version": 1, "hours": {}}')
    held = chunk(replica / "chunks" / "srv1", "srv1", datetime.now(UTC) - timedelta(minutes=30),
                 age_seconds=1800)
    code, shown = report()
    assert code == 0
    assert shown["replica"]["received"] is True  # type: ignore[index]
    assert shown["replica"]["chunks_by_server"] == {"srv1": 1}  # type: ignore[index]
    assert shown["replica"]["newest_chunk"] == held.name  # type: ignore[index]

    for path in (ledger, held):
        os.utime(path, (three_hours_ago, three_hours_ago))
    code, shown = report()
    assert code == 1
    assert shown["problems"] == [
        "the newest replica from the main is 3.0 h old (replicated ledger 3.0 h old, newest "
        "replica chunk 3.0 h old)"]


def test_replica_tree_on_the_main_is_shown_not_judged(
    write_settings: SettingsWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replica = tmp_path / "replica"
    settings = load_settings(write_settings(
        role="main", main_host=None, main_user=None, osf_enabled="False",
        data_vault_dst=str(tmp_path / "vault"), incoming_dst=str(tmp_path / "incoming"),
        replica_dst=str(replica)))
    running_stream(settings.state_dir)
    assert main(["--settings", str(settings.path), "status", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["replica"]["received"] is False


@pytest.mark.parametrize(("oldest", "success", "ledger", "lag"), [
    (None, None, None, 0.0),  # nothing ever: nothing missing
    (900.0, None, None, 100.0),  # a chunk waits since 900
    (None, 500.0, 400.0, 0.0),  # ledger replicated after its last change
    (None, 500.0, 600.0, 500.0),  # changed after the last success: behind since then
    (None, None, 700.0, 300.0),  # never succeeded: behind since the change
    (950.0, 200.0, None, 800.0),  # something waits, last success long ago
])
def test_replication_lag(oldest: float | None, success: float | None, ledger: float | None,
                         lag: float) -> None:
    assert status.replication_lag(1000.0, oldest, success, ledger) == lag
