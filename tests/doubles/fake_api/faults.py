"""Injected faults: what one is (`Fault`, checked when it is made) and the queue that applies
them strictly in order, only its head live, so a test knows which request gets which fault.

The queue decides *which* fault a request or stream gets; what a fault does on the wire is
up to the endpoint (request faults), the streamer (stream faults) and the listener (refuse).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from tests.doubles.fake_api.log import Log

STREAM_KINDS = frozenset({
    "drop_mid_line", "rst", "clean_end", "operational_disconnect", "malformed_line",
    "non_json_line", "partial_then_end", "silent_stall", "heartbeat_stall",
})
REQUEST_KINDS = frozenset({"status", "no_headers"})
FAULT_KINDS = STREAM_KINDS | REQUEST_KINDS | {"refuse"}
FAULT_STATUSES = frozenset({401, 403, 429, 500, 503})
DISCONNECT_VARIANTS = frozenset({"OperationalDisconnect", "UpstreamOperationalDisconnect"})


class FaultError(ValueError):
    """A fault description that cannot be applied."""


@dataclass(frozen=True)
class Fault:
    """One injected fault; the package docstring says what each kind does."""

    kind: str
    after: int = 0
    count: int = 1
    seconds: float = 0.0
    status: int = 0
    rate_limit_headers: bool = True
    remaining: int | None = None
    variant: str = "OperationalDisconnect"
    close: bool = True
    token: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise FaultError(f"unknown fault kind {self.kind!r}")
        if self.after < 0 or self.count < 1 or self.seconds < 0:
            raise FaultError("after >= 0, count >= 1 and seconds >= 0 are required")
        if self.kind == "status" and self.status not in FAULT_STATUSES:
            raise FaultError(f"status must be one of {sorted(FAULT_STATUSES)}")
        if self.kind == "operational_disconnect" and self.variant not in DISCONNECT_VARIANTS:
            raise FaultError(f"variant must be one of {sorted(DISCONNECT_VARIANTS)}")

    @classmethod
    def from_json(cls, obj: Any) -> Fault:
        """A fault from its JSON object; unknown keys and wrong types are errors."""
        if not isinstance(obj, dict) or "kind" not in obj:
            raise FaultError("a fault is a JSON object with a 'kind'")
        unknown = sorted(set(obj) - {f.name for f in fields(cls)})
        if unknown:
            raise FaultError(f"unknown fault keys {unknown}")
        numbers: dict[str, tuple[type, ...]] = {
            "after": (int,), "count": (int,), "seconds": (int, float), "status": (int,),
        }
        for key, kinds in numbers.items():
            value = obj.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise FaultError(f"{key} must be a number")
        return cls(**obj)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def describe(fault: Fault) -> str:
    """The fault's kind and its non-default keys (never its token), for logs and records."""
    defaults = Fault(kind=fault.kind, status=fault.status)
    extra = [f"{k}={v}" for k, v in fault.to_json().items()
             if k not in ("kind", "token") and v != getattr(defaults, k)]
    if fault.kind == "status":
        extra.insert(0, f"status={fault.status}")
    return " ".join([fault.kind, *extra])


@dataclass
class Pending:
    """A queued fault: its remaining count and the stream that picked it up, if any."""

    fault: Fault
    left: int
    claimed_by: int | None = None
    active: bool = False


class FaultQueue:
    """Faults waiting to be applied, in order; only the head is live.

    A `refuse` fault starts as soon as it reaches the head (`on_refuse(seconds)` is called
    with the lock held) and leaves the queue when the listener calls `refuse_ended()`.
    """

    def __init__(self, lock: threading.RLock, log: Log,
                 on_refuse: Callable[[float], None]) -> None:
        self._lock = lock
        self._log = log
        self._on_refuse = on_refuse
        self._queue: deque[Pending] = deque()
        self._injections = 0  # bumped by inject(): waiting streams wake up to claim a fault

    def injections(self) -> int:
        """How many times `inject` was called; a stream waiting idle watches it change."""
        return self._injections

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each is applied once (or for its count/duration), in order."""
        with self._lock:
            self._injections += 1
            for fault in faults:
                self._queue.append(Pending(fault, fault.count))
                self._log(f"fault queued: {describe(fault)}")
            self._activate_head()

    def clear(self) -> None:
        """Drop every pending fault but one already under way (a running refuse)."""
        with self._lock:
            self._queue = deque(p for p in self._queue if p.active)

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [p.fault.to_json() for p in self._queue]

    def take_request_fault(self, token: str | None) -> Fault | None:
        """The request fault at the head, if it applies to `token`; one use of its count."""
        with self._lock:
            head = self._head(REQUEST_KINDS, token)
            if head is None:
                return None
            head.left -= 1
            if head.left <= 0:
                self._pop_head()
            return head.fault

    def claim(self, record_id: int, token: str | None) -> Pending | None:
        """The stream fault at the head for stream `record_id`, unless another stream holds
        it; it stays at the head until `take` (fired) or `unclaim` (the stream ended)."""
        with self._lock:
            head = self._head(STREAM_KINDS, token)
            if head is None or head.claimed_by not in (None, record_id):
                return None
            head.claimed_by = record_id
            return head

    def unclaim(self, pending: Pending) -> None:
        with self._lock:
            if self._queue and self._queue[0] is pending:
                pending.claimed_by = None

    def take(self, pending: Pending) -> None:
        with self._lock:
            if self._queue and self._queue[0] is pending:
                self._pop_head()

    def refuse_ended(self) -> None:
        """The running refuse fault is over: the next fault becomes the head."""
        with self._lock:
            self._pop_head()

    # ---- called with the lock held ------------------------------------------------------

    def _activate_head(self) -> None:
        """Start a refuse fault that has reached the head of the queue."""
        if not self._queue:
            return
        head = self._queue[0]
        if head.fault.kind != "refuse" or head.active:
            return
        head.active = True
        self._on_refuse(head.fault.seconds)

    def _pop_head(self) -> None:
        self._queue.popleft()
        self._activate_head()

    def _head(self, kinds: frozenset[str], token: str | None) -> Pending | None:
        if not self._queue:
            return None
        head = self._queue[0]
        if head.fault.kind not in kinds:
            return None
        if head.fault.token is not None and head.fault.token != token:
            return None
        return head
