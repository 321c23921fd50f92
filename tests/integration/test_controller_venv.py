"""The controller's .venv from the lock on every Python a controller may run (3.11 to 3.13):
`make venv`'s own two pip commands, hash-checked, then the tools answer. Where this machine
lacks one of those Pythons the test says so and skips; the lock itself covers >= 3.11."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.pythons import find_python

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ENVIRONMENT = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def run(*command: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    environment = dict(ENVIRONMENT)
    if path is not None:  # molecule finds ansible-config on PATH, as `make molecule` sets it
        environment["PATH"] = f"{path}{os.pathsep}{environment['PATH']}"
    return subprocess.run(list(command), cwd=REPO, env=environment, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.parametrize("minor", [11, 12, 13])
def test_the_controller_venv_installs_from_the_lock_and_runs(minor: int, tmp_path: Path) -> None:
    python = find_python(minor)
    if python is None:
        pytest.skip(f"no python3.{minor} on this machine")
    venv = tmp_path / "venv"
    assert run(python, "-m", "venv", str(venv)).returncode == 0
    pip = str(venv / "bin" / "pip")
    locked = run(pip, "install", "-q", "--require-hashes", "-r", "requirements/controller.txt")
    assert locked.returncode == 0, locked.stderr[-2000:]
    own = run(pip, "install", "-q", "--no-deps", "--no-build-isolation", "-e", ".",
              "--config-settings", "editable_mode=compat")
    assert own.returncode == 0, own.stderr[-2000:]
    for tool in ("ansible-playbook", "ansible-lint", "molecule", "pytest", "mypy", "ruff", "uv",
                 "collector"):
        answer = run(str(venv / "bin" / tool), "--version", path=venv / "bin")
        assert answer.returncode == 0, f"{tool}: {answer.stderr[-500:]}"
    versions = run(str(venv / "bin" / "python"), "-c",
                   "import sys, ansible.release, prometheus_client, aiosmtpd; "
                   "print('%d.%d' % sys.version_info[:2], ansible.release.__version__)")
    assert versions.stdout.split() == [f"3.{minor}", "2.19.14"], versions.stderr
