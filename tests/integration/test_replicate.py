"""`collector replicate` against real sshd + rrsync replica hosts on loopback.

Each replica host is an sshd of its own (`ReplicaHost`), set up as the role sets up every
secondary for the main's key: one root-owned authorized_keys line forcing
`collector receive <replica_dst>` (rendered by `collector.replicate.
replica_authorized_keys_line`), `replica_dst/{chunks,vault,state}` owned by the receiving
account. The main is a settings file with real folders; the real ssh and rsync do the rest,
so these tests also prove that `rrsync -wo -munge -no-del` accepts every option replicate
uses, and what a run costs (sessions and bytes, asserted exactly).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from collector.cli import main as cli_main
from collector.errors import LockedError, RemoteError, SettingsError
from collector.layout import PART_SUFFIX, chunk_path
from collector.settings import Settings, load_settings
from collector.transfer.replicate import (
    LOCK_FILE,
    STATE_FILE,
    ReplicateResult,
    replica_authorized_keys_line,
    replicate,
    target_ledger_path,
)
from tests.conftest import SettingsWriter
from tests.integration.helpers import RecordingNotifier, error_lines, run_cli
from tests.integration.sshd_fixture import (
    FLAVORS,
    MainSshd,
    generate_key,
    put_client_rsync_first,
    rsync_flavor,
)

pytestmark = pytest.mark.integration

MAIN_ID = "srv1"
DEPARTED = "srv9"
# Recent enough that nothing is past raw_retention_days (7), old enough to be closed.
BASE = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
DAY = BASE.strftime("%Y-%m-%d")


class ReplicaHost(MainSshd):
    """A secondary as the main's replication sees it: sshd, the main's confined key, and
    `replica_dst` with the three folders the role creates."""

    def __init__(self, user: str, server_id: str, flavor: str = "system") -> None:
        super().__init__(user, flavor)
        self.server_id = server_id
        self.replica_dst = self.root / "replica"
        for folder in (self.replica_dst, *(self.replica_dst / name
                                           for name in ("chunks", "vault", "state"))):
            folder.mkdir(mode=0o750)
            shutil.chown(folder, user, user)

    def authorize_main(self, public: str, forced_command: Path | None = None) -> None:
        self._keys[MAIN_ID] = (public, forced_command)
        self._write_authorized_keys()

    def authorized_line(self, server_id: str) -> str:
        public, forced_command = self._keys[server_id]
        if forced_command is None:
            return replica_authorized_keys_line(self.replica_dst, server_id, public,
                                                collector_bin=self.collector_bin)
        key_type, key_data = public.split()[:2]
        return (f'restrict,command="{forced_command} {self.replica_dst}" '
                f"{key_type} {key_data} {server_id}")

    def files(self) -> dict[str, bytes]:
        """Every file under replica_dst (hidden ones too), never following a link."""
        found = {}
        for directory, _, names in os.walk(self.replica_dst):
            for name in names:
                path = Path(directory) / name
                found[path.relative_to(self.replica_dst).as_posix()] = (
                    path.read_bytes() if path.is_file() and not path.is_symlink()
                    else b"<not a regular file>")
        return dict(sorted(found.items()))

    @property
    def label(self) -> str:
        return f"{self.server_id}@127.0.0.1:{self.port}"


@pytest.fixture
def flavor(request: pytest.FixtureRequest) -> str:
    """Which rsync both ends run ("debian12": the lab hosts' 3.2.7), parametrize indirectly."""
    return rsync_flavor(request)


both_rsyncs = pytest.mark.parametrize("flavor", FLAVORS, indirect=True)


@pytest.fixture
def hosts(push_user: str, flavor: str, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[list[ReplicaHost]]:
    made = [ReplicaHost(push_user, "srv2", flavor), ReplicaHost(push_user, "srv3", flavor)]
    put_client_rsync_first(monkeypatch, made[0])  # the main runs the flavor's rsync too
    try:
        yield made
    finally:
        for host in made:
            host.cleanup()


class Main:
    """The main: its folders, its key on every replica host, its settings."""

    def __init__(self, hosts: list[ReplicaHost], write_settings: SettingsWriter, tmp_path: Path,
                 push_user: str, **overrides: str | None) -> None:
        self.hosts = hosts
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        self.vault = tmp_path / "vault"
        self.incoming = tmp_path / "incoming"
        for folder in (self.data, self.vault, self.incoming):
            folder.mkdir(exist_ok=True)
        ssh = tmp_path / "ssh"
        ssh.mkdir(exist_ok=True)
        self.identity = ssh / "id_ed25519_replicate"
        public = generate_key(self.identity)
        for host in hosts:
            host.authorize_main(public)
        self.known_hosts = ssh / "known_hosts"
        self.known_hosts.write_text("".join(host.known_hosts_line() for host in hosts))
        for host in hosts:
            host.start()
        values: dict[str, str | None] = {
            "role": "main", "server_id": MAIN_ID, "servers": "srv1,srv2,srv3",
            "main_host": None, "main_user": None, "osf_enabled": "False", "timezone": "UTC",
            "data_storage_dst": str(self.data), "data_vault_dst": str(self.vault),
            "incoming_dst": str(self.incoming), "username": push_user,
            "ssh_identity_file": str(self.identity),
            "ssh_known_hosts_file": str(self.known_hosts),
            "replicas": ",".join(f"{host.server_id}@127.0.0.1:{host.port}" for host in hosts),
        }
        values.update(overrides)
        self.settings_path = write_settings(**values)
        self.serial = 0

    @property
    def settings(self) -> Settings:
        return load_settings(self.settings_path)

    @property
    def state_dir(self) -> Path:
        return self.data / ".collector"

    def chunk(self, minute: int, server: str = MAIN_ID, root: Path | None = None,
              lines: int = 3, suffix: str = "") -> Path:
        """A chunk of `server` for minute `minute` after BASE, under `root` (own data)."""
        path = chunk_path(root or self.data, server, BASE + timedelta(minutes=minute),
                          self.settings.timezone)
        path = path.with_name(path.name + suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = b"".join(orjson.dumps({"data": {"id": str(self.serial + n)}}) + b"\n"
                        for n in range(lines))
        self.serial += lines
        path.write_bytes(body)
        when = (BASE + timedelta(minutes=minute + 1)).timestamp()
        os.utime(path, (when, when))
        return path

    def vault_file(self, relative: str, content: bytes) -> Path:
        path = self.vault / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def write_ledger(self, hours: dict[str, object]) -> bytes:
        data = orjson.dumps({"version": 1, "hours": hours}, option=orjson.OPT_SORT_KEYS)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "process_ledger.json").write_bytes(data)
        return data

    def listing(self) -> dict[str, str]:
        """Everything the main holds outside its state folder: type, checksum, mtime."""
        found = {}
        for top in (self.data, self.vault, self.incoming):
            for directory, subdirs, names in os.walk(top):
                here = Path(directory)
                subdirs[:] = [d for d in subdirs if here / d != self.state_dir]
                for name in [*subdirs, *names]:
                    path = here / name
                    info = path.lstat()
                    kind = stat.filemode(info.st_mode)
                    if stat.S_ISREG(info.st_mode):
                        kind += " " + hashlib.sha256(path.read_bytes()).hexdigest()
                        kind += f" {info.st_mtime_ns}"
                    elif stat.S_ISLNK(info.st_mode):
                        kind += " -> " + os.readlink(path)
                    found[str(path.relative_to(self.tmp))] = kind
        return found

    def run(self, notifier: RecordingNotifier | None = None, **kwargs: object) -> ReplicateResult:
        return replicate(self.settings, notifier or RecordingNotifier(), **kwargs)  # type: ignore[arg-type]

    def state(self) -> dict[str, dict[str, object]]:
        raw = orjson.loads((self.state_dir / STATE_FILE).read_bytes())
        return raw["targets"]  # type: ignore[no-any-return]

    def target_ledger(self, server_id: str) -> dict[str, object]:
        return orjson.loads(target_ledger_path(self.state_dir, server_id).read_bytes())  # type: ignore[no-any-return]


@pytest.fixture
def main(hosts: list[ReplicaHost], write_settings: SettingsWriter, tmp_path: Path,
         push_user: str) -> Main:
    return Main(hosts, write_settings, tmp_path, push_user)


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def populate(main: Main) -> dict[str, bytes]:
    """The main's trees with everything a replica must and must not get; what it must."""
    expected: dict[str, bytes] = {}
    own = [main.chunk(minute) for minute in (0, 1, 59, 60, 61)]
    for path in own:
        expected[f"chunks/{MAIN_ID}/{relative(path, main.data)}"] = path.read_bytes()
    main.chunk(62, suffix=PART_SUFFIX)  # the stream's open chunk
    (own[0].parent / "notes.txt").write_text("the operator's\n")
    main.chunk(2, server="srv2")  # named for another server: process quarantines it
    (main.data / ".quarantine" / MAIN_ID).mkdir(parents=True)
    (main.data / ".quarantine" / MAIN_ID / "x.jsonl.20260101T000000Z").write_text("{}\n")
    departed = main.incoming / DEPARTED
    for minute in (5, 65):
        path = main.chunk(minute, server=DEPARTED, root=departed)
        expected[f"chunks/{DEPARTED}/{relative(path, departed)}"] = path.read_bytes()
    link = departed / DAY / f"{BASE:%H}" / f"{DEPARTED}_{DAY}_{BASE:%H}-30.jsonl"
    os.symlink("/etc/passwd", link)
    main.chunk(7, server="srv2", root=main.incoming / "srv2")  # a current secondary: not ours
    hour = f"{BASE:%H}"
    for name, content in ((f"{DAY}_{hour}_IDs.txt.xz", b"ids"),
                          (f"{DAY}_{hour}_tweets.csv.xz", b"tweets"),
                          (f"{DAY}_{hour}_users.csv.xz", b"users"),
                          (f"{DAY}_report.txt", b"hour\tsrv1\n")):
        main.vault_file(f"{DAY}/{name}", content)
        expected[f"vault/{DAY}/{name}"] = content
    main.vault_file(".collector/osf_ledger.json", b"{}")
    main.vault_file(f"{DAY}/.coverage/{DAY}_{hour}.json", b"{}")
    main.vault_file(f"{DAY}/.{DAY}_{hour}_IDs.txt.xz.tmp-123", b"half")
    main.vault_file("notes.txt", b"not a day")
    os.symlink("/etc/passwd", main.vault / DAY / "passwd")
    ledger = main.write_ledger({f"{DAY}T{hour}": {"chunks": {}, "processed_at": "x"}})
    expected["state/process_ledger.json"] = ledger
    return expected


# ---- the happy path ---------------------------------------------------------------------------


@both_rsyncs
def test_everything_only_the_main_holds_lands_on_every_replica_host(main: Main) -> None:
    expected = populate(main)
    ledger_path = main.state_dir / "process_ledger.json"
    day_ago = time.time() - 86400
    os.utime(ledger_path, (day_ago, day_ago))
    before = main.listing()

    result = main.run()

    assert main.listing() == before  # nothing on the main changed, nothing deleted
    assert (result.chunks, result.vault_files, result.ledger_bytes) == (
        7, 4, len(expected["state/process_ledger.json"]))
    own_chunk = next(name for name in expected if name.startswith(f"chunks/{MAIN_ID}/"))
    for host, outcome in zip(main.hosts, result.targets, strict=True):
        assert host.files() == expected
        assert outcome.error == "" and outcome.ledger_sent
        assert len(outcome.sent) == 7 and outcome.already_there == []
        assert outcome.vault_sent == sorted(name[len("vault/"):] for name in expected
                                            if name.startswith("vault/"))
        # own: push + verify, departed: push + verify, the vault, the ledger
        assert outcome.rsync_runs == 6
        assert outcome.bytes_sent == sum(len(data) for data in expected.values())
        assert outcome.waiting == 0
        # Chunks and vault files keep their mtime; the ledger gets the time it landed.
        replica = host.replica_dst
        main_chunk = main.data / own_chunk.split("/", 2)[2]
        assert (replica / own_chunk).stat().st_mtime == main_chunk.stat().st_mtime
        assert abs((replica / "state/process_ledger.json").stat().st_mtime - time.time()) < 60
        record = main.target_ledger(host.server_id)
        assert record["target"] == host.label
        assert sorted(record["chunks"]) == sorted(  # type: ignore[call-overload]
            name[len("chunks/"):] for name in expected if name.startswith("chunks/"))
    state = main.state()
    assert sorted(state) == ["srv2", "srv3"]
    for host in main.hosts:
        entry = state[host.server_id]
        assert entry["label"] == host.label and entry["consecutive_failures"] == 0
        assert entry["last_success_at"] and entry["chunks_waiting"] == 0
        assert entry["last_files"] == 7 + 4 + 1
    assert not any(p.name.startswith("replicate-snapshot-") for p in main.state_dir.iterdir())


def test_later_runs_send_only_what_is_new_or_changed(main: Main) -> None:
    """Sessions and bytes of each run, exactly: the cost a steady hourly run has."""
    expected = populate(main)
    main.run()

    quiet = main.run()
    for outcome in quiet.targets:
        assert (outcome.sent, outcome.vault_sent, outcome.ledger_sent) == ([], [], True)
        # pass 1 over the own and the departed tree (no pass 2: nothing new), vault, ledger
        assert outcome.rsync_runs == 4
        assert outcome.bytes_sent == len(expected["state/process_ledger.json"])
        assert outcome.names_listed == 7 + 4 + 1

    new = main.chunk(120)
    report = main.vault / DAY / f"{DAY}_report.txt"
    report.write_bytes(b"hour\tsrv1\n09\t5\n")
    busy = main.run()
    name = f"{MAIN_ID}/{relative(new, main.data)}"
    for host, outcome in zip(main.hosts, busy.targets, strict=True):
        assert outcome.sent == [name] and outcome.vault_sent == [f"{DAY}/{DAY}_report.txt"]
        assert outcome.rsync_runs == 5  # own: push + verify; departed: push; vault; ledger
        assert host.files()[f"chunks/{name}"] == new.read_bytes()
        assert host.files()[f"vault/{DAY}/{DAY}_report.txt"] == report.read_bytes()


def test_a_reset_replica_store_gets_everything_back_but_what_is_past_retention(
        main: Main) -> None:
    populate(main)
    old = main.chunk(-8 * 24 * 60)  # its hour ended more than 7 days ago
    main.run()
    host = main.hosts[0]
    old_name = f"chunks/{MAIN_ID}/{relative(old, main.data)}"
    assert old_name in host.files()
    for folder in ("chunks", "vault", "state"):  # the host's disk was replaced
        shutil.rmtree(host.replica_dst / folder)
        (host.replica_dst / folder).mkdir(mode=0o750)
        shutil.chown(host.replica_dst / folder, host.user, host.user)

    result = main.run()

    outcome = result.targets[0]
    assert len(outcome.resent) == 7 and outcome.error == ""
    assert old_name not in host.files()  # confirmed and past retention: not pushed back
    assert len(outcome.vault_sent) == 4 and outcome.ledger_sent
    assert result.targets[1].sent == []  # the other host had lost nothing
    assert old.exists()  # the main's own retention decides about its copy


# ---- failures -----------------------------------------------------------------------------


def test_one_host_down_does_not_stop_the_other_three_failures_alert_then_it_catches_up(
        main: Main, capsys: pytest.CaptureFixture[str]) -> None:
    expected = populate(main)
    up, down = main.hosts
    down.stop()
    for run in range(1, 4):
        code, err = run_cli(capsys, main.settings_path, "replicate")
        assert code == 1
        assert error_lines(err, "replicate") == [
            f"collector replicate: error: cannot replicate to {down.label}: connection refused "
            "(is sshd running on the replica host, and is its port in replicas right?); "
            "7 chunks wait for it"]
        assert "Traceback" not in err
        assert ("ALERT replicate_failing" in err) == (run == 3)
        assert up.files() == expected
        state = main.state()
        assert state["srv3"]["consecutive_failures"] == run
        assert state["srv3"]["last_success_at"] == "" and state["srv3"]["chunks_waiting"] == 7
        assert state["srv2"]["consecutive_failures"] == 0
    assert not target_ledger_path(main.state_dir, "srv3").exists()

    down.start()
    code, err = run_cli(capsys, main.settings_path, "replicate")
    assert code == 0, err
    assert f"replication to {down.label} works again after 3 failed runs" in err
    assert down.files() == expected
    assert main.state()["srv3"]["consecutive_failures"] == 0


def test_a_host_removed_from_replicas_leaves_no_state_behind(
        main: Main, capsys: pytest.CaptureFixture[str]) -> None:
    populate(main)
    code, err = run_cli(capsys, main.settings_path, "replicate")
    assert code == 0, err
    assert target_ledger_path(main.state_dir, "srv3").exists()
    kept, _ = main.hosts
    text = main.settings_path.read_text()
    main.settings_path.write_text(text.replace(
        ",".join(f"{host.server_id}@127.0.0.1:{host.port}" for host in main.hosts),
        f"{kept.server_id}@127.0.0.1:{kept.port}"))
    code, err = run_cli(capsys, main.settings_path, "replicate")
    assert code == 0, err
    assert "forgetting replica host srv3 (no longer in replicas)" in err
    assert not target_ledger_path(main.state_dir, "srv3").exists()
    assert set(main.state()) == {"srv2"}
    assert target_ledger_path(main.state_dir, "srv2").exists()


def test_receiver_that_cannot_sync_confirms_nothing_and_the_ledger_stays_back(
        main: Main) -> None:
    """The transfer is complete but the replica host could not make it durable."""
    expected = populate(main)
    host = main.hosts[0]
    host.authorize_main(host._keys[MAIN_ID][0], host.receiver_failing_after_rrsync())

    with pytest.raises(RemoteError) as caught:
        main.run()

    assert str(caught.value) == (
        f"cannot replicate to {host.label}: the replica host's receiver failed: cannot make "
        f"the push durable: syncfs({host.replica_dst}) failed: Input/output error; "
        "7 chunks wait for it")
    assert "state/process_ledger.json" not in host.files()
    assert not target_ledger_path(main.state_dir, host.server_id).exists()
    assert main.hosts[1].files() == expected

    host.authorize_main(host._keys[MAIN_ID][0])
    again = main.run().targets[0]
    # The own tree's push had landed whole (only the sync failed), so it is only compared;
    # the run had stopped there, so the departed server's chunks go now.
    assert len(again.already_there) == 5 and all(name.startswith(f"{MAIN_ID}/")
                                                 for name in again.already_there)
    assert len(again.sent) == 2 and all(name.startswith(f"{DEPARTED}/") for name in again.sent)
    assert host.files() == expected


def test_a_vault_push_that_fails_keeps_the_old_ledger_on_the_replica(main: Main) -> None:
    """Step 4 only after 2 and 3: the replica's ledger never claims outputs it lacks."""
    populate(main)
    host = main.hosts[0]
    refuse_vault = host.root / "bin" / "refuse-vault"
    refuse_vault.write_text(
        "#!/bin/sh\n"
        'case "$SSH_ORIGINAL_COMMAND" in *" vault/"*) '
        'echo "collector receive: error: test refuses the vault" >&2; exit 5;; esac\n'
        f'exec {host.collector_bin} receive "$1"\n')
    refuse_vault.chmod(0o755)
    host.authorize_main(host._keys[MAIN_ID][0], refuse_vault)

    with pytest.raises(RemoteError, match=r"the replica host's receiver failed: test refuses "
                                          r"the vault; 0 chunks wait for it$"):
        main.run()

    files = host.files()
    assert "state/process_ledger.json" not in files
    assert not any(name.startswith("vault/") for name in files)
    assert len([name for name in files if name.startswith("chunks/")]) == 7  # confirmed
    assert len(main.target_ledger(host.server_id)["chunks"]) == 7  # type: ignore[arg-type]


def test_a_chunk_the_replica_holds_with_other_content_is_kept_on_both_sides(
        main: Main) -> None:
    expected = populate(main)
    host = main.hosts[0]
    name = next(n for n in expected if n.startswith(f"chunks/{MAIN_ID}/"))
    clash = host.replica_dst / name
    clash.parent.mkdir(parents=True)
    clash.write_bytes(b'{"other": 1}\n')
    for path in (clash, clash.parent, clash.parent.parent, clash.parent.parent.parent):
        shutil.chown(path, host.user, host.user)
    notifier = RecordingNotifier()

    with pytest.raises(RemoteError) as caught:
        main.run(notifier)

    key = name[len("chunks/"):]
    assert str(caught.value) == (f"1 chunks exist on {host.label} with other content and "
                                 f"were kept on both sides (e.g. {key})")
    assert clash.read_bytes() == b'{"other": 1}\n'  # never overwritten
    assert (main.data / name.split("/", 2)[2]).read_bytes() == expected[name]
    files = host.files()
    assert files["state/process_ledger.json"] == expected["state/process_ledger.json"]
    assert [kind for kind, _, _ in notifier.alerts] == ["replicate_failing"]
    assert main.state()[host.server_id]["consecutive_failures"] == 0
    assert main.state()[host.server_id]["conflicts"] == [key]

    with pytest.raises(RemoteError):
        main.run(notifier)
    assert len(notifier.alerts) == 1  # the same conflict is not alerted again


# ---- the main's key on a replica host ---------------------------------------------------------


def test_the_mains_key_cannot_leave_replica_dst_delete_or_read(main: Main,
                                                              tmp_path: Path) -> None:
    host = main.hosts[0]
    ssh = ["ssh", "-p", str(host.port), "-i", str(main.identity), "-o", "BatchMode=yes",
           "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={main.known_hosts}"]
    rsync_e = ["-e", " ".join(ssh)]
    destination = host.destination
    outside = host.root / "outside"
    outside.mkdir()
    shutil.chown(outside, host.user, host.user)  # writable: only the confinement protects it
    probe = tmp_path / "probe.txt"
    probe.write_text("probe\n")

    def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, cwd=cwd)

    def outside_replica() -> list[str]:
        return sorted(str(p) for p in host.root.rglob("*")
                      if not p.is_relative_to(host.replica_dst)
                      and p not in (host.log, host.root / "sshd.pid"))

    before = outside_replica()
    shell = run(*ssh, destination, "id")
    assert shell.returncode != 0 and "uid=" not in shell.stdout
    escape = run("rsync", *rsync_e, str(probe), f"{destination}:../outside/")
    assert escape.returncode != 0 and "do not use .. in arg" in escape.stderr
    read = run("rsync", "-r", *rsync_e, f"{destination}:", str(tmp_path / "pulled"))
    assert read.returncode != 0 and "reading from write-only server is not allowed" in read.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    delete = run("rsync", "-r", "--delete", *rsync_e, f"{empty}/", f"{destination}:vault/")
    assert delete.returncode != 0 and "has been disabled on this server" in delete.stderr
    absolute = run("rsync", *rsync_e, str(probe), f"{destination}:/etc/")
    assert absolute.returncode == 0, absolute.stderr
    assert (host.replica_dst / "etc" / "probe.txt").read_text() == "probe\n"
    # A link to the outside folder, then a file "through" it: munged, lands nowhere outside.
    link_side = tmp_path / "link"
    link_side.mkdir()
    os.symlink(str(outside), link_side / "esc")
    assert run("rsync", "-l", *rsync_e, str(link_side / "esc"),
               f"{destination}:chunks/").returncode == 0
    file_side = tmp_path / "file"
    (file_side / "chunks" / "esc").mkdir(parents=True)
    (file_side / "chunks" / "esc" / "evil.txt").write_text("evil\n")
    through = run("rsync", "-R", "--no-implied-dirs", *rsync_e, "chunks/esc/evil.txt",
                  f"{destination}:/", cwd=file_side)
    assert through.returncode != 0
    assert os.readlink(host.replica_dst / "chunks" / "esc").startswith("/rsyncd-munged/")
    assert outside_replica() == before
    assert not list(outside.iterdir())


# ---- the command ------------------------------------------------------------------------------


def test_no_replica_hosts_is_logged_and_succeeds(write_settings: SettingsWriter, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = write_settings(role="main", main_host=None, main_user=None, osf_enabled="False",
                          data_vault_dst=str(tmp_path / "vault"),
                          incoming_dst=str(tmp_path / "incoming"))
    assert cli_main(["--settings", str(path), "replicate"]) == 0
    assert "no replica hosts configured" in capsys.readouterr().err


def test_replicate_on_a_secondary_is_refused_with_one_line(
        write_settings: SettingsWriter, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_settings()
    assert cli_main(["--settings", str(path), "replicate"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"collector replicate: error: {path}: role=secondary: replicate runs on the main (it "
        "copies the main's data to the hosts in replicas)")


def test_second_replicate_while_one_runs_is_refused(write_settings: SettingsWriter,
                                                    tmp_path: Path) -> None:
    settings = load_settings(write_settings(
        role="main", main_host=None, main_user=None, osf_enabled="False",
        data_vault_dst=str(tmp_path / "vault"), incoming_dst=str(tmp_path / "incoming"),
        replicas="srv2@127.0.0.1:9"))
    settings.state_dir.mkdir(parents=True)
    with (settings.state_dir / LOCK_FILE).open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LockedError, match="another collector replicate is running"):
            replicate(settings, RecordingNotifier())


def test_unsafe_key_path_is_a_settings_error(write_settings: SettingsWriter,
                                             tmp_path: Path) -> None:
    odd = tmp_path / "my keys" / "id"
    odd.parent.mkdir()
    odd.write_text("x")
    settings = load_settings(write_settings(
        role="main", main_host=None, main_user=None, osf_enabled="False",
        data_vault_dst=str(tmp_path / "vault"), incoming_dst=str(tmp_path / "incoming"),
        replicas="srv2@127.0.0.1:9", ssh_identity_file=str(odd)))
    with pytest.raises(SettingsError, match="ssh_identity_file must not contain spaces"):
        replicate(settings, RecordingNotifier())


def test_replica_key_line_is_the_confined_receive_line() -> None:
    """The text roles/collector/templates/authorized_keys.j2 renders on a secondary."""
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample root@main"
    assert replica_authorized_keys_line(Path("/srv/collector/replica"), "srv1", key) == (
        'restrict,command="/opt/collector/venv/bin/collector receive /srv/collector/replica" '
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample srv1")
    bad: list[Callable[[], str]] = [
        lambda: replica_authorized_keys_line(Path("relative"), "srv1", key),
        lambda: replica_authorized_keys_line(Path("/srv/re plica"), "srv1", key),
        lambda: replica_authorized_keys_line(Path("/srv/replica"), "srv 1", key),
        lambda: replica_authorized_keys_line(Path("/srv/replica"), "srv1", "not a key"),
    ]
    for attempt in bad:
        with pytest.raises(ValueError):
            attempt()
