"""A real OpenSSH server on a loopback port, set up the way a main receives pushes.

The main authorizes each secondary's key only for `collector receive <incoming>/<server_id>`
(the line comes from `collector.send.authorized_keys_line`, the same text the Ansible role
renders), for a dedicated account with `/bin/sh` as its shell, from a root-owned
authorized_keys file. Everything lives in a throw-away folder; the account is created once
per test session and removed at the end.

The account cannot run the test venv's interpreter (here it lives under /root, mode 0700; in
a fresh clone under a private temporary folder), so `collector` in this main's `bin/` is a
stand-in: it runs a root-owned copy of `collector/transfer/receive.py` (stdlib only) with
`/usr/bin/python3`, the interpreter rrsync itself needs. `tests/integration/test_receive.py`
checks the venv's real `collector receive` separately.

Needs root (to create the account and run sshd) plus `/usr/sbin/sshd`, `ssh-keygen`,
`rsync`/`rrsync` and `/usr/bin/python3` (Debian packages `openssh-server`, `openssh-client`,
`rsync`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import collector.transfer.receive
from collector.transfer.send import authorized_keys_line
from tests.integration.helpers import free_port

SSHD = Path("/usr/sbin/sshd")
RRSYNC = Path("/usr/bin/rrsync")
SYSTEM_PYTHON = Path("/usr/bin/python3")
PUSH_USER = "ctestpush"
RECEIVE_SOURCE = Path(collector.transfer.receive.__file__)


def missing_requirements() -> str | None:
    """Why these tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create the push account and run sshd"
    for tool in (str(SSHD), "ssh", "ssh-keygen", "rsync", str(RRSYNC), str(SYSTEM_PYTHON),
                 "useradd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y openssh-server rsync)"
    return None


def generate_key(path: Path) -> str:
    """Create an ed25519 key pair without passphrase; return the public line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name,
                    "-f", str(path)], check=True)
    return path.with_name(path.name + ".pub").read_text().strip()


def session_push_user() -> Iterator[str]:
    """Body of a session fixture: skip without the requirements, else the push account."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    with push_account() as user:
        yield user


@contextlib.contextmanager
def push_account() -> Iterator[str]:
    """The dedicated receiving account (shell /bin/sh, as rrsync's man page asks)."""
    created = False
    try:
        pwd.getpwnam(PUSH_USER)
    except KeyError:
        # Home "/": sshd chdirs there and would otherwise print a warning on every push.
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/",
                        "--shell", "/bin/sh", PUSH_USER], check=True)
        created = True
    # useradd leaves the password "!" (locked) and sshd refuses locked accounts even for keys;
    # "*" means "no password can ever match" without locking the account.
    subprocess.run(["usermod", "--password", "*", PUSH_USER], check=True)
    try:
        yield PUSH_USER
    finally:
        if created:
            subprocess.run(["userdel", PUSH_USER], check=False)


# Both ends of a push on the lab hosts run Debian 12's rsync 3.2.7 and its rrsync; this
# machine may have a newer pair (3.5.0's rrsync refuses FIFOs and devices outright, 3.2.7's
# does not). The lab image holds the Debian 12 binaries, run here with the image's own loader.
FLAVORS = ("system", "debian12")


def image_dir() -> Path:
    """The lab's cached Debian 12 image (imported late: only these tests need the lab code)."""
    from tests.lab.nspawn import cache_dir_from_env
    from tests.lab.nspawn import image_dir as lab_image_dir

    return lab_image_dir(cache_dir_from_env())


def debian12_missing() -> str | None:
    """Why the Debian 12 rsync cannot run here, or None when it can."""
    image = image_dir()
    for needed in ("usr/bin/rsync", "usr/bin/rrsync", "lib64/ld-linux-x86-64.so.2"):
        if not (image / needed).exists():
            return f"no Debian 12 lab image at {image} (make lab builds it)"
    return None


