"""Which lab the environment names: `tests.lab.fleet.Lab.from_env` (`make lab`, Molecule) and
the fault suite's first lab (`tests.faults.run.load_fleet`) give the folders, names and rates
the lab's modules once read from the environment at import time, which none of them (nor any
module of the fault suite) does any more."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.faults.run import load_fleet
from tests.lab import nspawn
from tests.lab.fleet import REPO, Lab

CACHE = Path("/var/tmp/collector-lab")


def test_an_empty_environment_names_the_make_lab_lab() -> None:
    lab = Lab.from_env({})
    assert lab == Lab("lab", cache_dir=CACHE, inventory_dir=REPO / "inventory" / "lab",
                      fake_api_rate=20.0, mirror="http://deb.debian.org/debian",
                      wheelhouse_prebuilt=False)
    assert lab.lab_dir == CACHE / "lab"
    assert lab.state_file == CACHE / "lab" / "state.json"


def test_every_variable_of_the_environment_is_read() -> None:
    lab = Lab.from_env({"COLLECTOR_LAB_NAME": "molecule", "COLLECTOR_LAB_CACHE": "/c",
                        "COLLECTOR_LAB_INVENTORY": "/c/molecule/inventory",
                        "COLLECTOR_LAB_RATE": "60", "COLLECTOR_LAB_MIRROR": "http://m/debian",
                        "COLLECTOR_LAB_PREBUILT": "1"})
    assert lab == Lab("molecule", cache_dir=Path("/c"),
                      inventory_dir=Path("/c/molecule/inventory"), fake_api_rate=60.0,
                      mirror="http://m/debian", wheelhouse_prebuilt=True)
    assert lab.state_file == Path("/c/molecule/state.json")
    assert not Lab.from_env({"COLLECTOR_LAB_PREBUILT": "yes"}).wheelhouse_prebuilt
    assert nspawn.cache_dir_from_env({"COLLECTOR_LAB_CACHE": "/c"}) == Path("/c")
    assert nspawn.mirror_from_env({}) == nspawn.DEFAULT_MIRROR


def test_the_source_of_the_lab() -> None:
    assert Lab.from_env({}).source == "x"
    bluesky = Lab.from_env({"LAB_SOURCE": "bluesky"})
    assert (bluesky.source, bluesky.fake_api_rate, bluesky.record_name) == (
        "bluesky", 100.0, "records")
    assert Lab.from_env({"COLLECTOR_LAB_SOURCE": "bluesky", "LAB_SOURCE": "x"}).source == \
        "bluesky"
    try:
        Lab.from_env({"LAB_SOURCE": "mastodon"})
    except ValueError as error:
        assert str(error) == "LAB_SOURCE='mastodon': choose x or bluesky"
    else:
        raise AssertionError("an unknown LAB_SOURCE was accepted")
    ports = {"jetstream_east": 7001, "jetstream_west": 7002}
    assert bluesky.source_vars(ports)["collector_jetstream_instances"] == [
        "ws://127.0.0.1:7001/subscribe", "ws://127.0.0.1:7002/subscribe"]
    assert Lab.from_env({}).source_vars({"fake_api": 7000})["collector_api_base_url"] == \
        "http://127.0.0.1:7000"


def test_the_fault_suite_names_its_own_lab_with_its_inventory_in_the_labs_folder() -> None:
    lab = load_fleet({})
    assert (lab.name, lab.lab_dir, lab.fake_api_rate) == ("faults", CACHE / "faults", 60.0)
    assert lab.inventory_dir == CACHE / "faults" / "inventory"
    other = load_fleet({"COLLECTOR_LAB_NAME": "faults-b", "COLLECTOR_LAB_CACHE": "/c",
                        "COLLECTOR_LAB_RATE": "60.0"})
    assert other.lab_dir == Path("/c/faults-b")
    assert other.inventory_dir == Path("/c/faults-b/inventory")
    assert load_fleet({"COLLECTOR_LAB_INVENTORY": "/i"}).inventory_dir == Path("/i")


# Run in a fresh interpreter: every read of the environment by code of the lab or the fault
# suite recorded (libraries that scan the whole environment, as tqdm does, are left out),
# then every module of theirs imported.
_IMPORT_ALL = """
import importlib, os, sys
ours, read = os.path.join(os.getcwd(), "tests", ""), set()
getitem = os._Environ.__getitem__
def recording(self, key):
    frame = sys._getframe(1)
    while frame.f_code.co_filename.startswith("<frozen") or frame.f_code.co_filename == os.__file__:
        frame = frame.f_back
    if frame.f_code.co_filename.startswith(ours):
        read.add(key)
    return getitem(self, key)
os._Environ.__getitem__ = recording
for name in sys.argv[1:]:
    importlib.import_module(name)
print(" ".join(sorted(read)))
"""
LAB_MODULES = ("tests.lab.fleet", "tests.lab.nspawn", "tests.lab.local", "tests.faults.run",
               "tests.faults.scenarios", "tests.faults.services", "tests.faults.hostfaults",
               "tests.faults.boundaries", "tests.faults.destruction", "tests.faults.measure")


def test_no_module_of_the_lab_or_the_fault_suite_reads_the_environment_when_imported() -> None:
    """Which lab, how long a power cut lasts: read when a command runs, so a caller that
    builds its own `Lab` never depends on what the environment held at import."""
    env = {**os.environ, **{name: "1" for name in (
        "COLLECTOR_LAB_NAME", "COLLECTOR_LAB_CACHE", "COLLECTOR_LAB_INVENTORY",
        "COLLECTOR_LAB_RATE", "COLLECTOR_LAB_MIRROR", "COLLECTOR_LAB_PREBUILT", "LAB_HOSTS",
        "LAB_SECONDS", "LAB_SUITES", "FAULTS_POWER_OFF_SECONDS")},
        "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", _IMPORT_ALL, *LAB_MODULES], cwd=REPO,
                            env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
