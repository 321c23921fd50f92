"""Shared fixtures: a valid settings file in a temporary folder, with its credentials."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SettingsWriter = Callable[..., Path]
# The bearer token `write_settings` puts in twitter_api.txt (the fake API accepts it).
BEARER_TOKEN = "test-token-1"


@pytest.fixture(autouse=True)
def _no_handler_on_a_closed_stream() -> Iterator[None]:
    """A CLI run in-process (`cli.main`) points the root logger at the test's captured
    stderr, which pytest closes afterwards; the handler must not outlive the test, or the
    next test's threads (the SMTP double's) log into a closed file."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:  # basicConfig's, not pytest's own
            root.removeHandler(handler)


@pytest.fixture
def write_settings(tmp_path: Path) -> SettingsWriter:
    """Write `server_settings.txt` (a secondary by default) and its token file; return its path.

    Keyword arguments override or add keys; a value of None removes the key.
    """

    def write(**overrides: str | None) -> Path:
        keys = tmp_path / "keys"
        keys.mkdir(exist_ok=True)
        token = keys / "twitter_api.txt"
        token.write_text(f"bearer_token={BEARER_TOKEN}\n")
        token.chmod(0o640)
        values: dict[str, str | None] = {
            "library_dst": "/usr/lib/python3/dist-packages",
            "API_key_dst": str(keys),
            "data_storage_dst": str(tmp_path / "data"),
            "username": "collector",
            "groupname": "collector",
            "server_id": "srv1",
            "role": "secondary",
            "servers": "srv1,srv2",
            "main_host": "127.0.0.1",
            "main_user": "incoming",
            "api_base_url": "http://127.0.0.1:9",
            "notifications": "False",
        }
        values.update(overrides)
        lines = [f"{key}={value}" for key, value in values.items() if value is not None]
        path = tmp_path / "server_settings.txt"
        path.write_text("# rendered for a test\n" + "\n".join(lines) + "\n")
        return path

    return write
