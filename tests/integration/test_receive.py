"""The main's forced command `collector receive`, and attacks on it from outside.

Three layers:

* the receiver on its own (a stub rrsync, an injected syncfs failure): exit codes pass
  through, a failed sync is one line and exit 1, a munged link that could resolve is refused;
* the venv's real `collector receive` entry point driven by the real rsync through a stand-in
  for ssh (sshd only sets SSH_ORIGINAL_COMMAND and runs the forced command);
* the real sshd with a secondary's real key, attacked with plain `rsync` and `ssh` the way
  someone holding that key would, against both this machine's rsync and Debian 12's 3.2.7
  (what the lab hosts run). Nothing outside `incoming/<id>/` may change: checked by a listing
  with checksums of everything else under the main's folder, before and after.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.layout import chunk_path
from collector.settings import load_settings
from collector.transfer import receive
from collector.transfer.send import SendConflictError, send
from tests.conftest import SettingsWriter
from tests.integration.helpers import REPO_ROOT
from tests.integration.sshd_fixture import FLAVORS, MainSshd, Secondary, rsync_flavor

pytestmark = pytest.mark.integration

VENV_COLLECTOR = REPO_ROOT / ".venv" / "bin" / "collector"
SERVER = "srv1"
HOUR = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
FIFO_NAME = "srv1_2026-12-02_05-59.jsonl"


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


# ---- the receiver on its own -----------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "incoming" / SERVER
    target.mkdir(parents=True)
    return target


def test_rrsync_failure_code_passes_through_without_a_sync(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(receive, "sync_filesystem", synced.append)
    failing = script(tmp_path / "rrsync", 'echo "$@" > "$(dirname "$0")/args"; exit 23\n')
    assert receive.run_reporting(folder, failing) == 23
    assert synced == []
    assert (tmp_path / "args").read_text().split() == ["-wo", "-munge", "-no-del", str(folder)]


def test_success_syncs_the_folders_filesystem(folder: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_syncfs = receive._libc_syncfs()
    assert real_syncfs is not None, "glibc has syncfs"

    def counting_syncfs(fd: int) -> int:
        calls.append(fd)
        return real_syncfs(fd)

    monkeypatch.setattr(receive, "_libc_syncfs", lambda: counting_syncfs)
    assert receive.run_reporting(folder, script(tmp_path / "rrsync", "exit 0\n")) == 0
    assert len(calls) == 1


def test_a_failed_sync_is_one_line_and_exit_1(folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def failing_syncfs(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(receive, "_libc_syncfs", lambda: failing_syncfs)
    assert receive.run_reporting(folder, script(tmp_path / "rrsync", "exit 0\n")) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout is the rsync protocol stream
    assert captured.err.splitlines() == [
        f"collector receive: error: cannot make the push durable: syncfs({folder}) failed: "
        "Input/output error"]


def test_without_syncfs_it_falls_back_to_sync(folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []
    monkeypatch.setattr(receive, "_libc_syncfs", lambda: None)
    monkeypatch.setattr(os, "sync", lambda: synced.append(True))
    assert receive.run_reporting(folder, script(tmp_path / "rrsync", "exit 0\n")) == 0
    assert synced == [True]


def test_refuses_to_run_when_munged_links_could_resolve(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "rsyncd-munged"
    prefix.mkdir()
    monkeypatch.setattr(receive, "MUNGE_PREFIX", prefix)
    rrsync = script(tmp_path / "rrsync", 'touch "$(dirname "$0")/ran"\n')
    assert receive.run_reporting(folder, rrsync) == 1
    assert not (tmp_path / "ran").exists()
    assert capsys.readouterr().err.splitlines() == [
        f"collector receive: error: {prefix} exists on this host, so munged symlinks would "
        "resolve; remove it (pushes are refused until then)"]


@pytest.mark.parametrize("argv", [[], ["a", "b"], ["--help"]])
def test_bad_usage_is_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert receive.main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        "collector receive: error: usage: receive DIR (the forced command of a push key)"]


def test_relative_folder_and_missing_rrsync_are_one_line(
        folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert receive.run_reporting(Path("incoming/srv1")) == 1
    assert receive.run_reporting(folder, tmp_path / "no-rrsync") == 1
    assert capsys.readouterr().err.splitlines() == [
        "collector receive: error: the incoming folder must be an absolute path, not "
        "incoming/srv1",
        f"collector receive: error: cannot run {tmp_path / 'no-rrsync'}: No such file or "
        "directory"]


# ---- the venv's entry point, driven by the real rsync ---------------------------------------


def skip_without_entry_point() -> None:
    for needed in (VENV_COLLECTOR, receive.RRSYNC):
        if not needed.exists():
            pytest.skip(f"{needed} is not installed")


@pytest.fixture
def fake_ssh(folder: Path, tmp_path: Path) -> str:
    """An rsync `-e` that does what ssh + sshd's forced command do, minus the network."""
    skip_without_entry_point()
    return str(script(tmp_path / "fake-ssh",
                      "shift  # the host\n"
                      f'SSH_ORIGINAL_COMMAND="$*" exec {VENV_COLLECTOR} receive {folder}\n'))


