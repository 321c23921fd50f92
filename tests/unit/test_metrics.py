"""`collector metrics`: the exposition text from a status (exact), the file node_exporter reads
(parsed by prometheus_client's own parser), and the command's atomic write and one-line errors."""

from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector import __version__, metrics, status
from collector.cli import main
from collector.layout import HourKey, hour_bounds, hour_of
from collector.process.ledger import LEDGER_NAME
from collector.publish import files as osf_files
from collector.publish import ledger as osf
from collector.settings import Settings, load_settings
from collector.status import HostStatus, Verdict
from collector.stream.health import STATUS_FILE, HealthFile, StreamHealth
from tests.conftest import SettingsWriter
from tests.unit.helpers import chunk, replica_host, running_stream

NOW = 1_800_000_000.0


def secondary_status() -> HostStatus:
    """A degraded secondary that holds replicas, as `host_status` would fill it."""
    return HostStatus(
        "srv2", "secondary", verdict=Verdict.DEGRADED, problems=["a problem"],
        stream={"running": True, "connected": True, "connected_since": NOW - 600,
                "last_message_age": 0.4, "last_tweet_age": 1.5, "open_chunk": "x.part",
                "messages": 1200, "tweets": 1100, "connections": 2, "malformed_lines": 1,
                "stalled": False, "disk_full": True, "backlog_bytes": 5120,
                "dropped_messages": 0, "last_error": "token=secret in an error",
                "health_record_age": 1.0},
        chunks_waiting=3, oldest_chunk_waiting="srv2_x.jsonl", kept_chunks=120,
        sending={"last_success_at": "", "last_success_files": 0, "consecutive_failures": 4,
                 "last_error": "refused"},
        replica={"path": "/srv/collector/replica", "received": True, "chunks_held": 60,
                 "chunks_by_server": {"srv1": 60}, "newest_chunk": "srv1_x.jsonl",
                 "newest_chunk_age": 1800.0, "ledger_age": 900.0, "age": 900.0})


