"""Read the sampled stream with twarc and never stop, whatever the API or the network does.

twarc's `Twarc2.sample()` does the request building, line reading, JSON decoding and
`__twarc` metadata. Left alone it also dies or misbehaves in known ways (seen in twarc
2.14.0's `client2.py`): a malformed line raises out of the generator, a 429 without
rate-limit headers raises KeyError, long failure runs end it silently after hours of its own
quadratic sleeps, and a clean end of response makes it reconnect in a tight loop.
`StreamClient` keeps twarc's parsing but takes over the transport decisions at the two
seams twarc offers:

* `get()` (twarc calls it for every connection) points the request at `api_base_url`, asks
  only for the configured field groups, and waits as `ConnectionPolicy` says before each
  attempt; it answers non-200 statuses itself, so twarc's sleeps never run.
* the response's `iter_lines` is wrapped: heartbeats are timed, lines that are not a JSON
  object are logged, counted and withheld from twarc, and a transport failure in the middle
  of the body is raised as `ConnectionLost`, which twarc does not catch, so it reaches
  `Capture.run()` instead of twarc's retry loop.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import requests
from twarc.client2 import Twarc2

from collector.alerts.notify import STREAM_FAILING, STREAM_STALLED, Notifier
from collector.lines import parse_json_line
from collector.settings import Settings, read_bearer_token
from collector.sources import CaptureRequest
from collector.stream.backoff import ConnectionPolicy, Failure, failing_alert
from collector.stream.health import StreamHealth

log = logging.getLogger("collector.capture")

TWARC_API_BASE = "https://api.twitter.com"
CONNECT_TIMEOUT = 10.0
# twarc asks for every field group; the settings configure only tweets, users and expansions.
UNCONFIGURED_GROUPS = ("media.fields", "poll.fields", "place.fields")
READ_CHUNK = 64 * 1024


class StopCapture(BaseException):
    """Raised inside twarc's generator when the stream is asked to stop.

    A BaseException so that no `except Exception` on the way (twarc's or ours) swallows it.
    """


class ConnectionLost(Exception):
    """The connection broke in the middle of the body (reset, timeout, truncated chunk)."""


def is_message(obj: Any) -> bool:
    """A line twarc can take: a JSON object whose optional `errors` is a list of objects."""
    if not isinstance(obj, dict):
        return False
    errors = obj.get("errors")
    if errors is None:
        return True
    return isinstance(errors, list) and all(isinstance(item, dict) for item in errors)


def serialize(message: dict[str, Any]) -> bytes:
    """One chunk line: the message with its `__twarc` metadata, compact, newline-terminated."""
    try:
        return orjson.dumps(message) + b"\n"
    except TypeError:
        # Integers beyond 64 bits and the like: slower, but nothing is lost.
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _preview(line: bytes) -> str:
    return line[:120].decode("utf-8", "replace")


class StreamClient(Twarc2):  # type: ignore[misc]
    """twarc's client with the transport policy described in the module docstring."""

    def __init__(
        self,
        bearer_token: str,
        api_base_url: str,
        read_timeout: float,
        policy: ConnectionPolicy,
        health: StreamHealth,
        stop: threading.Event,
        on_failure: Callable[[str], None],
    ) -> None:
        self.api_base_url = api_base_url.rstrip("/")
        self.read_timeout = read_timeout
        self.policy = policy
        self.health = health
        self.stop = stop
        self.on_failure = on_failure
        self.connection_started = 0.0
        self.last_attempt_end = 0.0
        self.current_response: requests.Response | None = None
        super().__init__(bearer_token=bearer_token, metadata=True)

    # twarc calls get() for every (re)connection of the stream.
    def get(self, url: str, params: dict[str, Any] | None = None, **_: Any) -> requests.Response:
        if self.current_response is not None:
            self._connection_over(Failure.NETWORK, "stream ended by the server")
        target = self.api_base_url + url.removeprefix(TWARC_API_BASE)
        params = {k: v for k, v in (params or {}).items() if k not in UNCONFIGURED_GROUPS}
        while True:
            self._wait_for_turn()
            now = time.monotonic()
            self.policy.record_attempt(now)
            self.health.connection_attempts += 1
            try:
                response: requests.Response = self.client.get(
                    target, params=params, stream=True,
                    timeout=(CONNECT_TIMEOUT, self.read_timeout),
                )
            except requests.RequestException as error:
                self._attempt_failed(Failure.NETWORK, "connect", _short(error))
                continue
            if response.status_code == 200:
                self._connected(response)
                return response
            self._refused(response)

    def _wait_for_turn(self) -> None:
        while True:
            if self.stop.is_set():
                raise StopCapture
            wait = self.policy.wait_before_next(time.monotonic(), self.last_attempt_end)
            if wait <= 0:
                return
            log.info("waiting %.1f s before reconnecting", wait)
            self.stop.wait(min(wait, 5.0))

    def _connected(self, response: requests.Response) -> None:
        self.policy.connected()
        self.connection_started = time.monotonic()
        self.current_response = response
        self.last_response = response
        self.health.connected = True
        self.health.connected_since = time.time()
        self.health.connections += 1
        log.info("connected to the sampled stream (connection %d)", self.health.connections)
        original = response.iter_lines
        response.iter_lines = lambda *a, **k: self._lines(original)  # type: ignore[method-assign]

    def _refused(self, response: requests.Response) -> None:
        status = response.status_code
        try:
            body = response.raw.read(500, decode_content=True).decode("utf-8", "replace")
        except Exception:  # the body is only for the log
            body = ""
        finally:
            response.close()
        detail = " ".join(body.split())[:200]
        if status == 429:
            retry_at = self._reset_time(response.headers)
            self._attempt_failed(Failure.RATE_LIMIT, "http_429", f"429 {detail}", retry_at)
        else:
            self._attempt_failed(Failure.HTTP, f"http_{status}", f"{status} {detail}")

    def _reset_time(self, headers: Any) -> float | None:
        """Monotonic time when a 429 with remaining=0 lifts, if the headers say so."""
        try:
            remaining = int(headers["x-rate-limit-remaining"])
            reset = float(headers["x-rate-limit-reset"])
        except (KeyError, ValueError):
            return None  # twarc would raise KeyError here; the policy's backoff applies
        if remaining > 0:
            return None
        return time.monotonic() + max(0.0, reset - time.time()) * self.policy.scale

    def _attempt_failed(self, failure: Failure, reason: str, detail: str,
                        retry_at: float | None = None) -> None:
        self.policy.failed(failure, retry_at)
        self.last_attempt_end = time.monotonic()
        self.health.connected = False
        self.health.count_failure(reason)
        self.health.last_error = detail
        log.warning("stream connection failed (%s): %s", reason, detail)
        self._maybe_alert()

    def _connection_over(self, failure: Failure, detail: str) -> None:
        lasted = time.monotonic() - self.connection_started
        response = self.current_response
        self.current_response = None
        if response is not None:
            response.close()
        self.health.connected = False
        self.policy.connection_ended(lasted, failure)
        self.last_attempt_end = time.monotonic()
        self.health.last_error = detail
        log.warning("stream disconnected after %.1f s: %s", lasted, detail)
        self._maybe_alert()

    def _maybe_alert(self) -> None:
        text = failing_alert(self.policy.consecutive, self.health.last_error)
        if text is not None:
            self.on_failure(text)

    def _lines(self, original: Callable[..., Iterator[bytes]]) -> Iterator[bytes]:
        health = self.health
        try:
            for line in original(chunk_size=READ_CHUNK):
                if self.stop.is_set():
                    raise StopCapture
                if not line:
                    health.heartbeats += 1
                    health.last_heartbeat_at = time.time()
                    yield line
                    continue
                if not is_message(parse_json_line(line)):
                    health.malformed_lines += 1
                    log.warning("skipped a line that is not a JSON message: %r", _preview(line))
                    continue
                yield line
        except requests.RequestException as error:
            if self.stop.is_set():
                raise StopCapture from None
            self._connection_over(Failure.NETWORK, f"connection lost: {_short(error)}")
            raise ConnectionLost(_short(error)) from None
        except (AttributeError, ValueError, OSError) as error:
            # The response was closed under us (stop or stall watchdog).
            if self.stop.is_set():
                raise StopCapture from None
            self._connection_over(Failure.NETWORK, f"connection closed: {_short(error)}")
            raise ConnectionLost(_short(error)) from None

    def abort_connection(self) -> None:
        """End the live connection from another thread (stop, stall).

        Closing a socket does not wake a thread blocked in `recv` on it; shutting it down
        does, and tells the server at once, so the connection slot is free for a restart.
        """
        response = self.current_response
        if response is None:
            return
        connection = getattr(response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError as error:  # already closed
            log.debug("shutting the stream socket down failed: %s", error)


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}"


class Capture:
    """Runs twarc's generator forever, restarting it after anything that ends it."""

    def __init__(
        self,
        client: StreamClient,
        sample_params: dict[str, Any],
        deliver: Callable[[float, dict[str, Any]], None],
        notifier: Notifier,
        server_id: str,
    ) -> None:
        self.client = client
        self.sample_params = sample_params
        self.deliver = deliver
        self.notifier = notifier
        self.server_id = server_id

    def run(self) -> None:
        """Until `client.stop` is set: read, hand over, and reconnect after any failure."""
        client = self.client
        while not client.stop.is_set():
            try:
                for message in client.sample(event=client.stop, **self.sample_params):
                    self.deliver(time.time(), message)
                    if client.stop.is_set():
                        break
                # twarc returns without an exception only when the event is set.
            except StopCapture:
                break
            except ConnectionLost:
                continue  # already counted and logged; the policy decides the wait
            except Exception as error:  # anything else twarc or requests may raise
                client.health.count_failure("unexpected")
                log.error("the stream reader failed unexpectedly: %s", _short(error))
                if client.current_response is not None:
                    client._connection_over(Failure.NETWORK, _short(error))
                else:
                    client.policy.failed(Failure.NETWORK)
                    client.last_attempt_end = time.monotonic()
        client.abort_connection()
        client.health.connected = False

    def stall_detected(self, seconds: float) -> None:
        """No tweet for `seconds` while connected: alert and try a fresh connection."""
        self.notifier.alert(
            STREAM_STALLED,
            f"no tweet for {seconds:.0f} s although the connection is up; reconnecting",
        )
        self.client.abort_connection()

    def abort(self) -> None:
        self.client.abort_connection()


def failure_alert(notifier: Notifier) -> Callable[[str], None]:
    def alert(subject: str) -> None:
        notifier.alert(STREAM_FAILING, subject)

    return alert


def sample_params(settings: Settings) -> dict[str, Any]:
    """Arguments for `Twarc2.sample()` from the settings."""
    params: dict[str, Any] = {
        "expansions": ",".join(settings.expansions),
        "tweet_fields": ",".join(settings.tweet_fields),
        "user_fields": ",".join(settings.user_fields),
    }
    if settings.backfill_minutes:
        params["backfill_minutes"] = settings.backfill_minutes
    return params


def prepare_capture(settings: Settings) -> Callable[[CaptureRequest], Capture]:
    """Read the bearer token now (a missing one fails before the stream touches anything);
    the returned builder makes the capture loop when the stream is ready for it."""
    token = read_bearer_token(settings)

    def build(request: CaptureRequest) -> Capture:
        def deliver(received_at: float, message: dict[str, Any]) -> None:
            request.deliver(received_at, serialize(message), "data" in message)

        client = StreamClient(token, settings.api_base_url, settings.read_timeout_seconds,
                              ConnectionPolicy(scale=request.time_scale), request.health,
                              request.stop, failure_alert(request.notifier))
        return Capture(client, sample_params(settings), deliver, request.notifier,
                       settings.server_id)

    return build