def rsync(*args: str, cwd: Path | None = None,
          client: str = "rsync") -> subprocess.CompletedProcess[str]:
    return subprocess.run([client, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd=cwd, env={**os.environ, "LC_ALL": "C"})


def test_venv_entry_point_receives_syncs_and_refuses_deletion(
        folder: Path, tmp_path: Path, fake_ssh: str) -> None:
    source = tmp_path / "source"
    (source / "2026-12-02" / "05").mkdir(parents=True)
    chunk = source / "2026-12-02" / "05" / "srv1_2026-12-02_05-01.jsonl"
    chunk.write_text('{"id": 1}\n')

    pushed = rsync("-r", "--times", "-e", fake_ssh, f"{source}/", "main:")
    assert pushed.returncode == 0, pushed.stderr
    assert (folder / "2026-12-02" / "05" / chunk.name).read_text() == '{"id": 1}\n'

    chunk.unlink()
    for option in ("--delete", "--delete-after", "--del", "--remove-source-files"):
        refused = rsync("-r", option, "-e", fake_ssh, f"{source}/", "main:")
        assert refused.returncode != 0
        assert "has been disabled on this server" in refused.stderr, refused.stderr
    assert (folder / "2026-12-02" / "05" / "srv1_2026-12-02_05-01.jsonl").exists()


def test_venv_entry_point_without_sshd_is_rrsyncs_own_refusal(folder: Path) -> None:
    skip_without_entry_point()
    env = {key: value for key, value in os.environ.items() if key != "SSH_ORIGINAL_COMMAND"}
    result = subprocess.run([str(VENV_COLLECTOR), "receive", str(folder)], env=env,
                            capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1  # rrsync's exit code, unchanged
    assert "Not invoked via sshd" in result.stderr
    assert result.stdout == ""


# ---- the real sshd, attacked with the secondary's real key -----------------------------------


@pytest.fixture(params=FLAVORS)
def main_sshd(push_user: str, request: pytest.FixtureRequest) -> Iterator[MainSshd]:
    server = MainSshd(push_user, rsync_flavor(request))
    try:
        yield server
    finally:
        server.cleanup()


class Attacker:
    """Whoever holds the secondary's key: plain ssh and rsync against the main."""

    def __init__(self, main: MainSshd, secondary: Secondary, workdir: Path) -> None:
        self.main = main
        self.secondary = secondary
        self.workdir = workdir
        self.ssh = ["ssh", "-p", str(main.port), "-i", str(secondary.identity),
                    "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                    "-o", f"UserKnownHostsFile={secondary.known_hosts}"]
        self.incoming = main.incoming / secondary.server_id
        # Writable by the receiving account: only the confinement keeps the key out of it.
        self.vault = main.root / "vault"
        self.vault.mkdir()
        (self.vault / "ids.txt").write_text("1\n2\n")
        for path in (self.vault, self.vault / "ids.txt"):
            os.chown(path, *_ids(main.user))

    def rsync(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return rsync("-e", " ".join(self.ssh), *args, cwd=cwd, client=self.main.client_rsync)

    def remote(self, path: str = "") -> str:
        return f"{self.main.destination}:{path}"

    def outside_listing(self) -> dict[str, str]:
        """Everything under the main's folder except this secondary's incoming folder.

        Types and checksums, never following a link or opening anything but regular files.
        sshd's own log and pid file are left out (they change on every connection).
        """
        listing: dict[str, str] = {}
        for directory, subdirs, files in os.walk(self.main.root):
            here = Path(directory)
            subdirs[:] = [name for name in subdirs if here / name != self.incoming]
            for name in [*subdirs, *files]:
                path = here / name
                if path in (self.main.log, self.main.root / "sshd.pid"):
                    continue
                listing[str(path.relative_to(self.main.root))] = describe(path)
        return listing

    def special_entries(self) -> list[Path]:
        """Every FIFO, socket or device anywhere under the main's folder."""
        found = []
        for directory, _, files in os.walk(self.main.root):
            for name in files:
                mode = os.lstat(Path(directory) / name).st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                    found.append(Path(directory) / name)
        return found


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def describe(path: Path) -> str:
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        return f"link -> {os.readlink(path)}"
    if stat.S_ISREG(mode):
        return f"file {hashlib.sha256(path.read_bytes()).hexdigest()} {stat.filemode(mode)}"
    return stat.filemode(mode)


@pytest.fixture
def attacker(main_sshd: MainSshd, tmp_path: Path) -> Attacker:
    secondary = main_sshd.add_secondary(SERVER, tmp_path / "ssh")
    main_sshd.start()
    return Attacker(main_sshd, secondary, tmp_path)


def send_settings(attacker: Attacker, write_settings: SettingsWriter, data: Path) -> Path:
    return write_settings(
        server_id=SERVER, main_host="127.0.0.1", main_port=str(attacker.main.port),
        main_user=attacker.main.user, ssh_identity_file=str(attacker.secondary.identity),
        ssh_known_hosts_file=str(attacker.secondary.known_hosts), timezone="UTC",
        data_storage_dst=str(data))


def write_chunk(data: Path, minute: int) -> Path:
    path = chunk_path(data, SERVER, HOUR.replace(minute=minute), ZoneInfo("UTC"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{{"minute": {minute}}}\n')
    return path


def test_rsync_client_fails_when_the_forced_command_fails_after_a_complete_transfer(
        main_sshd: MainSshd, tmp_path: Path) -> None:
    """The assumption `send` builds on, checked with plain rsync on both versions."""
    exits_7 = script(main_sshd.root / "bin" / "rrsync-then-exit-7",
                     f'{main_sshd.rrsync} -wo -munge -no-del "$1" || exit $?\nexit 7\n')
    secondary = main_sshd.add_secondary(SERVER, tmp_path / "ssh", exits_7)
    main_sshd.start()
    attacker = Attacker(main_sshd, secondary, tmp_path)
    chunk = tmp_path / "srv1_2026-12-02_05-00.jsonl"
    chunk.write_text("{}\n")

    failed = attacker.rsync("--times", str(chunk), attacker.remote())
    assert (attacker.incoming / chunk.name).read_text() == "{}\n"  # the transfer completed
    assert failed.returncode == 7, failed.stderr  # ...and still the client reports failure

    main_sshd.set_forced_command(SERVER, None)  # the real receiver: same push succeeds
    (attacker.incoming / chunk.name).unlink()
    passed = attacker.rsync("--times", str(chunk), attacker.remote())
    assert passed.returncode == 0, passed.stderr


def test_pushed_fifo_stays_inside_its_folder_and_chunks_still_flow(
        attacker: Attacker, write_settings: SettingsWriter, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    (evil / "2026-12-02" / "05").mkdir(parents=True)
    os.mkfifo(evil / "2026-12-02" / "05" / FIFO_NAME)
    before = attacker.outside_listing()

    attacker.rsync("-rl", "--specials", f"{evil}/", attacker.remote())

    # rsync 3.5's rrsync refuses specials (--drop-D); 3.2.7 lets the FIFO land, but only here.
    assert all(path.is_relative_to(attacker.incoming) for path in attacker.special_entries())
    landed = (attacker.incoming / "2026-12-02" / "05" / FIFO_NAME).is_fifo()
    assert landed == (attacker.main.flavor == "debian12")
    assert attacker.outside_listing() == before

    # The secondary's own chunks of that hour still go through, the FIFO's name included:
    # the receiving rsync never opens a FIFO, and a name it holds as one is a conflict.
    data = tmp_path / "data"
    chunks = [write_chunk(data, minute) for minute in (57, 58, 59)]
    contents = {path.relative_to(data).as_posix(): path.read_bytes() for path in chunks}
    settings = load_settings(send_settings(attacker, write_settings, data))
    if landed:
        with pytest.raises(SendConflictError) as caught:
            # The clock of retention: the hour is recent, so confirmed chunks are kept.
            send(settings, now=HOUR + timedelta(hours=2))
        assert caught.value.result.conflicts == [f"2026-12-02/05/{FIFO_NAME}"]
        # Every chunk stays here (confirmed ones until retention); the clash is unconfirmed.
        assert [path.exists() for path in chunks] == [True, True, True]
        assert sorted(caught.value.result.sent) == sorted(contents)[:2]
        assert (attacker.incoming / "2026-12-02" / "05" / FIFO_NAME).is_fifo()  # untouched
    else:
        assert sorted(send(settings).sent) == sorted(contents)
    for relative, content in contents.items():
        if not relative.endswith(FIFO_NAME) or not landed:
            assert (attacker.incoming / relative).read_bytes() == content
    assert attacker.outside_listing() == before


def test_pushed_symlink_to_dev_zero_never_resolves(attacker: Attacker, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    (evil / "2026-12-02" / "05").mkdir(parents=True)
    name = "srv1_2026-12-02_05-56.jsonl"
    os.symlink("/dev/zero", evil / "2026-12-02" / "05" / name)
    before = attacker.outside_listing()

    attacker.rsync("-rl", f"{evil}/", attacker.remote())

    landed = attacker.incoming / "2026-12-02" / "05" / name
    if os.path.lexists(landed):
        assert landed.is_symlink()
        assert os.readlink(landed).startswith("/rsyncd-munged/")
        assert os.path.realpath(landed) != "/dev/zero"
        assert not landed.exists()  # dangling: opening it fails instead of reading zeros
    assert attacker.outside_listing() == before


def test_symlink_escape_creates_nothing_outside_the_folder(attacker: Attacker,
                                                           tmp_path: Path) -> None:
    """`esc -> <vault>`, then `esc/evil.txt` with -R --no-implied-dirs: the issue's attack."""
    link_side = tmp_path / "link"
    link_side.mkdir()
    os.symlink(str(attacker.vault), link_side / "esc")
    file_side = tmp_path / "file"
    (file_side / "esc").mkdir(parents=True)
    (file_side / "esc" / "evil.txt").write_text("evil\n")
    before = attacker.outside_listing()

    first = attacker.rsync("-l", str(link_side / "esc"), attacker.remote())
    assert first.returncode == 0, first.stderr
    assert os.readlink(attacker.incoming / "esc").startswith("/rsyncd-munged/")
    second = attacker.rsync("-R", "--no-implied-dirs", "esc/evil.txt", attacker.remote("/"),
                            cwd=file_side)

    assert second.returncode != 0
    assert not (attacker.vault / "evil.txt").exists()
    assert attacker.outside_listing() == before
    assert not os.path.lexists("/rsyncd-munged")


def test_delete_is_refused_and_reading_is_refused(attacker: Attacker, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "srv1_2026-12-02_05-00.jsonl").write_text("{}\n")
    assert attacker.rsync("--times", str(source / "srv1_2026-12-02_05-00.jsonl"),
                          attacker.remote()).returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    for option in ("--delete", "--delete-after", "--del"):
        refused = attacker.rsync("-r", option, f"{empty}/", attacker.remote())
        assert refused.returncode != 0
        assert "has been disabled on this server" in refused.stderr, refused.stderr
    assert (attacker.incoming / "srv1_2026-12-02_05-00.jsonl").read_text() == "{}\n"

    pulled = tmp_path / "pulled"
    for remote in (attacker.remote("/"), attacker.remote(), attacker.remote("/etc/passwd")):
        read = attacker.rsync("-r", remote, f"{pulled}/")
        assert read.returncode != 0
        assert "reading from write-only server is not allowed" in read.stderr, read.stderr
    assert not pulled.exists() or not any(pulled.iterdir())


@pytest.mark.parametrize("command", [
    "touch {marker}",
    "sh -c 'touch {marker}'",
    "rsync --server -e.LsfxC . . ; touch {marker}",
    "rsync --server --daemon . && touch {marker}",
])
def test_arbitrary_commands_do_not_run(attacker: Attacker, tmp_path: Path,
                                       command: str) -> None:
    marker = attacker.main.root / "pwned"
    before = attacker.outside_listing()
    result = subprocess.run([*attacker.ssh, attacker.main.destination,
                             command.format(marker=marker)],
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert not marker.exists()
    assert attacker.outside_listing() == before
