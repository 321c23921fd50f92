"""`FakeJetstreamFleet`: several instances of one universe in one process (tests), each with
its own port, name, `time_us` offset, faults and records, started and stopped together."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tests.doubles.fake_jetstream.oracle import created_uris_sent
from tests.doubles.fake_jetstream.server import FakeJetstream


class FakeJetstreamFleet:
    """Instances named `names`, sharing seed, epoch and rate (other keyword arguments of
    `FakeJetstream` too); a context manager."""

    def __init__(self, names: Iterable[str] = ("east", "west"), *, epoch: float | None = None,
                 **options: Any) -> None:
        self.epoch = time.time() if epoch is None else epoch
        self.instances = {name: FakeJetstream(name=name, epoch=self.epoch, **options)
                          for name in names}

    def __getitem__(self, name: str) -> FakeJetstream:
        return self.instances[name]

    def __iter__(self) -> Iterator[FakeJetstream]:
        return iter(self.instances.values())

    def start(self) -> FakeJetstreamFleet:
        for instance in self:
            instance.start()
        return self

    def stop(self) -> None:
        for instance in self:
            instance.stop()

    def __enter__(self) -> FakeJetstreamFleet:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def logs(self) -> list[dict[str, Any]]:
        return [instance.log() for instance in self]

    def created_uris(self, collections: Sequence[str] = ()) -> list[str]:
        """Every AT-URI created in the wanted collections that any instance sent whole."""
        return created_uris_sent(self.logs(), collections)
