"""The stream's unit, rendered from the role's template, scores 2.0 or less on
`systemd-analyze security` (checked offline here in seconds; the lab checks the running unit)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest

TEMPLATE = Path(__file__).resolve().parents[2] / "roles/collector/templates/collector.service.j2"
EXPOSURE_LIMIT = 2.0


def render_unit(environment: dict[str, str]) -> str:
    loader = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined)
    loader.filters["comment"] = lambda text: "# " + text
    return loader.from_string(TEMPLATE.read_text()).render(
        ansible_managed="Ansible managed", collector_server_id="collector1",
        collector_user="collector", collector_group="collector",
        _collector_settings_file="/etc/collector/server_settings.txt",
        _collector_bin="/opt/collector/venv/bin/collector",
        collector_data_storage_dst="/srv/collector/data", collector_environment=environment)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_rendered_unit_exposure_is_at_most_two(tmp_path: Path) -> None:
    unit = tmp_path / "collector.service"
    unit.write_text(render_unit({}))
    # The unit's User= must exist for an offline analysis; root is always there and the
    # score does not depend on which unprivileged name is used.
    unit.write_text(unit.read_text().replace("User=collector", "User=nobody")
                    .replace("Group=collector", "Group=nogroup"))
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for collector\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= EXPOSURE_LIMIT


def test_environment_lines_are_rendered() -> None:
    unit = render_unit({"B": "2", "A": "1"})
    assert "Environment=A=1\nEnvironment=B=2\n" in unit
    assert "Restart=always" in unit
    assert "User=collector" in unit
