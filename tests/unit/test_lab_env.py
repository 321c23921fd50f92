"""Which lab the environment names: `tests.lab.fleet.Lab.from_env` (`make lab`, Molecule) and
the fault suite's first lab (`tests.faults.run.load_fleet`) give the folders, names and rates
the lab's modules once read from the environment at import time."""

from __future__ import annotations

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


def test_the_fault_suite_names_its_own_lab_with_its_inventory_in_the_labs_folder() -> None:
    lab = load_fleet({})
    assert (lab.name, lab.lab_dir, lab.fake_api_rate) == ("faults", CACHE / "faults", 60.0)
    assert lab.inventory_dir == CACHE / "faults" / "inventory"
    other = load_fleet({"COLLECTOR_LAB_NAME": "faults-b", "COLLECTOR_LAB_CACHE": "/c",
                        "COLLECTOR_LAB_RATE": "60.0"})
    assert other.lab_dir == Path("/c/faults-b")
    assert other.inventory_dir == Path("/c/faults-b/inventory")
    assert load_fleet({"COLLECTOR_LAB_INVENTORY": "/i"}).inventory_dir == Path("/i")
