"""`collector process` end to end: real chunk files in, the three .xz files and the report out.

The expected outputs are computed here independently, plainly, with the json and csv
modules, from the same raw chunks (`expected_hour`), never by calling the collector's code.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

import collector.process.plan
import collector.process.read
import collector.process.scan
from collector.alerts.smtp import CAFILE_ENV
from collector.errors import CollectorError, DiskFullError, LockedError
from collector.layout import HourKey, chunk_path
from collector.process.ledger import LEDGER_NAME
from collector.process.run import process, process_lock
from collector.settings import Settings, load_settings
from collector.sources.x import X_SOURCE
from tests.doubles.samples import MessageFactory
from tests.integration.helpers import REPO_ROOT, smtp_double, write_mail_credentials

pytestmark = pytest.mark.integration

CET = ZoneInfo("CET")
HOUR_START = datetime(2026, 2, 3, 9, 0, tzinfo=UTC)  # 2026-02-03T10 in CET
HOUR = HourKey("2026-02-03", "10")
LATER = HOUR_START + timedelta(hours=3)

TWEET_COLUMNS = [
    "id", "conversation_id", "author_id", "created_at", "retrieved_at", "source", "lang",
    "text", "reference_type", "referenced_tweet_id", "author.created_at", "author.location",
    "author.name", "author.username", "author.verified", "author.protected",
    "author.public_metrics.followers_count", "author.public_metrics.following_count",
    "author.public_metrics.tweet_count", "author.public_metrics.listed_count",
]
USER_COLUMNS = ["author_id", "lang", *TWEET_COLUMNS[10:]]


# ---- the independent computation -------------------------------------------------------------

def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def received_in_previous_hour(sources: list[tuple[str, Path]], hour: HourKey) -> set[int]:
    """Tweet ids in any server's chunks of the previous hour's last ten minutes."""
    start = datetime.strptime(f"{hour.day} {hour.hour[:2]}", "%Y-%m-%d %H").replace(
        tzinfo=CET, fold=int(hour.hour.endswith("b")))
    before = (start.astimezone(UTC) - timedelta(minutes=1)).astimezone(CET)
    label = f"{before:%H}" + ("b" if before.fold else "")
    found = set()
    for _, root in sources:
        for path in (root / f"{before:%Y-%m-%d}" / label).glob("*.jsonl"):
            if int(re.search(r"_\d\d\w?-(\d\d)", path.name)[1]) < 50:  # type: ignore[index]
                continue
            for line in path.read_bytes().split(b"\n"):
                with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                    found.add(int(json.loads(line)["data"]["id"]))
    return found


def expected_hour(sources: list[tuple[str, Path]], hour: HourKey) -> dict[str, Any]:
    """IDs, tweets rows, users rows and report numbers, straight from the chunk files.

    A tweet received in the previous hour's last ten minutes already belongs to that hour.
    """
    earlier = received_in_previous_hour(sources, hour)
    kept: dict[int, tuple[str, list[str], bool]] = {}
    seen_by: dict[int, set[str]] = {}
    by_minute: dict[str, dict[str, set[int]]] = {server: {} for server, _ in sources}
    skipped = 0
    for server, root in sources:
        folder = root / hour.day / hour.hour
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
            minute_match = re.search(r"-(\d\d)(?:-\d\d)?\.jsonl$", path.name)  # _HH-MM[-SS]
            assert minute_match is not None
            minute = str(int(minute_match[1]))
            for line in path.read_bytes().split(b"\n"):
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    skipped += 1
                    continue
                tweet = msg.get("data") if isinstance(msg, dict) else None
                if not isinstance(tweet, dict):
                    skipped += 1
                    continue
                tweet_id = int(tweet["id"])
                users = msg.get("includes", {}).get("users", [])
                author = next((u for u in users if u["id"] == tweet.get("author_id")), None)
                refs = tweet.get("referenced_tweets") or []
                a = author or {}
                metrics = a.get("public_metrics", {})
                retrieved = msg.get("__twarc", {}).get("retrieved_at", "")
                row = [_cell(v) for v in (
                    tweet["id"], tweet.get("conversation_id"), tweet.get("author_id"),
                    tweet.get("created_at"), retrieved, tweet.get("source"), tweet.get("lang"),
                    tweet.get("text"), refs[0]["type"] if refs else "original",
                    refs[0]["id"] if refs else "", a.get("created_at"), a.get("location"),
                    a.get("name"), a.get("username"), a.get("verified"), a.get("protected"),
                    metrics.get("followers_count"), metrics.get("following_count"),
                    metrics.get("tweet_count"), metrics.get("listed_count"))]
                by_minute[server].setdefault(minute, set()).add(tweet_id)
                if tweet_id in earlier:
                    continue
                seen_by.setdefault(tweet_id, set()).add(server)
                if tweet_id not in kept or retrieved < kept[tweet_id][0]:
                    kept[tweet_id] = (retrieved, row, author is not None)
    ids = sorted(kept)
    users: dict[int, tuple[list[str], bool]] = {}
    for tweet_id in ids:
        _, row, has_author = kept[tweet_id]
        author_id = int(row[2])
        if has_author or author_id not in users or not users[author_id][1]:
            users[author_id] = ([row[2], row[6], *row[10:]], has_author)
    servers = [server for server, _ in sources]
    return {
        "ids": [str(i) for i in ids],
        "tweets": [kept[i][1] for i in ids],
        "users": [users[a][0] for a in sorted(users)],
        "per_server": {s: sum(1 for v in seen_by.values() if s in v) for s in servers},
        "total": len(ids),
        "diff": sum(1 for v in seen_by.values() if len(v) != len(servers)),
        "skipped": skipped,
        "coverage": {s: {m: len(ids) for m, ids in minutes.items()}
                     for s, minutes in by_minute.items()},
    }


def read_outputs(vault: Path, hour: HourKey) -> dict[str, Any]:
    folder = vault / hour.day
    prefix = hour.file_prefix
    ids = lzma.decompress((folder / f"{prefix}_IDs.txt.xz").read_bytes()).decode()
    tweets = list(csv.reader(io.StringIO(lzma.decompress(
        (folder / f"{prefix}_tweets.csv.xz").read_bytes()).decode(), newline="")))
    users = list(csv.reader(io.StringIO(lzma.decompress(
        (folder / f"{prefix}_users.csv.xz").read_bytes()).decode(), newline="")))
    report = (folder / f"{hour.day}_report.txt").read_text().splitlines()
    header = report[0].split("\t")
    lines = {line.split("\t")[0]: dict(zip(header, line.split("\t"), strict=True))
             for line in report[1:]}
    coverage = json.loads((folder / ".coverage" / f"{prefix}.json").read_text())
    return {"ids": ids.splitlines(), "tweets": tweets, "users": users, "report": lines,
            "report_header": header, "ids_text": ids, "coverage": coverage}


def assert_matches(vault: Path, hour: HourKey, sources: list[tuple[str, Path]]) -> None:
    want = expected_hour(sources, hour)
    got = read_outputs(vault, hour)
    assert got["ids"] == want["ids"]
    assert got["tweets"][0] == TWEET_COLUMNS
    assert got["tweets"][1:] == want["tweets"]
    assert got["users"][0] == USER_COLUMNS
    assert got["users"][1:] == want["users"]
    line = got["report"][hour.hour]
    servers = [s for s, _ in sources]
    assert got["report_header"][: len(servers) + 4] == ["hour", *servers, "total", "diff",
                                                        "diff %"]
    assert {s: int(line[s]) for s in servers} == want["per_server"]
    assert int(line["total"]) == want["total"] and int(line["diff"]) == want["diff"]
    assert line["diff %"] == f"{100 * want['diff'] / max(want['total'], 1):.2f}"
    skipped = sum(int(line[c]) for c in ("not_json", "torn_line", "no_data", "bad_tweet"))
    assert skipped == want["skipped"]
    # the coverage plot's input: distinct tweets per server and minute of the chunk's name
    assert got["coverage"] == {"version": 1, "hour": str(hour), "counts": want["coverage"]}


# ---- fixtures --------------------------------------------------------------------------------

SERVERS = ("srv1", "srv2", "srv3")


@pytest.fixture
def main_settings(tmp_path: Path, write_settings: Callable[..., Path]) -> Settings:
    path = write_settings(role="main", server_id="srv1", servers=",".join(SERVERS),
                          data_vault_dst=str(tmp_path / "vault"),
                          incoming_dst=str(tmp_path / "incoming"), osf_enabled="False",
                          main_host=None, main_user=None)
    return load_settings(path)


def root_of(settings: Settings, server: str) -> Path:
    if server == settings.server_id:
        return settings.data_storage_dst
    assert settings.incoming_dst is not None
    return settings.incoming_dst / server


def folders(settings: Settings) -> list[tuple[str, Path]]:
    return [(s, root_of(settings, s)) for s in settings.servers]


def write_chunk(settings: Settings, server: str, moment: datetime, lines: list[bytes]) -> Path:
    path = chunk_path(root_of(settings, server), server, moment, settings.timezone)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


def stream_line(message: dict[str, Any], retrieved: datetime) -> bytes:
    message = dict(message)
    message["__twarc"] = {"url": "https://api.x.com/2/tweets/sample/stream",
                          "version": "2.14.0", "retrieved_at": retrieved.isoformat()}
    return orjson.dumps(message) + b"\n"


def hostile(tweet_id: int, text: str, with_author: bool = True,
            refs: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {"id": str(tweet_id), "text": text, "author_id": "100",
                            "conversation_id": str(tweet_id), "lang": "und",
                            "created_at": "2026-02-03T09:00:00.000Z", "source": "a, \"b\""}
    if refs:
        data["referenced_tweets"] = [{"type": "retweeted", "id": "1"}]
    users = [{"id": "100", "name": "Zoë\n\"Z\"", "username": "z", "verified": False,
              "protected": True, "created_at": "2009-01-01T00:00:00.000Z",
              "public_metrics": {"followers_count": 1, "following_count": 2,
                                 "tweet_count": 3, "listed_count": 4}}]
    return {"data": data, "includes": {"users": users if with_author else []}}


def fill_hour(settings: Settings, start: datetime = HOUR_START, tweets: int = 300) -> None:
    """Three servers capture the same stream; srv2 misses minutes 10-19, srv3 all but 0-4."""
    factory = MessageFactory(base_time=start)
    for offset, server in enumerate(SERVERS):
        for minute in range(0, 60, 5):
            if (server == "srv2" and 10 <= minute < 20) or (server == "srv3" and minute >= 5):
                continue
            moment = start + timedelta(minutes=minute)
            lines = [stream_line(factory.message(i),
                                 moment + timedelta(seconds=i % 60, milliseconds=offset * 7))
                     for i in range(minute * tweets // 60, (minute + 5) * tweets // 60)]
            write_chunk(settings, server, moment, lines)
    hard = start + timedelta(minutes=59)
    texts = ["new\nline", "cr\rhere", 'quote "q"', "comma, here", "tab\there", "emoji 😊👍🏽",
             "\r\n", '"', ""]
    lines = [stream_line(hostile(10**18 + i, text, with_author=i % 2 == 0, refs=i % 3 != 0),
                         hard) for i, text in enumerate(texts)]
    lines += [b"not json at all\n",
              stream_line({"errors": [{"title": "operational-disconnect"}]}, hard),
              stream_line(hostile(10**18, "dup from srv1"), hard + timedelta(seconds=5))]
    write_chunk(settings, "srv1", hard, [*lines, b'{"data":{"id":"99","te'])
    write_chunk(settings, "srv2", hard, [stream_line(hostile(10**18, "dup earlier"),
                                                     hard - timedelta(seconds=1))])


def tree_bytes(vault: Path) -> dict[str, bytes]:
    return {str(p.relative_to(vault)): p.read_bytes() for p in sorted(vault.rglob("*"))
            if p.is_file()}


# ---- tests -----------------------------------------------------------------------------------

def test_three_servers_hostile_lines_exact_outputs_and_byte_identical_rerun(
        main_settings: Settings) -> None:
    fill_hour(main_settings)
    result = process(main_settings, now=LATER)
    assert [r.hour for r in result.hours] == [HOUR]
    vault = main_settings.data_vault_dst
    assert vault is not None
    assert_matches(vault, HOUR, folders(main_settings))
    got = read_outputs(vault, HOUR)
    texts = {row[0]: row[7] for row in got["tweets"][1:]}
    assert texts[str(10**18 + 1)] == "cr\rhere" and texts[str(10**18 + 6)] == "\r\n"
    assert texts[str(10**18)] == "dup earlier"  # retrieved first, though read last
    first = tree_bytes(vault)
    assert process(main_settings, now=LATER).hours == []  # nothing new: nothing done
    process(main_settings, hour=HOUR, now=LATER)  # forced reprocessing
    assert tree_bytes(vault) == first


def test_helper_interpreters_index_a_large_hour_exactly_like_one_process(
        main_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    fill_hour(main_settings, tweets=600)
    vault = main_settings.data_vault_dst
    assert vault is not None
    process(main_settings, hour=HOUR, now=LATER, workers=1)  # one process
    alone = tree_bytes(vault)
    monkeypatch.setattr(collector.process.read, "PARALLEL_MIN_BYTES", 0)
    for workers in (2, 3):  # the hour split in two and three groups of chunks
        process(main_settings, hour=HOUR, now=LATER, workers=workers)
        assert_matches(vault, HOUR, folders(main_settings))
        assert tree_bytes(vault) == alone


def test_pandas_reads_the_text_back_unchanged(main_settings: Settings) -> None:
    pd = pytest.importorskip("pandas")
    fill_hour(main_settings, tweets=60)
    process(main_settings, now=LATER)
    assert main_settings.data_vault_dst is not None
    folder = main_settings.data_vault_dst / HOUR.day
    frame = pd.read_csv(folder / f"{HOUR.file_prefix}_tweets.csv.xz", dtype=str,
                        keep_default_na=False)
    want = expected_hour(folders(main_settings), HOUR)
    assert frame["text"].tolist() == [row[7] for row in want["tweets"]]
    users = pd.read_csv(folder / f"{HOUR.file_prefix}_users.csv.xz", dtype=str,
                        keep_default_na=False)
    assert list(users.columns) == USER_COLUMNS


def test_late_chunk_reprocesses_the_hour_with_everything(main_settings: Settings) -> None:
    fill_hour(main_settings, tweets=120)
    process(main_settings, now=LATER)
    vault = main_settings.data_vault_dst
    assert vault is not None
    before = read_outputs(vault, HOUR)
    # srv2 was cut off and now delivers minutes 10-19 three hours late, with a new tweet.
    late = [stream_line(hostile(5 * 10**18, "only srv2 saw this"), HOUR_START)]
    write_chunk(main_settings, "srv2", HOUR_START + timedelta(minutes=10), late)
    result = process(main_settings, now=LATER + timedelta(hours=3))
    assert [r.hour for r in result.hours] == [HOUR]
    assert_matches(vault, HOUR, folders(main_settings))
    after = read_outputs(vault, HOUR)
    assert int(after["report"]["10"]["total"]) == int(before["report"]["10"]["total"]) + 1
    assert len(after["report"]) == 1  # the line was replaced, not added


def test_a_tweet_received_again_after_the_hour_changed_is_published_once(
        main_settings: Settings) -> None:
    """Clocks either side of the hour, a backfill after a reconnect, and a secondary's late
    chunk of the previous hour's tail: each tweet lands in the hour of its first receipt."""
    vault = main_settings.data_vault_dst
    assert vault is not None
    factory = MessageFactory(base_time=HOUR_START)
    boundary = HOUR_START + timedelta(hours=1)  # 10 -> 11 in CET
    straddling, backfilled, late_seen = (factory.message(i) for i in range(3))
    write_chunk(main_settings, "srv1", boundary - timedelta(seconds=1),
                [stream_line(straddling, boundary - timedelta(milliseconds=2)),
                 stream_line(backfilled, boundary - timedelta(seconds=40))])
    write_chunk(main_settings, "srv2", boundary,
                [stream_line(straddling, boundary + timedelta(milliseconds=3)),
                 stream_line(late_seen, boundary + timedelta(seconds=2))])
    # srv1 reconnects at 11:02 with backfill_minutes=5: the last minutes come again.
    write_chunk(main_settings, "srv1", boundary + timedelta(minutes=2),
                [stream_line(m, boundary + timedelta(minutes=2))
                 for m in (straddling, backfilled, late_seen)])
    result = process(main_settings, now=boundary + timedelta(hours=2))
    assert [str(r.hour) for r in result.hours] == ["2026-02-03T10", "2026-02-03T11"]
    ten, eleven = HOUR, HourKey("2026-02-03", "11")
    ids = {tweet["data"]["id"] for tweet in (straddling, backfilled, late_seen)}
    assert set(read_outputs(vault, ten)["ids"]) == ids - {late_seen["data"]["id"]}
    assert read_outputs(vault, eleven)["ids"] == [late_seen["data"]["id"]]
    # two repeats within 11, two tweets that 10 already received
    assert read_outputs(vault, eleven)["report"]["11"]["duplicates"] == "4"
    # srv3's chunk of 10:58 arrives hours later: it saw late_seen first, so both hours change.
    write_chunk(main_settings, "srv3", boundary - timedelta(minutes=2),
                [stream_line(late_seen, boundary - timedelta(minutes=2))])
    result = process(main_settings, now=boundary + timedelta(hours=4))
    assert [str(r.hour) for r in result.hours] == ["2026-02-03T10", "2026-02-03T11"]
    assert set(read_outputs(vault, ten)["ids"]) == ids
    assert read_outputs(vault, eleven)["ids"] == []
    for hour in (ten, eleven):
        assert_matches(vault, hour, folders(main_settings))