def rsync_flavor(request: pytest.FixtureRequest) -> str:
    """The flavor a fixture is parametrized with ("system" unless asked), skipping the test
    where that rsync cannot run."""
    flavor = str(getattr(request, "param", "system"))
    if flavor == "debian12" and (reason := debian12_missing()):
        pytest.skip(reason)
    return flavor


def _install_debian12_rsync(folder: Path) -> tuple[Path, Path]:
    """`rsync` (a wrapper) and `rrsync` (calling it) from the lab image; return both."""
    image = image_dir()
    folder.mkdir(mode=0o755)
    libraries = f"{image}/lib/x86_64-linux-gnu:{image}/usr/lib/x86_64-linux-gnu"
    rsync = folder / "rsync"
    rsync.write_text("#!/bin/sh\n"
                     f'exec {image}/lib64/ld-linux-x86-64.so.2 --library-path {libraries} '
                     f'{image}/usr/bin/rsync "$@"\n')
    rsync.chmod(0o755)
    source = (image / "usr/bin/rrsync").read_text()
    patched = source.replace("RSYNC = '/usr/bin/rsync'", f"RSYNC = '{rsync}'")
    assert patched != source, "the image's rrsync no longer names /usr/bin/rsync"
    rrsync = folder / "rrsync"
    rrsync.write_text(patched.replace("#!/usr/bin/env python3", f"#!{SYSTEM_PYTHON}", 1))
    rrsync.chmod(0o755)
    return rsync, rrsync


@dataclass
class Secondary:
    """What one secondary needs to push: its id, key and the main's pinned host key."""

    server_id: str
    identity: Path
    known_hosts: Path


