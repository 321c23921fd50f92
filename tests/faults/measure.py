"""The fault suite's arithmetic: what the fake API sent versus what the main published.

Pure functions only (the runner fetches the inputs over SSH and HTTP), so the counting rules
are easy to read in one place:

* sent: tweet ids of the messages the fake API wrote whole to any host during the scenario
  window (from `GET /_control/log`), minus those already sent before the window began; a
  host destroyed for good (`tests.faults.destruction`) no longer counts: only what a
  surviving host received is promised;
* published: those of the sent ids that appear in the main's `IDs.txt.xz` of the hours involved;
* lost: sent but not published;
* duplicated: sent ids that appear more than once in one hour's IDs file or tweets file, or
  in the IDs files of two hours.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from collector.layout import hour_of
from tests.doubles.fake_api import expand_runs
from tests.doubles.samples import MessageFactory, snowflake

_FACTORY = MessageFactory()


def whole_indices(log: Mapping[str, Any], excluded: Collection[int] = ()) -> set[int]:
    """Every message index some connection of the fake API received whole (but the
    connections whose record id is in `excluded`)."""
    found: set[int] = set()
    for connection in log.get("connections", []):
        if connection.get("id") not in excluded:
            found.update(expand_runs(connection.get("whole_runs", [])))
    return found


def tweet_id(index: int) -> str:
    """The tweet id of the fake's message `index` (the fake repeats some ids on purpose)."""
    return str(snowflake(_FACTORY._source_index(index), _FACTORY.base_ms))


def sent_ids(before: Mapping[str, Any], after: Mapping[str, Any],
             excluded: Collection[int] = ()) -> set[str]:
    """Ids whose message first went out whole between two snapshots of the fake's log, to a
    connection not in `excluded` (the records of hosts destroyed since: the fleet promises
    only what a surviving host captured). What went out before the window, to any host, is
    not the window's."""
    earlier = {tweet_id(index) for index in whole_indices(before)}
    return {tweet_id(index) for index in whole_indices(after, excluded)} - earlier


def longest_unreceived_run(before: Mapping[str, Any], after: Mapping[str, Any]) -> int:
    """The most consecutive messages, between the first and last one sent in the window,
    that no host received whole: 0 when at every moment some host was streaming (or a
    backfill made up for it)."""
    window = sorted(whole_indices(after) - whole_indices(before))
    return max((later - earlier - 1 for earlier, later in itertools.pairwise(window)), default=0)


def hours_between(start: float, end: float, zone: ZoneInfo) -> list[str]:
    """The hour labels (`YYYY-mm-ddTHH`) in `zone` of every hour the window touches, in time
    order, named by `collector.layout` exactly as the chunks and outputs are: the second pass
    of a repeated hour is `HHb` and a skipped hour never appears. Stepped by the minute, since
    a zone whose offset is not whole hours starts its hours in the middle of a UTC hour."""
    labels: list[str] = []
    moment = float(int(start) - int(start) % 60)
    while True:
        label = str(hour_of(datetime.fromtimestamp(min(moment, end), UTC), zone))
        if label not in labels:
            labels.append(label)
        if moment >= end:
            return labels
        moment += 60


def ids_file_counts(text: str) -> Counter[str]:
    """How often each id occurs in one decompressed IDs file."""
    return Counter(line.strip() for line in text.splitlines() if line.strip())


def tweets_file_counts(text: str, key: str = "id") -> Counter[str]:
    """How often each id occurs as a row of one decompressed tweets CSV (texts hold newlines);
    `key` names the id column (Bluesky's posts: `uri`)."""
    rows = csv.DictReader(io.StringIO(text))
    return Counter(row[key] for row in rows)


@dataclass(frozen=True)
class Outcome:
    """One row of docs/RELIABILITY.md."""

    scenario: str
    sent: int
    published: int
    lost: int
    duplicated: int
    recovery_seconds: float | None
    note: str = ""
    run_at: str = ""


def outcome(scenario: str, sent: set[str], ids_files: Iterable[Counter[str]],
            tweets_files: Iterable[Counter[str]], recovery_seconds: float | None,
            note: str = "", run_at: str = "") -> Outcome:
    """Count a scenario from its sent ids and the per-hour id counts of the outputs."""
    published: set[str] = set()
    duplicated: set[str] = set()
    for counts in ids_files:
        # An id already published by an earlier hour of the window is counted twice too.
        duplicated.update(counts.keys() & published)
        published.update(counts.keys() & sent)
        duplicated.update(key for key, count in counts.items() if count > 1 and key in sent)
    for counts in tweets_files:
        duplicated.update(key for key, count in counts.items() if count > 1 and key in sent)
    return Outcome(scenario, len(sent), len(published), len(sent - published), len(duplicated),
                   recovery_seconds, note, run_at)


HEADER = ("<!-- Generated by `python -m tests.faults.run` (`make faults`). Do not edit by hand:"
          " the suite rewrites this file. -->")


def parse_rows(markdown: str) -> list[Outcome]:
    """The rows of a RELIABILITY.md this module rendered (to keep those not re-run)."""
    rows = []
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) not in (7, 8) or not cells[1].isdigit():
            continue
        recovery = None if cells[5] == "not recovered" else float(cells[5])
        note, run_at = (cells[7], cells[6]) if len(cells) == 8 else (cells[6], "")
        rows.append(Outcome(cells[0], int(cells[1]), int(cells[2]), int(cells[3]),
                            int(cells[4]), recovery, note, run_at))
    return rows


def merge(previous: Iterable[Outcome], fresh: Iterable[Outcome],
          order: list[str]) -> list[Outcome]:
    """Fresh rows replace previous rows of the same scenario; rows follow `order`."""
    by_name = {row.scenario: row for row in previous}
    by_name.update((row.scenario, row) for row in fresh)
    known = [name for name in order if name in by_name]
    return [by_name[name] for name in known + sorted(set(by_name) - set(known))]


def render(outcomes: Iterable[Outcome], context: str) -> str:
    """docs/RELIABILITY.md: the generated-file header, how it was made, the table."""
    lines = [HEADER, "", "# Reliability", "",
             "Each row is one fault scenario run against the real services on the nspawn lab "
             "hosts (`tests/faults/`). *sent*: tweet ids the fake API wrote whole to at least "
             "one host during the scenario; *published*: those found in the main's "
             "`IDs.txt.xz` of the hours involved; *lost*: sent but not published; "
             "*duplicated*: sent ids appearing twice in one hour's IDs or tweets file, or in "
             "two hours' IDs files; "
             "*recovery*: seconds from the end of the fault until every host reports healthy "
             "and streaming (`collector status --json`).", "", context, "",
             "| scenario | sent | published | lost | duplicated | recovery (s) | run (UTC) "
             "| note |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for row in outcomes:
        recovery = "not recovered" if row.recovery_seconds is None else \
            f"{row.recovery_seconds:.1f}"
        lines.append(f"| {row.scenario} | {row.sent} | {row.published} | {row.lost} | "
                     f"{row.duplicated} | {recovery} | {row.run_at} | {row.note} |")
    return "\n".join(lines) + "\n"