def test_catch_up_processes_every_due_hour_and_retention_removes_old_chunks(
        main_settings: Settings) -> None:
    for h in range(4):
        fill_hour(main_settings, HOUR_START + timedelta(hours=h), tweets=60)
    # Two hours due; the third is within its grace period, the fourth still running.
    now = HOUR_START + timedelta(hours=2, minutes=15)
    result = process(main_settings, now=now)
    assert [str(r.hour) for r in result.hours] == ["2026-02-03T10", "2026-02-03T11"]
    result = process(main_settings, now=HOUR_START + timedelta(hours=5))
    assert [str(r.hour) for r in result.hours] == ["2026-02-03T12", "2026-02-03T13"]
    vault = main_settings.data_vault_dst
    assert vault is not None
    for h in range(4):
        hour = HourKey("2026-02-03", f"{10 + h}")
        assert_matches(vault, hour, folders(main_settings))
    report = read_outputs(vault, HOUR)["report"]
    assert list(report) == ["10", "11", "12", "13"]
    # A week later the raw chunks go; the hour is not reprocessed with nothing.
    result = process(main_settings, now=HOUR_START + timedelta(days=8))
    assert result.pruned_hours == 4 and result.hours == []
    assert not list(main_settings.data_storage_dst.glob("2026-02-03/*/*.jsonl"))
    assert read_outputs(vault, HOUR)["ids"]
    ledger = json.loads((main_settings.state_dir / LEDGER_NAME).read_text())
    assert ledger["hours"]["2026-02-03T10"] == {"pruned": True}


