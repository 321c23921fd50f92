"""The fake OSF's outside controls, which the fault suite drives in the lab: fault injection
over HTTP (`/_control/faults`) and files kept across a restart (`--state-file`)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.fake_osf import FakeOSF
from tests.integration.helpers import REPO_ROOT, wait_for_port_file

pytestmark = pytest.mark.integration

TOKEN = "osf-control-token"


def control(fake_port: int, method: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{fake_port}/_control/faults", data=data,
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def get(url: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def test_faults_are_injected_listed_and_cleared_over_http() -> None:
    with FakeOSF(token=TOKEN, project="p1") as fake:
        node = f"{fake.url}nodes/p1/"
        assert control(fake.port, "POST", [{"status": 429, "retry_after": 7, "count": 2,
                                            "path": "^/v2/nodes/"}]) == (201, {"queued": 1})
        status, pending = control(fake.port, "GET")
        assert status == 200 and pending["data"][0]["status"] == 429
        assert get(node)[0] == 429
        assert get(node)[1]["Retry-After"] == "7"
        assert get(node)[0] == 200  # count 2 used up
        control(fake.port, "POST", {"status": 507, "count": 100})
        assert get(node)[0] == 507
        assert control(fake.port, "DELETE") == (200, {"data": []})
        assert get(node)[0] == 200
        assert control(fake.port, "GET")[1] == {"data": []}


@pytest.mark.parametrize("body", [{"stauts": 429}, {"count": "many"}, [1], {"path": "("}])
def test_bad_fault_is_refused(body: Any) -> None:
    with FakeOSF(token=TOKEN) as fake:
        status, answer = control(fake.port, "POST", body)
        assert status == 400 and answer["errors"]
        assert fake.faults == []


def test_state_file_keeps_files_across_a_restart_on_the_same_port(tmp_path: Path) -> None:
    """As the lab runs it: a process stopped (SIGTERM) and started again on its port."""
    state = tmp_path / "osf.json"

    def start(port: int) -> tuple[subprocess.Popen[bytes], int]:
        port_file = tmp_path / "port"
        port_file.unlink(missing_ok=True)
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.doubles.fake_osf", "--token", TOKEN, "--project",
             "p1", "--port", str(port), "--port-file", str(port_file), "--state-file",
             str(state)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
        return process, wait_for_port_file(process, port_file, timeout=30)

    process, port = start(0)
    try:
        upload = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/resources/p1/providers/osfstorage/?kind=file&name=a.txt",
            data=b"hello", method="PUT", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(upload, timeout=10) as response:
            assert response.status == 201
    finally:
        process.terminate()
        process.wait(10)
    process, again = start(port)
    try:
        assert again == port
        listing = urllib.request.Request(f"http://127.0.0.1:{port}/v2/nodes/p1/files/osfstorage/",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(listing, timeout=10) as response:
            [entry] = json.load(response)["data"]
        with urllib.request.urlopen(urllib.request.Request(
                entry["links"]["download"], headers={"Authorization": f"Bearer {TOKEN}"}),
                timeout=10) as response:
            assert response.read() == b"hello"
    finally:
        process.terminate()
        process.wait(10)
