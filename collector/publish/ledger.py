"""The upload ledger: what is on OSF already, and OSF's folder links, kept with the vault."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.clock import utc_now_text
from collector.fsutil import read_state, write_bytes_atomic
from collector.publish.files import LocalFile, file_md5
from collector.settings import Settings

LEDGER_NAME = "osf_upload.json"

log = logging.getLogger("collector.upload")


# ---- the local ledger ---------------------------------------------------------------------


@dataclass
class UploadLedger:
    """What OSF is known to hold, and the cached WaterButler links of the day folders.

    `target` (API base, project, storage) guards against a settings change: a ledger written
    for another project is not trusted.
    """

    target: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: dict[str, dict[str, str]] = field(default_factory=dict)
    last_run: dict[str, Any] = field(default_factory=dict)
    dirty: bool = field(default=False, compare=False)  # changed since loaded

    def is_current(self, local: LocalFile) -> bool:
        """Already uploaded with these bytes? Hashes only files whose size or mtime moved."""
        known = self.files.get(local.remote)
        if known is None or known.get("size") != local.size:
            return False
        if known.get("mtime_ns") == local.mtime_ns:
            return True
        if known.get("md5") == file_md5(local.path):
            known["mtime_ns"] = local.mtime_ns  # touched but identical: hash it only once
            self.dirty = True
            return True
        return False

    def record(self, local: LocalFile, md5: str) -> None:
        self.files[local.remote] = {"md5": md5, "size": local.size, "mtime_ns": local.mtime_ns,
                                    "uploaded_at": utc_now_text()}


def ledger_target(settings: Settings) -> str:
    return f"{settings.osf_base_url}|{settings.osf_project}|{settings.osf_storage}"


def upload_state_dir(vault: Path) -> Path:
    """The upload's lock and ledger: in the vault (`<vault>/.collector/`), beside what they
    describe, so a vault restored or moved keeps its record of what is on OSF."""
    return vault / ".collector"


def load_ledger(path: Path, target: str) -> UploadLedger:
    # Losing the ledger costs one request per file on the next run, never a wrong upload.
    raw = read_state(path, log, "every file is checked against OSF again")
    if not isinstance(raw, dict) or raw.get("target") != target:
        last_run = raw.get("last_run", {}) if isinstance(raw, dict) else {}
        return UploadLedger(target, last_run=last_run)
    return UploadLedger(target, dict(raw.get("files", {})), dict(raw.get("folders", {})),
                        dict(raw.get("last_run", {})))


def save_ledger(path: Path, ledger: UploadLedger) -> None:
    """Write atomically (temp file, fsync, rename): a crash leaves the old or the new ledger."""
    payload = json.dumps({"target": ledger.target, "files": ledger.files,
                          "folders": ledger.folders, "last_run": ledger.last_run},
                         indent=1, sort_keys=True).encode()
    write_bytes_atomic(path, payload)
