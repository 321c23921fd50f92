"""The X API v2 sampled stream (~1% of posts), read with twarc: the first source.

* transport (`transport`): twarc's `Twarc2.sample()` with the collector's own connection
  policy; each chunk line is the API's message with twarc's `__twarc` receipt metadata
  (`retrieved_at`, the moment of receipt, decides which copy of a tweet is kept);
* schema (`schema`): the tweets and users CSV columns and their rendering;
* merge (`merge`): an hour's tweets merged across servers in two passes;
* outputs: `IDs.txt.xz` (the tweet ids, one per line, ascending), `tweets.csv.xz`,
  `users.csv.xz`; report columns: the merge's skip reasons `no_data` and `bad_tweet` after
  those of any source.
"""

from __future__ import annotations

from collections.abc import Callable

from collector.settings import Settings
from collector.sources import CaptureLoop, CaptureRequest, OutputFile, RecordId, Source
from collector.sources.x.merge import MAX_SERVERS, HourIndex
from collector.sources.x.schema import SKIP_REASONS, TWEET_COLUMNS, USER_COLUMNS, tweet_ids_in


def prepare_capture(settings: Settings) -> Callable[[CaptureRequest], CaptureLoop]:
    """twarc and requests are imported only by the stream, not by `process` and its helpers
    (they cost each interpreter ~10 MB)."""
    from collector.sources.x import transport

    return transport.prepare_capture(settings)


def id_line(tweet_id: RecordId) -> bytes:
    return b"%d\n" % tweet_id


def parse_id(line: bytes) -> RecordId | None:
    """A line of an IDs file as a tweet id: ASCII digits only (bytes.isdigit)."""
    return int(line) if line.isdigit() else None


X_SOURCE = Source(
    name="x",
    record_name="tweets",
    outputs=(OutputFile("IDs.txt.xz"), OutputFile("tweets.csv.xz", TWEET_COLUMNS),
             OutputFile("users.csv.xz", USER_COLUMNS)),
    skip_reasons=SKIP_REASONS,
    max_servers=MAX_SERVERS,
    prepare_capture=prepare_capture,
    new_index=HourIndex,
    ids_in=tweet_ids_in,
    id_line=id_line,
    parse_id=parse_id,
)
