"""`collector process` with source=bluesky end to end: capture-style chunks of two servers in,
IDs, posts and deletes out, the day report's `deletes` column, and the daily deletions pass.

The expected outputs are computed here independently, with the json and csv modules, from the
same chunk files (`expected_hour`), never by calling the collector's merge.
"""

from __future__ import annotations

import csv
import io
import json
import lzma
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import collector.process.read
from collector.layout import HourKey, chunk_path
from collector.process.run import process
from collector.settings import Settings, load_settings
from tests.doubles.bluesky_events import (
    capture_line,
    delete_of,
    retrieved,
    sample_events,
    uri_of,
    varied_post,
)
from tests.integration.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

HOUR_START = datetime(2026, 2, 3, 9, 0, tzinfo=UTC)  # 2026-02-03T10 in CET
HOUR = HourKey("2026-02-03", "10")
NEXT_DAY = HourKey("2026-02-04", "00")  # starts 2026-02-03 23:00 UTC
SERVERS = ("srv1", "srv2")
POST_COLUMNS = ["uri", "cid", "did", "rkey", "created_at", "time_us", "retrieved_at", "langs",
                "text", "reply_root_uri", "reply_parent_uri", "embed_type", "embed_uri"]
SKIPS = ("not_json", "torn_line", "not_event", "bad_commit")
TEXTS = ["new\nline", "cr\rhere", 'quote "q"', "comma, here", "emoji 😊👍🏽", " =1+1", ""]


@pytest.fixture
def settings(tmp_path: Path, write_settings: Callable[..., Path]) -> Settings:
    path = write_settings(role="main", source="bluesky", API_key_dst=None,
                          servers=",".join(SERVERS), data_vault_dst=str(tmp_path / "vault"),
                          incoming_dst=str(tmp_path / "incoming"), osf_enabled="False",
                          main_host=None, main_user=None)
    return load_settings(path)


def root_of(settings: Settings, server: str) -> Path:
    assert settings.incoming_dst is not None
    return settings.data_storage_dst if server == "srv1" else settings.incoming_dst / server


def write_chunks(settings: Settings, server: str, lines: list[tuple[datetime, bytes]]) -> None:
    """Lines by minute of receipt into chunk files, as the capture writes them (appended
    to a chunk that already exists: a replay lands in the minute it arrives)."""
    for moment, line in sorted(lines, key=lambda pair: pair[0]):
        path = chunk_path(root_of(settings, server), server, moment, settings.timezone)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as handle:
            handle.write(line)


def hour_events() -> list[dict[str, Any]]:
    """400 creates shaped like the real window's (posts, likes, reposts, follows, ...)."""
    creates = [e for e in sample_events() if e.get("commit", {}).get("operation") == "create"]
    events = []
    for n in range(400):
        template = creates[n % len(creates)]
        is_post = template["commit"]["collection"] == "app.bsky.feed.post"
        events.append(varied_post(template, n, TEXTS[n % len(TEXTS)] if is_post else None))
    return events


def fill_hour(settings: Settings) -> list[dict[str, Any]]:
    """srv1 sees every event, srv2 all but minutes 20-29, each one's copy first in turn;
    srv1 replays events 0-19 at minute 40; deletes (some of the hour's posts, one older),
    updates, identity/account events, bad lines and a torn last line."""
    events = hour_events()
    posts = [e for e in events if e["commit"]["collection"] == "app.bsky.feed.post"]
    lines: dict[str, list[tuple[datetime, bytes]]] = {s: [] for s in SERVERS}
    for n, event in enumerate(events):
        moment = HOUR_START + timedelta(seconds=n * 9 + 1)
        lines["srv1"].append((moment, capture_line(event, retrieved(moment))))
        if not 20 <= (n * 9 + 1) // 60 < 30:
            mine = moment + timedelta(milliseconds=300 if n % 2 else -300)
            lines["srv2"].append((mine, capture_line(event, retrieved(mine))))
    replay = HOUR_START + timedelta(minutes=40, seconds=30)
    lines["srv1"] += [(replay, capture_line(e, retrieved(replay))) for e in events[:20]]
    late = HOUR_START + timedelta(minutes=50)
    older = varied_post(posts[0], 10_000)
    update = {**posts[5], "commit": {**posts[5]["commit"], "operation": "update"}}
    others = [e for e in sample_events() if e["kind"] != "commit"]
    bad = {**posts[6], "commit": {**posts[6]["commit"], "rkey": "has space"}}
    for server in SERVERS:
        extra = [delete_of(posts[1]), delete_of(posts[2]), delete_of(older), update, *others]
        lines[server] += [(late, capture_line(e, retrieved(late))) for e in extra]
    lines["srv2"] += [(late, b"not json at all\n"), (late, capture_line(bad, retrieved(late)))]
    write_chunks(settings, "srv1", lines["srv1"])
    write_chunks(settings, "srv2", lines["srv2"])
    last = chunk_path(root_of(settings, "srv1"), "srv1", HOUR_START + timedelta(minutes=59),
                      settings.timezone)
    with open(last, "ab") as handle:
        handle.write(b'{"did":"did:plc:torn","time_us":1,"kind":"comm')  # no newline
    return posts


