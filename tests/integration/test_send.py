"""`collector send` against a real sshd + rrsync on loopback, with the real ssh and rsync.

The main side is configured as production will be (restricted key line from
`collector.send.authorized_keys_line`, forced command `collector receive`, dedicated account,
pinned host key), so these tests also prove that `rrsync -wo -munge -no-del` accepts every
rsync option `send` uses. The tests of the deletion rules run twice: with this machine's rsync
and with Debian 12's 3.2.7 on both ends (what the lab hosts run). The CLI runs in-process
(`collector.cli.main`) where its exact stderr line matters, and once as a real subprocess.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from collector.cli import main as cli_main
from collector.errors import LockedError, RemoteError, SettingsError
from collector.layout import CHUNK_NAME, PART_SUFFIX, chunk_path
from collector.settings import Settings, load_settings
from collector.transfer.send import (
    LEDGER_FILE,
    LOCK_FILE,
    STATE_FILE,
    SendConflictError,
    authorized_keys_line,
    describe_failure,
    load_send_state,
    send,
)
from tests.conftest import SettingsWriter
from tests.doubles.samples import MessageFactory
from tests.integration.helpers import REPO_ROOT, RecordingNotifier, error_lines, run_cli
from tests.integration.sshd_fixture import (
    FLAVORS,
    MainSshd,
    Secondary,
    generate_key,
    put_client_rsync_first,
    rsync_flavor,
)

pytestmark = pytest.mark.integration

SERVER = "srv1"
# Old enough that no chunk is in the "current hour" the prune step protects, recent enough
# that none is past raw_retention_days (7): confirmed chunks are kept until then.
BASE = (datetime.now(UTC) - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
RETENTION = timedelta(days=7)
TWARC_META = {"url": "https://api.x.com/2/tweets/sample/stream", "version": "2.14.0",
              "retrieved_at": "2026-01-01T00:00:00+00:00"}


@pytest.fixture
def main_sshd(push_user: str, request: pytest.FixtureRequest,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[MainSshd]:
    """The main; parametrize it (indirect) with "debian12" for the lab hosts' rsync 3.2.7."""
    server = MainSshd(push_user, rsync_flavor(request))
    put_client_rsync_first(monkeypatch, server)  # `collector send` runs the flavor's rsync
    try:
        yield server
    finally:
        server.cleanup()


# The tests that prove the deletion rules run against both rsync versions.
both_rsyncs = pytest.mark.parametrize("main_sshd", FLAVORS, indirect=True)


class Site:
    """One secondary: its settings file, data folder and chunks, pointing at `main`."""

    def __init__(self, main: MainSshd, secondary: Secondary, write_settings: SettingsWriter,
                 tmp_path: Path, **overrides: str | None) -> None:
        self.main = main
        self.data = tmp_path / "data"
        self.data.mkdir(exist_ok=True)
        values: dict[str, str | None] = {
            "server_id": SERVER, "main_host": "127.0.0.1", "main_port": str(main.port),
            "main_user": main.user, "ssh_identity_file": str(secondary.identity),
            "ssh_known_hosts_file": str(secondary.known_hosts), "timezone": "UTC",
            "data_storage_dst": str(self.data),
        }
        values.update(overrides)
        self.settings_path = write_settings(**values)
        self.factory = MessageFactory()
        self.written = 0

    @property
    def settings(self) -> Settings:
        return load_settings(self.settings_path)

    @property
    def incoming(self) -> Path:
        return self.main.incoming / SERVER

    def chunk(self, minute: int, lines: int = 5, server: str = SERVER,
              part: bool = False) -> Path:
        """Write a closed (or open) chunk for minute `minute` after BASE, return its path."""
        path = chunk_path(self.data, server, BASE + timedelta(minutes=minute), self.settings
                          .timezone)
        if part:
            path = path.with_name(path.name + PART_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = b"".join(self._line() for _ in range(lines))
        path.write_bytes(body)
        return path

    def _line(self) -> bytes:
        message = self.factory.message(self.written)
        self.written += 1
        return orjson.dumps({**message, "__twarc": TWARC_META}) + b"\n"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.data).as_posix()

    def remote_files(self) -> dict[str, bytes]:
        """Every file under the main's incoming/srv1 folder (hidden ones too)."""
        return {p.relative_to(self.incoming).as_posix(): p.read_bytes()
                for p in sorted(self.incoming.rglob("*")) if p.is_file()}

    def put_on_main(self, relative: str, content: bytes) -> None:
        """A file already on the main, owned by the push account as rsync would leave it."""
        remote = self.incoming / relative
        remote.parent.mkdir(parents=True, exist_ok=True)
        remote.write_bytes(content)
        for path in (remote, remote.parent, remote.parent.parent):
            shutil.chown(path, self.main.user, self.main.user)

    def local_chunks(self) -> list[str]:
        return sorted(self.relative(p) for p in self.data.glob("*/*/*.jsonl"))

    def state(self) -> dict[str, object]:
        return orjson.loads((self.data / ".collector" / STATE_FILE).read_bytes())  # type: ignore[no-any-return]

    def ledger(self) -> dict[str, object]:
        """The send ledger: what the main confirmed, keyed by the main's label."""
        return orjson.loads((self.data / ".collector" / LEDGER_FILE).read_bytes())  # type: ignore[no-any-return]

    @property
    def label(self) -> str:
        return f"{self.main.user}@127.0.0.1:{self.main.port}"


