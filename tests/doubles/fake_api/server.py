"""`FakeStreamAPI`: the fake as tests, the benchmark and the lab use it in-process — it builds
the parts (listener, router, endpoint, streamer, fault queue, budgets, records) and offers
their public operations in one object.

All parts share one lock, as when they were one class: the compound steps (a request's
record and its fault, a refuse fault and the port) stay atomic, and contention is unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from tests.doubles.fake_api.budget import Budgets
from tests.doubles.fake_api.control import ControlAPI
from tests.doubles.fake_api.endpoint import StreamEndpoint
from tests.doubles.fake_api.faults import Fault, FaultQueue
from tests.doubles.fake_api.lines import LineCache, Lines
from tests.doubles.fake_api.listener import Listener
from tests.doubles.fake_api.log import Log
from tests.doubles.fake_api.records import Records
from tests.doubles.fake_api.routes import Router
from tests.doubles.fake_api.stream import Clock, Streamer
from tests.doubles.samples import DEFAULT_TWEET_FIELDS, DEFAULT_USER_FIELDS, MessageFactory


class FakeStreamAPI:
    """The fake sampled-stream server; a context manager (`with FakeStreamAPI(...) as api`)."""

    def __init__(
        self,
        tokens: Iterable[str],
        *,
        rate: float = 50.0,
        heartbeat_interval: float = 20.0,
        slots: int = 1,
        attempt_limit: int = 50,
        window_seconds: float = 900.0,
        host: str = "127.0.0.1",
        port: int = 0,
        quiet: bool = False,
    ) -> None:
        self.tokens = tuple(tokens)
        if not self.tokens or rate <= 0 or heartbeat_interval <= 0 or slots < 1:
            raise ValueError("need tokens, rate > 0, heartbeat_interval > 0, slots >= 1")
        self.rate = float(rate)
        self.heartbeat_interval = float(heartbeat_interval)
        self.slots = slots
        self.attempt_limit = attempt_limit
        self.window_seconds = window_seconds
        self.host = host
        self.quiet = quiet
        lock = threading.RLock()
        self._stopping = threading.Event()
        self._log = Log(self.tokens, quiet)
        self._records = Records(lock)
        self._faults = FaultQueue(lock, self._log, on_refuse=self._refuse)
        self._lines = LineCache(lock)
        budgets = Budgets(lock, slots=slots, attempt_limit=attempt_limit,
                          window_seconds=window_seconds)
        self._clock = Clock(self.rate)
        streamer = Streamer(self._clock, self.heartbeat_interval, self._faults, self._log)
        endpoint = StreamEndpoint(tokens=self.tokens, lock=lock, records=self._records,
                                  faults=self._faults, budgets=budgets, lines=self._lines,
                                  streamer=streamer, log=self._log)
        router = Router(self._stopping, ControlAPI(self._records, self._faults), endpoint)
        self._listener = Listener(host, port, lock=lock, stopping=self._stopping, log=self._log,
                                  serve=router.serve, reopened=self._faults.refuse_ended)
        self.port: int = self._listener.port
        self._clock.restart()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def t0(self) -> float:
        """Monotonic time of message 0 (set again by `start`)."""
        return self._clock.t0

    @property
    def factory(self) -> MessageFactory:
        """The factory for the seed's default fields (what the collector asks for)."""
        return self.lines_for(DEFAULT_TWEET_FIELDS, DEFAULT_USER_FIELDS, ("author_id",)).factory

    def lines_for(self, tweet_fields: Iterable[str], user_fields: Iterable[str],
                  expansions: Iterable[str]) -> Lines:
        return self._lines.get(tweet_fields, user_fields, expansions)

    def start(self) -> FakeStreamAPI:
        self._clock.restart()
        self._listener.start()
        self._log(f"listening on {self.url} rate={self.rate:g}/s "
                  f"heartbeat={self.heartbeat_interval:g}s slots={self.slots}")
        return self

    def __enter__(self) -> FakeStreamAPI:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop accepting, cut every open connection and wait for the threads."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._listener.stop()

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each is applied once (or for its count/duration), in order."""
        self._faults.inject(*faults)

    def clear_faults(self) -> None:
        self._faults.clear()

    def pending_faults(self) -> list[dict[str, Any]]:
        return self._faults.pending()

    def connection_log(self) -> list[dict[str, Any]]:
        """Every stream request so far, oldest first, as JSON-ready dicts."""
        return self._records.to_json()

    def sent_whole(self, token: str) -> list[int]:
        """Indices of the messages sent whole to `token`, all its connections in order."""
        return self._records.sent_whole(token)

    def index_at(self, when: float) -> int:
        """First message index due at or after monotonic time `when`."""
        return self._clock.index_at(when)

    def _refuse(self, seconds: float) -> None:
        self._listener.refuse(seconds)