def test_clock_change_days_neither_merge_nor_lose_an_hour(main_settings: Settings) -> None:
    # Keep spring's raw chunks until autumn, to check them against the outputs.
    main_settings = dataclasses.replace(main_settings, raw_retention_days=3650)
    factory = MessageFactory()
    # Autumn: 00:00-01:59 UTC is 02:00-02:59 CEST then 02:00-02:59 CET.
    autumn = datetime(2026, 10, 25, 0, 0, tzinfo=UTC)
    spring = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)  # 01 CET, then 03 CEST (02 skipped)
    for base, offset in ((autumn, 0), (spring, 1000)):
        for half in range(2):
            moment = base + timedelta(hours=half, minutes=30)
            write_chunk(main_settings, "srv1", moment,
                        [stream_line(factory.message(offset + half * 10 + i), moment)
                         for i in range(10)])
    result = process(main_settings, now=datetime(2026, 10, 26, tzinfo=UTC))
    assert [str(r.hour) for r in result.hours] == [
        "2026-03-29T01", "2026-03-29T03", "2026-10-25T02", "2026-10-25T02b"]
    vault = main_settings.data_vault_dst
    assert vault is not None
    first = read_outputs(vault, HourKey("2026-10-25", "02"))
    second = read_outputs(vault, HourKey("2026-10-25", "02b"))
    assert len(first["ids"]) == len(second["ids"]) == 10
    assert not set(first["ids"]) & set(second["ids"])
    assert list(first["report"]) == ["02", "02b"]
    assert list(read_outputs(vault, HourKey("2026-03-29", "01"))["report"]) == ["01", "03"]
    for hour in ("2026-10-25T02", "2026-10-25T02b", "2026-03-29T01", "2026-03-29T03"):
        assert_matches(vault, HourKey.parse(hour), folders(main_settings))
    with pytest.raises(CollectorError, match="does not exist"):
        process(main_settings, hour=HourKey("2026-03-29", "02"), force=True)


