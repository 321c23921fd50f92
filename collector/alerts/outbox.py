"""The durable outbox: alerts queued on disk until the mail server accepts them.

An alert raised while the mail server is down is exactly the one the team needs once it is
back. Each queued mail is one JSON file (`state_dir/mail_outbox/<time>_<kind>.json`, written
atomically, already redacted: subject and body only), delivered oldest first and removed once
the server accepted it; mails older than `OUTBOX_MAX_AGE` are dropped with a logged count.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets as random_names
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from collector.fsutil import exclusive_lock, write_bytes_atomic

log = logging.getLogger("collector.mail")
OUTBOX_DIR = "mail_outbox"
OUTBOX_MAX_AGE = 7 * 86400.0  # queued alerts older than this are dropped (and counted)


@dataclass(frozen=True)
class QueuedMail:
    """One alert mail in the outbox: composed and redacted when the alert was raised."""

    path: Path
    kind: str
    subject: str
    body: str
    raised_at: float


class Outbox:
    """Alert mails waiting for the mail server, one JSON file each, oldest first.

    Every process of the host shares it; `deliver` holds an exclusive lock on the folder
    so that two processes never send the same queued mail.
    """

    def __init__(self, state_dir: Path, max_age: float = OUTBOX_MAX_AGE) -> None:
        self.folder = state_dir / OUTBOX_DIR
        self.lock_path = state_dir / (OUTBOX_DIR + ".lock")
        self.max_age = max_age

    def put(self, kind: str, subject: str, body: str, raised_at: float) -> Path:
        """Queue one mail (atomically: a crash leaves it whole or absent)."""
        name = f"{int(raised_at * 1e6):017d}_{kind}_{random_names.token_hex(3)}.json"
        path = self.folder / name
        payload = {"kind": kind, "subject": subject, "body": body, "raised_at": raised_at}
        write_bytes_atomic(path, (json.dumps(payload, sort_keys=True) + "\n").encode())
        return path

    def paths(self) -> list[Path]:
        """Queued files, oldest first (names start with the time); temporaries skipped."""
        try:
            return sorted(path for path in self.folder.iterdir()
                          if path.suffix == ".json" and not path.name.startswith("."))
        except FileNotFoundError:
            return []

    def __len__(self) -> int:
        return len(self.paths())

    def read(self, path: Path) -> QueuedMail | None:
        """The queued mail, or None (logged) for a file that is not one: it is set aside."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return QueuedMail(path, str(raw["kind"]), str(raw["subject"]), str(raw["body"]),
                              float(raw["raised_at"]))
        except FileNotFoundError:
            return None  # delivered by another process meanwhile
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("queued alert %s is unreadable (%s); moved aside", path.name,
                        type(error).__name__)
            with contextlib.suppress(OSError):
                path.rename(path.with_name("." + path.name + ".unreadable"))
            return None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with exclusive_lock(self.lock_path, None):
            yield
