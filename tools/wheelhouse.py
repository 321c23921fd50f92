"""`make wheelhouse`: the collector and its locked dependencies as wheels, one folder per target.

Hosts install from the controller's wheelhouse with no package index, so it must hold binary
wheels for each host's own CPython and CPU, whatever the controller runs (a macOS laptop, a
Debian 13 box). A target is named like the wheel tags it needs: `cp313-aarch64` is CPython
3.13 on 64-bit ARM. For each target:

    build/wheelhouse/<target>/*.whl          every wheel, downloaded by hash from the lock
    build/wheelhouse/<target>/requirements.txt   the lock's lines for this target + the collector
    build/wheelhouse/<target>/SHA256SUMS     written last: the role trusts a target only with it

The lock (`uv.lock`, exported with hashes to requirements/hosts.txt) is universal: it may pin
two versions of one package for different Pythons (`numpy==2.4.6 ; python_full_version <
'3.12'`). pip evaluates such markers for the Python it runs on, not the target, so this tool
evaluates them itself for each target and hands pip a list without markers.

    python -m tools.wheelhouse [--target cp311-x86_64 ...] [--out build/wheelhouse]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
HOST_LOCK = REPO / "requirements" / "hosts.txt"
DEFAULT_OUT = REPO / "build" / "wheelhouse"
# Debian 12 and 13 on both architectures a cheap server has.
DEFAULT_TARGETS = ("cp311-x86_64", "cp313-x86_64", "cp311-aarch64", "cp313-aarch64")
MACHINES = ("x86_64", "aarch64")
# Wheels built for glibc up to Debian 12's (2.36) run on Debian 12 and 13 alike.
GLIBC_MINOR_RANGE = range(17, 37)
# Wheels carry file times; a fixed epoch makes a rebuild of unchanged code byte-identical,
# so re-running the playbook after `make wheelhouse` changes nothing on the hosts.
SOURCE_DATE_EPOCH = "1767225600"
SUMS_NAME = "SHA256SUMS"
REQUIREMENTS_NAME = "requirements.txt"
_TARGET = re.compile(r"^cp3(\d{1,2})-(x86_64|aarch64)$")


class WheelhouseError(Exception):
    """A target that cannot be built; the message is the one line the user sees."""


@dataclass(frozen=True)
class Target:
    """A CPython minor version on a Linux CPU architecture."""

    minor: int
    machine: str

    @property
    def name(self) -> str:
        return f"cp3{self.minor}-{self.machine}"

    @property
    def python_version(self) -> str:
        return f"3.{self.minor}"


@dataclass(frozen=True)
class Locked:
    """One pinned line of the exported lock: a name, its version, its marker and hashes."""

    name: str
    version: str
    marker: str | None
    hashes: tuple[str, ...]

    def line(self) -> str:
        """The line as pip reads it in hash-checking mode, without the marker."""
        hashes = (f"--hash=sha256:{digest}" for digest in self.hashes)
        return " ".join([f"{self.name}=={self.version}", *hashes])


def parse_target(text: str) -> Target:
    match = _TARGET.match(text.strip())
    if not match:
        raise WheelhouseError(
            f"unknown target {text!r}: a target is cp3XY-MACHINE, MACHINE one of "
            f"{', '.join(MACHINES)} (e.g. cp313-aarch64)")
    return Target(int(match.group(1)), match.group(2))


def parse_locked(text: str) -> list[Locked]:
    """The pinned lines of a `uv export --format requirements-txt` file (continuations joined)."""
    joined = re.sub(r"\\\n", " ", text)
    locked = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        hashes = tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
        spec = re.sub(r"--hash=\S+", "", line).strip()
        requirement, _, marker = spec.partition(";")
        name, sep, version = requirement.strip().partition("==")
        if not sep or not hashes:
            raise WheelhouseError(f"the lock has a line without a pin and hashes: {line[:80]!r}")
        locked.append(Locked(name.strip(), version.strip(), marker.strip() or None, hashes))
    return locked


def marker_environment(target: Target) -> dict[str, str]:
    """What PEP 508 markers see on a Debian host of this target."""
    return {
        "implementation_name": "cpython",
        "implementation_version": f"3.{target.minor}.0",
        "os_name": "posix",
        "platform_machine": target.machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": f"3.{target.minor}.0",
        "python_version": target.python_version,
        "sys_platform": "linux",
    }


def requirements_for(target: Target, locked: Iterable[Locked]) -> list[Locked]:
    """The lock's lines that apply to this target, one per package."""
    environment = marker_environment(target)
    chosen = [entry for entry in locked
              if entry.marker is None or Marker(entry.marker).evaluate(environment)]
    names = [canonicalize_name(entry.name) for entry in chosen]
    doubles = sorted({name for name in names if names.count(name) > 1})
    if doubles:
        raise WheelhouseError(f"{target.name}: the lock pins {', '.join(doubles)} twice")
    return chosen


def platforms(target: Target) -> list[str]:
    """The manylinux platform tags a Debian 12 or 13 host of this architecture accepts."""
    return ([f"manylinux_2_{minor}_{target.machine}" for minor in reversed(GLIBC_MINOR_RANGE)]
            + [f"manylinux2014_{target.machine}"])