def test_a_secondary_exposition_is_exact() -> None:
    assert metrics.exposition(secondary_status()) == (
        "# HELP collector_info Always 1; the labels name this host's role and the collector "
        "version.\n"
        "# TYPE collector_info gauge\n"
        f'collector_info{{server="srv2",role="secondary",version="{__version__}"}} 1\n'
        "# HELP collector_status_verdict What collector status says: 0 healthy, 1 degraded, "
        "2 down (its exit code).\n"
        "# TYPE collector_status_verdict gauge\n"
        'collector_status_verdict{server="srv2"} 1\n'
        "# HELP collector_metrics_errors Parts of the status this run could not read; their "
        "metrics are left out.\n"
        "# TYPE collector_metrics_errors gauge\n"
        'collector_metrics_errors{server="srv2"} 0\n'
        "# HELP collector_stream_running 1 if collector stream runs on this host.\n"
        "# TYPE collector_stream_running gauge\n"
        'collector_stream_running{server="srv2"} 1\n'
        "# HELP collector_stream_connected 1 if the stream is connected to the API.\n"
        "# TYPE collector_stream_connected gauge\n"
        'collector_stream_connected{server="srv2"} 1\n'
        "# HELP collector_stream_stalled 1 if the stream is connected but no tweet arrived "
        "for stall_seconds.\n"
        "# TYPE collector_stream_stalled gauge\n"
        'collector_stream_stalled{server="srv2"} 0\n'
        "# HELP collector_stream_last_message_age_seconds Seconds since the stream received "
        "its last message (heartbeats excluded).\n"
        "# TYPE collector_stream_last_message_age_seconds gauge\n"
        'collector_stream_last_message_age_seconds{server="srv2"} 0.4\n'
        "# HELP collector_stream_last_tweet_age_seconds Seconds since the stream received its "
        "last message with data.\n"
        "# TYPE collector_stream_last_tweet_age_seconds gauge\n"
        'collector_stream_last_tweet_age_seconds{server="srv2"} 1.5\n'
        "# HELP collector_stream_backlog_bytes Bytes of messages waiting in memory for disk "
        "space.\n"
        "# TYPE collector_stream_backlog_bytes gauge\n"
        'collector_stream_backlog_bytes{server="srv2"} 5120\n'
        "# HELP collector_stream_dropped_messages_total Messages dropped (disk and memory full) "
        "since the stream started.\n"
        "# TYPE collector_stream_dropped_messages_total counter\n"
        'collector_stream_dropped_messages_total{server="srv2"} 0\n'
        "# HELP collector_stream_messages_total Messages received since the stream started.\n"
        "# TYPE collector_stream_messages_total counter\n"
        'collector_stream_messages_total{server="srv2"} 1200\n'
        "# HELP collector_stream_tweets_total Messages with data received since the stream "
        "started.\n"
        "# TYPE collector_stream_tweets_total counter\n"
        'collector_stream_tweets_total{server="srv2"} 1100\n'
        "# HELP collector_stream_malformed_lines_total Lines that were not a JSON object, "
        "skipped since the stream started.\n"
        "# TYPE collector_stream_malformed_lines_total counter\n"
        'collector_stream_malformed_lines_total{server="srv2"} 1\n'
        "# HELP collector_stream_connections_total Connections made to the API since the "
        "stream started.\n"
        "# TYPE collector_stream_connections_total counter\n"
        'collector_stream_connections_total{server="srv2"} 2\n'
        "# HELP collector_chunks_waiting Closed chunks the current main has not confirmed yet "
        "(secondary).\n"
        "# TYPE collector_chunks_waiting gauge\n"
        'collector_chunks_waiting{server="srv2"} 3\n'
        "# HELP collector_chunks_kept Chunks the main confirmed, kept here until "
        "raw_retention_days (secondary).\n"
        "# TYPE collector_chunks_kept gauge\n"
        'collector_chunks_kept{server="srv2"} 120\n'
        "# HELP collector_send_consecutive_failures Pushes to the main that failed in a row "
        "(secondary).\n"
        "# TYPE collector_send_consecutive_failures gauge\n"
        'collector_send_consecutive_failures{server="srv2"} 4\n'
        "# HELP collector_replica_age_seconds Seconds since this host last received the "
        "main's replicas.\n"
        "# TYPE collector_replica_age_seconds gauge\n"
        'collector_replica_age_seconds{server="srv2"} 900\n'
        "# HELP collector_replica_chunks_held Replica chunks this host holds for the main.\n"
        "# TYPE collector_replica_chunks_held gauge\n"
        'collector_replica_chunks_held{server="srv2"} 60\n'
    )


def test_a_main_exposition_has_hours_uploads_and_one_sample_per_replica() -> None:
    main_status = HostStatus(
        "srv1", "main",
        stream={"running": True, "connected": False, "last_message_age": 75.0},
        processing={"last_hour_processed": "2026-11-27T13", "last_hour_processed_age": 1500.0,
                    "hours_waiting": 0, "quarantined_entries": 2},
        uploading={"enabled": True, "last_hour_uploaded": "2026-11-27T12",
                   "last_hour_uploaded_age": 5100.0, "last_run_ok": False},
        replication={"configured": True, "targets": {
            "srv3": {"behind_seconds": 0.0, "chunks_waiting": 0, "consecutive_failures": 0},
            "srv2": {"behind_seconds": 7300.5, "chunks_waiting": 61,
                     "consecutive_failures": 3}}})
    samples = [line for line in metrics.exposition(main_status).splitlines()
               if not line.startswith("#") and not line.startswith("collector_info")]
    assert samples == [
        'collector_status_verdict{server="srv1"} 0',
        'collector_metrics_errors{server="srv1"} 0',
        'collector_stream_running{server="srv1"} 1',
        'collector_stream_connected{server="srv1"} 0',
        'collector_stream_last_message_age_seconds{server="srv1"} 75',
        'collector_process_last_hour_age_seconds{server="srv1"} 1500',
        'collector_process_hours_waiting{server="srv1"} 0',
        'collector_process_quarantined_entries{server="srv1"} 2',
        'collector_upload_last_hour_age_seconds{server="srv1"} 5100',
        'collector_upload_last_run_ok{server="srv1"} 0',
        'collector_replication_lag_seconds{server="srv1",replica="srv2"} 7300.5',
        'collector_replication_lag_seconds{server="srv1",replica="srv3"} 0',
        'collector_replication_chunks_waiting{server="srv1",replica="srv2"} 61',
        'collector_replication_chunks_waiting{server="srv1",replica="srv3"} 0',
        'collector_replication_consecutive_failures{server="srv1",replica="srv2"} 3',
        'collector_replication_consecutive_failures{server="srv1",replica="srv3"} 0',
    ]