class MainSshd:
    """sshd on 127.0.0.1:<free port> accepting restricted pushes into `incoming/<id>/`.

    `flavor` "debian12" makes both ends use the lab image's rsync 3.2.7 and rrsync: the main's
    receiver runs that rrsync, and `client_rsync` / `client_path` are the rsync a secondary
    runs (`client_path` goes first in PATH so `collector send` picks it up).
    """

    def __init__(self, user: str, flavor: str = "system") -> None:
        self.user = user
        self.flavor = flavor
        # Not under pytest's tmp (mode 0700, root only): the push account must reach incoming.
        self.root = Path(tempfile.mkdtemp(prefix="collector-sshd-"))
        self.root.chmod(0o755)
        self.rrsync = RRSYNC
        self.client_rsync = "rsync"
        self.client_path: Path | None = None
        if flavor == "debian12":
            rsync, self.rrsync = _install_debian12_rsync(self.root / "debian12")
            self.client_rsync, self.client_path = str(rsync), rsync.parent
        elif flavor != "system":
            raise ValueError(f"unknown rsync flavor {flavor!r}")
        self.incoming = self.root / "incoming"
        self.incoming.mkdir()
        self.keys_dir = self.root / "authorized_keys"
        self.keys_dir.mkdir()
        self.host_key = self.root / "ssh_host_ed25519_key"
        self.host_public = generate_key(self.host_key)
        self.config = self.root / "sshd_config"
        self.log = self.root / "sshd.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.collector_bin = self._install_receiver()
        # server_id -> (public key line, test-only forced command or None for the real one)
        self._keys: dict[str, tuple[str, Path | None]] = {}

    def _install_receiver(self) -> Path:
        """`bin/collector` for the push account: root-owned, so the account cannot edit it."""
        bin_dir = self.root / "bin"
        bin_dir.mkdir(mode=0o755)
        receiver = bin_dir / "receive.py"
        source = RECEIVE_SOURCE.read_text()
        if self.rrsync != RRSYNC:  # the copy runs this flavor's rrsync
            patched = source.replace(f'RRSYNC = Path("{RRSYNC}")',
                                     f'RRSYNC = Path("{self.rrsync}")')
            assert patched != source, "collector/transfer/receive.py no longer defines RRSYNC"
            source = patched
        receiver.write_text(source)
        receiver.chmod(0o644)
        launcher = bin_dir / "collector"
        launcher.write_text(
            "#!/bin/sh\n"
            "# Test stand-in for the venv's `collector`: only `receive` (see sshd_fixture.py).\n"
            'if [ "$1" != receive ]; then\n'
            '  echo "collector (test stand-in): only receive is available" >&2; exit 2\n'
            "fi\n"
            "shift\n"
            f'exec {SYSTEM_PYTHON} -I {receiver} "$@"\n')
        launcher.chmod(0o755)
        return launcher

    @property
    def destination(self) -> str:
        return f"{self.user}@127.0.0.1"

    def known_hosts_line(self) -> str:
        key_type, key_data = self.host_public.split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {key_data}\n"

    def add_secondary(self, server_id: str, folder: Path,
                      forced_command: Path | None = None) -> Secondary:
        """A key pair for `server_id`, authorized only for its incoming folder.

        `forced_command` replaces `collector receive` by a test-only script (called with the
        incoming folder as its argument), e.g. one that fails after a successful rrsync.
        """
        folder.mkdir(parents=True, exist_ok=True)
        identity = folder / "id_ed25519_push"
        public = generate_key(identity)
        target = self.incoming / server_id
        target.mkdir(exist_ok=True)
        shutil.chown(target, self.user, self.user)
        self._keys[server_id] = (public, forced_command)
        self._write_authorized_keys()
        known_hosts = folder / "known_hosts"
        known_hosts.write_text(self.known_hosts_line())
        return Secondary(server_id, identity, known_hosts)

    def set_forced_command(self, server_id: str, forced_command: Path | None) -> None:
        """Swap a secondary's forced command (None: the real `collector receive`)."""
        public, _ = self._keys[server_id]
        self._keys[server_id] = (public, forced_command)
        self._write_authorized_keys()

    def authorized_line(self, server_id: str) -> str:
        public, forced_command = self._keys[server_id]
        if forced_command is None:
            return authorized_keys_line(self.incoming, server_id, public,
                                        collector_bin=self.collector_bin)
        key_type, key_data = public.split()[:2]
        return (f'restrict,command="{forced_command} {self.incoming}/{server_id}" '
                f"{key_type} {key_data} {server_id}")

    def receiver_failing_after_rrsync(self) -> Path:
        """A test-only forced command: rrsync completes, then the sync "fails" (exit 1).

        It prints the real receiver's failure line, as `collector receive` does when syncfs
        reports a write-back error, so the client must treat a complete transfer as failed.
        """
        script = self.root / "bin" / "receive-then-fail"
        flags = " ".join(collector.transfer.receive.RRSYNC_FLAGS)
        script.write_text(
            "#!/bin/sh\n"
            f'{self.rrsync} {flags} "$1" || exit $?\n'
            f'echo "{collector.transfer.receive.ERROR_PREFIX} cannot make the push durable: '
            'syncfs($1) failed: Input/output error" >&2\n'
            "exit 1\n")
        script.chmod(0o755)
        return script

    def _write_authorized_keys(self) -> None:
        authorized = self.keys_dir / self.user
        authorized.write_text("".join(self.authorized_line(server_id) + "\n"
                                      for server_id in self._keys))
        authorized.chmod(0o644)  # root-owned: the account cannot edit its own restrictions

    def _write_config(self) -> None:
        self.config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.keys_dir}/%u",
            # /tmp is world-writable, which StrictModes refuses on the path to the keys file.
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            f"AllowUsers {self.user}",
            "PermitRootLogin no",
            "LogLevel VERBOSE",
            "",
        ]))

    def start(self) -> None:
        """Start (or restart on the same port) and wait until it accepts connections."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        self._write_config()
        subprocess.run([str(SSHD), "-t", "-f", str(self.config)], check=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError("sshd did not start listening within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def put_client_rsync_first(monkeypatch: pytest.MonkeyPatch, server: MainSshd) -> None:
    """Make `collector send` / `replicate` (which run `rsync` from PATH) use `server`'s flavor."""
    if server.client_path is not None:
        monkeypatch.setenv("PATH", f"{server.client_path}:{os.environ['PATH']}")