def _valid(part: Any) -> bool:
    return isinstance(part, str) and part != "" and "/" not in part and not any(
        c.isspace() or ord(c) < 32 for c in part)


def expected_hour(settings: Settings, hour: HourKey) -> dict[str, Any]:
    """IDs, posts rows, deletes and report numbers, straight from the chunk files."""
    kept: dict[str, tuple[str, dict[str, Any]]] = {}
    seen_by: dict[str, set[str]] = {}
    deleted: set[str] = set()
    skipped = 0
    for server in SERVERS:
        folder = root_of(settings, server) / hour.day / hour.hour
        for path in sorted(folder.glob("*.jsonl")):
            for line in path.read_bytes().split(b"\n"):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    skipped += 1
                    continue
                if event.get("kind") in ("identity", "account"):
                    continue
                commit = event["commit"]
                if commit["operation"] == "update":
                    continue
                if not all(_valid(p) for p in (event["did"], commit["collection"],
                                               commit["rkey"])):
                    skipped += 1
                    continue
                uri = uri_of(event)
                if commit["operation"] == "delete":
                    deleted.add(uri)
                    continue
                seen_by.setdefault(uri, set()).add(server)
                at = event["__collector"]["retrieved_at"]
                if uri not in kept or at < kept[uri][0]:
                    kept[uri] = (at, event)
    posts = []
    for uri in sorted(u for u in kept if "/app.bsky.feed.post/" in u and u not in deleted):
        event = kept[uri][1]
        record = event["commit"]["record"]
        embed = record.get("embed", {})
        reply = record.get("reply", {})
        posts.append([uri, event["commit"]["cid"], event["did"], event["commit"]["rkey"],
                      record["createdAt"], str(event["time_us"]), kept[uri][0],
                      ",".join(record.get("langs", [])), record["text"],
                      reply.get("root", {}).get("uri", ""),
                      reply.get("parent", {}).get("uri", ""), embed.get("$type", ""),
                      embed.get("external", {}).get("uri", "")])
    return {"ids": sorted(kept), "posts": posts, "deletes": sorted(deleted),
            "per_server": {s: sum(s in v for v in seen_by.values()) for s in SERVERS},
            "diff": sum(len(v) != len(SERVERS) for v in seen_by.values()),
            "skipped": skipped}


def outputs(vault: Path, hour: HourKey) -> dict[str, Any]:
    folder, prefix = vault / hour.day, hour.file_prefix

    def text(suffix: str) -> str:
        return lzma.decompress((folder / f"{prefix}_{suffix}").read_bytes()).decode()

    report = (folder / f"{hour.day}_report.txt").read_text().splitlines()
    header = report[0].split("\t")
    lines = {cells[0]: dict(zip(header, cells, strict=True))
             for cells in (line.split("\t") for line in report[1:])}
    return {"ids": text("IDs.txt.xz").splitlines(), "deletes": text("deletes.txt.xz"),
            "posts": list(csv.reader(io.StringIO(text("posts.csv.xz"), newline=""))),
            "report_header": header, "report": lines}


def _cli(settings: Settings, *args: str) -> list[str]:
    return [sys.executable, "-m", "collector", "--settings", str(settings.path), *args]