def stamp(path: Path) -> list[int]:
    """How the send ledger records a chunk: [size, mtime_ns]."""
    status = path.lstat()
    return [status.st_size, status.st_mtime_ns]


@pytest.fixture
def site(main_sshd: MainSshd, write_settings: SettingsWriter, tmp_path: Path) -> Site:
    secondary = main_sshd.add_secondary(SERVER, tmp_path / "ssh")
    main_sshd.start()
    return Site(main_sshd, secondary, write_settings, tmp_path)


# ---- the happy path ---------------------------------------------------------------------------


@both_rsyncs
def test_push_keeps_tree_sends_only_closed_chunks_and_keeps_them_recorded(site: Site) -> None:
    closed = [site.chunk(minute) for minute in (0, 1, 59, 60, 61, 24 * 60)]
    expected = {site.relative(path): path.read_bytes() for path in closed}
    open_chunk = site.chunk(24 * 60 + 1, part=True)
    state_dir = site.data / ".collector"
    state_dir.mkdir()
    (state_dir / "stream_status.json").write_text("{}")
    foreign = site.chunk(2, server="srv2")  # misplaced file of another server: not ours to send
    stray = closed[0].parent / "notes.txt"
    stray.write_text("not a chunk")

    notifier = RecordingNotifier()
    result = send(site.settings, notifier)

    assert site.remote_files() == expected  # byte-identical, same day/hour tree, nothing else
    assert sorted(result.sent) == sorted(expected)
    assert result.already_on_main == [] and result.unconfirmed == []
    assert result.rsync_runs == 2  # push, then compare
    assert result.bytes_sent == sum(len(data) for data in expected.values())
    assert result.foreign == [site.relative(foreign)]
    # Two copies until published: every confirmed chunk stays here, recorded for this main.
    assert site.local_chunks() == sorted([*expected, site.relative(foreign)])
    assert result.kept == len(expected) and result.deleted == []
    assert site.ledger() == {"main": site.label,
                             "chunks": {name: stamp(site.data / name) for name in expected}}
    assert open_chunk.exists() and stray.exists()
    assert (state_dir / "stream_status.json").exists()
    assert notifier.alerts == []
    state = site.state()
    assert state["consecutive_failures"] == 0
    assert state["last_success_files"] == len(expected)
    assert state["last_success_bytes"] == result.bytes_sent
    assert state["last_success_at"]

    # A second run has nothing new: it does not even connect, and changes nothing.
    again = send(site.settings, notifier)
    assert again.sent == [] and again.rsync_runs == 0 and again.kept == len(expected)
    assert site.remote_files() == expected and site.local_chunks() == sorted(
        [*expected, site.relative(foreign)])


