"""The hourly rule: the same alert kind is mailed at most once an hour per host.

The stream service and the cron jobs (send, process, upload) are separate processes that all
alert, so the rule lives in a small JSON file under `settings.state_dir`, changed under a lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from collector.fsutil import exclusive_lock, read_state, write_bytes_atomic

log = logging.getLogger("collector.mail")
ALERT_INTERVAL = 3600.0  # the same alert kind is mailed at most once per this many seconds
ALERT_STATE_FILE = "alerts_sent.json"


class AlertLedger:
    """When each alert kind was last mailed, shared by every process through a locked file."""

    def __init__(self, state_dir: Path, interval: float = ALERT_INTERVAL) -> None:
        self.path = state_dir / ALERT_STATE_FILE
        self.lock_path = state_dir / (ALERT_STATE_FILE + ".lock")
        self.interval = interval

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, float]]:
        with exclusive_lock(self.lock_path, None):
            sent = self._read()
            before = dict(sent)
            yield sent
            if sent != before:
                self._write(sent)

    def _read(self) -> dict[str, float]:
        raw = read_state(self.path, log, "every alert may be mailed once more")
        if not isinstance(raw, dict):
            return {}
        return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)}

    def _write(self, sent: dict[str, float]) -> None:
        write_bytes_atomic(self.path, (json.dumps(sent, sort_keys=True) + "\n").encode())

    def claim(self, kind: str, now: float) -> float | None:
        """Record `kind` as mailed at `now` and return None, or return when it last was
        mailed if that is less than `interval` from `now` (then nothing is recorded).

        Either side: a process reads its clock before it gets the lock, so a claim made
        an instant later by another process can look a little in the future (four processes
        alerting at once mailed twice under load when only the past counted)."""
        with self._locked() as sent:
            last = sent.get(kind)
            if last is not None and abs(now - last) < self.interval:
                return last
            sent[kind] = now
            return None

    def release(self, kind: str, claimed_at: float) -> None:
        """Forget a claim whose mail failed, so the next occurrence tries again."""
        with self._locked() as sent:
            if sent.get(kind) == claimed_at:
                del sent[kind]
