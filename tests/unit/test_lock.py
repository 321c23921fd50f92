"""uv.lock is the one lock of the whole tree; requirements/*.txt are its exports for pip.

They drift apart when someone edits pyproject.toml and forgets `make lock`: this fails then,
with the command that fixes it. uv reads the lock offline (no resolution, no network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
EXPORTS = {
    "requirements/controller.txt": ["--all-groups"],
    "requirements/hosts.txt": ["--no-dev"],
}


def uv(*args: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, UV_OFFLINE="1", UV_NO_PROGRESS="1")
    return subprocess.run([str(UV), *args], cwd=REPO, env=environment, capture_output=True,
                          text=True, timeout=120)


def test_the_lock_satisfies_pyproject() -> None:
    result = uv("lock", "--check")
    assert result.returncode == 0, f"uv.lock is stale; run `make lock`: {result.stderr.strip()}"


@pytest.mark.parametrize("export", list(EXPORTS))
def test_each_export_is_the_lock_as_uv_exports_it(export: str) -> None:
    result = uv("export", "--frozen", *EXPORTS[export], "--no-emit-project",
                "--format", "requirements-txt", "-o", "/dev/stdout", "--quiet")
    assert result.returncode == 0, result.stderr
    # The header names the output file; everything below it must match.
    body = result.stdout.split("\n", 2)[2]
    assert body == (REPO / export).read_text().split("\n", 2)[2], \
        f"{export} differs from uv.lock; run `make lock`"


@pytest.mark.parametrize("export", list(EXPORTS))
def test_every_pin_has_hashes(export: str) -> None:
    text = (REPO / export).read_text()
    pins = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert pins
    for pin in pins:
        assert "==" in pin and pin.rstrip().endswith("\\"), pin  # a hash line follows each pin


def test_the_lock_covers_every_python_the_controller_may_run() -> None:
    head = (REPO / "uv.lock").read_text().split("[[package]]", 1)[0]
    assert 'requires-python = ">=3.11"' in head
