"""Per-token admission: `attempt_limit` stream requests per fixed window of `window_seconds`,
`slots` concurrent streams, and the `x-rate-limit-*` headers that report the window.

These are the two limits the collector must live within (they fail with different 429
bodies), so they are decided in one place rather than inside the request handling.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass
class _Window:
    """Stream requests of one token in the current fixed window."""

    window_start: float = 0.0
    attempts: int = 0


@dataclass(frozen=True)
class Admission:
    """The verdict on one stream request; a slot is held exactly when `admitted`."""

    over_budget: bool
    busy: bool
    admitted: bool


class Budgets:
    """Attempts per window and open streams, per token."""

    def __init__(self, lock: threading.RLock, *, slots: int, attempt_limit: int,
                 window_seconds: float) -> None:
        self._lock = lock
        self.slots = slots
        self.attempt_limit = attempt_limit
        self.window_seconds = window_seconds
        self._windows: dict[str, _Window] = {}
        self._open: dict[str, int] = {}

    def admit(self, token: str, valid: bool) -> Admission:
        """Count one stream request of `token`; it gets a slot if it is `valid` and within
        both limits. A refused request never holds a slot, not even while its answer is
        written: the client may retry the moment it has read it."""
        with self._lock:
            window = self._window(token)
            window.attempts += 1
            over_budget = window.attempts > self.attempt_limit
            busy = self._open.get(token, 0) >= self.slots
            admitted = not over_budget and not busy and valid
            if admitted:
                self._open[token] = self._open.get(token, 0) + 1
        return Admission(over_budget, busy, admitted)

    def release(self, token: str) -> None:
        """An admitted stream ended: its slot is free."""
        with self._lock:
            self._open[token] -= 1

    def rate_headers(self, token: str | None, remaining: int | None = None) -> dict[str, str]:
        """`x-rate-limit-*` of `token`'s window; `remaining` overrides the counted value."""
        with self._lock:
            window = self._window(token or "")
            if remaining is None:
                remaining = max(0, self.attempt_limit - window.attempts)
            reset = window.window_start + self.window_seconds
        return {"x-rate-limit-limit": str(self.attempt_limit),
                "x-rate-limit-remaining": str(remaining),
                "x-rate-limit-reset": str(math.ceil(reset))}

    def _window(self, token: str) -> _Window:
        now = time.time()
        window = self._windows.setdefault(token, _Window(now, 0))
        if now >= window.window_start + self.window_seconds:
            window.window_start, window.attempts = now, 0
        return window
