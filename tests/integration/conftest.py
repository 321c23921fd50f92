"""Fixtures the integration tests share: TLS files and the SMTP double, the CLI's log
handler, the sshd push account, and the fake stream API with its process clean-up.

Plain helpers are in helpers.py; the sshd main is in sshd_fixture.py, the `collector stream`
harness in stream_harness.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector import cli
from tests.doubles.fake_api import FakeStreamAPI
from tests.doubles.smtp import SmtpDouble, make_self_signed_cert
from tests.integration.helpers import smtp_double
from tests.integration.sshd_fixture import session_push_user
from tests.integration.stream_harness import RATE, TOKEN, kill_leftovers


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate and key (its own CA) for the SMTP double."""
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp(tls_files: tuple[Path, Path], tmp_path: Path) -> Iterator[SmtpDouble]:
    """A running SMTP double (STARTTLS and login required) keeping mails in tmp_path/maildir."""
    with smtp_double(tls_files, maildir=tmp_path / "maildir") as server:
        yield server


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """`cli.main` points the root logger at this test's captured stderr; afterwards that
    stream is closed, so its handler must not outlive the test (the doubles' threads log
    too), nor may one that an earlier test left on a closed stream."""
    cli.setup_logging(False)
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:  # basicConfig's, not pytest's own
            root.removeHandler(handler)


@pytest.fixture(scope="session")
def push_user() -> Iterator[str]:
    """The receiving account of every sshd main (skips without root, sshd and rsync)."""
    yield from session_push_user()


@pytest.fixture
def api() -> Iterator[FakeStreamAPI]:
    """The fake stream API for `collector stream` runs, serving the settings' token."""
    # The collector's attempt window shrinks with its backoff scale (0.01 * 900 s).
    with FakeStreamAPI([TOKEN], rate=RATE, heartbeat_interval=0.3, window_seconds=9.0,
                       quiet=True) as server:
        yield server


@pytest.fixture
def no_leftover_processes() -> Iterator[None]:
    """Kill any `collector stream` a failed test left running, so it cannot hold on."""
    yield
    kill_leftovers()
