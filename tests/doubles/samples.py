"""Sampled-stream messages built from real API v2 responses (twarc-csv test data, MIT).

No public capture of `/2/tweets/sample/stream` exists, so each message re-packs one real
tweet and its real author as the sampled stream sends them:
`{"data": {tweet}, "includes": {"users": [author]}}`. The sequence is deterministic, so the
fake API, the tests and the benchmarks all agree on what message number i is.

Message i gets its own snowflake id (ascending with i, as the sample is time-ordered), except
for the irregularities real streams show: every `DUPLICATE_EVERY`th message repeats the
previous tweet, every `SWAP_EVERY`th pair is out of order, every `PARTIAL_ERROR_EVERY`th
carries a partial `errors` array, and every `MISSING_AUTHOR_EVERY`th lacks its author include.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "data" / "twarc-csv-samples"
SAMPLE_FILES = (
    "streaming_output_with_error.jsonl",
    "2sets.jsonl",
    "brexit.jsonl",
    "kpop.jsonl",
    "noflat.jsonl",
    "withheld.jsonl",
    "entities_test.jsonl",
)

TWITTER_EPOCH_MS = 1288834974657
DUPLICATE_EVERY = 211
SWAP_EVERY = 97
PARTIAL_ERROR_EVERY = 53
MISSING_AUTHOR_EVERY = 71

DEFAULT_TWEET_FIELDS = (
    "author_id", "conversation_id", "created_at", "id", "lang", "text",
    "referenced_tweets", "source",
)
DEFAULT_USER_FIELDS = (
    "created_at", "id", "location", "name", "protected", "public_metrics", "username",
    "verified",
)
ALWAYS_TWEET_FIELDS = ("id", "text", "edit_history_tweet_ids")
ALWAYS_USER_FIELDS = ("id", "name", "username")

Pair = tuple[dict[str, Any], dict[str, Any] | None]


@lru_cache(maxsize=1)
def load_pool(samples_dir: Path = SAMPLES_DIR) -> tuple[Pair, ...]:
    """Every (tweet, author) pair in the sample files, in file order, torn lines skipped."""
    pairs: list[Pair] = []
    for name in SAMPLE_FILES:
        for raw in (samples_dir / name).read_bytes().splitlines():
            try:
                page = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # the real torn last line of the stream capture
            tweets = page.get("data") or []
            if isinstance(tweets, dict):
                tweets = [tweets]
            users = {u["id"]: u for u in page.get("includes", {}).get("users", [])}
            for tweet in tweets:
                pairs.append((tweet, users.get(tweet.get("author_id"))))
    return tuple(pairs)


def snowflake(index: int, base_ms: int) -> int:
    """A tweet id whose time part grows with `index` (10 ms apart) and is unique."""
    return ((base_ms + index * 10 - TWITTER_EPOCH_MS) << 22) | (index % 4096)


def _pick(source: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    return {key: copy.deepcopy(source[key]) for key in fields if key in source}


class MessageFactory:
    """Deterministic message number i of a fake sampled stream."""

    def __init__(
        self,
        tweet_fields: Iterable[str] = DEFAULT_TWEET_FIELDS,
        user_fields: Iterable[str] = DEFAULT_USER_FIELDS,
        expansions: Iterable[str] = ("author_id",),
        base_time: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    ) -> None:
        self.tweet_fields = tuple(dict.fromkeys((*ALWAYS_TWEET_FIELDS, *tweet_fields)))
        self.user_fields = tuple(dict.fromkeys((*ALWAYS_USER_FIELDS, *user_fields)))
        self.expand_author = "author_id" in tuple(expansions)
        self.base_ms = int(base_time.timestamp() * 1000)
        self.pool = load_pool()

    def _source_index(self, index: int) -> int:
        """Which sequence position supplies message `index` (duplicates and swaps)."""
        if index > 0 and index % DUPLICATE_EVERY == 0:
            return index - 1
        if index > 0 and index % SWAP_EVERY == 0:
            return index + 1
        if index % SWAP_EVERY == 1 and index > 1:
            return index - 1
        return index

    def message(self, index: int) -> dict[str, Any]:
        """The message as a dict, exactly as the API would serialise it."""
        position = self._source_index(index)
        tweet_src, author_src = self.pool[position % len(self.pool)]
        tweet_id = str(snowflake(position, self.base_ms))
        data = _pick(tweet_src, self.tweet_fields)
        data["id"] = tweet_id
        # The API always sends the edit history (a default field); older samples lack it.
        data["edit_history_tweet_ids"] = [tweet_id]
        if "created_at" in data:
            millis = self.base_ms + position * 10
            data["created_at"] = (
                datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
                + f"{millis % 1000:03d}Z"
            )
        if "conversation_id" in data and data["conversation_id"] == tweet_src.get("id"):
            data["conversation_id"] = tweet_id
        message: dict[str, Any] = {"data": data}
        if self.expand_author:
            includes: dict[str, Any] = {}
            if author_src is not None and position % MISSING_AUTHOR_EVERY != 0:
                includes["users"] = [_pick(author_src, self.user_fields)]
            message["includes"] = includes
        if position % PARTIAL_ERROR_EVERY == 0 and tweet_src.get("referenced_tweets"):
            ref = tweet_src["referenced_tweets"][0]["id"]
            message["errors"] = [{
                "value": ref,
                "detail": f"Could not find tweet with referenced_tweets.id: [{ref}].",
                "title": "Not Found Error",
                "resource_type": "tweet",
                "parameter": "referenced_tweets.id",
                "resource_id": ref,
                "type": "https://api.twitter.com/2/problems/resource-not-found",
            }]
        return message

    def line(self, index: int) -> bytes:
        """The message as the wire carries it: compact JSON and `\\r\\n`."""
        return orjson.dumps(self.message(index)) + b"\r\n"