def test_missing_data_is_omitted_never_invented() -> None:
    # The stream never ran, nothing processed or uploaded yet, OSF off, a part unreadable.
    never = HostStatus("srv1", "main", verdict=Verdict.DOWN, stream={"running": False},
                       processing={"last_hour_processed": "", "last_hour_processed_age": None,
                                   "hours_waiting": 0, "quarantined_entries": 0},
                       uploading={"enabled": False},
                       replication={"configured": False, "targets": {}})
    samples = [line for line in metrics.exposition(never, errors=1).splitlines()
               if not line.startswith("#")]
    assert samples == [
        f'collector_info{{server="srv1",role="main",version="{__version__}"}} 1',
        'collector_metrics_errors{server="srv1"} 1',  # and so no verdict
        'collector_stream_running{server="srv1"} 0',
        'collector_stream_connected{server="srv1"} 0',
        'collector_process_hours_waiting{server="srv1"} 0',
        'collector_process_quarantined_entries{server="srv1"} 0',
    ]


def test_label_values_are_escaped() -> None:
    text = metrics.exposition(HostStatus('a"b\\c\nd', "secondary"))
    assert 'collector_metrics_errors{server="a\\"b\\\\c\\nd"} 0' in text.splitlines()


@pytest.mark.parametrize(("remotes", "newest"), [
    ([], None),
    (["2026/11/27/2026-11-27_report.txt"], None),
    (["2026/11/27/2026-11-27_13_IDs.txt.xz", "2026/11/28/2026-11-28_01_IDs.txt.xz",
      "2026/11/28/2026-11-28_report.txt"], "2026-11-28T01"),
    (["2026/10/25/2026-10-25_02_IDs.txt.xz", "2026/10/25/2026-10-25_02b_IDs.txt.xz"],
     "2026-10-25T02b"),
    (["2026/11/27/2026-11-27_99_IDs.txt.xz"], None),  # not an hour
])
def test_newest_uploaded_hour(remotes: list[str], newest: str | None) -> None:
    found = status.newest_uploaded_hour(remotes)
    assert (None if found is None else str(found)) == newest


# ---- the command and the file node_exporter reads ---------------------------------------------


def families(path: Path) -> dict[str, Any]:
    """Every family of the file, by name, through prometheus_client's own parser."""
    return {family.name: family for family in text_string_to_metric_families(path.read_text())}


def main_host(write_settings: SettingsWriter, tmp_path: Path) -> Settings:
    """A main with OSF, one replica host, a processed and an uploaded hour."""
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    (keys / "osf_credentials.txt").write_text("token=osf-secret-token\n")
    (keys / "osf_credentials.txt").chmod(0o640)
    settings = load_settings(write_settings(
        role="main", main_host=None, main_user=None, OSF_key_dst=str(keys), osf_project="abc12",
        data_vault_dst=str(tmp_path / "vault"), incoming_dst=str(tmp_path / "incoming"),
        replicas="srv2@10.0.0.2:2222"))
    running_stream(settings.state_dir)
    return settings