@both_rsyncs
def test_retention_deletes_a_confirmed_chunk_only_once_its_hour_is_past_retention(
        site: Site) -> None:
    first_hour = [site.chunk(minute) for minute in (0, 59)]  # BASE's hour
    second_hour = [site.chunk(60)]
    send(site.settings, RecordingNotifier())
    end_of_first = BASE + timedelta(hours=1)

    # A second before the first hour is past retention: nothing goes.
    early = send(site.settings, RecordingNotifier(), now=end_of_first + RETENTION
                 - timedelta(seconds=1))
    assert early.deleted == [] and all(path.exists() for path in first_hour)

    late = send(site.settings, RecordingNotifier(), now=end_of_first + RETENTION)
    assert late.deleted == sorted(site.relative(path) for path in first_hour)
    assert late.rsync_runs == 0  # retention needs no connection: the ledger says it all
    assert not any(path.exists() for path in first_hour)
    assert not first_hour[0].parent.exists()  # the emptied hour folder is pruned
    assert all(path.exists() for path in second_hour) and late.kept == 1
    assert sorted(site.ledger()["chunks"]) == [site.relative(second_hour[0])]  # type: ignore[call-overload]
    # Only the local copy goes: the main's retention decides about its own.
    assert sorted(site.remote_files()) == sorted(site.relative(p)
                                                 for p in [*first_hour, *second_hour])


def test_retention_never_deletes_what_the_current_main_did_not_confirm(
        site: Site, tmp_path: Path) -> None:
    confirmed = site.chunk(0)
    send(site.settings, RecordingNotifier())
    never_sent = site.chunk(1)
    site.main.stop()
    far_future = datetime.now(UTC) + timedelta(days=30)

    with pytest.raises(RemoteError):
        send(site.settings, RecordingNotifier(), now=far_future, connect_timeout=2)
    assert never_sent.exists()  # the main never confirmed it
    assert not confirmed.exists()  # an earlier run did, and its hour is past retention

    # A ledger recorded for another main counts for nothing: kept, offered to this main.
    other = site.chunk(2)
    ledger = site.data / ".collector" / LEDGER_FILE
    ledger.write_text(json.dumps({"main": "someone@elsewhere:22",
                                  "chunks": {site.relative(other): list(stamp(other))}}))
    with pytest.raises(RemoteError, match=r"; 2 chunks kept here$"):
        send(site.settings, RecordingNotifier(), now=far_future, connect_timeout=2)
    assert other.exists() and never_sent.exists()


def test_a_new_main_gets_every_kept_chunk_again(
        site: Site, push_user: str, tmp_path: Path, write_settings: SettingsWriter) -> None:
    """After a promotion the secondary's kept chunks are its contribution to the new main."""
    chunks = [site.chunk(minute) for minute in (0, 1, 60)]
    send(site.settings, RecordingNotifier())
    new_main = MainSshd(push_user)
    try:
        secondary = new_main.add_secondary(SERVER, tmp_path / "ssh-new")
        new_main.start()
        promoted = Site(new_main, secondary, write_settings, tmp_path)
        already = site.relative(chunks[0])  # adopted from the replica the new main held
        promoted.put_on_main(already, chunks[0].read_bytes())

        result = send(promoted.settings, RecordingNotifier())

        assert result.already_on_main == [already]
        assert sorted(result.sent) == sorted(site.relative(p) for p in chunks[1:])
        assert promoted.remote_files() == {site.relative(p): p.read_bytes() for p in chunks}
        assert all(path.exists() for path in chunks)
        assert promoted.ledger()["main"] == promoted.label
        assert sorted(promoted.ledger()["chunks"]) == sorted(  # type: ignore[call-overload]
            site.relative(p) for p in chunks)
    finally:
        new_main.cleanup()


def test_send_prunes_this_hosts_replica_store_by_the_replicated_ledger(
        write_settings: SettingsWriter, tmp_path: Path) -> None:
    """Replica chunks of hours past retention that the main merged (or pruned) go; the vault
    copy and everything the ledger does not vouch for stay. No connection needed."""
    replica = tmp_path / "replica"
    settings = load_settings(write_settings(main_port="9", replica_dst=str(replica),
                                            timezone="UTC"))
    old = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)

    def held(server: str, moment: datetime, content: bytes = b"{}\n") -> Path:
        path = chunk_path(replica / "chunks" / server, server, moment, settings.timezone)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    merged = held("srv0", old)
    unmerged = held("srv0", old + timedelta(minutes=1))  # the ledger does not list it
    pruned_hour = held("srv9", old + timedelta(hours=1))
    recent = held("srv0", BASE)
    vault = replica / "vault" / "2026-01-01" / "2026-01-01_09_IDs.txt.xz"
    vault.parent.mkdir(parents=True)
    vault.write_bytes(b"ids")
    (replica / "state").mkdir()
    (replica / "state" / "process_ledger.json").write_bytes(orjson.dumps({"version": 1, "hours": {
        "2026-01-01T09": {"chunks": {f"srv0/{merged.name}": 3}, "processed_at": "x"},
        "2026-01-01T10": {"pruned": True},
        f"{BASE:%Y-%m-%dT%H}": {"chunks": {f"srv0/{recent.name}": 3}, "processed_at": "x"},
    }}))

    result = send(settings, RecordingNotifier())

    assert result.rsync_runs == 0 and result.replica_pruned == 2
    assert not merged.exists() and not pruned_hour.exists()
    assert not pruned_hour.parent.exists()  # its emptied hour folder too
    assert unmerged.exists() and recent.exists() and vault.read_bytes() == b"ids"


