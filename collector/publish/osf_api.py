"""Talking to OSF: osfclient for discovery, then WaterButler directly, with timeouts and retries.

Every request has a connect and a read timeout; 429 and 5xx answers and network errors are
retried with backoff (`RetryPolicy`, honouring Retry-After up to a cap); any other failure is
one `RemoteError` line that names what failed and never the token.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from collector.errors import CredentialsError, RemoteError
from collector.publish.files import LocalFile
from collector.publish.ledger import UploadLedger

log = logging.getLogger("collector.upload")
# (connect, read): the read part also bounds how long OSF may take to answer a finished upload.
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 120.0)
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
