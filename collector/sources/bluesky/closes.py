"""How the end of a Jetstream connection counts, from its close code (pure).

The backoff is the X stream's `ConnectionPolicy`; what differs is how an end is classified:

* network failures (reconnect at once, then +250 ms per connection that dies young): a close
  frame with 1000/1001 (normal, going away: the usual end of a healthy connection), 1006 (no
  close frame: a reset, a timeout, our own stall abort), 1009 (a frame above the library's
  `max_size`), 1011 (server error), 1012 (service restart) and anything not listed below;
* "not now" from the server (the exponential HTTP backoff, from 5 s): 1008 (policy
  violation), 1013 (try again later) and the application codes 4000-4999;
* a refused handshake: its HTTP status, 429 from a minute (with Retry-After if given).

A connection that lasted `HEALTHY_AFTER` (30 s) resets the backoff whatever its end.
"""

from __future__ import annotations

from websockets.exceptions import ConnectionClosed, InvalidStatus

from collector.stream.backoff import Failure

# Close codes by which the server says "not now" (policy, overload); 4xxx are added below.
REFUSING_CLOSE_CODES = frozenset({1008, 1013})
NORMAL_CLOSE_CODES = frozenset({1000, 1001})


def end_failure(code: int | None) -> Failure:
    """How the end of an established connection with close `code` counts for the backoff
    (None: no close frame, i.e. reset, timeout or our own abort)."""
    if code is not None and (code in REFUSING_CLOSE_CODES or 4000 <= code < 5000):
        return Failure.HTTP
    return Failure.NETWORK


def close_code(closed: ConnectionClosed) -> tuple[int | None, str]:
    """The close code that ended a connection and who chose it, for the log and backoff."""
    if closed.rcvd is not None:
        reason = f" ({closed.rcvd.reason[:100]})" if closed.rcvd.reason else ""
        return closed.rcvd.code, f"closed by the server with {closed.rcvd.code}{reason}"
    if closed.sent is not None:
        reason = f" ({closed.sent.reason[:100]})" if closed.sent.reason else ""
        return closed.sent.code, f"closed by the collector with {closed.sent.code}{reason}"
    return None, "connection lost without a close frame"


def retry_after(error: InvalidStatus) -> float | None:
    """Seconds a refusal's Retry-After asks for (delta-seconds only), if it says."""
    value = error.response.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def short(error: BaseException) -> str:
    """One line for the log and the health record: type and message, at most 200 characters."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}"
