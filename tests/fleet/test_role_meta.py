"""The collector role's argument spec mirrors its defaults key by key (as prometheus-community
checks in CI): a default without a documented, typed option, or an option without a default,
is a drift that `ansible-playbook` would only reveal at run time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles" / "collector"
PYTHON_TYPES = {"str": str, "int": int, "bool": bool, "list": list, "dict": dict, "path": str}


def load(relative: str) -> Any:
    return yaml.safe_load((ROLE / relative).read_text())


def test_defaults_and_argument_specs_have_the_same_keys() -> None:
    defaults = load("defaults/main.yml")
    options = load("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert list(defaults) == list(options)


@pytest.mark.parametrize("name", list(load("defaults/main.yml")))
def test_each_option_is_typed_documented_and_defaults_match(name: str) -> None:
    default = load("defaults/main.yml")[name]
    option = load("meta/argument_specs.yml")["argument_specs"]["main"]["options"][name]
    assert option["description"].strip()
    assert option["type"] in PYTHON_TYPES
    if isinstance(default, str) and "{{" in default:
        assert "default" not in option  # computed at run time; documented in the description
        return
    assert option["default"] == default
    assert isinstance(default, PYTHON_TYPES[option["type"]])


def test_every_variable_is_role_prefixed() -> None:
    assert all(name.startswith("collector_") for name in load("defaults/main.yml"))
    assert all(name.startswith("_collector_") for name in load("vars/main.yml"))


def test_secrets_are_marked_no_log() -> None:
    options = load("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    for secret in ("collector_bearer_token", "collector_osf_token", "collector_email_password"):
        assert options[secret].get("no_log") is True
