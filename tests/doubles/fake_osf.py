"""A fake OSF (API v2) and WaterButler (v1 upload links) on loopback, for tests and the lab.

It follows what osfclient 0.0.5 sends and reads (read in its source), the double-slash
URLs it builds, the 302 guid redirect, 10-item pages with `links.next`, `filter[name]`
(icontains), WaterButler PUT semantics (201 new, 409 with the existing file's metadata, 200
update, a new version only when the bytes change), Bearer-token checks (401 bad token, 403 on
writes for a read-only token) and injectable faults (any status, `Retry-After`, delays,
connection resets before or after the upload is stored, shuffled listing order).

API and WaterButler share one port: every link it hands out is absolute and points back here,
so a client that follows links (as it must, storage hosts vary by region) never notices.

Command line (runs until SIGTERM):
    python -m tests.doubles.fake_osf --port 0 --token T --project abc12 [--port-file F] \
        [--state-file F]

With `--state-file` the stored files and folders are written to that JSON file after every
change and read back at start, so the fault suite can stop the process (OSF down: connection
refused) and start it again on the same port with its archive intact, as a real OSF that
comes back still has its files. Faults are injected from outside through the control
endpoints (no auth, loopback only), which take the same fields as `FakeOSF.inject`:
`POST /_control/faults` (one JSON object or a list), `GET /_control/faults` (pending ones),
`DELETE /_control/faults` (drop them all).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.doubles.portfile import write_port_file

PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
ROOT_ID = ""  # the storage root; its WaterButler path is "/"

_STATUS_BODIES: dict[int, dict[str, Any]] = {
    401: {"errors": [{"detail": "User provided an invalid OAuth2 access token"}]},
    403: {"message": "Provided token has insufficient scope for this action", "code": 403},
    409: {"message": "Cannot complete action: conflict", "data": {}},
    411: {"message": "Content-Length is required for file uploads", "code": 411},
    413: {"message": "Folder creation requests may not have a body", "code": 413},
    429: {"error": "API rate-limiting active due to too many requests", "headers": {}},
    507: {"message": "The quota on this osfstorage project has been exceeded", "code": 507},
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


@dataclass
class Entry:
    """A file or folder of the one osfstorage provider; files keep every version's bytes."""

    id: str
    kind: str  # "file" or "folder"
    name: str
    parent: str | None
    children: list[str] = field(default_factory=list)
    versions: list[bytes] = field(default_factory=list)
    created: str = field(default_factory=_now)
    modified: str = field(default_factory=_now)


