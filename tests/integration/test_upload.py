"""`collector upload` against the fake OSF, with the real osfclient and real HTTP on loopback.

The command runs in-process (`collector.cli.main`) so its exact stderr can be checked; the
fake records every request, which is how "no request at all" and "constant requests per
file" are measured.
"""

from __future__ import annotations

import lzma
import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import osfclient.models.session
import pytest

import collector.publish.upload
from collector.cli import main as cli_main
from collector.errors import RemoteError
from collector.publish.ledger import LEDGER_NAME
from collector.publish.osf_api import RetryPolicy
from collector.publish.upload import upload_to_osf
from collector.settings import load_settings
from tests.doubles.fake_osf import FakeOSF
from tests.integration.helpers import (
    REPO_ROOT,
    RecordingNotifier,
    error_lines,
    wait_for_port_file,
)

# cli_main points the root logger at the test's captured stderr, closed once the test ends.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cli_logging")]

TOKEN = "osfpat-Secret-0123456789abcdef"
READ_ONLY_TOKEN = "osfpat-ReadOnly-fedcba9876543210"
PROJECT = "abc12"


@pytest.fixture(autouse=True)
def _fast_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop osfclient's 1 request/s sleep and shorten our retry back-off (not Retry-After)."""
    monkeypatch.setattr(osfclient.models.session, "time",
                        types.SimpleNamespace(time=time.time, sleep=lambda seconds: None))
    monkeypatch.setattr(collector.publish.upload, "DEFAULT_RETRY",
                        RetryPolicy(attempts=3, backoff=(0.05, 0.1), max_retry_after=5.0))


@pytest.fixture
def fake() -> Iterator[FakeOSF]:
    with FakeOSF(token=TOKEN, project=PROJECT, read_only_tokens=(READ_ONLY_TOKEN,)) as server:
        yield server


class Site:
    """A main server's settings, OSF token file and data vault under tmp_path."""

    def __init__(self, root: Path, osf_url: str, token: str = TOKEN,
                 osf_enabled: bool = True) -> None:
        self.root = root
        self.vault = root / "vault"
        self.vault.mkdir()
        self.keys = root / "keys"
        self.keys.mkdir()
        self.set_token(token)
        self.settings_path = root / "server_settings.txt"
        self.settings_path.write_text("\n".join([
            f"API_key_dst={self.keys}", f"OSF_key_dst={self.keys}",
            f"data_storage_dst={root / 'storage'}", f"data_vault_dst={self.vault}",
            f"incoming_dst={root / 'incoming'}", "username=collector", "groupname=collector",
            "server_id=main1", "role=main", "servers=main1,second1", "timezone=CET",
            f"osf_enabled={osf_enabled}", f"osf_project={PROJECT}", "osf_storage=osfstorage",
            f"osf_base_url={osf_url}", "notifications=False", "",
        ]))

    def set_token(self, token: str) -> None:
        path = self.keys / "osf_credentials.txt"
        path.write_text(f"token={token}\n")
        path.chmod(0o640)

    def write_day(self, day: str, hours: list[str], report_rows: int | None = None) -> None:
        """The outputs `collector process` leaves: IDs, tweets, users per hour, a report."""
        folder = self.vault / day
        folder.mkdir(exist_ok=True)
        for hour in hours:
            ids = "".join(f"{1_800_000_000_000_000_000 + i * 7 + len(hour)}\n"
                          for i in range(200))
            (folder / f"{day}_{hour}_IDs.txt.xz").write_bytes(lzma.compress(
                f"{day} {hour}\n{ids}".encode()))
            (folder / f"{day}_{hour}_tweets.csv.xz").write_bytes(lzma.compress(b"id,text\n1,x\n"))
            (folder / f"{day}_{hour}_users.csv.xz").write_bytes(lzma.compress(b"author_id\n1\n"))
        self.write_report(day, report_rows if report_rows is not None else len(hours))
        (folder / f".{day}_report.txt.tmp").write_text("half written")

    def write_report(self, day: str, rows: int) -> None:
        lines = ["hour\tmain1\tsecond1\ttotal\tdiff\tdiff %"]
        lines += [f"{hour:02d}\t100\t99\t101\t3\t2.97" for hour in range(rows)]
        path = self.vault / day / f"{day}_report.txt"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)

    def expected_on_osf(self) -> dict[str, bytes]:
        expected = {}
        for path in sorted(self.vault.glob("????-??-??/*")):
            published = path.name.endswith(("_IDs.txt.xz", "_report.txt"))
            if published and not path.name.startswith("."):
                year, month, day = path.parent.name.split("-")
                expected[f"{year}/{month}/{day}/{path.name}"] = path.read_bytes()
        return expected