def test_chunk_on_the_main_is_never_half_visible(site: Site) -> None:
    """A slow push of a big chunk: the main shows only rsync's dot-file until it is whole."""
    big = site.chunk(0, lines=3000)  # ~3 MB
    big_bytes = big.read_bytes()
    assert len(big_bytes) > 2_000_000
    part = site.chunk(1, lines=1, part=True)  # the stream writes this one during the push
    stop = threading.Event()

    def keep_writing() -> None:
        with part.open("ab") as handle:
            while not stop.is_set():
                handle.write(site._line())
                handle.flush()
                time.sleep(0.01)

    seen_names: set[str] = set()
    bad: list[str] = []

    def watch_main() -> None:
        while not stop.is_set():
            for path in site.incoming.rglob("*"):
                if not path.is_file():
                    continue
                seen_names.add(path.name)
                if CHUNK_NAME.match(path.name):
                    try:
                        data = path.read_bytes()
                    except FileNotFoundError:
                        continue
                    if data != big_bytes:
                        bad.append(f"{path.name}: {len(data)} of {len(big_bytes)} bytes")
            time.sleep(0.005)

    threads = [threading.Thread(target=keep_writing), threading.Thread(target=watch_main)]
    for thread in threads:
        thread.start()
    try:
        result = send(site.settings, RecordingNotifier(), bwlimit_kbps=1500)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert bad == []
    assert result.sent == [site.relative(big)]
    temp_names = {name for name in seen_names if name.startswith(f".{big.name}.")}
    assert temp_names, f"the transfer was too fast to observe: {seen_names}"
    assert not any(CHUNK_NAME.match(name) for name in temp_names)
    assert site.remote_files() == {site.relative(big): big_bytes}  # the .part was not sent

    # Once closed, the chunk the stream was writing goes whole on the next run.
    closed = part.with_name(part.name[: -len(PART_SUFFIX)])
    part.rename(closed)
    closed_bytes = closed.read_bytes()
    send(site.settings, RecordingNotifier())
    assert site.remote_files()[site.relative(closed)] == closed_bytes
    assert closed.exists() and site.relative(closed) in site.ledger()["chunks"]  # type: ignore[operator]


# ---- failures -----------------------------------------------------------------------------


