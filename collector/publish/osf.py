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

Only `YYYY-mm-dd_HH_IDs.txt.xz` and `YYYY-mm-dd_report.txt` are ever selected; tweets and
users files hold tweet content and must never leave the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from collector.alerts.notify import UPLOAD_FAILING, Notifier, alert_failure, make_notifier
from collector.clock import utc_now_text
from collector.errors import CollectorError, CredentialsError, RemoteError
from collector.fsutil import exclusive_lock, read_state, write_bytes_atomic
from collector.layout import HourKey
from collector.settings import Settings, read_osf_token

log = logging.getLogger("collector.upload")

LEDGER_NAME = "osf_upload.json"
LOCK_NAME = "upload.lock"
# (connect, read): the read part also bounds how long OSF may take to answer a finished upload.
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 120.0)
SAVE_EVERY = 50  # ledger writes during a long catch-up; always saved at the end too

_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_T = TypeVar("_T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often one request is tried, and how long to wait between tries.

    `max_retry_after` caps how long a 429's `Retry-After` may hold the hourly run; beyond it
    the run stops and the next hour's run carries on.
    """

    attempts: int = 3
    backoff: tuple[float, ...] = (2.0, 10.0)
    max_retry_after: float = 120.0

    def delay(self, attempt: int) -> float:
        return self.backoff[min(attempt - 1, len(self.backoff) - 1)]


DEFAULT_RETRY = RetryPolicy()


# ---- what to upload (pure except for reading the directory) -------------------------------


@dataclass(frozen=True)
class LocalFile:
    """An output file that belongs on OSF, and where: `remote` is `YYYY/MM/DD/name`."""

    path: Path
    remote: str
    size: int
    mtime_ns: int


def is_publishable(day: str, name: str) -> bool:
    """True for an hour's IDs file or the day's report; never tweets, users or hidden files."""
    escaped = re.escape(day)
    return bool(re.fullmatch(rf"{escaped}_\d{{2}}b?_IDs\.txt\.xz", name)
                or name == f"{day}_report.txt")


def remote_path(day: str, name: str) -> str:
    """`2026-01-02`, `x` -> `2026/01/02/x`: the folder layout on OSF."""
    match = _DAY.match(day)
    if match is None:
        raise ValueError(f"{day!r} is not a day like 2026-01-02")
    return f"{match[1]}/{match[2]}/{match[3]}/{name}"


def _local_file(path: Path, day: str) -> LocalFile:
    info = path.stat()
    return LocalFile(path, remote_path(day, path.name), info.st_size, info.st_mtime_ns)


def select_files(vault: Path, hour: HourKey | None = None) -> list[LocalFile]:
    """Every publishable file under `vault`, or just one hour's IDs file and its day's report."""
    if hour is not None:
        day_dir = vault / hour.day
        ids = day_dir / f"{hour.file_prefix}_IDs.txt.xz"
        if not ids.is_file():
            raise CollectorError(f"nothing to upload for {hour}: {ids} does not exist")
        selected = [_local_file(ids, hour.day)]
        report = day_dir / f"{hour.day}_report.txt"
        if report.is_file():
            selected.append(_local_file(report, hour.day))
        return selected
    if not vault.is_dir():
        return []
    selected = []
    for day_dir in sorted(vault.iterdir()):
        if not (_DAY.match(day_dir.name) and day_dir.is_dir()):
            continue
        for path in sorted(day_dir.iterdir()):
            if is_publishable(day_dir.name, path.name) and path.is_file():
                selected.append(_local_file(path, day_dir.name))
    return selected


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


@contextlib.contextmanager
def upload_lock(state_dir: Path) -> Iterator[None]:
    """One upload at a time: a slow run must not race the next hour's."""
    with exclusive_lock(state_dir / LOCK_NAME, "another collector upload is running"):
        yield


# ---- talking to OSF -----------------------------------------------------------------------


class _TimeoutAdapter(HTTPAdapter):
    """Gives every request a timeout, including osfclient's own, which pass none."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.default_timeout = timeout

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        return super().send(request, stream=stream,
                            timeout=self.default_timeout if timeout is None else timeout,
                            verify=verify, cert=cert, proxies=proxies)


class _Retryable(Exception):
    """A failure worth another try: 429, 5xx, a reset or a timeout."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _StaleFolder(Exception):
    """A cached folder link answered 404: the folder was removed on OSF."""


@dataclass(frozen=True)
class FolderLinks:
    new_folder: str
    upload: str
    files_url: str


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _check(response: requests.Response, what: str, project: str) -> requests.Response:
    """Raise the right error for a failed response; return it otherwise (incl. 404/409)."""
    code = response.status_code
    if code == 401:
        raise CredentialsError(
            f"OSF rejected the token (HTTP 401 Unauthorized) on {what}: "
            "check the token in osf_credentials.txt is valid and not revoked")
    if code == 403:
        raise RemoteError(
            f"OSF refused {what} (HTTP 403 Forbidden): the token needs the osf.full_write "
            f"scope and write access to project {project}")
    if code == 507:
        raise RemoteError(
            f"OSF storage quota of project {project} is exhausted (HTTP 507) on {what}")
    if code == 429:
        raise _Retryable(f"OSF is rate-limiting (HTTP 429) on {what}", _retry_after(response))
    if code >= 500:
        raise _Retryable(f"OSF failed (HTTP {code}) on {what}", _retry_after(response))
    return response


def _describe_network_error(error: requests.RequestException, url: str) -> str:
    if isinstance(error, requests.Timeout):
        return f"no answer from {_host(url)} in time ({type(error).__name__})"
    reason = "connection reset" if "reset" in str(error).lower() else "connection failed"
    return f"{reason} talking to {_host(url)}"


class OsfUploader:
    """Create-or-update files under `YYYY/MM/DD/` in one OSF storage, at O(1) requests each."""

    def __init__(self, session: requests.Session, root: FolderLinks, ledger: UploadLedger,
                 project: str, retry: RetryPolicy = DEFAULT_RETRY,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.session = session
        self.root = root
        self.ledger = ledger
        self.project = project
        self.retry = retry
        self.sleep = sleep

    # -- one HTTP exchange, retried when worth it --
    def _with_retries(self, what: str, action: Callable[[], _T]) -> _T:
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return action()
            except _Retryable as failure:
                wait = failure.retry_after if failure.retry_after is not None else \
                    self.retry.delay(attempt)
                if attempt == self.retry.attempts or wait > self.retry.max_retry_after:
                    raise RemoteError(f"{failure} (gave up after {attempt} "
                                      f"attempt{'s' if attempt > 1 else ''})") from None
                log.warning("%s; retrying in %.0f s", failure, wait)
                self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _request(self, method: str, url: str, what: str, *, params: dict[str, str] | None = None,
                 body: Path | None = None) -> requests.Response:
        def once() -> requests.Response:
            try:
                if body is None:
                    response = self._send(method, url, params, None)
                elif body.stat().st_size == 0:
                    # An empty file object would go out chunked; WaterButler wants a length.
                    response = self._send(method, url, params, b"")
                else:
                    with body.open("rb") as stream:
                        response = self._send(method, url, params, stream)
            except (requests.ConnectionError, requests.Timeout) as error:
                raise _Retryable(f"{_describe_network_error(error, url)} on {what}") from None
            return _check(response, what, self.project)

        return self._with_retries(what, once)

    def _send(self, method: str, url: str, params: dict[str, str] | None,
              data: bytes | IO[bytes] | None) -> requests.Response:
        # requests.Session.request, not osfclient's wrappers: no 1 request/s sleep, and every
        # status comes back to us instead of being swallowed.
        return requests.Session.request(self.session, method, url, params=params, data=data)

    def _json(self, response: requests.Response, what: str) -> dict[str, Any]:
        try:
            payload = response.json()
        except ValueError:
            raise RemoteError(f"OSF sent a reply that is not JSON on {what}") from None
        if not isinstance(payload, dict):
            raise RemoteError(f"OSF sent an unexpected reply on {what}")
        return payload

    # -- folders --
    def folder(self, relative: str) -> FolderLinks:
        """Links of folder `YYYY/MM/DD` (created if missing), from the ledger when known."""
        cached = self.ledger.folders.get(relative)
        if cached is not None:
            return FolderLinks(**cached)
        parent_path, _, name = relative.rpartition("/")
        parent = self.folder(parent_path) if parent_path else self.root
        what = f"creating folder {relative}"
        response = self._request("PUT", parent.new_folder, what, params={"name": name})
        if response.status_code == 201:
            data = self._json(response, what).get("data", {})
            try:
                folder_id = data["attributes"]["path"].strip("/")
                links = FolderLinks(data["links"]["new_folder"], data["links"]["upload"],
                                    f"{self.root.files_url.rstrip('/')}/{folder_id}/")
            except (KeyError, TypeError, AttributeError):
                raise RemoteError(f"OSF sent an unexpected reply on {what}") from None
        elif response.status_code == 409:
            links = self._find_folder(parent, name, relative)
        elif response.status_code == 404 and parent is not self.root:
            raise _StaleFolder(parent_path)
        else:
            raise RemoteError(f"OSF answered HTTP {response.status_code} on {what}")
        self.ledger.folders[relative] = {"new_folder": links.new_folder, "upload": links.upload,
                                         "files_url": links.files_url}
        return links

    def _listing(self, folder: FolderLinks, name: str, what: str) -> Iterator[dict[str, Any]]:
        """Entries of `folder` whose name contains `name` (OSF filters by icontains)."""
        url: str | None = folder.files_url
        params: dict[str, str] | None = {"filter[name]": name, "page[size]": "100"}
        while url is not None:
            payload = self._json(self._request("GET", url, what, params=params), what)
            if not isinstance(payload.get("data"), list):
                raise RemoteError(f"OSF sent an unexpected reply on {what}")
            yield from payload["data"]
            url = (payload.get("links") or {}).get("next")
            params = None  # the next link carries the query

    def _find_folder(self, parent: FolderLinks, name: str, relative: str) -> FolderLinks:
        what = f"looking up folder {relative}"
        for entry in self._listing(parent, name, what):
            attributes = entry.get("attributes", {})
            if attributes.get("kind") == "folder" and attributes.get("name") == name:
                try:
                    return FolderLinks(entry["links"]["new_folder"], entry["links"]["upload"],
                                       entry["relationships"]["files"]["links"]["related"]["href"])
                except (KeyError, TypeError):
                    break
        raise RemoteError(f"OSF says {relative} exists but lists no such folder")

    # -- files --
    def upload(self, local: LocalFile, md5: str) -> str:
        """Make OSF hold `local`'s bytes; returns `created`, `updated` or `unchanged`."""
        folder_path, _, _ = local.remote.rpartition("/")
        try:
            return self._upload_into(self.folder(folder_path), local, md5)
        except _StaleFolder:
            pass
        # A folder was deleted on OSF since we cached it: forget the day's links, try once more.
        for cached in [key for key in self.ledger.folders
                       if folder_path == key or folder_path.startswith(key + "/")]:
            del self.ledger.folders[cached]
        try:
            return self._upload_into(self.folder(folder_path), local, md5)
        except _StaleFolder:
            raise RemoteError(f"OSF keeps answering 404 for folder {folder_path}") from None

    def _upload_into(self, folder: FolderLinks, local: LocalFile, md5: str) -> str:
        name = local.remote.rpartition("/")[2]
        what = f"uploading {local.remote}"
        params = {"name": name}
        if "kind=" not in folder.upload:
            params["kind"] = "file"
        response = self._request("PUT", folder.upload, what, params=params, body=local.path)
        if response.status_code == 201:
            return "created"
        if response.status_code == 404:
            raise _StaleFolder(local.remote.rpartition("/")[0])
        if response.status_code != 409:
            raise RemoteError(f"OSF answered HTTP {response.status_code} on {what}")
        remote_md5, update_url = self._existing(response, folder, name, local.remote)
        if remote_md5 == md5:
            return "unchanged"
        what = f"updating {local.remote}"
        response = self._request("PUT", update_url, what, body=local.path)
        if response.status_code not in (200, 201):
            raise RemoteError(f"OSF answered HTTP {response.status_code} on {what}")
        return "updated"

    def _existing(self, conflict: requests.Response, folder: FolderLinks, name: str,
                  remote: str) -> tuple[str | None, str]:
        """md5 and update link of the file a 409 is about: from the 409 body, else a lookup."""
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            data = conflict.json()["data"]
            if data and data["attributes"]["kind"] == "file":
                md5 = data["attributes"]["extra"]["hashes"]["md5"]
                return md5, data["links"]["upload"]
        # WaterButler before 22.0.0 sent no metadata: look the file up by name instead.
        what = f"looking up {remote}"
        for entry in self._listing(folder, name, what):
            attributes = entry.get("attributes", {})
            if attributes.get("kind") == "file" and attributes.get("name") == name:
                try:
                    return attributes["extra"]["hashes"]["md5"], entry["links"]["upload"]
                except (KeyError, TypeError):
                    break
        raise RemoteError(f"OSF says {remote} exists but it is not a file we can update")


def connect(base_url: str, project_id: str, storage_name: str, token: str,
            timeout: tuple[float, float] = DEFAULT_TIMEOUT,
            retry: RetryPolicy = DEFAULT_RETRY,
            sleep: Callable[[float], None] = time.sleep,
            on_response: Callable[[requests.Response], None] | None = None,
            ) -> tuple[requests.Session, FolderLinks]:
    """Log in with osfclient and find the storage: its session and the storage root's links.

    `on_response` sees every HTTP response of the session (redirects included), for counting.
    """
    from osfclient import OSF  # imported late: only runs that upload pay for it
    from osfclient.exceptions import OSFException, UnauthorizedException

    osf = OSF(token=token)  # a keyword: positionally the token would become a Basic password
    session: requests.Session = osf.session
    # Canonical URLs (no `//`), which both osf.io and any stand-in accept.
    session.base_url = base_url.rstrip("/")  # type: ignore[attr-defined]
    adapter = _TimeoutAdapter(timeout)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    last: list[requests.Response] = []
    session.hooks["response"].append(lambda response, *args, **kwargs: last.append(response))
    if on_response is not None:
        session.hooks["response"].append(
            lambda response, *args, **kwargs: on_response(response))

    def discover() -> FolderLinks:
        what = f"opening OSF project {project_id}"
        last.clear()
        try:
            store = osf.project(project_id).storage(storage_name)
            return FolderLinks(store._new_folder_url, store._new_file_url, store._files_url)
        except UnauthorizedException:
            raise CredentialsError(
                f"OSF rejected the token (HTTP 401 Unauthorized) on {what}: "
                "check the token in osf_credentials.txt is valid and not revoked") from None
        except (requests.ConnectionError, requests.Timeout) as error:
            raise _Retryable(f"{_describe_network_error(error, base_url)} on {what}") from None
        except (RuntimeError, KeyError, TypeError, ValueError, OSFException) as error:
            if last and last[-1].status_code >= 400:
                response = _check(last[-1], what, project_id)
                if response.status_code == 404:
                    raise RemoteError(f"OSF has no project {project_id} (HTTP 404), or the "
                                      "token may not see it") from None
                raise RemoteError(f"OSF answered HTTP {response.status_code} on {what}") from None
            if "storage provider" in str(error):
                raise RemoteError(f"OSF project {project_id} has no storage "
                                  f"{storage_name}") from None
            raise RemoteError(f"OSF sent an unexpected reply on {what} "
                              f"({type(error).__name__})") from None

    probe = OsfUploader(session, FolderLinks("", "", ""), UploadLedger(""), project_id, retry,
                        sleep)
    return session, probe._with_retries("discovery", discover)


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
        for local in select_files(settings.data_vault_dst, hour):
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