@pytest.fixture
def site(tmp_path: Path, fake: FakeOSF) -> Site:
    return Site(tmp_path, fake.url)


def run_upload(capsys: pytest.CaptureFixture[str], site: Site, *extra: str) -> tuple[int, str]:
    """Run `collector upload` in-process; return the exit code and everything printed."""
    code = cli_main(["--settings", str(site.settings_path), "upload", *extra])
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert TOKEN not in output and READ_ONLY_TOKEN not in output
    return code, output


def new_requests(fake: FakeOSF, since: int) -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in fake.requests[since:]]


def test_first_run_uploads_exactly_ids_and_report_then_nothing(
        fake: FakeOSF, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.write_day("2026-10-25", ["01", "02", "02b", "03"])
    site.write_day("2026-10-26", ["00", "23"])
    (site.vault / ".collector").mkdir(exist_ok=True)
    (site.vault / ".collector" / "2026-10-25_04_IDs.txt.xz").write_bytes(b"hidden")

    code, output = run_upload(capsys, site)

    assert code == 0, output
    assert fake.files() == site.expected_on_osf()  # identical bytes, nothing else
    assert len(fake.files()) == 8
    assert fake.folders() == ["2026", "2026/10", "2026/10/25", "2026/10/26"]
    assert "8 created" in output

    # The real osfclient sees the same files with matching md5s through its own listing.
    client = osfclient.OSF(token=TOKEN)
    client.session.base_url = fake.url.rstrip("/")
    listed = {f.path.lstrip("/"): f.hashes["md5"]
              for f in client.project(PROJECT).storage("osfstorage").files}
    assert set(listed) == set(site.expected_on_osf())

    before = len(fake.requests)
    code, output = run_upload(capsys, site)
    assert code == 0, output
    assert new_requests(fake, before) == []  # nothing new: not even a login
    assert all(len(fake.versions(path)) == 1 for path in fake.files())


def test_grown_report_makes_exactly_one_new_version_in_two_puts(
        fake: FakeOSF, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.write_day("2026-01-02", ["00", "01"])
    assert run_upload(capsys, site)[0] == 0
    site.write_day("2026-01-02", ["00", "01", "02"])  # next hour: one new IDs file, report grows
    before = len(fake.requests)

    code, output = run_upload(capsys, site)

    assert code == 0, output
    report = "2026/01/02/2026-01-02_report.txt"
    assert len(fake.versions(report)) == 2
    assert fake.files() == site.expected_on_osf()
    assert all(len(fake.versions(p)) == 1 for p in fake.files() if p != report)
    puts = [r for r in new_requests(fake, before) if r[0] == "PUT"]
    # new IDs file: 201; report: 409 (md5 differs) then 200. Folders come from the ledger.
    assert [status for _, _, status in puts] == [201, 409, 200]
    assert "1 created, 1 updated" in output
    assert len(new_requests(fake, before)) == 7  # 4 discovery GETs (guid redirect) + 3 PUTs
    assert "(7 requests)" in output  # the log counts them the same way


def test_folders_deleted_on_osf_are_created_again(
        fake: FakeOSF, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.write_day("2026-01-02", ["00"])
    assert run_upload(capsys, site)[0] == 0
    fake.wipe()  # someone emptied the project; our cached folder links now give 404
    site.write_day("2026-01-02", ["00", "01"])

    code, output = run_upload(capsys, site)

    assert code == 0, output
    assert set(fake.files()) == {"2026/01/02/2026-01-02_01_IDs.txt.xz",
                                 "2026/01/02/2026-01-02_report.txt"}
    # --hour re-checks against OSF whatever the ledger says, so it repairs the lost hour.
    assert run_upload(capsys, site, "--hour", "2026-01-02T00")[0] == 0
    assert fake.files() == site.expected_on_osf()


def test_lost_ledger_rechecks_with_one_request_per_file_and_no_new_version(
        fake: FakeOSF, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.write_day("2026-01-02", ["00", "01"])
    assert run_upload(capsys, site)[0] == 0
    (site.vault / ".collector" / LEDGER_NAME).unlink()
    before = len(fake.requests)

    code, output = run_upload(capsys, site)

    assert code == 0, output
    assert "3 unchanged" in output
    assert all(len(fake.versions(path)) == 1 for path in fake.files())
    file_puts = [r for r in new_requests(fake, before) if r[0] == "PUT" and r[2] == 409]
    assert len(file_puts) == 3 + 3  # 3 folders exist (409 + a filtered lookup each), 3 files


def _requests_for_new_day(fake: FakeOSF, site: Site,
                          capsys: pytest.CaptureFixture[str]) -> list[tuple[str, str, int]]:
    site.write_day("2026-03-31", ["00", "01", "02"])
    before = len(fake.requests)
    code, output = run_upload(capsys, site)
    assert code == 0, output
    return new_requests(fake, before)


def test_requests_per_file_do_not_grow_with_the_archive(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counts = []
    for archive_days in (0, 90):
        with FakeOSF(token=TOKEN, project=PROJECT, shuffle_listings=True) as fake:
            for day in range(archive_days):  # 2026-01-01 .. 2026-03-31 minus the new day
                month, dom = divmod(day, 30)
                for hour in range(24):
                    fake.put_file(f"2026/{month + 1:02d}/{dom + 1:02d}/ids_{hour:02d}.xz", b"x")
                fake.put_file(f"2026/{month + 1:02d}/{dom + 1:02d}/report.txt", b"r")
            root = tmp_path / f"archive{archive_days}"
            root.mkdir()
            site = Site(root, fake.url)
            counts.append(len(_requests_for_new_day(fake, site, capsys)))
            assert fake.files().items() >= site.expected_on_osf().items()
            # The next hour: one new IDs file and the grown report, folders already cached.
            site.write_day("2026-03-31", ["00", "01", "02", "03"])
            before = len(fake.requests)
            assert run_upload(capsys, site)[0] == 0
            counts.append(len(new_requests(fake, before)))
    small_first, small_next, large_first, large_next = counts
    assert large_first == small_first + 2  # only the existing year/month: 409 + one lookup each
    assert large_next == small_next == 4 + 3  # discovery (4 GETs) + 1 PUT + 2 PUTs


def test_wrong_token_fails_with_one_clear_line(
        fake: FakeOSF, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.write_day("2026-01-02", ["00"])
    site.set_token("osfpat-Wrong-token-value")

    code, output = run_upload(capsys, site)

    assert code == 2
    assert "osfpat-Wrong-token-value" not in output
    assert "Traceback" not in output
    assert error_lines(output, "upload") == [
        "collector upload: error: OSF rejected the token (HTTP 401 Unauthorized) on opening "
        f"OSF project {PROJECT}: check the token in osf_credentials.txt is valid and not revoked"
    ]
    assert "ALERT upload_failing" in output
    assert fake.files() == {}

    site.set_token(TOKEN)
    assert run_upload(capsys, site)[0] == 0
    assert fake.files() == site.expected_on_osf()


def test_read_only_token_gets_403_and_files_stay_pending(
        fake: FakeOSF, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.write_day("2026-01-02", ["00"])
    site.set_token(READ_ONLY_TOKEN)

    code, output = run_upload(capsys, site)

    assert code == 1
    assert error_lines(output, "upload") == [
        "collector upload: error: OSF refused creating folder 2026 (HTTP 403 Forbidden): the "
        f"token needs the osf.full_write scope and write access to project {PROJECT}"
    ]
    site.set_token(TOKEN)
    assert run_upload(capsys, site)[0] == 0
    assert fake.files() == site.expected_on_osf()


# A file upload into a day folder (folder creations carry kind=folder instead).
FILE_PUT = r"^/v1/resources/abc12/providers/osfstorage/[0-9a-f]+/$"
FILE_QUERY = r"kind=file"


@pytest.mark.parametrize(("status", "message"), [
    (507, "OSF storage quota of project abc12 is exhausted (HTTP 507) on uploading "
          "2026/01/02/2026-01-02_00_IDs.txt.xz"),
    (500, "OSF failed (HTTP 500) on uploading 2026/01/02/2026-01-02_00_IDs.txt.xz "
          "(gave up after 3 attempts)"),
    (503, "OSF failed (HTTP 503) on uploading 2026/01/02/2026-01-02_00_IDs.txt.xz "
          "(gave up after 3 attempts)"),
    (429, "OSF is rate-limiting (HTTP 429) on uploading 2026/01/02/2026-01-02_00_IDs.txt.xz "
          "(gave up after 3 attempts)"),
])
def test_persistent_failure_leaves_files_pending_for_next_run(
        fake: FakeOSF, site: Site, capsys: pytest.CaptureFixture[str],
        status: int, message: str) -> None:
    site.write_day("2026-01-02", ["00", "01"])
    # Folders get created; every file upload into the day folder fails.
    fake.inject(status, method="PUT", path=FILE_PUT, query=FILE_QUERY, count=100,
                retry_after=0 if status == 429 else None)

    code, output = run_upload(capsys, site)

    assert code == 1
    assert error_lines(output, "upload") == [f"collector upload: error: {message}"]
    assert "ALERT upload_failing" in output
    assert fake.files() == {}
    fake.clear_faults()
    code, output = run_upload(capsys, site)
    assert code == 0, output
    assert fake.files() == site.expected_on_osf()
    assert "3 created" in output


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_transient_failure_is_retried_within_the_run(
        fake: FakeOSF, site: Site, capsys: pytest.CaptureFixture[str], status: int) -> None:
    site.write_day("2026-01-02", ["00"])
    fake.inject(status, method="PUT", path=FILE_PUT, query=FILE_QUERY, count=1,
                retry_after=1 if status == 429 else None)
    started = time.monotonic()

    code, output = run_upload(capsys, site)

    assert code == 0, output
    assert fake.files() == site.expected_on_osf()
    assert f"(HTTP {status})" in output and "retrying" in output
    if status == 429:
        assert time.monotonic() - started >= 1.0  # Retry-After was honoured


def test_long_retry_after_stops_the_run_at_once(
        fake: FakeOSF, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.write_day("2026-01-02", ["00"])
    fake.inject(429, method="GET", path="/guids/", count=1, retry_after=3600)

    code, output = run_upload(capsys, site)

    assert code == 1
    assert error_lines(output, "upload") == [
        "collector upload: error: OSF is rate-limiting (HTTP 429) on opening OSF project abc12 "
        "(gave up after 1 attempt)"]
    assert fake.request_count("PUT") == 0
    assert run_upload(capsys, site)[0] == 0


def test_connection_resets_fail_cleanly_then_complete(
        fake: FakeOSF, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.write_day("2026-01-02", ["00"])
    fake.inject(method="PUT", path=FILE_PUT, query=FILE_QUERY, count=100, reset=True)

    code, output = run_upload(capsys, site)

    assert code == 1
    assert error_lines(output, "upload") == [
        f"collector upload: error: connection reset talking to 127.0.0.1:{fake.port} on "
        "uploading 2026/01/02/2026-01-02_00_IDs.txt.xz (gave up after 3 attempts)"]
    fake.clear_faults()
    assert run_upload(capsys, site)[0] == 0
    assert fake.files() == site.expected_on_osf()


def test_reset_after_the_file_was_stored_makes_no_second_version(
        fake: FakeOSF, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.write_day("2026-01-02", ["00"])
    fake.inject(method="PUT", path=FILE_PUT, query=FILE_QUERY, count=1, reset_after_store=True)

    code, output = run_upload(capsys, site)

    assert code == 0, output
    assert fake.files() == site.expected_on_osf()
    ids = "2026/01/02/2026-01-02_00_IDs.txt.xz"
    assert len(fake.versions(ids)) == 1
    assert "unchanged 2026/01/02/2026-01-02_00_IDs.txt.xz" in output  # the retry found it there


def test_every_request_has_a_timeout(fake: FakeOSF, site: Site) -> None:
    site.write_day("2026-01-02", ["00"])
    settings = load_settings(site.settings_path)
    # osfclient's own GET (discovery), then one of our PUTs.
    for path, query in (("/nodes/abc12/files/$", ""), (FILE_PUT, FILE_QUERY)):
        fake.inject(path=path, query=query, count=3, delay=1.5)
        notifier = RecordingNotifier()
        started = time.monotonic()
        with pytest.raises(RemoteError, match=r"no answer from 127\.0\.0\.1"):
            upload_to_osf(settings, notifier=notifier, timeout=(1.0, 0.3))
        assert time.monotonic() - started < 4
        assert [kind for kind, _, _ in notifier.alerts] == ["upload_failing"]
        assert TOKEN not in str(notifier.alerts)
        fake.clear_faults()
    time.sleep(1.5)  # let the fake's stalled handlers finish before it stops


def test_old_waterbutler_without_conflict_metadata(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOSF(token=TOKEN, project=PROJECT, conflict_metadata=False) as fake:
        site = Site(tmp_path, fake.url)
        site.write_day("2026-01-02", ["00"])
        assert run_upload(capsys, site)[0] == 0
        site.write_report("2026-01-02", 5)
        (site.vault / ".collector" / LEDGER_NAME).unlink()

        code, output = run_upload(capsys, site)

        assert code == 0, output
        assert fake.files() == site.expected_on_osf()
        assert len(fake.versions("2026/01/02/2026-01-02_report.txt")) == 2
        assert len(fake.versions("2026/01/02/2026-01-02_00_IDs.txt.xz")) == 1


def test_hour_option_uploads_that_hour_and_its_report(
        fake: FakeOSF, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.write_day("2026-10-25", ["01", "02", "02b"])

    code, output = run_upload(capsys, site, "--hour", "2026-10-25T02b")

    assert code == 0, output
    assert set(fake.files()) == {"2026/10/25/2026-10-25_02b_IDs.txt.xz",
                                 "2026/10/25/2026-10-25_report.txt"}
    code, output = run_upload(capsys, site, "--hour", "2026-10-25T05")
    assert code == 1
    assert error_lines(output, "upload") == [
        f"collector upload: error: nothing to upload for 2026-10-25T05: "
        f"{site.vault}/2026-10-25/2026-10-25_05_IDs.txt.xz does not exist"]


def test_disabled_upload_is_a_no_op(tmp_path: Path, fake: FakeOSF,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(tmp_path, fake.url, osf_enabled=False)
    site.write_day("2026-01-02", ["00"])

    code, output = run_upload(capsys, site)

    assert code == 0
    assert "osf_enabled=False" in output
    assert fake.requests == []


def test_fake_osf_runs_from_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.doubles.fake_osf", "--port", "0", "--token", TOKEN,
         "--project", PROJECT, "--port-file", str(port_file)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = wait_for_port_file(server, port_file, timeout=15)
        site_root = tmp_path / "site"
        site_root.mkdir()
        site = Site(site_root, f"http://127.0.0.1:{port}/v2/")
        site.write_day("2026-01-02", ["00"])
        code, output = run_upload(capsys, site)
        assert code == 0, output
        assert "2 created" in output
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0


def test_osf_down_then_back_with_its_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """OSF's process dies (connection refused) and comes back on the same port with its
    archive: every run in between fails with one line, nothing is lost, the next run
    uploads what was pending and keeps what OSF already had."""
    state = tmp_path / "osf_state.json"
    first = FakeOSF(token=TOKEN, project=PROJECT, state_file=state).start()
    port = first.port
    site = Site(tmp_path, first.url)
    site.write_day("2026-01-02", ["00"])
    assert run_upload(capsys, site)[0] == 0
    first.stop()  # down: nothing listens on the port

    site.write_day("2026-01-02", ["00", "01"])
    for _ in range(3):
        code, output = run_upload(capsys, site)
        assert code == 1
        [line] = error_lines(output, "upload")
        assert line.startswith("collector upload: error: connection failed talking to "
                               f"127.0.0.1:{port} on opening OSF project {PROJECT}")
        assert "Traceback" not in output

    with FakeOSF(token=TOKEN, project=PROJECT, port=port, state_file=state) as second:
        assert "2026/01/02/2026-01-02_00_IDs.txt.xz" in second.files()  # came back with it
        code, output = run_upload(capsys, site)
        assert code == 0, output
        assert second.files() == site.expected_on_osf()
        assert "0 pending" in output