def test_main_unreachable_three_runs_then_back_every_chunk_arrives_once(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.main.stop()
    expected: dict[str, bytes] = {}
    for run in range(1, 4):
        for minute in (run * 10, run * 10 + 1):  # the stream keeps producing meanwhile
            path = site.chunk(minute)
            expected[site.relative(path)] = path.read_bytes()
        code, err = run_cli(capsys, site.settings_path, "send")
        assert code == 1
        assert error_lines(err, "send") == [
            f"collector send: error: cannot push to the main {site.main.user}@127.0.0.1:"
            f"{site.main.port}: connection refused (is sshd running on the main, and is "
            f"main_port right?); {len(expected)} chunks kept here"]
        assert "Traceback" not in err
        assert ("ALERT send_failing" in err) == (run == 3)
        assert site.local_chunks() == sorted(expected)
        state = site.state()
        assert state["consecutive_failures"] == run
        assert state["last_success_at"] == ""

    site.main.start()
    code, err = run_cli(capsys, site.settings_path, "send")
    assert code == 0, err
    assert "works again after 3 failed runs" in err
    assert site.remote_files() == expected  # each exactly once, no temp files left over
    assert site.local_chunks() == sorted(expected)  # kept, now confirmed
    assert sorted(site.ledger()["chunks"]) == sorted(expected)  # type: ignore[call-overload]
    state = site.state()
    assert state["consecutive_failures"] == 0 and state["last_error"] == ""
    assert state["last_success_files"] == len(expected)

    # The library alerts on the 3rd failure in a row, then once per REALERT_EVERY runs.
    site.main.stop()
    site.chunk(100)
    notifier = RecordingNotifier()
    for _ in range(3):
        with pytest.raises(RemoteError):
            send(site.settings, notifier, connect_timeout=2)
    assert [kind for kind, _, _ in notifier.alerts] == ["send_failing"]
    assert "3 runs in a row: connection refused" in notifier.alerts[0][1]


def test_refused_key_is_one_line_and_records_nothing(
        main_sshd: MainSshd, write_settings: SettingsWriter, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    secondary = main_sshd.add_secondary(SERVER, tmp_path / "ssh")
    main_sshd.start()
    rogue = tmp_path / "rogue" / "id_ed25519"
    rogue.parent.mkdir()
    generate_key(rogue)
    site = Site(main_sshd, secondary, write_settings, tmp_path, ssh_identity_file=str(rogue))
    chunks = [site.chunk(0), site.chunk(1)]
    code, err = run_cli(capsys, site.settings_path, "send")
    assert code == 1
    assert error_lines(err, "send") == [
        f"collector send: error: cannot push to the main {main_sshd.user}@127.0.0.1:"
        f"{main_sshd.port}: the main refused this host's SSH key (is it in the main's "
        "authorized_keys?); 2 chunks kept here"]
    assert all(path.exists() for path in chunks)
    assert site.remote_files() == {}
    assert site.state()["consecutive_failures"] == 1
    assert not (site.data / ".collector" / LEDGER_FILE).exists()


@pytest.mark.parametrize(("known_hosts", "explanation"), [
    ("other-key", "the main's host key does not match the pinned known_hosts (main reinstalled,"
                  " or someone else answers at that address); not connecting"),
    ("empty", "the main's host key is not in known_hosts; pin it first (not connecting "
              "blindly)"),
])
def test_host_key_mismatch_is_one_line_and_records_nothing(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str], known_hosts: str,
        explanation: str) -> None:
    pinned = tmp_path / "ssh" / "known_hosts"
    if known_hosts == "empty":
        pinned.write_text("")
    else:
        impostor = generate_key(tmp_path / "impostor_host_key").split()
        pinned.write_text(f"[127.0.0.1]:{site.main.port} {impostor[0]} {impostor[1]}\n")
    chunk = site.chunk(0)
    code, err = run_cli(capsys, site.settings_path, "send")
    assert code == 1
    assert error_lines(err, "send") == [
        f"collector send: error: cannot push to the main {site.main.user}@127.0.0.1:"
        f"{site.main.port}: {explanation}; 1 chunks kept here"]
    assert chunk.exists() and site.remote_files() == {}


def test_run_timeout_stops_the_push_and_keeps_the_chunk(site: Site) -> None:
    big = site.chunk(0, lines=3000)
    # Random text compresses as little as the real stream's varied tweets (the sample pool
    # repeats itself, and rsync compresses on the wire), so the bandwidth limit bites.
    big.write_bytes(big.read_bytes() + b"".join(
        orjson.dumps({"data": {"id": "1", "text": os.urandom(600).hex()}}) + b"\n"
        for _ in range(2000)))
    data = big.read_bytes()
    started = time.monotonic()
    with pytest.raises(RemoteError, match=r"the push did not finish within 1\.5 s; "
                                          r"1 chunks kept here$"):
        send(site.settings, RecordingNotifier(), run_timeout=1.5, bwlimit_kbps=300)
    assert time.monotonic() - started < 10
    assert big.read_bytes() == data
    # The receiver drops its temporary file when the connection dies; never a chunk name.
    deadline = time.monotonic() + 10
    while site.remote_files() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert site.remote_files() == {}
    send(site.settings, RecordingNotifier())
    assert site.remote_files() == {site.relative(big): data}


# ---- confirmed only once durable on the main --------------------------------------------


@both_rsyncs
def test_receiver_failing_after_a_complete_rsync_confirms_nothing(
        main_sshd: MainSshd, write_settings: SettingsWriter, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """rrsync wrote every chunk, then the main could not sync: the session must count as failed.

    The forced command is a test-only script that runs the real rrsync and then exits 1 with
    the receiver's failure line, as `collector receive` does when syncfs reports an error.
    """
    secondary = main_sshd.add_secondary(SERVER, tmp_path / "ssh",
                                        main_sshd.receiver_failing_after_rrsync())
    main_sshd.start()
    site = Site(main_sshd, secondary, write_settings, tmp_path)
    chunks = [site.chunk(minute) for minute in (0, 1, 60)]
    expected = {site.relative(path): path.read_bytes() for path in chunks}

    code, err = run_cli(capsys, site.settings_path, "send")

    assert code == 1
    assert error_lines(err, "send") == [
        f"collector send: error: cannot push to the main {main_sshd.user}@127.0.0.1:"
        f"{main_sshd.port}: the main's receiver failed: cannot make the push durable: "
        f"syncfs({site.incoming}) failed: Input/output error; 3 chunks kept here"]
    assert "Traceback" not in err
    assert site.remote_files() == expected  # the transfer itself was complete...
    assert not (site.data / ".collector" / LEDGER_FILE).exists()  # ...and nothing counts
    # as confirmed: retention, however late, deletes nothing.
    far_future = datetime.now(UTC) + timedelta(days=30)
    with pytest.raises(RemoteError):
        send(site.settings, RecordingNotifier(), now=far_future)
    assert site.local_chunks() == sorted(expected)
    assert site.state()["consecutive_failures"] == 2

    # Once the main syncs again, the next run confirms the copies it already holds.
    main_sshd.set_forced_command(SERVER, None)
    result = send(site.settings, RecordingNotifier())
    assert result.sent == [] and sorted(result.already_on_main) == sorted(expected)
    assert site.local_chunks() == sorted(expected) and site.remote_files() == expected
    assert sorted(site.ledger()["chunks"]) == sorted(expected)  # type: ignore[call-overload]
    assert site.state()["consecutive_failures"] == 0


@both_rsyncs
def test_verify_pass_failing_keeps_chunks_that_already_reached_the_main(
        main_sshd: MainSshd, write_settings: SettingsWriter, tmp_path: Path) -> None:
    """Pass 1 succeeds (synced), the comparing pass fails: nothing is confirmed before it
    passes."""
    fails_on_verify = main_sshd.root / "bin" / "fail-on-verify"
    fails_on_verify.write_text(
        "#!/bin/sh\n"
        'case "$SSH_ORIGINAL_COMMAND" in *" --existing "*) '
        'echo "collector receive: error: test refuses the comparing pass" >&2; exit 5;; esac\n'
        f'exec {main_sshd.collector_bin} receive "$1"\n')
    fails_on_verify.chmod(0o755)
    secondary = main_sshd.add_secondary(SERVER, tmp_path / "ssh", fails_on_verify)
    main_sshd.start()
    site = Site(main_sshd, secondary, write_settings, tmp_path)
    chunks = [site.chunk(minute) for minute in (0, 1)]
    expected = {site.relative(path): path.read_bytes() for path in chunks}

    with pytest.raises(RemoteError, match=r": the main's receiver failed: test refuses the "
                                          r"comparing pass; 2 chunks kept here \(2 reached the "
                                          r"main and are confirmed by a later run\)$"):
        send(site.settings, RecordingNotifier())
    assert site.remote_files() == expected
    assert site.local_chunks() == sorted(expected)
    assert not (site.data / ".collector" / LEDGER_FILE).exists()

    main_sshd.set_forced_command(SERVER, None)
    result = send(site.settings, RecordingNotifier())
    assert sorted(result.already_on_main) == sorted(expected)
    assert site.local_chunks() == sorted(expected) and result.kept == 2


# ---- same name on both sides --------------------------------------------------------------


@both_rsyncs
def test_identical_copy_on_main_is_confirmed_different_copy_is_kept_on_both_sides(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    already = site.chunk(0)   # a previous run delivered it but was cut off before confirming
    clash = site.chunk(1)     # same name, other content on the main
    fresh = site.chunk(2)
    for path, content in ((already, already.read_bytes()), (clash, b'{"other": 1}\n')):
        site.put_on_main(site.relative(path), content)
    clash_local = clash.read_bytes()
    expected_on_main = {site.relative(already): already.read_bytes(),
                        site.relative(clash): b'{"other": 1}\n',  # never overwritten
                        site.relative(fresh): fresh.read_bytes()}

    code, err = run_cli(capsys, site.settings_path, "send")

    assert code == 1
    assert error_lines(err, "send") == [
        f"collector send: error: 1 chunks exist on the main {site.main.user}@127.0.0.1:"
        f"{site.main.port} with other content and were kept here (e.g. "
        f"{site.relative(clash)}); the others were sent"]
    assert "ALERT send_conflict" in err
    assert site.remote_files() == expected_on_main
    assert site.local_chunks() == sorted(expected_on_main)  # every one kept here
    assert sorted(site.ledger()["chunks"]) == sorted(  # type: ignore[call-overload]
        [site.relative(already), site.relative(fresh)])  # the clash is not confirmed
    assert clash.read_bytes() == clash_local
    state = site.state()
    assert state["conflicts"] == [site.relative(clash)]
    assert state["consecutive_failures"] == 0  # the main was reachable

    with pytest.raises(SendConflictError) as caught:
        send(site.settings, RecordingNotifier())
    assert caught.value.result.conflicts == [site.relative(clash)]


# ---- the confined key -------------------------------------------------------------------------


def test_confined_key_cannot_run_commands_leave_its_folder_or_read(
        site: Site, tmp_path: Path) -> None:
    settings = site.settings
    ssh = ["ssh", "-p", str(site.main.port), "-i", str(settings.ssh_identity_file),
           "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
           "-o", f"UserKnownHostsFile={settings.ssh_known_hosts_file}"]
    destination = site.main.destination
    probe = tmp_path / "probe.txt"
    probe.write_text("probe\n")
    outside_before = sorted(str(p) for p in site.main.root.rglob("*"))

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)

    shell = run(*ssh, destination, "id")
    assert shell.returncode != 0 and "does not run rsync" in shell.stderr
    assert "uid=" not in shell.stdout

    rsync_e = ["-e", " ".join(ssh)]
    escape = run("rsync", *rsync_e, str(probe), f"{destination}:../")
    assert escape.returncode != 0 and "do not use .. in arg" in escape.stderr

    read = run("rsync", *rsync_e, f"{destination}:", str(tmp_path / "pulled"))
    assert read.returncode != 0 and "reading from write-only server is not allowed" in read.stderr

    forward = run(*ssh, "-W", f"127.0.0.1:{site.main.port}", destination)
    assert forward.returncode != 0 and "prohibited" in forward.stderr

    # An absolute path is re-anchored inside the folder, never outside it.
    absolute = run("rsync", *rsync_e, str(probe), f"{destination}:/etc/")
    assert absolute.returncode == 0, absolute.stderr
    assert (site.incoming / "etc" / "probe.txt").read_text() == "probe\n"
    outside_after = sorted(str(p) for p in site.main.root.rglob("*")
                           if not p.is_relative_to(site.incoming))
    assert outside_after == [p for p in outside_before if not Path(p).is_relative_to(
        site.incoming)]
    assert not Path("/etc/probe.txt").exists()


# ---- the command ------------------------------------------------------------------------------


def test_cli_as_a_real_process(site: Site) -> None:
    chunk = site.chunk(0)
    data = chunk.read_bytes()
    process = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "collector"), "--settings", str(site.settings_path),
         "send"], capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr
    assert re.search(r"send to \S+ done: 1 chunks sent \(\d+ bytes\), 0 already on the main",
                     process.stderr)
    assert site.remote_files() == {site.relative(chunk): data}
    assert chunk.exists() and site.relative(chunk) in site.ledger()["chunks"]  # type: ignore[operator]


