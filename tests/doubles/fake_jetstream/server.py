"""`FakeJetstream`: one fake instance as tests use it in-process (and the command line runs
it): its own port, name, `time_us` offset, faults and records, served by the `websockets`
asyncio server on an event loop in a background thread.

Everything a connection touches lives on that loop; the in-process methods called from
other threads go through the thread-safe fault queue and timeline, or hop onto the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.doubles.fake_jetstream.context import Context
from tests.doubles.fake_jetstream.faults import Fault, FaultQueue
from tests.doubles.fake_jetstream.ids import number
from tests.doubles.fake_jetstream.listener import Listener
from tests.doubles.fake_jetstream.log import Log
from tests.doubles.fake_jetstream.oracle import connection_indices
from tests.doubles.fake_jetstream.records import Records
from tests.doubles.fake_jetstream.timeline import Timeline
from tests.doubles.fake_jetstream.universe import Universe

T = TypeVar("T")
DEFAULT_LOOKBACK = 36 * 3600.0


class FakeJetstream:
    """A fake Jetstream v1 instance; a context manager (`with FakeJetstream(...) as js`)."""

    def __init__(self, *, name: str = "jetstream", epoch: float | None = None, seed: int = 1,
                 rate: float = 50.0, lookback_seconds: float = DEFAULT_LOOKBACK,
                 offset_us: int | None = None, jitter_us: int = 30_000,
                 host: str = "127.0.0.1", port: int = 0, comma_lists: bool = False,
                 deflate: bool = False, quiet: bool = False) -> None:
        self.name = name
        self.universe = Universe(seed=seed, epoch=time.time() if epoch is None else epoch,
                                 rate=rate)
        self.offset_us = number(seed, "offset", name) % 20_000 if offset_us is None \
            else offset_us
        self.timeline = Timeline(self.universe, name, offset_us=self.offset_us,
                                 jitter_us=jitter_us, lookback_seconds=lookback_seconds)
        self.records = Records()
        self._log = Log(name, quiet)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._early: list[Fault] = []  # instance faults that reached the head before start
        self.faults = FaultQueue(on_instance=self._instance_fault, on_inject=self._wake)
        self._ctx = Context(self.universe, self.timeline, self.faults, self._log)
        self._listener = Listener(self, self._ctx, self.records, host, port,
                                  comma_lists=comma_lists, deflate=deflate)
        self.host = host
        self.port: int = self._listener.port
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._done: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The `/subscribe` endpoint, as the collector's `jetstream_url` would name it."""
        return f"ws://{self.host}:{self.port}/subscribe"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- life -----------------------------------------------------------------------------

    def start(self) -> FakeJetstream:
        self._thread = threading.Thread(target=self._run, name=f"fake-jetstream-{self.name}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"fake jetstream {self.name} did not start")
        self._log(f"listening on {self.url} seed={self.universe.seed} "
                  f"epoch={self.universe.epoch:.6f} rate={self.universe.rate:g}/s "
                  f"offset_us={self.offset_us} lookback={self.timeline.lookback_seconds:g}s")
        return self

    def __enter__(self) -> FakeJetstream:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close every connection (1001, going away), stop listening, join the thread."""
        loop, done = self._loop, self._done
        if loop is None or done is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(done.set)
        self._thread.join(15)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._done = asyncio.Event()
        await self._listener.open()
        for fault in self._early:
            self._apply_instance_fault(fault)
        self._ready.set()
        await self._done.wait()
        self._ctx.stopping = True
        self._ctx.wake_all()
        await self._listener.close()

    # ---- faults ---------------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each is applied once, in order (see the package docstring)."""
        for fault in faults:
            self._log(f"fault queued: {fault.describe()}")
        self.faults.inject(*faults)

    def clear_faults(self) -> None:
        self.faults.clear()

    def pending_faults(self) -> list[dict[str, Any]]:
        return self.faults.pending()

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._ctx.wake_all)

    def _instance_fault(self, fault: Fault) -> None:
        """Called by the queue (lock held) when a clamp or refuse reaches its head."""
        if fault.kind == "clamp":
            self._log(f"fault: lookback is now {fault.seconds:g}s")
            self.timeline.set_lookback(fault.seconds)
        elif self._loop is None:
            self._early.append(fault)
        else:
            self._loop.call_soon_threadsafe(self._apply_instance_fault, fault)

    def _apply_instance_fault(self, fault: Fault) -> None:
        self._log(f"fault: refusing connections for {fault.seconds:g}s")
        self._listener.refuse(fault.seconds, self.faults.refuse_ended)

    # ---- records --------------------------------------------------------------------------

    def connection_log(self) -> list[dict[str, Any]]:
        """Every connection so far, oldest first, as JSON-ready dicts."""
        return self._on_loop(self.records.to_json)

    def sent_whole(self, connection: int = -1) -> list[int]:
        """Indices sent whole on connection number `connection` (from 1; default the last),
        in send order."""
        record = self.connection_log()[connection - 1 if connection > 0 else connection]
        return connection_indices(record, self.universe)

    def log(self) -> dict[str, Any]:
        """What `GET /_control/log` answers: the instance's settings, gaps and connections."""
        universe = self.universe
        return {
            "name": self.name, "port": self.port, "seed": universe.seed,
            "epoch": universe.epoch, "rate": universe.rate, "offset_us": self.offset_us,
            "jitter_us": self.timeline.jitter_us,
            "lookback_seconds": self.timeline.lookback_seconds,
            "missing": self.timeline.missing(), "refusing": self._listener.refusing,
            "connections": self._on_loop(self.records.to_json),
            "pending_faults": self.faults.pending(),
        }

    def _on_loop(self, function: Callable[[], T]) -> T:
        """Run `function` on the instance's loop (a consistent snapshot), or here when the
        loop is not running or this is the loop's thread."""
        loop = self._loop
        if loop is None or not loop.is_running() or threading.current_thread() is self._thread:
            return function()

        async def call() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(10)
