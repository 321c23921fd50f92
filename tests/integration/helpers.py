"""Plain helpers the integration tests share (their fixtures are in conftest.py).

Each lived as a copy in two or three test modules, or in a test module the others imported;
here is their one place.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from pathlib import Path

import pytest

from collector.cli import main as cli_main
from collector.settings import Settings
from tests.doubles.smtp import SmtpDouble

REPO_ROOT = Path(__file__).resolve().parents[2]
SMTP_USER = "alerts@example.org"
SMTP_PASSWORD = "Smtp-Pa55word-7f3a9c"


def free_port() -> int:
    """A loopback port nothing listens on right now, for a server a test starts (or not) later."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_mail_credentials(folder: Path, port: int, password: str = SMTP_PASSWORD,
                           starttls: str | None = None) -> Path:
    """`email_credentials.txt` pointing at the SMTP double on `port`, as the role renders it."""
    folder.mkdir(exist_ok=True)
    path = folder / "email_credentials.txt"
    lines = ["server=127.0.0.1", f"port={port}", f"user={SMTP_USER}",
             f"password={password}", "fromaddr=collector@example.org",
             "toaddr=team@example.org, oncall@example.org"]
    if starttls is not None:
        lines.append(f"starttls={starttls}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def smtp_double(tls_files: tuple[Path, Path], port: int = 0,
                maildir: Path | None = None) -> SmtpDouble:
    """The SMTP double that `write_mail_credentials` points at: STARTTLS and login required."""
    cert, key = tls_files
    return SmtpDouble(SMTP_USER, SMTP_PASSWORD, cert=cert, key=key, port=port, maildir=maildir)


class RecordingNotifier:
    """A `collector.notify.Notifier` that keeps every alert, so a test can check what the
    team would be told (the protocol is pure logic: there is no transport to fake)."""

    def __init__(self) -> None:
        self.alerts: list[tuple[str, str, str]] = []  # kind, subject, body

    def alert(self, kind: str, subject: str, body: str = "") -> None:
        """Keep the alert instead of sending it."""
        self.alerts.append((kind, subject, body))


def run_cli(capsys: pytest.CaptureFixture[str], settings_path: Path, command: str,
            *extra: str) -> tuple[int, str]:
    """Run `collector --settings P <command>` in-process, so its exact stderr can be checked."""
    code = cli_main(["--settings", str(settings_path), command, *extra])
    return code, capsys.readouterr().err


def error_lines(output: str, command: str) -> list[str]:
    """The `collector <command>: error:` lines of a run's output, the lines users act on."""
    prefix = f"collector {command}: error:"
    return [line for line in output.splitlines() if line.startswith(prefix)]


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under `folder` (links not followed): mode, mtime and content checksum,
    to prove that a run changed nothing there."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        digest = (hashlib.sha256(path.read_bytes()).hexdigest()
                  if path.is_file() and not path.is_symlink() else "")
        found[str(path.relative_to(folder))] = (info.st_mode, info.st_mtime_ns, digest)
    return found


def vault(settings: Settings) -> Path:
    """A main's `data_vault_dst`, which its settings may leave unset (typed as optional)."""
    assert settings.data_vault_dst is not None
    return settings.data_vault_dst


def wait_for_port_file(process: subprocess.Popen[bytes], port_file: Path,
                       timeout: float) -> int:
    """The port a double started as a process (`--port-file`) listens on, once it does."""
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return int(port_file.read_text())
