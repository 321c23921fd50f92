"""Bluesky's Jetstream (v1 `/subscribe`): the second source, free and without a key.

* transport (`transport`): a WebSocket client of a Jetstream instance; each chunk line is
  one event as received (decompressed JSON) with the capture's `__collector` metadata
  (`retrieved_at`, the moment of receipt, decides which copy of a record is kept);
* schema (`schema`): a record's identity, its AT-URI `at://<did>/<collection>/<rkey>`, what
  an event does (create, delete; updates, identity and account events are no records), and
  the posts CSV columns and their rendering;
* merge (`merge`): an hour's creates and deletes merged across servers and replays in two
  passes, like X's;
* outputs: `IDs.txt.xz` (every AT-URI created in the hour, byte order), `posts.csv.xz` (one
  row per created post not deleted within the hour), `deletes.txt.xz` (every AT-URI deleted
  in the hour); IDs and deletes are published. Report columns: `deletes`, then the skip
  reasons `not_event` and `bad_commit` after those of any source;
* daily (`deletions`): posts deleted within `deletion_window_days` of their receipt are
  removed from the vault's posts files.
"""

from __future__ import annotations

from collections.abc import Callable

from collector.settings import Settings
from collector.sources import CaptureLoop, CaptureRequest, OutputFile, Source
from collector.sources.bluesky.deletions import daily
from collector.sources.bluesky.merge import MAX_SERVERS, HourIndex
from collector.sources.bluesky.schema import (
    POST_COLUMNS,
    SKIP_REASONS,
    created_uris_in,
    id_line,
    parse_id,
)


def prepare_capture(settings: Settings) -> Callable[[CaptureRequest], CaptureLoop]:
    """The WebSocket and zstd libraries are imported only by the stream, not by `process`
    and its helper interpreters."""
    from collector.sources.bluesky import transport

    return transport.prepare_capture(settings)


BLUESKY_SOURCE = Source(
    name="bluesky",
    record_name="records",
    outputs=(OutputFile("IDs.txt.xz"), OutputFile("posts.csv.xz", POST_COLUMNS),
             OutputFile("deletes.txt.xz")),
    skip_reasons=SKIP_REASONS,
    max_servers=MAX_SERVERS,
    prepare_capture=prepare_capture,
    new_index=HourIndex,
    ids_in=created_uris_in,
    id_line=id_line,
    parse_id=parse_id,
    published=("IDs.txt.xz", "deletes.txt.xz"),
    count_columns=("deletes",),
    daily=daily,
)
