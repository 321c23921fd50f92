"""Publish each hour's tweet IDs and each day's report on OSF, at a constant cost per file.

osfclient 0.0.5 logs in and finds the project and its storage, but its own upload path walks
the whole storage to update a file (over a thousand requests per year of archive), ignores
403/429/507/5xx on file uploads and sets no timeouts (read in osfclient 0.0.5's source). So
after discovery this module talks to OSF's file service (WaterButler) directly through
osfclient's session, as WaterButler's API allows: one PUT creates a file; if it exists, the
409 reply carries its md5 and update link, so an unchanged file costs one request and a
changed one two.
Folder links are cached in a local ledger, which also remembers what was uploaded, so an hour
with nothing new makes no request at all.

Only `YYYY-mm-dd_HH_IDs.txt.xz`, `YYYY-mm-dd_report.txt` and the source's other published
outputs (Bluesky: `YYYY-mm-dd_HH_deletes.txt.xz`) are ever selected; tweets, users and posts
files hold content and must never leave the server.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

from collector.alerts.notify import UPLOAD_FAILING, Notifier, alert_failure, make_notifier
from collector.clock import utc_now_text
from collector.errors import CollectorError
from collector.fsutil import exclusive_lock
from collector.layout import HourKey
from collector.publish.files import LocalFile, file_md5, select_files
from collector.publish.ledger import (
    LEDGER_NAME,
    UploadLedger,
    ledger_target,
    load_ledger,
    save_ledger,
    upload_state_dir,
)
from collector.publish.osf_api import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    OsfUploader,
    RetryPolicy,
    connect,
)
from collector.settings import Settings, read_osf_token
from collector.sources import source_for

log = logging.getLogger("collector.upload")
LOCK_NAME = "upload.lock"
SAVE_EVERY = 50  # ledger writes during a long catch-up; always saved at the end too


@contextlib.contextmanager
def upload_lock(state_dir: Path) -> Iterator[None]:
    """One upload at a time: a slow run must not race the next hour's."""
    with exclusive_lock(state_dir / LOCK_NAME, "another collector upload is running"):
        yield


# ---- one run ------------------------------------------------------------------------------


@dataclass
class UploadResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    already_done: int = 0  # known from the ledger, no request sent
    pending: list[str] = field(default_factory=list)  # left for the next run after a failure
    requests: int = 0  # HTTP requests answered (redirects count), for the log and the tests

    def summary(self) -> str:
        return (f"{len(self.created)} created, {len(self.updated)} updated, "
                f"{len(self.unchanged)} unchanged on OSF, {self.already_done} already uploaded, "
                f"{len(self.pending)} pending")


def upload_to_osf(settings: Settings, hour: HourKey | None = None, *,
                  notifier: Notifier | None = None,
                  timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                  retry: RetryPolicy | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> UploadResult:
    """Upload every IDs file and day report OSF lacks or holds in an older version.

    With `hour`, only that hour's IDs file and its day's report, and checked against OSF even
    if the ledger says they are there (a cheap way to repair a file deleted on OSF).
    Raises a `CollectorError` (after alerting) when anything failed; what failed stays pending.
    """
    result = UploadResult()
    if not settings.osf_enabled:
        log.info("OSF upload is disabled (osf_enabled=False); nothing to do")
        return result
    if not settings.is_main or settings.data_vault_dst is None:
        raise CollectorError("upload runs on the main server only (role=main, data_vault_dst)")
    retry = retry or DEFAULT_RETRY
    state_dir = upload_state_dir(settings.data_vault_dst)
    ledger_path = state_dir / LEDGER_NAME
    with upload_lock(state_dir):
        ledger = load_ledger(ledger_path, ledger_target(settings))
        todo: list[tuple[LocalFile, str]] = []
        for local in select_files(settings.data_vault_dst, hour,
                                  source_for(settings).published):
            if hour is None and ledger.is_current(local):
                result.already_done += 1
            else:
                todo.append((local, file_md5(local.path)))
        if not todo:
            if ledger.dirty:
                save_ledger(ledger_path, ledger)
            log.info("nothing new to upload (%d files already on OSF)", result.already_done)
            return result
        result.pending = [local.remote for local, _ in todo]
        try:
            _upload_all(settings, ledger, todo, result, timeout, retry, sleep)
        except CollectorError as error:
            ledger.last_run = {"at": utc_now_text(), "ok": False, "error": str(error)}
            save_ledger(ledger_path, ledger)
            # No log line of our own: the CLI prints the error as the run's one line.
            alert_failure(notifier or make_notifier(settings), UPLOAD_FAILING,
                          f"OSF upload failing: {error}",
                          f"{len(result.pending)} files stay pending and are retried on the "
                          "next run.")
            raise
        ledger.last_run = {"at": utc_now_text(), "ok": True, "error": ""}
        save_ledger(ledger_path, ledger)
    log.info("upload done: %s (%d requests)", result.summary(), result.requests)
    return result


def _upload_all(settings: Settings, ledger: UploadLedger, todo: list[tuple[LocalFile, str]],
                result: UploadResult, timeout: tuple[float, float], retry: RetryPolicy,
                sleep: Callable[[float], None]) -> None:
    token = read_osf_token(settings)

    def count(response: requests.Response) -> None:
        result.requests += 1

    session, root = connect(settings.osf_base_url, settings.osf_project, settings.osf_storage,
                            token, timeout, retry, sleep, on_response=count)
    uploader = OsfUploader(session, root, ledger, settings.osf_project, retry, sleep)
    state_path = upload_state_dir(settings.data_vault_dst or Path(".")) / LEDGER_NAME
    try:
        for done, (local, md5) in enumerate(todo, start=1):
            outcome = uploader.upload(local, md5)
            getattr(result, outcome).append(local.remote)
            result.pending.remove(local.remote)
            ledger.record(local, md5)
            log.info("%s %s (%d/%d)", outcome, local.remote, done, len(todo))
            if done % SAVE_EVERY == 0:
                save_ledger(state_path, ledger)
    finally:
        session.close()
