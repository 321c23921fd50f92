"""`make wheelhouse` for every default target, installed the way a host installs it: no package
index, every wheel checked against its hash, pip resolving the whole tree from the folder.

The x86_64 targets are installed for real by a lab host (make lab, Molecule); here each of
(3.11, 3.13) x (x86_64, aarch64) is installed by pip for that interpreter and platform into a
folder (`--target`), which proves the folder complete and every wheel's tags right for it,
and cp3XY-x86_64 is also installed into a real venv of that Python where this machine has it.
Builds build/wheelhouse/ when it is not complete (downloads by hash from the package index)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pythons import find_python
from tools import wheelhouse

pytestmark = pytest.mark.integration

OUT = wheelhouse.DEFAULT_OUT
# Only the folder: this machine's pip settings (PIP_FIND_LINKS, pip.conf) may add local wheels.
ENVIRONMENT = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
               "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
               "PIP_CONFIG_FILE": os.devnull}
CP311_X86_64 = wheelhouse.parse_target("cp311-x86_64")


@pytest.fixture(scope="module")
def built() -> Path:
    targets = wheelhouse.default_targets()
    if not wheelhouse.is_built(targets, OUT):
        wheelhouse.build(targets, OUT)
    return OUT


def for_target(target: wheelhouse.Target, site: Path) -> list[str]:
    """pip's options to install for that target's Python and CPU into a folder."""
    return ["--only-binary=:all:", "--implementation", "cp", "--python-version",
            target.python_version, "--target", str(site),
            *[arg for platform in wheelhouse.platforms(target) for arg in ("--platform", platform)]]


def pip_install(python: str, folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "pip", "install", "--no-index", "--find-links", str(folder),
         "--require-hashes", "-r", str(folder / wheelhouse.REQUIREMENTS_NAME), *extra],
        env=ENVIRONMENT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", wheelhouse.DEFAULT_TARGETS)
def test_each_target_installs_offline_with_hashes_for_its_python_and_cpu(
        built: Path, name: str, tmp_path: Path) -> None:
    target = wheelhouse.parse_target(name)
    folder = built / name
    assert wheelhouse.sums_text(folder) == (folder / wheelhouse.SUMS_NAME).read_text()
    assert wheelhouse.foreign_wheels(target, [p.name for p in folder.glob("*.whl")]) == []
    result = pip_install(sys.executable, folder, *for_target(target, tmp_path / "site"))
    assert result.returncode == 0, result.stdout + result.stderr
    installed = {p.name.split("-")[0].lower() for p in (tmp_path / "site").glob("*.dist-info")}
    assert {"collector", "numpy", "orjson", "matplotlib", "twarc", "osfclient"} <= installed
    numpy = next((tmp_path / "site").glob("numpy-*.dist-info")).name
    assert numpy.startswith("numpy-2.4.") if target.minor == 11 else numpy.startswith("numpy-2.5.")


def test_a_wheel_missing_from_the_folder_stops_the_install(built: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cp311-x86_64"
    shutil.copytree(built / "cp311-x86_64", folder)
    next(folder.glob("orjson-*.whl")).unlink()
    result = pip_install(sys.executable, folder, *for_target(CP311_X86_64, tmp_path / "site"))
    assert result.returncode != 0
    assert "orjson" in result.stdout + result.stderr


def test_a_wheel_changed_after_the_build_is_refused(built: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cp311-x86_64"
    shutil.copytree(built / "cp311-x86_64", folder)
    six = next(folder.glob("six-*.whl"))
    six.write_bytes(six.read_bytes() + b"\0")
    result = pip_install(sys.executable, folder, *for_target(CP311_X86_64, tmp_path / "site"))
    assert result.returncode != 0
    assert "DO NOT MATCH THE HASHES" in result.stdout + result.stderr


@pytest.mark.parametrize("minor", [11, 13])
def test_the_x86_64_target_runs_in_a_real_venv_of_its_python(
        built: Path, minor: int, tmp_path: Path) -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("this machine is not x86_64")
    python = find_python(minor)
    if python is None:
        pytest.skip(f"no python3.{minor} on this machine")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    result = pip_install(str(venv / "bin" / "python"), built / f"cp3{minor}-x86_64")
    assert result.returncode == 0, result.stdout + result.stderr
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import collector.cli, matplotlib, numpy, orjson, osfclient, twarc; "
         "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == f"3.{minor}"
    version = subprocess.run([str(venv / "bin" / "collector"), "--help"], capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0, version.stderr
