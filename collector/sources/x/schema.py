"""X's record schema: the tweets and users CSV columns and how one tweet becomes their rows.

The tweets row holds the tweet's fields, then its author's; the users row is the author's
id and the tweet's language, then the same author columns, so they are rendered once.
"""

from __future__ import annotations

from typing import Any

from collector.csvrows import csv_line, field_text
from collector.lines import SKIP_NOT_JSON, SKIP_TORN, parse_json_line, split_chunk

# Why an X line was not merged (after the reasons of any source); each is a report column.
SKIP_NO_DATA = "no_data"  # valid JSON but no tweet: an error or a disconnect notice
SKIP_BAD_TWEET = "bad_tweet"  # `data` present but without a numeric id
SKIP_REASONS = (SKIP_NOT_JSON, SKIP_TORN, SKIP_NO_DATA, SKIP_BAD_TWEET)

TWEET_COLUMNS = (
    "id", "conversation_id", "author_id", "created_at", "retrieved_at", "source", "lang",
    "text", "reference_type", "referenced_tweet_id", "author.created_at", "author.location",
    "author.name", "author.username", "author.verified", "author.protected",
    "author.public_metrics.followers_count", "author.public_metrics.following_count",
    "author.public_metrics.tweet_count", "author.public_metrics.listed_count",
)
USER_COLUMNS = (
    "author_id", "lang", "author.created_at", "author.location", "author.name",
    "author.username", "author.verified", "author.protected",
    "author.public_metrics.followers_count", "author.public_metrics.following_count",
    "author.public_metrics.tweet_count", "author.public_metrics.listed_count",
)
_METRICS = ("followers_count", "following_count", "tweet_count", "listed_count")

# A record without retrieval time loses every tie against one with it ('~' sorts after digits).
_NO_RETRIEVED_AT = "~"


def _author_of(message: dict[str, Any], author_id: Any) -> dict[str, Any] | None:
    includes = message.get("includes")
    if not isinstance(includes, dict):
        return None
    users = includes.get("users")
    if not isinstance(users, list):
        return None
    for user in users:
        if isinstance(user, dict) and user.get("id") == author_id:
            return user
    return None


def _text(value: Any) -> str:
    """`field_text` with the common case (a string) inlined by the caller's fast path."""
    return value if type(value) is str else field_text(value)


def _author_cells(author: dict[str, Any] | None) -> list[str]:
    if author is None:
        return [""] * 10
    get = author.get
    metrics = get("public_metrics")
    if not isinstance(metrics, dict):
        metrics = {}
    return [
        _text(get("created_at")), _text(get("location")), _text(get("name")),
        _text(get("username")), field_text(get("verified")), field_text(get("protected")),
        field_text(metrics.get("followers_count")), field_text(metrics.get("following_count")),
        field_text(metrics.get("tweet_count")), field_text(metrics.get("listed_count")),
    ]


def _reference(tweet: dict[str, Any]) -> tuple[str, str]:
    refs = tweet.get("referenced_tweets")
    if isinstance(refs, list) and refs and isinstance(refs[0], dict):
        return field_text(refs[0].get("type")), field_text(refs[0].get("id"))
    return "original", ""


def tweet_id_of(tweet: dict[str, Any]) -> int | None:
    """The numeric id of a tweet object, or None when it has none."""
    raw_id = tweet.get("id")
    if isinstance(raw_id, str):
        return int(raw_id) if raw_id.isascii() and raw_id.isdigit() else None
    if isinstance(raw_id, int) and not isinstance(raw_id, bool) and raw_id >= 0:
        return raw_id
    return None


def render_tweet_row(tweet_id: int, tweet: dict[str, Any], message: dict[str, Any],
                     retrieved_at: str) -> bytes:
    """The tweets CSV line of a tweet: the same bytes as the tests' record path renders
    (`csv_line` quotes cell by cell, so one line of 20 cells equals the record's pieces)
    with less work; pass 2 renders 200,000 of them an hour."""
    get = tweet.get
    author_id_value = get("author_id")
    reference_type, referenced_id = _reference(tweet)
    cells = [str(tweet_id), _text(get("conversation_id")), _text(author_id_value),
             _text(get("created_at")), retrieved_at, _text(get("source")), _text(get("lang")),
             _text(get("text")), reference_type, referenced_id]
    cells += _author_cells(_author_of(message, author_id_value))
    return (csv_line(cells) + "\n").encode("utf-8", "replace")


def render_user_row(tweet: dict[str, Any], message: dict[str, Any]) -> bytes:
    """The users CSV line of a tweet, alone: the same bytes as the tests' record path renders
    for less than half the work (pass 2 renders a users row for most tweets)."""
    get = tweet.get
    author_id_value = get("author_id")
    head = csv_line((_text(author_id_value), _text(get("lang"))))
    tail = csv_line(_author_cells(_author_of(message, author_id_value)))
    return (head + "," + tail + "\n").encode("utf-8", "replace")


def tweet_ids_in(data: bytes) -> set[int]:
    """Every tweet id of one chunk's messages (lines that are not tweets are ignored)."""
    found: set[int] = set()
    for line, _ in split_chunk(data):
        tweets = tweets_of(parse_json_line(line)) if line.strip() else None
        for tweet in tweets or ():
            tweet_id = tweet_id_of(tweet) if isinstance(tweet, dict) else None
            if tweet_id is not None:
                found.add(tweet_id)
    return found


def tweets_of(message: Any) -> list[Any] | None:
    """The tweet objects of a parsed line, or None when it carries none."""
    if not isinstance(message, dict):
        return None
    data_value = message.get("data")
    if isinstance(data_value, dict):
        return [data_value]
    if isinstance(data_value, list) and data_value:
        return data_value
    return None


def retrieved_at_of(message: dict[str, Any]) -> str:
    meta = message.get("__twarc")
    retrieved = meta.get("retrieved_at") if isinstance(meta, dict) else None
    return retrieved if isinstance(retrieved, str) else ""