def test_send_on_the_main_is_refused_with_one_line(
        write_settings: SettingsWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_settings(role="main", main_host=None, main_user=None, osf_enabled="False",
                          data_vault_dst=str(tmp_path / "vault"),
                          incoming_dst=str(tmp_path / "incoming"))
    code = cli_main(["--settings", str(path), "send"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"collector send: error: {path}: role=main: send runs on secondaries only "
        "(the main processes its own chunks in place)")


def test_nothing_to_send_does_not_connect(write_settings: SettingsWriter, tmp_path: Path) -> None:
    path = write_settings(main_port="9")  # nothing listens there: connecting would fail
    result = send(load_settings(path), RecordingNotifier())
    assert result.sent == [] and result.rsync_runs == 0


def test_second_send_while_one_runs_is_refused(write_settings: SettingsWriter,
                                               tmp_path: Path) -> None:
    settings = load_settings(write_settings())
    settings.state_dir.mkdir(parents=True)
    with (settings.state_dir / LOCK_FILE).open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LockedError, match="another collector send is running"):
            send(settings, RecordingNotifier())


def test_missing_identity_file_is_a_credentials_error(
        write_settings: SettingsWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_settings(ssh_identity_file=str(tmp_path / "nope"))
    assert cli_main(["--settings", str(path), "send"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"collector send: error: ssh_identity_file {tmp_path / 'nope'} does not exist or is "
        "not readable by this user")


# ---- pure pieces ------------------------------------------------------------------------------


def test_authorized_keys_line_is_the_restricted_receive_line() -> None:
    """The exact text roles/collector/templates/authorized_keys.j2 must render too."""
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample root@secondary-1"
    assert authorized_keys_line(Path("/srv/incoming"), "srv1", key) == (
        'restrict,command="/opt/collector/venv/bin/collector receive /srv/incoming/srv1" '
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample srv1")
    assert authorized_keys_line(Path("/srv/incoming"), "srv1", key,
                                collector_bin=Path("/usr/local/bin/collector")) == (
        'restrict,command="/usr/local/bin/collector receive /srv/incoming/srv1" '
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample srv1")
    assert authorized_keys_line(Path("/srv/incoming"), "srv1", key, ("10.0.0.2",)).startswith(
        'restrict,from="10.0.0.2",command=')
    for bad_bin in (Path("collector"), Path("/opt/my venv/collector"), Path('/opt/"x')):
        with pytest.raises(ValueError):
            authorized_keys_line(Path("/srv/incoming"), "srv1", key, collector_bin=bad_bin)
    for bad_id in ("..", "a/b", ""):
        with pytest.raises(ValueError):
            authorized_keys_line(Path("/srv/incoming"), bad_id, key)
    with pytest.raises(ValueError):
        authorized_keys_line(Path("/srv/in coming"), "srv1", key)
    with pytest.raises(ValueError):
        authorized_keys_line(Path("/srv/incoming"), "srv1", "not a key")


def test_rsync_temp_names_never_look_like_chunks() -> None:
    """rsync's receiver writes `.<name>.XXXXXX` (mkstemp) next to the final file."""
    name = "srv1_2026-01-01_10-00.jsonl"
    for temp in (f".{name}.AbC123", f".{name}.zzzzzz"):
        assert CHUNK_NAME.match(temp) is None
    assert CHUNK_NAME.match(name)


def test_describe_failure_prefers_the_specific_cause() -> None:
    assert describe_failure(12, "/usr/bin/rrsync error: option --foo has been disabled on "
                                "this server.\nrsync: connection unexpectedly closed", 120) == (
        "the main's rrsync refused the push: option --foo has been disabled on this server.")
    assert describe_failure(30, "rsync error: timeout in data send/receive (code 30)", 60) == (
        "no data moved for 60 s (stalled link or hung main)")
    assert describe_failure(11, "rsync: [receiver] write failed on \"x\": No space left on "
                                "device (28)", 60) == "the main's disk is full"
    assert describe_failure(5, "", 60) == "rsync failed with exit code 5: no message"


def test_unreadable_state_reads_as_never_ran(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    path.write_text("{not json")
    assert load_send_state(path).consecutive_failures == 0
    assert load_send_state(tmp_path / "missing.json").last_success_at == ""


def test_send_refuses_paths_that_ssh_would_split(write_settings: SettingsWriter,
                                                 tmp_path: Path) -> None:
    odd = tmp_path / "my keys" / "id"
    odd.parent.mkdir()
    odd.write_text("x")
    settings = load_settings(write_settings(ssh_identity_file=str(odd)))
    with pytest.raises(SettingsError, match="ssh_identity_file must not contain spaces"):
        send(settings, RecordingNotifier())


def test_state_dir_is_never_listed(write_settings: SettingsWriter, tmp_path: Path) -> None:
    """Even a chunk-named file inside `.collector/` is not a chunk to send."""
    settings = load_settings(write_settings())
    hidden = settings.state_dir / "2026-01-01" / "10" / "srv1_2026-01-01_10-00.jsonl"
    hidden.parent.mkdir(parents=True)
    hidden.write_text("{}\n")
    result = send(settings, RecordingNotifier())
    assert result.rsync_runs == 0 and result.sent == [] and hidden.exists()
