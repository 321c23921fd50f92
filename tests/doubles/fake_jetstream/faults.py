"""Injected faults of one instance: what a fault is (`Fault`, checked when made) and the
queue that applies them strictly in order, only its head live, so a test knows which
connection gets which fault. Each instance has its own queue: faults are independent.

Connection faults are picked up by the open connection that looks first (else the next
one) and fire after `after` more events sent on it. Instance faults act when they reach the
head: `clamp` at once, `refuse` for its seconds (later faults wait until it is over).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from websockets.frames import EXTERNAL_CLOSE_CODES

CONNECTION_KINDS = frozenset({
    "close", "drop_mid_frame", "silence", "repeat", "corrupt_frame", "malformed",
    "oversized", "miss",
})
INSTANCE_KINDS = frozenset({"clamp", "refuse"})
FAULT_KINDS = CONNECTION_KINDS | INSTANCE_KINDS
NUMBER_KEYS: dict[str, tuple[type, ...]] = {
    "after": (int,), "count": (int,), "seconds": (int, float), "code": (int,), "bytes": (int,),
}


class FaultError(ValueError):
    """A fault description that cannot be applied."""


@dataclass(frozen=True)
class Fault:
    """One injected fault; the package docstring says what each kind does."""

    kind: str
    after: int = 0
    count: int = 1
    seconds: float = 0.0
    code: int = 1000
    reason: str = ""
    bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise FaultError(f"unknown fault kind {self.kind!r}")
        if self.after < 0 or self.count < 1 or self.seconds < 0 or self.bytes < 1:
            raise FaultError("after >= 0, count >= 1, seconds >= 0 and bytes >= 1 are required")
        if not (self.code in EXTERNAL_CLOSE_CODES or 3000 <= self.code < 5000):
            raise FaultError(f"close code {self.code} cannot be sent")
        if len(self.reason.encode()) > 123:
            raise FaultError("a close reason is at most 123 bytes")

    @classmethod
    def from_json(cls, obj: Any) -> Fault:
        """A fault from its JSON object; unknown keys and wrong types are errors."""
        if not isinstance(obj, dict) or "kind" not in obj:
            raise FaultError("a fault is a JSON object with a 'kind'")
        unknown = sorted(set(obj) - {f.name for f in fields(cls)})
        if unknown:
            raise FaultError(f"unknown fault keys {unknown}")
        for key, kinds in NUMBER_KEYS.items():
            value = obj.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise FaultError(f"{key} must be a number")
        if not isinstance(obj.get("reason", ""), str) or not isinstance(obj["kind"], str):
            raise FaultError("kind and reason are strings")
        return cls(**obj)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """The kind and its non-default keys, for logs and records."""
        defaults = Fault(kind=self.kind)
        extra = [f"{k}={v}" for k, v in self.to_json().items()
                 if k != "kind" and v != getattr(defaults, k)]
        return " ".join([self.kind, *extra])


@dataclass
class Pending:
    """A queued fault and the connection that picked it up, if any."""

    fault: Fault
    claimed_by: int | None = None
    active: bool = False


class FaultQueue:
    """Faults waiting to be applied, in order; only the head is live.

    `on_instance(fault)` is called (lock held, so it must only schedule work) when a clamp
    or refuse fault reaches the head; `refuse_ended()` pops a refuse once it is over.
    `on_inject()` is called after every injection, to wake idle connections.
    """

    def __init__(self, on_instance: Callable[[Fault], None],
                 on_inject: Callable[[], None]) -> None:
        self._lock = threading.RLock()
        self._on_instance = on_instance
        self._on_inject = on_inject
        self._queue: deque[Pending] = deque()

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self._queue.extend(Pending(fault) for fault in faults)
            self._activate_head()
        self._on_inject()

    def clear(self) -> None:
        """Drop every pending fault but one already under way (a running refuse)."""
        with self._lock:
            self._queue = deque(p for p in self._queue if p.active)

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [p.fault.to_json() for p in self._queue]

    def claim(self, connection_id: int) -> Pending | None:
        """The connection fault at the head, unless another connection holds it; it stays
        at the head until `take` (fired) or `unclaim` (that connection ended)."""
        with self._lock:
            if not self._queue:
                return None
            head = self._queue[0]
            if head.fault.kind not in CONNECTION_KINDS:
                return None
            if head.claimed_by not in (None, connection_id):
                return None
            head.claimed_by = connection_id
            return head

    def unclaim(self, pending: Pending) -> None:
        with self._lock:
            if self._queue and self._queue[0] is pending:
                pending.claimed_by = None
        self._on_inject()  # another open connection may pick it up now

    def take(self, pending: Pending) -> None:
        with self._lock:
            if self._queue and self._queue[0] is pending:
                self._pop_head()
        self._on_inject()  # the next fault is live: idle connections look again

    def refuse_ended(self) -> None:
        with self._lock:
            if self._queue and self._queue[0].fault.kind == "refuse":
                self._pop_head()
        self._on_inject()

    def _activate_head(self) -> None:
        """Apply instance faults that reached the head (lock held)."""
        while self._queue and self._queue[0].fault.kind in INSTANCE_KINDS:
            head = self._queue[0]
            if head.active:
                return
            head.active = True
            self._on_instance(head.fault)
            if head.fault.kind != "clamp":
                return
            self._queue.popleft()

    def _pop_head(self) -> None:
        self._queue.popleft()
        self._activate_head()