def test_the_file_parses_with_prometheus_client(write_settings: SettingsWriter, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    settings = main_host(write_settings, tmp_path)
    zone = ZoneInfo("CET")
    processed = hour_of(datetime.now(UTC) - timedelta(hours=2), zone)
    uploaded = hour_of(datetime.now(UTC) - timedelta(hours=3), zone)
    ledger = settings.state_dir / LEDGER_NAME
    ledger.write_text(f'{{"version": 1, "hours": {{"{processed}": {{"chunks": {{}}}}}}}}')
    remote = osf_files.remote_path(uploaded.day, f"{uploaded.file_prefix}_IDs.txt.xz")
    osf.save_ledger(tmp_path / "vault" / ".collector" / osf.LEDGER_NAME,
                    osf.UploadLedger(osf.ledger_target(settings), files={remote: {"size": 1}},
                               last_run={"at": "2026-11-27T10:00:00+00:00", "ok": True}))
    chunk(settings.data_storage_dst, "srv1", datetime.now(UTC))  # waits for the replica host
    out = tmp_path / "textfile"
    out.mkdir()

    before = time.time()
    assert main(["--settings", str(settings.path), "metrics", "--textfile-dir", str(out)]) == 0
    after = time.time()
    assert capsys.readouterr() == ("", "")  # silent: cron runs it every minute
    written = out / "collector.prom"
    assert os.listdir(out) == ["collector.prom"]  # no temporary left behind
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    text = written.read_text()
    assert "secret" not in text and "test-token" not in text and str(tmp_path) not in text

    found = families(written)
    kinds = {name: family.type for name, family in found.items()}
    assert kinds["collector_stream_connected"] == "gauge"
    assert kinds["collector_stream_messages"] == "counter"  # the parser drops `_total`
    assert {sample.name for sample in found["collector_stream_messages"].samples} == {
        "collector_stream_messages_total"}
    assert "collector_chunks_waiting" not in found  # a secondary's metric

    def value(name: str, **labels: str) -> float:
        [sample] = [sample for sample in found[name].samples
                    if sample.labels == {"server": "srv1", **labels}]
        return float(sample.value)

    assert value("collector_info", role="main", version=__version__) == 1
    assert value("collector_status_verdict") == 0
    assert value("collector_metrics_errors") == 0
    assert value("collector_stream_running") == value("collector_stream_connected") == 1
    assert 0 <= value("collector_stream_last_message_age_seconds") < 60

    def since_end(hour: HourKey) -> tuple[float, float]:
        end = hour_bounds(hour, zone)[1].timestamp()
        return before - end - 0.1, after - end + 0.1

    low, high = since_end(processed)
    assert low <= value("collector_process_last_hour_age_seconds") <= high
    low, high = since_end(uploaded)
    assert low <= value("collector_upload_last_hour_age_seconds") <= high
    assert value("collector_upload_last_run_ok") == 1
    assert value("collector_replication_chunks_waiting", replica="srv2") == 1
    assert 0 <= value("collector_replication_lag_seconds", replica="srv2") < 60
    assert value("collector_replication_consecutive_failures", replica="srv2") == 0


def test_an_unreadable_part_is_left_out_and_counted(
    write_settings: SettingsWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(write_settings())
    running_stream(settings.state_dir)

    def secondary_part(host: HostStatus, settings: Settings, now: float) -> None:
        host.chunks_waiting = 5  # filled, then the part fails: rolled back, never shown
        host.sending = {"consecutive_failures": 0}
        raise PermissionError(13, "Permission denied", "send_state.json")

    monkeypatch.setattr(status, "secondary_part", secondary_part)  # fills half, fails
    out = tmp_path / "textfile"
    out.mkdir()
    assert main(["--settings", str(settings.path), "metrics", "--textfile-dir", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].endswith(
        "WARNING collector.metrics: left out of the metrics, cannot read secondary: "
        "PermissionError: [Errno 13] Permission denied: 'send_state.json'")
    found = families(out / "collector.prom")
    assert found["collector_metrics_errors"].samples[0].value == 1
    assert "collector_status_verdict" not in found and "collector_chunks_waiting" not in found
    assert found["collector_stream_connected"].samples[0].value == 1  # the other parts stay


def test_replaces_the_previous_file(write_settings: SettingsWriter, tmp_path: Path) -> None:
    settings = load_settings(write_settings())
    HealthFile(settings.state_dir / STATUS_FILE).write(StreamHealth(dropped_messages=7))
    out = tmp_path / "textfile"
    out.mkdir()
    (out / "collector.prom").write_text("stale\n")
    (out / "node.prom").write_text("other_metric 1\n")  # node_exporter's folder is shared
    assert main(["--settings", str(settings.path), "metrics", "--textfile-dir", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["collector.prom", "node.prom"]
    found = families(out / "collector.prom")
    assert found["collector_stream_dropped_messages"].samples[0].value == 7
    assert (out / "node.prom").read_text() == "other_metric 1\n"


@pytest.mark.parametrize(("make", "message"), [
    (lambda folder: None, "textfile folder {folder} does not exist"),
    (lambda folder: folder.write_text(""), "textfile folder {folder} is not a folder"),
])
def test_a_missing_folder_is_one_line(write_settings: SettingsWriter, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], make: Any,
                                      message: str) -> None:
    settings = load_settings(write_settings())
    folder = tmp_path / "textfile"
    make(folder)
    assert main(["--settings", str(settings.path), "metrics",
                 "--textfile-dir", str(folder)]) == 1
    assert capsys.readouterr().err == (
        f"collector metrics: error: {message.format(folder=folder)}\n")
    assert not (tmp_path / "textfile" / "collector.prom").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_an_unwritable_folder_is_one_line(write_settings: SettingsWriter, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(write_settings())
    folder = tmp_path / "textfile"
    folder.mkdir(mode=0o555)
    assert main(["--settings", str(settings.path), "metrics",
                 "--textfile-dir", str(folder)]) == 1
    assert capsys.readouterr().err == (
        f"collector metrics: error: cannot write {folder}/collector.prom: Permission denied\n")
    assert os.listdir(folder) == []


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(
    write_settings: SettingsWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an unwritable folder does when the tests run as root, who may write anywhere.
    settings = load_settings(write_settings())
    folder = tmp_path / "textfile"
    folder.mkdir()
    (folder / "collector.prom").write_text("previous\n")

    def refuse(source: object, target: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    assert main(["--settings", str(settings.path), "metrics",
                 "--textfile-dir", str(folder)]) == 1
    assert capsys.readouterr().err == (
        f"collector metrics: error: cannot write {folder}/collector.prom: Permission denied\n")
    assert os.listdir(folder) == ["collector.prom"]
    assert (folder / "collector.prom").read_text() == "previous\n"


def test_bad_settings_are_one_line_and_write_nothing(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "textfile"
    folder.mkdir()
    missing = tmp_path / "nowhere.txt"
    assert main(["--settings", str(missing), "metrics", "--textfile-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("collector metrics: error: ") and err.count("\n") == 1
    assert os.listdir(folder) == []


def test_replica_metrics_follow_the_status_replica_part(
    write_settings: SettingsWriter, tmp_path: Path
) -> None:
    settings = replica_host(write_settings, tmp_path)
    replica = tmp_path / "replica"
    host, errors = metrics.collect(settings)
    assert errors == []
    samples = metrics.exposition(host).splitlines()
    assert 'collector_replica_chunks_held{server="srv1"} 0' in samples
    assert not any(line.startswith("collector_replica_age_seconds") for line in samples)

    chunk(replica / "chunks" / "srv1", "srv1", datetime.now(UTC) - timedelta(minutes=30),
          age_seconds=1800)
    host, errors = metrics.collect(settings)
    [age] = [line for line in metrics.exposition(host).splitlines()
             if line.startswith("collector_replica_age_seconds")]
    assert 1799 <= float(age.split()[-1]) <= 1900
