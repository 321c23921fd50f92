"""`max_chunk_mb`: parsed and checked like every setting, and rendered by the role for the
main from its default (so the role, the settings file and the code agree on 512 MiB)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from collector.errors import SettingsError
from collector.layout import DEFAULT_MAX_CHUNK_MB
from collector.settings import load_settings, parse_key_values, settings_from_mapping
from tests.conftest import SettingsWriter

ROLE = Path(__file__).resolve().parents[2] / "roles" / "collector"


def test_default_and_bytes(write_settings: SettingsWriter) -> None:
    settings = load_settings(write_settings())
    assert settings.max_chunk_mb == DEFAULT_MAX_CHUNK_MB == 512
    assert settings.max_chunk_bytes == 512 * 1024 * 1024
    assert load_settings(write_settings(max_chunk_mb="100")).max_chunk_bytes == 100 * 2**20


@pytest.mark.parametrize("value", ["0", "65537", "1.5", "lots"])
def test_bad_value_is_one_line_naming_key_and_file(write_settings: SettingsWriter,
                                                   value: str) -> None:
    path = write_settings(max_chunk_mb=value)
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert str(caught.value) == (
        f"{path}: max_chunk_mb={value!r} must be a whole number from 1 to 65536")


def render_settings(**overrides: Any) -> str:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    values = {**defaults, "ansible_managed": "Ansible managed", "collector_server_id": "srv1",
              "_collector_venv": "/opt/collector/venv", "_collector_is_main": True,
              "_collector_bluesky": False,
              "_collector_identity_file": "/etc/collector/ssh/id_ed25519",
              "_collector_known_hosts_file": "/etc/collector/ssh/known_hosts",
              "_collector_secondaries": ["srv2"],
              "__collector_replica_targets": {"srv2": {"label": "srv2@10.0.0.2:22"}},
              "ansible_facts": {"python": {"version": {"major": 3, "minor": 11}}},
              "collector_servers": ["srv1", "srv2"], "collector_osf_enabled": False,
              "collector_notifications": False, **overrides}
    environment = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined)
    environment.filters["comment"] = lambda text: "# " + text
    environment.filters["bool"] = bool
    environment.filters["extract"] = lambda key, mapping: mapping[key]
    template = (ROLE / "templates" / "server_settings.txt.j2").read_text()
    return environment.from_string(template).render(**values)


def test_the_role_renders_it_for_the_main() -> None:
    source = Path("/etc/collector/server_settings.txt")
    raw = parse_key_values(render_settings(), source)
    assert raw["max_chunk_mb"] == "512"
    settings = settings_from_mapping(raw, source)
    assert settings.max_chunk_bytes == 512 * 2**20
    assert [target.label for target in settings.replicas] == ["srv2@10.0.0.2:22"]
    raw = parse_key_values(render_settings(collector_max_chunk_mb=2048), source)
    assert settings_from_mapping(raw, source).max_chunk_mb == 2048
