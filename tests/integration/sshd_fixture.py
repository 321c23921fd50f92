"""A real OpenSSH server on a loopback port, set up the way a main receives pushes.

The main authorizes each secondary's key only for `rrsync -wo <incoming_dst>/<server_id>`
(the line comes from `collector.send.authorized_keys_line`, the same function the Ansible
role mirrors), for a dedicated account with `/bin/sh` as its shell, from a root-owned
authorized_keys file. Everything lives in a throw-away folder; the account is created once
per test session and removed at the end.

Needs root (to create the account and run sshd) plus `/usr/sbin/sshd`, `ssh-keygen` and
`rsync`/`rrsync` (Debian packages `openssh-server`, `openssh-client`, `rsync`).
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

from collector.send import authorized_keys_line

SSHD = Path("/usr/sbin/sshd")
RRSYNC = Path("/usr/bin/rrsync")
PUSH_USER = "ctestpush"


def missing_requirements() -> str | None:
    """Why these tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create the push account and run sshd"
    for tool in (str(SSHD), "ssh", "ssh-keygen", "rsync", str(RRSYNC), "useradd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y openssh-server rsync)"
    return None


def generate_key(path: Path) -> str:
    """Create an ed25519 key pair without passphrase; return the public line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name,
                    "-f", str(path)], check=True)
    return path.with_name(path.name + ".pub").read_text().strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


@dataclass
class Secondary:
    """What one secondary needs to push: its id, key and the main's pinned host key."""

    server_id: str
    identity: Path
    known_hosts: Path


class MainSshd:
    """sshd on 127.0.0.1:<free port> accepting restricted pushes into `incoming/<id>/`."""

    def __init__(self, user: str) -> None:
        self.user = user
        # Not under pytest's tmp (mode 0700, root only): the push account must reach incoming.
        self.root = Path(tempfile.mkdtemp(prefix="collector-sshd-"))
        self.root.chmod(0o755)
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
        self._authorized: list[str] = []

    @property
    def destination(self) -> str:
        return f"{self.user}@127.0.0.1"

    def known_hosts_line(self) -> str:
        key_type, key_data = self.host_public.split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {key_data}\n"

    def add_secondary(self, server_id: str, folder: Path) -> Secondary:
        """A key pair for `server_id`, authorized only for its incoming folder."""
        folder.mkdir(parents=True, exist_ok=True)
        identity = folder / "id_ed25519_push"
        public = generate_key(identity)
        target = self.incoming / server_id
        target.mkdir(exist_ok=True)
        shutil.chown(target, self.user, self.user)
        self._authorized.append(authorized_keys_line(self.incoming, server_id, public))
        authorized = self.keys_dir / self.user
        authorized.write_text("".join(line + "\n" for line in self._authorized))
        authorized.chmod(0o644)  # root-owned: the account cannot edit its own restrictions
        known_hosts = folder / "known_hosts"
        known_hosts.write_text(self.known_hosts_line())
        return Secondary(server_id, identity, known_hosts)

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