@dataclass
class Fault:
    """Answer the next `count` requests matching `method`, `path` and `query` abnormally.

    `path` and `query` are regexes searched in the (slash-collapsed) path and the raw query.
    """

    method: str
    path: str
    query: str
    count: int
    status: int | None
    retry_after: int | None
    reset: bool
    reset_after_store: bool
    delay: float

    def matches(self, method: str, path: str, query: str) -> bool:
        return (
            self.count > 0
            and self.method in ("*", method)
            and re.search(self.path, path) is not None
            and re.search(self.query, query) is not None
        )


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the fake saw it (never the Authorization header)."""

    method: str
    path: str
    query: dict[str, str]
    status: int  # 0 when the connection was reset instead of answered


class FakeOSF:
    """State plus the HTTP server; use as a context manager in tests."""

    def __init__(
        self,
        token: str = "fake-osf-token",
        project: str = "abc12",
        read_only_tokens: tuple[str, ...] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        conflict_metadata: bool = True,
        shuffle_listings: bool = False,
        seed: int = 0,
        state_file: Path | None = None,
    ) -> None:
        self.tokens = {token: "write", **{t: "read" for t in read_only_tokens}}
        self.project = project
        self.conflict_metadata = conflict_metadata
        self.shuffle_listings = shuffle_listings
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.entries: dict[str, Entry] = {ROOT_ID: Entry(ROOT_ID, "folder", "", None)}
        self.faults: list[Fault] = []
        self.requests: list[LoggedRequest] = []
        self._next_id = 1
        self.state_file = state_file
        if state_file is not None and state_file.exists():
            self._load_state(state_file)
        self.server = ThreadingHTTPServer((host, port), _make_handler(self))
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The API v2 base, as `osf_base_url` wants it."""
        return f"{self.origin}/v2/"

    def start(self) -> FakeOSF:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOSF:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- test helpers ----------------------------------------------------------------------
    def inject(
        self,
        status: int | None = None,
        *,
        method: str = "*",
        path: str = "",
        query: str = "",
        count: int = 1,
        retry_after: int | None = None,
        reset: bool = False,
        reset_after_store: bool = False,
        delay: float = 0.0,
    ) -> None:
        """Make the next `count` matching requests fail (status, reset) or stall (delay)."""
        with self.lock:
            self.faults.append(Fault(method, path, query, count, status, retry_after, reset,
                                     reset_after_store, delay))

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def pending_faults(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dataclasses.asdict(fault) for fault in self.faults if fault.count > 0]

    def files(self) -> dict[str, bytes]:
        """Latest bytes of every file, keyed by path without a leading slash."""
        with self.lock:
            return {self._path_of(e.id).lstrip("/"): e.versions[-1]
                    for e in self.entries.values() if e.kind == "file"}

    def versions(self, path: str) -> list[bytes]:
        """Every stored version of the file at `path` (e.g. `2026/01/02/x.txt`), oldest first."""
        with self.lock:
            for entry in self.entries.values():
                if entry.kind == "file" and self._path_of(entry.id).lstrip("/") == path:
                    return list(entry.versions)
        raise KeyError(path)

    def folders(self) -> list[str]:
        with self.lock:
            return sorted(self._path_of(e.id).strip("/") for e in self.entries.values()
                          if e.kind == "folder" and e.id != ROOT_ID)

    def put_file(self, path: str, data: bytes) -> None:
        """Seed a file (and its folders) directly, without HTTP: a pre-existing archive."""
        with self.lock:
            parent = ROOT_ID
            *folders, name = path.strip("/").split("/")
            for part in folders:
                found = self._child(parent, part)
                parent = found.id if found else self._create(parent, part, "folder").id
            existing = self._child(parent, name)
            if existing is None:
                self._create(parent, name, "file").versions.append(data)
            elif existing.versions[-1] != data:
                existing.versions.append(data)
            self._save_state()

    def wipe(self) -> None:
        """Delete every file and folder, as a project member could on osf.io."""
        with self.lock:
            self.entries = {ROOT_ID: Entry(ROOT_ID, "folder", "", None)}
            self._save_state()

    def request_count(self, method: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if method in (None, r.method))

    # ---- persistence (call with the lock held) ---------------------------------------------
    def _save_state(self) -> None:
        """Write every entry (all versions) to the state file, whole or not at all."""
        if self.state_file is None:
            return
        entries = [{**dataclasses.asdict(entry),
                    "versions": [base64.b64encode(v).decode() for v in entry.versions]}
                   for entry in self.entries.values()]
        temporary = self.state_file.with_name(self.state_file.name + ".tmp")
        temporary.write_text(json.dumps({"next_id": self._next_id, "entries": entries}))
        os.replace(temporary, self.state_file)

    def _load_state(self, path: Path) -> None:
        raw = json.loads(path.read_text())
        self._next_id = int(raw["next_id"])
        self.entries = {}
        for item in raw["entries"]:
            item["versions"] = [base64.b64decode(v) for v in item["versions"]]
            entry = Entry(**item)
            self.entries[entry.id] = entry

    # ---- storage model (call with the lock held) -------------------------------------------
    def _new_id(self) -> str:
        self._next_id += 1
        return f"{0x5f0000000000000000000000 + self._next_id:024x}"

    def _create(self, parent: str, name: str, kind: str) -> Entry:
        entry = Entry(self._new_id(), kind, name, parent)
        self.entries[entry.id] = entry
        self.entries[parent].children.append(entry.id)
        return entry

    def _child(self, parent: str, name: str) -> Entry | None:
        for child_id in self.entries[parent].children:
            if self.entries[child_id].name == name:
                return self.entries[child_id]
        return None

    def _path_of(self, entry_id: str) -> str:
        parts: list[str] = []
        entry = self.entries[entry_id]
        while entry.parent is not None:
            parts.append(entry.name)
            entry = self.entries[entry.parent]
        path = "/" + "/".join(reversed(parts))
        if self.entries[entry_id].kind == "folder" and entry_id != ROOT_ID:
            path += "/"
        return path

    # ---- JSON shapes ---------------------------------------------------------------------
    def _wb_url(self, entry: Entry) -> str:
        base = f"{self.origin}/v1/resources/{self.project}/providers/osfstorage/"
        if entry.id == ROOT_ID:
            return base
        return base + entry.id + ("/" if entry.kind == "folder" else "")

    def _api_files_url(self, entry: Entry) -> str:
        base = f"{self.origin}/v2/nodes/{self.project}/files/osfstorage/"
        return base if entry.id == ROOT_ID else f"{base}{entry.id}/"

    def _hashes(self, entry: Entry) -> dict[str, str | None]:
        if entry.kind != "file":
            return {"md5": None, "sha256": None}
        data = entry.versions[-1]
        return {"md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}

    def _wb_entity(self, entry: Entry) -> dict[str, Any]:
        """WaterButler's v1 metadata (201/200/409 bodies)."""
        wb = self._wb_url(entry)
        size = len(entry.versions[-1]) if entry.kind == "file" else None
        extra: dict[str, Any] = {}
        links = {"move": wb, "delete": wb}
        if entry.kind == "file":
            extra = {"hashes": self._hashes(entry), "version": len(entry.versions),
                     "downloads": 0, "checkout": None, "guid": None}
            links.update(upload=f"{wb}?kind=file", download=wb)
        else:
            links.update(upload=f"{wb}?kind=file", new_folder=f"{wb}?kind=folder")
        return {"data": {
            "id": f"osfstorage/{entry.id}" + ("/" if entry.kind == "folder" else ""),
            "type": "files",
            "attributes": {
                "extra": extra, "kind": entry.kind, "name": entry.name,
                "path": "/" + entry.id + ("/" if entry.kind == "folder" else ""),
                "provider": "osfstorage", "materialized": self._path_of(entry.id),
                "etag": hashlib.sha256(f"{entry.id}{entry.modified}".encode()).hexdigest(),
                "contentType": None, "modified": entry.modified, "modified_utc": entry.modified,
                "created_utc": entry.created, "resource": self.project,
                "size": size, "sizeInt": size,
            },
            "links": links,
        }}

    def _api_entry(self, entry: Entry) -> dict[str, Any]:
        """API v2 file/folder representation (listings), with every key osfclient reads."""
        wb = self._wb_url(entry)
        links = {"self": f"{self.origin}/v2/files/{entry.id}/",
                 "info": f"{self.origin}/v2/files/{entry.id}/",
                 "move": wb, "upload": wb, "delete": wb,
                 "html": f"{self.origin}/{self.project}/files/osfstorage/{entry.id}"}
        relationships: dict[str, Any] = {}
        if entry.kind == "folder":
            links["new_folder"] = f"{wb}?kind=folder"
            relationships["files"] = {"links": {"related": {
                "href": self._api_files_url(entry), "meta": {}}}}
        else:
            links["download"] = wb
        size = len(entry.versions[-1]) if entry.kind == "file" else None
        return {
            "id": entry.id, "type": "files",
            "attributes": {
                "guid": None, "checkout": None, "name": entry.name, "kind": entry.kind,
                "path": "/" + entry.id + ("/" if entry.kind == "folder" else ""),
                "size": size, "provider": "osfstorage",
                "materialized_path": self._path_of(entry.id),
                "last_touched": None, "date_modified": entry.modified,
                "date_created": entry.created,
                "extra": {"hashes": self._hashes(entry), "downloads": 0},
                "tags": [], "current_version": len(entry.versions) or 1,
            },
            "relationships": relationships,
            "links": links,
        }

    def _node(self) -> dict[str, Any]:
        node_url = f"{self.origin}/v2/nodes/{self.project}/"
        return {"data": {
            "id": self.project, "type": "nodes",
            "attributes": {"title": "Sampled stream tweet IDs", "category": "project",
                           "description": "fake", "date_created": "2024-01-01T00:00:00",
                           "date_modified": _now(), "public": False},
            "relationships": {"files": {"links": {"related": {
                "href": f"{node_url}files/", "meta": {}}}}},
            "links": {"self": node_url, "html": f"{self.origin}/{self.project}/"},
        }}

    def _providers(self) -> dict[str, Any]:
        root = self.entries[ROOT_ID]
        wb = self._wb_url(root)
        return {
            "data": [{
                "id": f"{self.project}:osfstorage", "type": "files",
                "attributes": {"kind": "folder", "name": "osfstorage", "path": "/",
                               "node": self.project, "provider": "osfstorage"},
                "relationships": {"files": {"links": {"related": {
                    "href": self._api_files_url(root), "meta": {}}}}},
                "links": {"upload": wb, "new_folder": f"{wb}?kind=folder"},
            }],
            "links": {"first": None, "last": None, "prev": None, "next": None,
                      "meta": {"total": 1, "per_page": PAGE_SIZE}},
        }

    def _listing(self, folder: Entry, query: dict[str, str], url: str) -> dict[str, Any]:
        children = [self.entries[c] for c in folder.children]
        wanted = query.get("filter[name]")
        if wanted is not None:
            children = [c for c in children if wanted.lower() in c.name.lower()]
        if self.shuffle_listings:
            self.random.shuffle(children)
        per_page = min(int(query.get("page[size]", PAGE_SIZE)), MAX_PAGE_SIZE)
        page = int(query.get("page", "1"))
        last = max(1, -(-len(children) // per_page))
        items = children[(page - 1) * per_page: page * per_page]

        def page_url(number: int) -> str:
            return f"{url}?{urlencode({**query, 'page': str(number)})}"

        return {
            "data": [self._api_entry(c) for c in items],
            "links": {"first": page_url(1), "last": page_url(last),
                      "prev": page_url(page - 1) if page > 1 else None,
                      "next": page_url(page + 1) if page < last else None,
                      "meta": {"total": len(children), "per_page": per_page}},
        }


def _make_handler(fake: FakeOSF) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeOSF/1"

        def log_message(self, format: str, *args: Any) -> None:
            return  # tests read `fake.requests` instead

        def do_GET(self) -> None:
            self._handle("GET")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def do_POST(self) -> None:
            self._handle("POST")

        # ---- plumbing --------------------------------------------------------------------
        def _handle(self, method: str) -> None:
            split = urlsplit(self.path)
            path = re.sub(r"/{2,}", "/", split.path)  # osfclient sends `/v2//guids/...`
            query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
            body = self._read_body()
            if path.startswith("/_control/"):
                self._send(*self._control(method, path, body))
                return
            with fake.lock:
                fault = next((f for f in fake.faults if f.matches(method, path, split.query)), None)
                if fault is not None:
                    fault.count -= 1
            if fault is not None and fault.delay:
                time.sleep(fault.delay)
            if fault is not None and fault.reset:
                self._log(method, path, query, 0)
                self._reset()
                return
            if fault is not None and fault.status is not None:
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                    headers["X-Waterbutler-RateLimiting-Window"] = "3600"
                body_json = _STATUS_BODIES.get(fault.status,
                                               {"errors": [{"detail": "injected fault"}]})
                self._log(method, path, query, fault.status)
                self._send(fault.status, body_json, headers)
                return
            status, payload, headers = self._route(method, path, query, body)
            self._log(method, path, query, status)
            if fault is not None and fault.reset_after_store:
                self._reset()  # stored, but the client never hears about it
                return
            self._send(status, payload, headers)

        def _read_body(self) -> bytes | None:
            """The body, or None when no Content-Length came (WaterButler then says 411)."""
            length = self.headers.get("Content-Length")
            if length is None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return None
            return self.rfile.read(int(length))

        def _log(self, method: str, path: str, query: dict[str, str], status: int) -> None:
            with fake.lock:
                fake.requests.append(LoggedRequest(method, path, query, status))

        def _reset(self) -> None:
            """Close with RST (SO_LINGER 0), as a proxy dropping the connection would."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def _send(self, status: int, payload: dict[str, Any] | bytes | None,
                  headers: dict[str, str]) -> None:
            if isinstance(payload, bytes):
                data, content_type = payload, "application/octet-stream"
            else:
                data = json.dumps(payload).encode() if payload is not None else b""
                content_type = "application/vnd.api+json"
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if data:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        # ---- control endpoints (the fault suite, from outside the process) ----------------
        def _control(self, method: str, path: str,
                     body: bytes | None) -> tuple[int, Any, dict[str, str]]:
            if path != "/_control/faults":
                return 404, {"errors": [{"detail": "Not found."}]}, {}
            if method == "GET":
                return 200, {"data": fake.pending_faults()}, {}
            if method == "DELETE":
                fake.clear_faults()
                return 200, {"data": []}, {}
            if method != "POST":
                return 405, {"errors": [{"detail": "Method not allowed"}]}, {}
            try:
                payload = json.loads(body or b"")
                items = payload if isinstance(payload, list) else [payload]
                checked = [_fault_fields(item) for item in items]
            except (ValueError, TypeError, re.error) as error:
                return 400, {"errors": [{"detail": str(error)}]}, {}
            for fields in checked:
                fake.inject(**fields)
            return 201, {"queued": len(checked)}, {}

        # ---- routes ----------------------------------------------------------------------
        def _route(self, method: str, path: str, query: dict[str, str],
                   body: bytes | None) -> tuple[int, Any, dict[str, str]]:
            scope = fake.tokens.get(_bearer(self.headers.get("Authorization", "")))
            if scope is None:
                return 401, _STATUS_BODIES[401], {}
            with fake.lock:
                if method == "GET":
                    return self._get(path, query)
                if method == "PUT" and path.startswith("/v1/"):
                    if scope != "write":
                        return 403, _STATUS_BODIES[403], {}
                    return self._put_and_save(path, query, body)
            return 405, {"errors": [{"detail": "Method not allowed"}]}, {}

        def _get(self, path: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
            not_found: tuple[int, Any, dict[str, str]] = (
                404, {"errors": [{"detail": "Not found."}]}, {})
            node = re.escape(fake.project)
            if re.fullmatch(rf"/v2/guids/{node}/", path):
                return 302, None, {"Location": f"{fake.origin}/v2/nodes/{fake.project}/"}
            if re.fullmatch(rf"/v2/nodes/{node}/", path):
                return 200, fake._node(), {}
            if re.fullmatch(rf"/v2/nodes/{node}/files/", path):
                return 200, fake._providers(), {}
            match = re.fullmatch(rf"/v2/nodes/{node}/files/osfstorage/(?:([0-9a-f]+)/)?", path)
            if match:
                folder = fake.entries.get(match[1] or ROOT_ID)
                if folder is None or folder.kind != "folder":
                    return not_found
                return 200, fake._listing(folder, query, f"{fake.origin}{path}"), {}
            match = re.fullmatch(rf"/v1/resources/{node}/providers/osfstorage/([0-9a-f]+)", path)
            if match:
                entry = fake.entries.get(match[1])
                if entry is None or entry.kind != "file":
                    return not_found
                return 200, entry.versions[-1], {}
            return not_found

        def _put(self, path: str, query: dict[str, str],
                 body: bytes | None) -> tuple[int, Any, dict[str, str]]:
            not_found: tuple[int, Any, dict[str, str]] = (
                404, {"code": 404, "message": "Could not retrieve file or directory"}, {})
            match = re.fullmatch(
                rf"/v1/resources/{re.escape(fake.project)}/providers/osfstorage/"
                r"(?:([0-9a-f]+)(/?))?", path)
            if not match:
                return not_found
            target = fake.entries.get(match[1] or ROOT_ID)
            # WaterButler addresses by id; a folder id ends in "/", a file id never does.
            if target is None or (match[1] and (target.kind == "folder") != (match[2] == "/")):
                return not_found
            kind = query.get("kind", "file")
            if target.kind == "file":
                if body is None:
                    return 411, _STATUS_BODIES[411], {}
                if body != target.versions[-1]:  # OSF keeps identical uploads as one version
                    target.versions.append(body)
                    target.modified = _now()
                return 200, fake._wb_entity(target), {}
            name = query.get("name", "")
            if not name:
                return 400, {"code": 400, "message": "Missing required parameter 'name'"}, {}
            if kind == "folder" and body:
                return 413, _STATUS_BODIES[413], {}
            if kind == "file" and body is None:
                return 411, _STATUS_BODIES[411], {}
            existing = fake._child(target.id, name)
            if existing is not None:
                message = (f'Cannot complete action: file or folder "{name}" already exists '
                           "in this location")
                data: dict[str, Any] = {}
                if existing.kind == "file" and kind == "file" and fake.conflict_metadata:
                    data = fake._wb_entity(existing)["data"]
                return 409, {"message": message, "data": data}, {}
            entry = fake._create(target.id, name, kind)
            if kind == "file":
                entry.versions.append(body or b"")
            return 201, fake._wb_entity(entry), {}

        def _put_and_save(self, path: str, query: dict[str, str],
                          body: bytes | None) -> tuple[int, Any, dict[str, str]]:
            answer = self._put(path, query, body)
            if answer[0] in (200, 201):
                fake._save_state()
            return answer

    return Handler


_FAULT_TYPES: dict[str, tuple[type, ...]] = {
    "status": (int, type(None)), "method": (str,), "path": (str,), "query": (str,),
    "count": (int,), "retry_after": (int, type(None)), "reset": (bool,),
    "reset_after_store": (bool,), "delay": (int, float),
}


def _fault_fields(item: Any) -> dict[str, Any]:
    """The keyword arguments of `FakeOSF.inject` from one control request's JSON object."""
    if not isinstance(item, dict):
        raise TypeError("a fault is a JSON object")
    for key, value in item.items():
        if key not in _FAULT_TYPES:
            raise ValueError(f"unknown fault field {key!r}")
        if not isinstance(value, _FAULT_TYPES[key]):
            raise TypeError(f"fault field {key!r} has the wrong type")
        if key in ("path", "query"):
            re.compile(value)
    return dict(item)


def _bearer(header: str) -> str:
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", required=True, help="the write-scoped token to accept")
    parser.add_argument("--read-only-token", action="append", default=[],
                        help="a token that may read but gets 403 on writes")
    parser.add_argument("--project", default="abc12")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--shuffle-listings", action="store_true")
    parser.add_argument("--no-conflict-metadata", action="store_true",
                        help="answer file 409s with empty data, as WaterButler < 22.0.0 did")
    parser.add_argument("--state-file", type=Path,
                        help="keep the stored files here across restarts (read at start)")
    args = parser.parse_args(argv)
    fake = FakeOSF(token=args.token, project=args.project,
                   read_only_tokens=tuple(args.read_only_token), host=args.host, port=args.port,
                   conflict_metadata=not args.no_conflict_metadata,
                   shuffle_listings=args.shuffle_listings, state_file=args.state_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    fake.start()
    if args.port_file is not None:
        write_port_file(args.port_file, fake.port)
    print(f"fake OSF listening on {fake.url} (project {fake.project})", flush=True)
    stop.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