def test_two_servers_merge_into_ids_posts_deletes_and_the_report(settings: Settings) -> None:
    fill_hour(settings)
    done = subprocess.run(_cli(settings, "process", "--hour", str(HOUR), "--force"),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert settings.data_vault_dst is not None
    got, want = outputs(settings.data_vault_dst, HOUR), expected_hour(settings, HOUR)
    assert got["ids"] == want["ids"] and len(want["ids"]) == 400
    assert got["posts"][0] == POST_COLUMNS
    assert got["posts"][1:] == want["posts"]
    assert {row[8] for row in got["posts"][1:]} == set(TEXTS)
    assert got["deletes"] == "".join(u + "\n" for u in want["deletes"])
    assert len(want["deletes"]) == 3 and want["skipped"] == 3
    assert got["report_header"] == ["hour", *SERVERS, "total", "diff", "diff %", "deletes",
                                     "duplicates", "chunks", *SKIPS, "quarantined"]
    line = got["report"][HOUR.hour]
    assert {s: int(line[s]) for s in SERVERS} == want["per_server"]
    assert (int(line["total"]), int(line["diff"])) == (400, want["diff"])
    assert int(line["deletes"]) == 3
    # srv2's copies (not of minutes 20-29), srv1's replay of 20, srv2's copies of the deletes
    srv2_copies = sum(not 20 <= (n * 9 + 1) // 60 < 30 for n in range(400))
    assert int(line["duplicates"]) == srv2_copies + 20 + 3
    assert sum(int(line[c]) for c in SKIPS) == want["skipped"]
    assert (line["not_json"], line["torn_line"], line["bad_commit"]) == ("1", "1", "1")
    assert ("400 records, 43 posts, 3 deletes; not merged: 2 updates, 4 identity/account "
            "events") in done.stderr


def test_helper_interpreters_index_the_hour_exactly_like_one_process(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    fill_hour(settings)
    vault = settings.data_vault_dst
    assert vault is not None

    def tree() -> dict[str, bytes]:
        return {str(p.relative_to(vault)): p.read_bytes() for p in sorted(vault.rglob("*"))
                if p.is_file()}

    process(settings, hour=HOUR, now=HOUR_START + timedelta(hours=2), workers=1)
    alone = tree()
    monkeypatch.setattr(collector.process.read, "PARALLEL_MIN_BYTES", 0)
    for workers in (2, 3):  # helpers get the source by name and pickle a bluesky index
        process(settings, hour=HOUR, now=HOUR_START + timedelta(hours=2), workers=workers)
        assert tree() == alone


def test_a_later_day_runs_the_deletions_pass_and_the_ids_stay(settings: Settings) -> None:
    posts = fill_hour(settings)
    vault = settings.data_vault_dst
    assert vault is not None
    process(settings, hour=HOUR, force=True, now=HOUR_START + timedelta(hours=2))
    ids_file = vault / HOUR.day / f"{HOUR.file_prefix}_IDs.txt.xz"
    published = ids_file.read_bytes()
    gone = posts[10]  # created at 10 CET, deleted the next day
    assert uri_of(gone) in {row[0] for row in outputs(vault, HOUR)["posts"]}
    moment = datetime(2026, 2, 3, 23, 5, tzinfo=UTC)
    write_chunks(settings, "srv2", [
        (moment, capture_line(delete_of(gone), retrieved(moment))),
        (moment, capture_line(varied_post(posts[0], 5_000), retrieved(moment)))])
    result = process(settings, now=datetime(2026, 2, 4, 0, 30, tzinfo=UTC))
    assert [r.hour for r in result.hours] == [NEXT_DAY]
    assert result.daily is not None and "1 rewritten, 1 rows removed" in result.daily
    after = outputs(vault, HOUR)
    assert uri_of(gone) not in {row[0] for row in after["posts"]}
    want = [row for row in expected_hour(settings, HOUR)["posts"] if row[0] != uri_of(gone)]
    assert after["posts"][1:] == want
    assert ids_file.read_bytes() == published
    assert outputs(vault, NEXT_DAY)["deletes"] == uri_of(gone) + "\n"
    again = process(settings, now=datetime(2026, 2, 4, 1, 30, tzinfo=UTC))
    assert again.daily is None  # once a local day