def supported_tags(target: Target) -> set[Tag]:
    """Every wheel tag CPython 3.x of this target installs (as packaging.tags would on the host)."""
    version = (3, target.minor)
    return set(cpython_tags(version, platforms=platforms(target))) | set(
        compatible_tags(version, f"cp3{target.minor}", platforms=platforms(target)))


def foreign_wheels(target: Target, wheel_names: Iterable[str]) -> list[str]:
    """Wheels in the list that this target cannot install (none, in a good wheelhouse)."""
    accepted = supported_tags(target)
    return sorted(name for name in wheel_names
                  if not parse_wheel_filename(name)[3] & accepted)


def pinned_wheels(folder: Path, wheel_names: Iterable[str]) -> list[str]:
    """`name==version --hash=sha256:...` of each wheel in the folder, sorted by name."""
    pins = []
    for wheel in sorted(wheel_names):
        name, version = parse_wheel_filename(wheel)[:2]
        pins.append(f"{name}=={version} --hash=sha256:{sha256_of(folder / wheel)}")
    return pins


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sums_text(folder: Path) -> str:
    """`sha256sum` lines of the folder's files (wheels and requirements.txt), sorted by name."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != SUMS_NAME)
    return "".join(f"{sha256_of(folder / name)}  {name}\n" for name in names)


def _pip(*args: str) -> None:
    environment = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH,
                       PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run([sys.executable, "-m", "pip", *args], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        last = [line for line in result.stdout.splitlines() if line.strip()][-1:] or ["?"]
        raise WheelhouseError(f"pip {args[0]} failed: {last[0].strip()}")


def build_collector_wheel(work: Path) -> Path:
    """The collector's own wheel, from the lock's setuptools (no isolation, no download)."""
    _pip("wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(work))
    wheels = list(work.glob("collector-*.whl"))
    if len(wheels) != 1:
        raise WheelhouseError(f"pip wheel made {len(wheels)} collector wheels")
    return wheels[0]


def build_target(target: Target, locked: Sequence[Locked], collector: Path, out: Path) -> Path:
    """Download and check one target's wheels; the folder appears complete or not at all."""
    wanted = requirements_for(target, locked)
    final = out / target.name
    work = out / f".{target.name}.building"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pins = work / "pins.txt"
    pins.write_text("".join(entry.line() + "\n" for entry in wanted))
    _pip("download", "-q", "--no-deps", "--only-binary=:all:", "--require-hashes",
         "--implementation", "cp", "--python-version", target.python_version,
         "--abi", f"cp3{target.minor}", "--abi", "abi3", "--abi", "none",
         *[arg for platform in platforms(target) for arg in ("--platform", platform)],
         "-r", str(pins), "-d", str(work))
    pins.unlink()
    shutil.copy2(collector, work / collector.name)
    wheels = sorted(p.name for p in work.glob("*.whl"))
    foreign = foreign_wheels(target, wheels)
    if foreign:
        raise WheelhouseError(f"{target.name}: wheels for another platform: {', '.join(foreign)}")
    have = {canonicalize_name(parse_wheel_filename(name)[0]) for name in wheels}
    missing = sorted({canonicalize_name(e.name) for e in wanted} - have)
    if missing:
        raise WheelhouseError(f"{target.name}: no wheel for {', '.join(missing)}")
    (work / REQUIREMENTS_NAME).write_text(
        f"# {target.name}: the lock's pins for this target and the collector, each with the hash\n"
        "# of its wheel in this folder (pip checked it against the lock when it downloaded it).\n"
        + "".join(f"{pin}\n" for pin in pinned_wheels(work, wheels)))
    (work / SUMS_NAME).write_text(sums_text(work))
    old = out / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    work.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def default_targets() -> list[Target]:
    return [parse_target(name) for name in DEFAULT_TARGETS]


def is_built(targets: Sequence[Target], out: Path = DEFAULT_OUT) -> bool:
    """Every target's folder is there, SHA256SUMS (written last) included."""
    return all((out / target.name / SUMS_NAME).exists() for target in targets)


def build(targets: Sequence[Target], out: Path = DEFAULT_OUT, lock: Path = HOST_LOCK) -> list[Path]:
    """Every target's folder under `out`, from one build of the collector's wheel."""
    locked = parse_locked(lock.read_text())
    out.mkdir(parents=True, exist_ok=True)
    # Wheels of the layout before targets had their own folders.
    for stale in out.glob("*.whl"):
        stale.unlink()
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        collector = build_collector_wheel(Path(scratch))
        return [build_target(target, locked, collector, out) for target in targets]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", default=[],
                        help=f"cp3XY-MACHINE, repeatable (default: {' '.join(DEFAULT_TARGETS)})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    options = parser.parse_args(argv)
    names = [name for value in options.target for name in value.split()] or list(DEFAULT_TARGETS)
    try:
        targets = [parse_target(name) for name in names]
        for folder in build(targets, options.out):
            count = len(list(folder.glob("*.whl")))
            print(f"{folder.name}: {count} wheels in {folder}")
    except WheelhouseError as error:
        print(f"wheelhouse: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
