"""Debian 12 and 13 hosts booted with systemd-nspawn: build the images, boot a host, stop it.

Why nspawn: the fleet is systemd units, cron and sshd, so the lab must boot a real init on
real Debian without Docker. Hosts share this machine's network namespace; each one's sshd
listens on its own free port of 127.0.0.1, and 127.0.0.1 inside a host is this machine's
loopback, where the test doubles listen.

The image is built once with debootstrap and cached in the lab's cache folder (`cache`, which
callers pass: COLLECTOR_LAB_CACHE, else `DEFAULT_CACHE_DIR`, read by `cache_dir_from_env` when
a command runs, never at import); each host boots from its own copy (`cp -a`, seconds) so
hosts never share state. A host is stopped with SIGTERM to its nspawn process (nspawn turns
it into an orderly poweroff), then SIGKILL if it hangs.

Each host's data folders (`DATA_DIR`: chunks, incoming, vault, state) live on a disk of their
own: an ext4 image, loop-mounted on this machine and bound into the host. So a power cut can
lose what a real one loses: `cut_data_disk` copies the image while it is still mounted (what
the block device held; the kernel's dirty pages are not in it) and the host boots on the copy.

Command line (root only):
    python -m tests.lab.nspawn image              # build the cached image
    python -m tests.lab.nspawn start NAME --state F   (prints the host as JSON)
    python -m tests.lab.nspawn stop NAME --state F
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

# Where images, the lab's SSH key and each lab's folder live unless COLLECTOR_LAB_CACHE says.
DEFAULT_CACHE_DIR = Path("/var/tmp/collector-lab")
# The default suite, and every suite a lab may mix (LAB_SUITES=bookworm,trixie).
SUITE = "bookworm"
SUITES = ("bookworm", "trixie")
# The Debian mirror debootstrap builds an image from unless COLLECTOR_LAB_MIRROR says.
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What a minimal Debian server has, plus what Ansible needs on the target (python3-apt for
# check mode, python3-packaging for the pip module); the role installs the rest itself.
# unattended-upgrades too, which the role installs: a converge then needs no mirror (the
# image's package lists age, and the mirror drops the versions they name).
PACKAGES = ("systemd,systemd-sysv,dbus,openssh-server,python3,python3-venv,python3-apt,"
            "python3-packaging,rsync,cron,sudo,ca-certificates,iproute2,unattended-upgrades")
# Bump when the image recipe changes, so a stale cache is rebuilt rather than reused.
IMAGE_VERSION = "2"
BOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
# Where the role keeps every data folder; each host has its own ext4 disk there.
DATA_DIR = "/srv/collector"
# Sparse: only what the host writes takes space on this machine.
DATA_DISK_BYTES = 4 << 30


def cache_dir_from_env(environ: Mapping[str, str] = os.environ) -> Path:
    """The cache folder the environment names (COLLECTOR_LAB_CACHE), else the default."""
    return Path(environ.get("COLLECTOR_LAB_CACHE", DEFAULT_CACHE_DIR))


def mirror_from_env(environ: Mapping[str, str] = os.environ) -> str:
    """The Debian mirror the environment names (COLLECTOR_LAB_MIRROR), else the default."""
    return environ.get("COLLECTOR_LAB_MIRROR", DEFAULT_MIRROR)


def image_dir(cache: Path, suite: str = SUITE) -> Path:
    return cache / f"image-{suite}-v{IMAGE_VERSION}"


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, failing loudly with its output (the lab is a dev tool, not the product)."""
    return subprocess.run(command, check=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def build_image(cache: Path, mirror: str, suite: str = SUITE) -> Path:
    """The cached root file system of a suite; built with debootstrap when missing (~1-2 min).

    Built in a temporary folder and renamed at the end, so an interrupted build never leaves
    a half image that later runs would trust.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown Debian suite {suite!r}: the lab boots {', '.join(SUITES)}")
    final = image_dir(cache, suite)
    if (final / "etc" / "os-release").exists():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"{final.name}.building"
    shutil.rmtree(work, ignore_errors=True)
    run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", suite, str(work), mirror],
        stdout=subprocess.DEVNULL)
    # A fresh machine-id per host (systemd creates one at first boot when the file is empty),
    # no host keys in the image (each host makes its own), no apt caches.
    (work / "etc" / "machine-id").write_text("")
    for key in (work / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    shutil.rmtree(work / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    (work / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True)
    # Units that make no sense in a container and only slow the boot down.
    for unit in ("systemd-networkd-wait-online.service", "apt-daily.timer",
                 "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"):
        with contextlib.suppress(FileNotFoundError):
            (work / "etc" / "systemd" / "system" / unit).unlink()
        mask = work / "etc" / "systemd" / "system" / unit
        mask.symlink_to("/dev/null")
    work.rename(final)
    return final


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it; another may take it later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def controller_key(cache: Path) -> Path:
    """The lab's root SSH key into every host (made once, kept with the cache)."""
    key = cache / "id_ed25519"
    if not key.exists():
        cache.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "collector-lab",
             "-f", str(key)])
    return key