def test_named_hour_not_due_needs_force(main_settings: Settings) -> None:
    fill_hour(main_settings, tweets=60)
    with pytest.raises(CollectorError, match="not due"):
        process(main_settings, hour=HOUR, now=HOUR_START + timedelta(minutes=30))
    result = process(main_settings, hour=HOUR, force=True,
                     now=HOUR_START + timedelta(minutes=30))
    assert [r.hour for r in result.hours] == [HOUR]


def test_a_second_run_at_once_is_refused(main_settings: Settings) -> None:
    fill_hour(main_settings, tweets=60)
    with process_lock(main_settings.state_dir), pytest.raises(LockedError):
        process(main_settings, now=LATER)
    assert main_settings.data_vault_dst is not None
    assert not main_settings.data_vault_dst.exists()


def _cli(settings: Settings, *args: str) -> list[str]:
    return [sys.executable, "-m", "collector", "--settings", str(settings.path), *args]


def test_sigkill_mid_run_leaves_no_half_file_and_the_rerun_completes(
        main_settings: Settings) -> None:
    fill_hour(main_settings, tweets=12_000)
    vault = main_settings.data_vault_dst
    assert vault is not None
    folder = vault / HOUR.day
    child = subprocess.Popen(_cli(main_settings, "process", "--hour", str(HOUR), "--force"),
                             cwd=REPO_ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if folder.is_dir() and any(".tmp-" in p.name for p in folder.iterdir()):
            break  # compression has started writing temporaries
        time.sleep(0.005)
    assert child.poll() is None, "the run ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    finals = [p for p in folder.iterdir() if not p.name.startswith(".")]
    for path in finals:  # whatever has a final name is whole
        if path.suffix == ".xz":
            lzma.decompress(path.read_bytes())
    done = subprocess.run(_cli(main_settings, "process", "--hour", str(HOUR), "--force"),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
    assert_matches(vault, HOUR, folders(main_settings))


def test_cli_errors_are_one_line(main_settings: Settings) -> None:
    done = subprocess.run(_cli(main_settings, "process", "--hour", "2026-02-03T10"),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "collector process: error: no closed chunks for hour 2026-02-03T10")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                    reason="needs root to mount a tiny tmpfs")
def test_a_failing_run_is_alerted_by_email_and_exits_non_zero(
        tmp_path: Path, write_settings: Callable[..., Path],
        tls_files: tuple[Path, Path]) -> None:
    with smtp_double(tls_files) as smtp:
        write_mail_credentials(tmp_path / "mailkeys", smtp.port)
        settings = load_settings(write_settings(
            role="main", server_id="srv1", servers=",".join(SERVERS),
            data_vault_dst=str(tmp_path / "vault"), incoming_dst=str(tmp_path / "incoming"),
            osf_enabled="False", main_host=None, main_user=None, notifications="True",
            email_credentials_dst=str(tmp_path / "mailkeys")))
        fill_hour(settings, tweets=60)
        env = {**os.environ, CAFILE_ENV: str(tls_files[0])}
        # A run that cannot do its work: another one holds the lock.
        with process_lock(settings.state_dir):
            done = subprocess.run(_cli(settings, "process"), cwd=REPO_ROOT, env=env,
                                  capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        errors = [line for line in done.stderr.splitlines() if "error" in line]
        assert errors == ["collector process: error: another collector process is running"]
        assert "Traceback" not in done.stderr
        [mail] = smtp.wait_for(1)
        assert mail["Subject"] == ("[collector srv1] process_failing: collector process "
                                   "failed: another collector process is running")
        assert mail["To"] == "team@example.org, oncall@example.org"
        assert "next hourly run retries" in mail.get_body().get_content()  # type: ignore[union-attr]
        assert settings.data_vault_dst is not None
        assert not settings.data_vault_dst.exists()


def test_unreadable_chunks_root_is_a_clear_error_and_alerted(
        main_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """A server's folder itself is the operator's (a secondary's key cannot replace it): if
    it cannot be read, publishing without that server would be wrong, so the run stops.
    Anything wrong *below* it is quarantined instead (tests/integration/test_quarantine.py)."""
    fill_hour(main_settings, tweets=60)
    assert main_settings.incoming_dst is not None
    blocker = main_settings.incoming_dst / "srv2"
    shutil.rmtree(blocker)
    blocker.symlink_to(blocker)  # a loop: reading it fails with ELOOP, even for root
    with pytest.raises(CollectorError, match="cannot read the chunks of srv2 under"):
        process(main_settings, now=LATER)
    assert "ALERT process_failing on srv1: collector process failed: cannot read the " \
           "chunks of srv2" in caplog.text
    assert main_settings.data_vault_dst is not None
    assert not main_settings.data_vault_dst.exists()


def test_full_disk_is_a_clear_error_and_inputs_stay(tmp_path: Path,
                                                    write_settings: Callable[..., Path],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        settings = load_settings(write_settings(
            role="main", server_id="srv1", servers="srv1,srv2",
            data_vault_dst=str(small / "vault"), incoming_dst=str(tmp_path / "incoming"),
            osf_enabled="False", main_host=None, main_user=None))
        factory = MessageFactory(base_time=HOUR_START)
        write_chunk(settings, "srv1", HOUR_START,
                    [stream_line(factory.message(i), HOUR_START) for i in range(3000)])
        chunks = settings.data_storage_dst / "2026-02-03"
        before = tree_bytes(chunks)
        with pytest.raises(DiskFullError, match="disk full"):
            process(settings, now=LATER)
        assert "ALERT process_failing on srv1: collector process failed: disk full" \
            in caplog.text
        assert tree_bytes(chunks) == before
        leftovers = [p for p in (small / "vault").rglob("*") if p.is_file()]
        assert leftovers == []
        done = subprocess.run(_cli(settings, "process", "--hour", str(HOUR)), cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert done.stderr.strip().splitlines()[-1].startswith(
            "collector process: error: disk full while writing")
    finally:
        subprocess.run(["umount", str(small)], check=False)


# ---- departed servers and the fewer-ids guard (issue 11) -------------------------------------

def outputs_of(vault: Path, hour: HourKey) -> dict[str, bytes]:
    """The three published files of an hour, as bytes."""
    return {path.name: path.read_bytes()
            for path in X_SOURCE.output_paths(vault, hour)}


def report_rows(vault: Path, day: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    lines = (vault / day / f"{day}_report.txt").read_text().splitlines()
    header = lines[0].split("\t")
    rows = {}
    for line in lines[1:]:
        cells = line.split("\t")
        assert len(cells) == len(header), line  # every line readable by column name
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return header, rows


def test_a_departed_servers_chunks_stay_merged_and_only_its_hours_count_it(
        main_settings: Settings, write_settings: Callable[..., Path],
        tmp_path: Path) -> None:
    """srv2 leaves the inventory (as a destroyed main does); its folder stays until
    retention: every hour it has chunks in is merged with them, byte for byte as before,
    though it is now read after srv3 (even where their copies tie on retrieved_at, which
    twarc stamps to the second), and the hours after it left show no count or diff for it."""
    vault = main_settings.data_vault_dst
    assert vault is not None
    fill_hour(main_settings, tweets=60)
    tie = HOUR_START + timedelta(hours=2)  # 12: srv2 and srv3 receive every tweet together
    factory = MessageFactory(base_time=tie)
    same = [stream_line(factory.message(i), tie + timedelta(seconds=i // 4)) for i in range(40)]
    write_chunk(main_settings, "srv2", tie, same)
    write_chunk(main_settings, "srv3", tie, same)
    noon = HourKey("2026-02-03", "12")
    process(main_settings, now=tie + timedelta(hours=2))
    before = {hour: outputs_of(vault, hour) for hour in (HOUR, noon)}
    coverage_before = (vault / HOUR.day / ".coverage" / f"{HOUR.file_prefix}.json").read_bytes()

    departed = load_settings(write_settings(
        role="main", server_id="srv1", servers="srv1,srv3", data_vault_dst=str(vault),
        incoming_dst=str(tmp_path / "incoming"), osf_enabled="False", main_host=None,
        main_user=None))
    assert collector.process.scan.departed_server_ids(departed) == ["srv2"]
    assert [s.server_id for s in collector.process.scan.server_folders(departed)] == [
        "srv1", "srv3", "srv2"]
    eleven = HourKey("2026-02-03", "11")
    later = HOUR_START + timedelta(hours=1)
    factory = MessageFactory(base_time=later)
    for server in ("srv1", "srv3"):
        write_chunk(departed, server, later + timedelta(minutes=20),
                    [stream_line(factory.message(i), later + timedelta(minutes=20))
                     for i in range(10)])
    result = process(departed, now=tie + timedelta(hours=2))
    assert [r.hour for r in result.hours] == [eleven]  # 10 and 12 had nothing new
    for hour in (HOUR, noon):
        process(departed, hour=hour, now=tie + timedelta(hours=2))  # merged again, srv2 last
        assert outputs_of(vault, hour) == before[hour]
    assert (vault / HOUR.day / ".coverage" / f"{HOUR.file_prefix}.json").read_bytes() \
        == coverage_before
    header, rows = report_rows(vault, HOUR.day)
    assert header[:5] == ["hour", "srv1", "srv3", "srv2", "total"]
    want = expected_hour(folders(main_settings), HOUR)
    assert {s: int(rows["10"][s]) for s in SERVERS} == want["per_server"]
    assert int(rows["10"]["diff"]) == want["diff"]
    assert rows["11"]["srv2"] == "" and rows["11"]["diff"] == "0"  # srv2 no longer counted
    coverage = json.loads((vault / HOUR.day / ".coverage" / "2026-02-03_11.json").read_text())
    assert sorted(coverage["counts"]) == ["srv1", "srv3"]
    # Retention removes the departed folder's chunks too.
    result = process(departed, now=tie + timedelta(days=8))
    assert result.pruned_hours == 3
    assert not list((tmp_path / "incoming" / "srv2").rglob("*.jsonl"))


def _drop_last_minute(settings: Settings, start: datetime, keep: Path) -> tuple[Path, Path]:
    """Move srv1's chunk of minute 59, which alone holds eight of the hour's tweets, to
    `keep`; returns where it was and where it is."""
    path = chunk_path(root_of(settings, "srv1"), "srv1", start + timedelta(minutes=59),
                      settings.timezone)
    keep.mkdir(exist_ok=True)
    saved = keep / path.name
    path.rename(saved)
    return path, saved


def test_an_hour_is_never_published_again_with_fewer_ids(
        main_settings: Settings, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    vault = main_settings.data_vault_dst
    assert vault is not None
    noon = HourKey("2026-02-03", "12")
    starts = {HOUR: HOUR_START, noon: HOUR_START + timedelta(hours=2)}
    for start in starts.values():
        fill_hour(main_settings, start, tweets=60)
    assert len(process(main_settings, now=LATER + timedelta(hours=1)).hours) == 2
    published = tree_bytes(vault)
    # srv1's last minute goes missing (say, it was never replicated), and a late chunk of
    # srv3 arrives: both hours are due again and their merges lack srv1's eight tweets.
    saved = [_drop_last_minute(main_settings, start, tmp_path / "kept") for start in
             starts.values()]
    for start in starts.values():
        write_chunk(main_settings, "srv3", start + timedelta(minutes=30),
                    [stream_line(hostile(7 * 10**18 + start.hour, "late srv3"), start)])
    caplog.clear()
    result = process(main_settings, now=LATER + timedelta(hours=2))
    assert result.hours == []
    assert [(k.hour, k.missing) for k in result.fewer_ids] == [(HOUR, 8), (noon, 8)]
    assert tree_bytes(vault) == published  # not a byte changed: outputs, report, coverage
    kept_lines = [r.getMessage() for r in caplog.records
                  if r.getMessage().startswith("kept the published outputs of")]
    assert len(kept_lines) == 2
    assert kept_lines[0].startswith("kept the published outputs of 2026-02-03T10: the new "
                                    "merge lacks 8 of its ")
    alerts = [r.getMessage() for r in caplog.records if "ALERT fewer_ids" in r.getMessage()]
    assert len(alerts) == 1 and "2 hours kept their published outputs" in alerts[0]
    ledger = json.loads((main_settings.state_dir / LEDGER_NAME).read_text())
    total = len(read_outputs(vault, HOUR)["ids"])
    assert ledger["hours"][str(HOUR)]["fewer_ids"] == {
        "published": total, "merged": total - 8 + 1, "missing": 8}
    # Not retried while its chunks stay as they are: no new log line, no new alert.
    caplog.clear()
    result = process(main_settings, now=LATER + timedelta(hours=3))
    assert result.hours == [] and result.fewer_ids == []
    assert "fewer_ids" not in caplog.text
    # The chunk is back: the hour grows by srv3's late tweet and is published.
    for path, kept in saved:
        kept.rename(path)
    result = process(main_settings, now=LATER + timedelta(hours=4))
    assert [r.hour for r in result.hours] == [HOUR, noon] and result.fewer_ids == []
    assert len(read_outputs(vault, HOUR)["ids"]) == total + 1
    assert_matches(vault, HOUR, folders(main_settings))
    assert "fewer_ids" not in json.loads(
        (main_settings.state_dir / LEDGER_NAME).read_text())["hours"][str(HOUR)]


def test_ids_moved_to_the_previous_hour_are_no_loss(main_settings: Settings) -> None:
    """The LOOKBACK rule: a late chunk of the previous hour's tail shows a tweet was received
    there first, so the later hour loses it legitimately and is replaced; an id missing for
    any other reason in the same hour keeps the hour as published."""
    vault = main_settings.data_vault_dst
    assert vault is not None
    factory = MessageFactory(base_time=HOUR_START)
    boundary = HOUR_START + timedelta(hours=1)
    eleven = HourKey("2026-02-03", "11")
    early, moved, moved_too, only_srv1 = (factory.message(i) for i in range(4))
    write_chunk(main_settings, "srv1", HOUR_START + timedelta(minutes=30),
                [stream_line(early, HOUR_START + timedelta(minutes=30))])
    write_chunk(main_settings, "srv2", boundary,
                [stream_line(m, boundary + timedelta(seconds=2)) for m in (moved, moved_too)])
    srv1_chunk = write_chunk(main_settings, "srv1", boundary + timedelta(minutes=5),
                             [stream_line(only_srv1, boundary + timedelta(minutes=5))])
    process(main_settings, now=boundary + timedelta(hours=2))
    ids = {m["data"]["id"] for m in (moved, moved_too, only_srv1)}
    assert set(read_outputs(vault, eleven)["ids"]) == ids
    # srv3 received `moved` at 10:58: it belongs to 10 and leaves 11, which is replaced.
    write_chunk(main_settings, "srv3", boundary - timedelta(minutes=2),
                [stream_line(moved, boundary - timedelta(minutes=2))])
    result = process(main_settings, now=boundary + timedelta(hours=3))
    assert [str(r.hour) for r in result.hours] == ["2026-02-03T10", "2026-02-03T11"]
    assert result.fewer_ids == []
    assert set(read_outputs(vault, eleven)["ids"]) == ids - {moved["data"]["id"]}
    # Now `moved_too` moves as well, but srv1's chunk with `only_srv1` is gone: kept.
    published = outputs_of(vault, eleven)
    srv1_chunk.unlink()
    write_chunk(main_settings, "srv3", boundary - timedelta(minutes=1),
                [stream_line(moved_too, boundary - timedelta(minutes=1))])
    result = process(main_settings, now=boundary + timedelta(hours=4))
    assert [str(r.hour) for r in result.hours] == ["2026-02-03T10"]
    [kept] = result.fewer_ids
    assert (kept.hour, kept.published, kept.merged, kept.missing) == (eleven, 2, 0, 1)
    assert kept.examples == (int(only_srv1["data"]["id"]),)
    assert outputs_of(vault, eleven) == published


def test_an_unreadable_ids_file_is_replaced(main_settings: Settings,
                                            caplog: pytest.LogCaptureFixture) -> None:
    vault = main_settings.data_vault_dst
    assert vault is not None
    fill_hour(main_settings, tweets=60)
    process(main_settings, now=LATER)
    ids_path = X_SOURCE.output_paths(vault, HOUR)[0]
    good = ids_path.read_bytes()
    ids_path.write_bytes(b"garbage")
    result = process(main_settings, hour=HOUR, now=LATER)
    assert [r.hour for r in result.hours] == [HOUR]
    assert ids_path.read_bytes() == good
    assert "the existing IDs file of 2026-02-03T10 cannot be read" in caplog.text
