"""What the fault suite compares a collector's output with: the AT-URIs created (or deleted)
by the events the fake instances sent whole, computed from their logs alone (each log names
its seed, epoch and rate, so the universe can be rebuilt anywhere, e.g. by the lab from
`GET /_control/log` of every instance).

"Lost 0, duplicated 0": every URI of `created_uris_sent(logs, collections)` appears exactly
once in the collector's `IDs.txt` files, and no other URI does. Events sent to a client that
closed by itself may not all have been read (see `records`); compare after the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tests.doubles.fake_jetstream.query import Subscription
from tests.doubles.fake_jetstream.records import expand_runs
from tests.doubles.fake_jetstream.universe import Universe


def universe_of(logs: Sequence[dict[str, Any]]) -> Universe:
    """The one universe all these instance logs share (ValueError when they differ)."""
    keys = {(log["seed"], log["epoch"], log["rate"]) for log in logs}
    if len(keys) != 1:
        raise ValueError(f"the logs are of {len(keys)} universes, not one: {sorted(keys)}")
    seed, epoch, rate = keys.pop()
    return Universe(seed=seed, epoch=epoch, rate=rate)


def connection_indices(connection: dict[str, Any], universe: Universe) -> list[int]:
    """The event indices one connection record says were sent whole, in send order (its
    runs step over the events its subscription did not want: see `records`)."""
    wants = Subscription(tuple(connection["collections"]), frozenset(connection["dids"])).wants
    return [index for index in expand_runs(connection["whole_runs"])
            if wants(universe.meta(index))]


def sent_indices(logs: Iterable[dict[str, Any]]) -> set[int]:
    """Every event index sent whole on any connection of any of these instances."""
    logs = list(logs)
    universe = universe_of(logs)
    return {index for log in logs for connection in log["connections"]
            for index in connection_indices(connection, universe)}


def created_uris_sent(logs: Iterable[dict[str, Any]],
                      collections: Sequence[str] = ()) -> list[str]:
    """Sorted distinct AT-URIs created by events sent whole, in the wanted collections
    (empty: whatever each connection asked for, since only wanted events were sent)."""
    logs = list(logs)
    return universe_of(logs).created_uris(sent_indices(logs), collections)


def deleted_uris_sent(logs: Iterable[dict[str, Any]],
                      collections: Sequence[str] = ()) -> list[str]:
    """Sorted distinct AT-URIs deleted by events sent whole, in the wanted collections."""
    logs = list(logs)
    return universe_of(logs).deleted_uris(sent_indices(logs), collections)