@dataclass
class Host:
    """One booted lab host, as recorded in the lab's state file."""

    name: str
    port: int
    root: str
    pid: int
    log: str
    suite: str = SUITE

    def ssh_command(self, key: Path, *remote: str) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(key), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "root@127.0.0.1", *remote]


def prepare_root(image: Path, root: Path, name: str, port: int, public_key: str) -> None:
    """Copy the image and make it this host: name, host keys, root's key, sshd port."""
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--reflink=auto", str(image), str(root)])
    (root / "etc" / "hostname").write_text(f"{name}\n")
    (root / "etc" / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {name}\n")
    run(["ssh-keygen", "-A", "-f", str(root)], stdout=subprocess.DEVNULL)
    ssh_dir = root / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(public_key.strip() + "\n")
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    (root / "etc" / "ssh" / "sshd_config.d" / "10-lab.conf").write_text(
        f"# lab host {name}: own port on the shared loopback\n"
        f"Port {port}\nListenAddress 127.0.0.1\nPasswordAuthentication no\n")


def data_disk(root: Path) -> tuple[Path, Path]:
    """The host's data disk image and where this machine mounts it (beside the host's root)."""
    return root.with_name(root.name + ".data.img"), root.with_name(root.name + ".data")


def make_data_disk(root: Path) -> None:
    """A fresh, empty ext4 data disk for the host (any old one is unmounted and replaced)."""
    image, _ = data_disk(root)
    unmount_data_disk(root)
    image.unlink(missing_ok=True)
    with open(image, "wb") as disk:
        disk.truncate(DATA_DISK_BYTES)
    run(["mkfs.ext4", "-q", "-F", "-L", "collector-data", str(image)])


def mount_data_disk(root: Path) -> Path:
    """Mount the host's data disk (made first when a host booted before it had one);
    returns the mount point."""
    image, mount_point = data_disk(root)
    if not image.exists():
        make_data_disk(root)
    mount_point.mkdir(exist_ok=True)
    if not os.path.ismount(mount_point):
        run(["mount", "-o", "loop", str(image), str(mount_point)])
    return mount_point


def unmount_data_disk(root: Path) -> None:
    """Unmount the data disk if it is mounted (lazily, should something still hold it)."""
    _, mount_point = data_disk(root)
    if (os.path.ismount(mount_point)
            and subprocess.run(["umount", str(mount_point)], check=False).returncode != 0):
        run(["umount", "--lazy", str(mount_point)])


def cut_data_disk(root: Path) -> None:
    """The disk side of a power cut, for a host whose processes are already dead.

    The copy is taken while the disk is still mounted, so it holds what the block device
    held: whatever the host wrote without fsync and the kernel had not written back yet is
    not in it. The original is then unmounted (its late write-back goes to a file that is
    thrown away) and the copy takes its place; the next boot mounts it (ext4 replays its
    journal, as after a real cut)."""
    image, _ = data_disk(root)
    cut = image.with_name(image.name + ".cut")
    run(["cp", "--sparse=always", str(image), str(cut)])
    unmount_data_disk(root)
    cut.replace(image)


def remove_data_disk(root: Path) -> None:
    image, mount_point = data_disk(root)
    unmount_data_disk(root)
    image.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        mount_point.rmdir()


def machine_name(root: Path, name: str) -> str:
    """nspawn's name for a host: its lab's name first (`<lab>/hosts/<name>`), so two labs
    booted side by side, each with a `collector1`, never share nspawn's runtime folders."""
    return f"{root.parent.parent.name}-{name}"


def boot(root: Path, name: str, log_path: Path) -> int:
    """Start nspawn in its own session; returns its PID (the thing to SIGTERM later). The
    host keeps its own name (/etc/hostname) whatever nspawn calls it, and its data disk is
    mounted at `DATA_DIR`."""
    data = mount_data_disk(root)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            ["systemd-nspawn", "-D", str(root), "--boot", "--register=no", "--keep-unit",
             f"--machine={machine_name(root, name)}", f"--hostname={name}",
             f"--bind={data}:{DATA_DIR}", "--console=passive"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    return process.pid


def wait_until_up(host: Host, key: Path, timeout: float = BOOT_TIMEOUT) -> None:
    """Poll sshd until systemd says the boot finished (running, or degraded: still usable)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not pid_alive(host.pid):
            raise RuntimeError(f"{host.name}: systemd-nspawn exited; see {host.log}")
        result = subprocess.run(host.ssh_command(key, "systemctl", "is-system-running", "--wait"),
                                capture_output=True, text=True, timeout=60)
        last = (result.stdout + result.stderr).strip()
        if last in ("running", "degraded"):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{host.name}: not up after {timeout:.0f} s ({last or 'no answer'})")


def start_host(name: str, hosts_dir: Path, key: Path, suite: str = SUITE,
               port: int | None = None, *, cache: Path, mirror: str) -> Host:
    """Boot one host from a fresh copy of its suite's image (built when missing, in `cache`
    from `mirror`)."""
    image = build_image(cache, mirror, suite=suite)
    port = port or free_port()
    root = hosts_dir / name
    prepare_root(image, root, name, port, key.with_name(key.name + ".pub").read_text())
    make_data_disk(root)
    log_path = hosts_dir / f"{name}.log"
    host = Host(name, port, str(root), boot(root, name, log_path), str(log_path), suite)
    return host


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (our own child, not yet reaped) is as good as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return False
    return True


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait, then SIGKILL the whole process group nspawn leads."""
    if pid <= 0 or not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop_host(host: Host) -> None:
    """Power the host off and delete its copy of the image and its data disk."""
    stop_pid(host.pid)
    _delete_host_files(host)


def _delete_host_files(host: Host) -> None:
    root = Path(host.root)
    # Only ever delete a host folder the lab made (never a path that is not ours).
    if root.name == host.name and (root / "etc" / "ssh" / "sshd_config.d" / "10-lab.conf").exists():
        remove_data_disk(root)
        shutil.rmtree(root, ignore_errors=True)


def kill_machine(pid: int, timeout: float = 60.0) -> None:
    """Stop a host at once, as a dead power supply would: SIGKILL to its init (nspawn's child),
    which ends every process of the host together (its PID namespace goes), then wait for
    nspawn to exit (SIGKILL to it too if it lingers)."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(OSError, ValueError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    stop_pid(pid, timeout=5)  # nothing left to do unless nspawn outlived its init


def destroy_host(host: Host) -> None:
    """The host gone for good: its machine killed at once (no shutdown, nothing written
    back), then its data disk unmounted and its image deleted, then its root deleted. Nothing
    of it is left on this machine; `start_host` under the same name makes a new, empty one."""
    kill_machine(host.pid)
    _delete_host_files(host)
    if Path(host.root).exists() or data_disk(Path(host.root))[0].exists():
        raise RuntimeError(f"{host.name}: its root or data disk is still there after deletion")


def port_free(port: int) -> bool:
    """Whether nothing listens on this loopback port now (a destroyed host's sshd port)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---- a tiny state file, so `stop` works from another process --------------------------------

def _load(state: Path) -> dict[str, dict[str, object]]:
    try:
        return dict(json.loads(state.read_text()))
    except FileNotFoundError:
        return {}


def _save(state: Path, hosts: dict[str, dict[str, object]]) -> None:
    tmp = state.with_name(state.name + ".tmp")
    tmp.write_text(json.dumps(hosts, indent=2))
    tmp.replace(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Debian 12 lab hosts with systemd-nspawn")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("image", help="build (or reuse) the cached image")
    for action in ("start", "stop"):
        one = sub.add_parser(action)
        one.add_argument("name")
        one.add_argument("--state", type=Path, required=True, help="JSON file of running hosts")
    args = parser.parse_args(argv)
    cache, mirror = cache_dir_from_env(), mirror_from_env()
    if args.action == "image":
        print(build_image(cache, mirror))
        return 0
    args.state.parent.mkdir(parents=True, exist_ok=True)
    hosts = _load(args.state)
    if args.action == "start":
        if args.name in hosts and pid_alive(int(str(hosts[args.name]["pid"]))):
            print(json.dumps(hosts[args.name]))
            return 0
        key = controller_key(cache)
        host = start_host(args.name, args.state.parent / "hosts", key, cache=cache, mirror=mirror)
        hosts[args.name] = asdict(host)
        _save(args.state, hosts)  # recorded before waiting: a failed boot is still stopped
        wait_until_up(host, key)
        print(json.dumps(asdict(host)))
        return 0
    record = hosts.pop(args.name, None)
    if record is not None:
        stop_host(Host(**record))  # type: ignore[arg-type]
    _save(args.state, hosts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
