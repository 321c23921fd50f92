"""Bluesky's record schema: what a Jetstream v1 event does, its AT-URI, and its posts CSV row.

A record is identified by its AT-URI `at://<did>/<collection>/<rkey>` (research/bluesky.md
section 3); the `cid` only names one version of it. The merge needs three things from an
event: whether it creates or deletes a record (or is one of the events that are no record:
updates, identity and account events), the record's AT-URI, and, for a created post, its row.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from collector.csvrows import csv_line, field_text
from collector.lines import SKIP_NOT_JSON, SKIP_TORN, parse_json_line, split_chunk

POST_COLLECTION = "app.bsky.feed.post"
POST_COLUMNS = (
    "uri", "cid", "did", "rkey", "created_at", "time_us", "retrieved_at", "langs", "text",
    "reply_root_uri", "reply_parent_uri", "embed_type", "embed_uri",
)

# Why a Bluesky line was not merged (after the reasons of any source); each is a report column.
SKIP_NOT_EVENT = "not_event"  # valid JSON but no Jetstream event (no or an unknown `kind`)
SKIP_BAD_COMMIT = "bad_commit"  # a commit without a usable did, collection, rkey or operation
SKIP_REASONS = (SKIP_NOT_JSON, SKIP_TORN, SKIP_NOT_EVENT, SKIP_BAD_COMMIT)

# What an event does (`record_action`). Only creates and deletes are records of the hour;
# the others are neither records nor errors, just counted for the log line.
CREATE = "create"
DELETE = "delete"
UPDATE = "update"  # a new version of a record: not a create, so no new id and no new row
IDENTITY = "identity"  # a handle change: no record
ACCOUNT = "account"  # an account's status: no record
NOT_RECORDS = (UPDATE, IDENTITY, ACCOUNT)

# A did, collection or rkey may not hold whitespace, control characters or lone surrogates
# (the stdlib fallback of `parse_json_line` lets those through), and no `/` (checked apart):
# then an AT-URI is one unambiguous, newline-free, UTF-8-encodable line of the IDs file.
_BAD_CHARACTER = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff]").search

# An IDs file's line (without its newline) is an AT-URI when it starts so and has no
# whitespace or control byte.
_ID_LINE = re.compile(rb"at://[^\x00-\x20\x7f]*").fullmatch

# The retrieval key of a copy without a readable receipt time: after every real one.
NO_RETRIEVED_AT = b"\xff" * 8
_YEAR_ONE = datetime(1, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def at_uri(did: Any, collection: Any, rkey: Any) -> bytes | None:
    """`at://<did>/<collection>/<rkey>` as bytes, or None when a part is no valid one."""
    if not (type(did) is str and type(collection) is str and type(rkey) is str
            and did and collection and rkey):
        return None
    tail = f"{did}/{collection}/{rkey}"
    if tail.count("/") != 2 or _BAD_CHARACTER(tail) is not None:
        return None
    return ("at://" + tail).encode()


def record_action(event: Any) -> tuple[str, bytes | None]:
    """What a parsed line does: (CREATE or DELETE, its AT-URI), (one of NOT_RECORDS, None),
    or (a skip reason, None) for what is no usable event."""
    if type(event) is not dict:
        return SKIP_NOT_EVENT, None
    kind = event.get("kind")
    if kind != "commit":
        return (kind, None) if kind in (IDENTITY, ACCOUNT) else (SKIP_NOT_EVENT, None)
    commit = event.get("commit")
    if type(commit) is not dict:
        return SKIP_BAD_COMMIT, None
    operation = commit.get("operation")
    if operation == UPDATE:
        return UPDATE, None
    if operation != CREATE and operation != DELETE:
        return SKIP_BAD_COMMIT, None
    uri = at_uri(event.get("did"), commit.get("collection"), commit.get("rkey"))
    return (operation, uri) if uri is not None else (SKIP_BAD_COMMIT, None)


def is_post_uri(uri: bytes) -> bool:
    """Whether an AT-URI names an `app.bsky.feed.post` (its parts hold no `/`)."""
    return uri.split(b"/", 4)[3] == b"app.bsky.feed.post"


def retrieved_at_of(event: dict[str, Any]) -> str:
    """The moment of receipt the capture added (`__collector.retrieved_at`), or ''."""
    meta = event.get("__collector")
    retrieved = meta.get("retrieved_at") if type(meta) is dict else None
    return retrieved if type(retrieved) is str else ""


def retrieval_key(event: dict[str, Any]) -> bytes:
    """What decides which copy of a record is kept: its moment of receipt as 8 big-endian
    bytes (microseconds since year 1, UTC; a time without offset is taken as UTC), so byte
    order is time order whatever the text's offset or precision. 8 bytes instead of the
    ~32 of the text keep pass 1's entries and the helpers' pickles small. A copy without a
    readable time gets NO_RETRIEVED_AT."""
    try:
        moment = datetime.fromisoformat(retrieved_at_of(event))
    except ValueError:
        return NO_RETRIEVED_AT
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    micros = (moment - _YEAR_ONE) // _MICROSECOND
    return micros.to_bytes(8, "big") if 0 <= micros < 1 << 63 else NO_RETRIEVED_AT


def created_uris_in(data: bytes) -> set[bytes]:
    """The AT-URIs one chunk creates (for the previous hour's tail; other lines are ignored)."""
    found: set[bytes] = set()
    for line, _ in split_chunk(data):
        action, uri = record_action(parse_json_line(line)) if line.strip() else ("", None)
        if action == CREATE and uri is not None:
            found.add(uri)
    return found


def id_line(uri: bytes) -> bytes:
    return uri + b"\n"


def parse_id(line: bytes) -> bytes | None:
    """A line of an IDs or deletes file as an AT-URI, or None when it is none."""
    return bytes(line) if _ID_LINE(line) is not None else None


# ---- the posts row ------------------------------------------------------------------------

def _text(value: Any) -> str:
    return value if type(value) is str else field_text(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def _langs(value: Any) -> str:
    if type(value) is list:
        return ",".join(map(_text, value))
    return _text(value)


def _embed_uri(embed: dict[str, Any]) -> str:
    """The external link (`external.uri`), else the quoted record (`record.uri`, or for a
    record with media `record.record.uri`); '' for images and videos."""
    external = _dict(embed.get("external")).get("uri")
    if external is not None:
        return _text(external)
    quoted = _dict(embed.get("record"))
    uri = quoted.get("uri")
    if uri is None:
        uri = _dict(quoted.get("record")).get("uri")
    return _text(uri)


def render_post_row(uri: bytes, event: dict[str, Any]) -> bytes:
    """The posts CSV line (with its newline) of a created post's event; the text and every
    other cell unchanged, quoted like the csv module so pandas reads them back as they were."""
    commit = event["commit"]
    record = _dict(commit.get("record"))
    get = record.get
    reply = _dict(get("reply"))
    embed = _dict(get("embed"))
    cells = [
        uri.decode(), _text(commit.get("cid")), event["did"], commit["rkey"],
        _text(get("createdAt")), _text(event.get("time_us")), retrieved_at_of(event),
        _langs(get("langs")), _text(get("text")), _text(_dict(reply.get("root")).get("uri")),
        _text(_dict(reply.get("parent")).get("uri")), _text(embed.get("$type")),
        _embed_uri(embed),
    ]
    return (csv_line(cells) + "\n").encode("utf-8", "replace")
