"""The fake sampled-stream API against real clients: requests, raw sockets and twarc's Twarc2.

These tests pin down what the collector's tests rely on: the wire format, the shared clock,
the per-token slot and budget, backfill, heartbeats, every injectable fault, and a truthful
record of which messages went out whole.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter
from twarc.client2 import Twarc2

from tests.doubles.fake_api import (
    HTML_LINE,
    MALFORMED_LINE,
    TOO_MANY_CONNECTIONS,
    FakeStreamAPI,
    Fault,
    FaultError,
    expand_runs,
)
from tests.integration.helpers import REPO_ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning"),
]

TWEET_FIELDS = "author_id,conversation_id,created_at,id,lang,text,referenced_tweets,source"
USER_FIELDS = "created_at,id,location,name,protected,public_metrics,username,verified"
QUERY = {"tweet.fields": TWEET_FIELDS, "user.fields": USER_FIELDS, "expansions": "author_id"}
RAW_QUERY = "&".join(f"{key}={value}" for key, value in QUERY.items())

MakeApi = Callable[..., FakeStreamAPI]


@pytest.fixture
def make_api() -> Iterator[MakeApi]:
    """Start fakes with the given options (tokens tokA, tokB); all are stopped afterwards."""
    started: list[FakeStreamAPI] = []

    def make(**options: Any) -> FakeStreamAPI:
        options.setdefault("rate", 100.0)
        options.setdefault("heartbeat_interval", 0.2)
        api = FakeStreamAPI(options.pop("tokens", ["tokA", "tokB"]), **options).start()
        started.append(api)
        return api

    yield make
    for api in started:
        api.stop()


def stream(api: FakeStreamAPI, token: str = "tokA", timeout: float = 5.0,
           session: requests.Session | None = None, **params: Any) -> requests.Response:
    return (session or requests).get(
        api.url + "/2/tweets/sample/stream", params={**QUERY, **params}, stream=True,
        headers={"Authorization": f"Bearer {token}"}, timeout=timeout,
    )


def wire_lines(api: FakeStreamAPI, indices: list[int]) -> list[bytes]:
    """What the fake must have sent for these indices (the default query), without CRLF."""
    lines = api.lines_for(TWEET_FIELDS.split(","), USER_FIELDS.split(","), ("author_id",))
    return [lines.line(i)[:-2] for i in indices]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def all_ended(api: FakeStreamAPI) -> bool:
    return all(record["end"] is not None for record in api.connection_log())


class RawStream:
    """A stream request over a bare socket, reading HTTP chunks with their arrival times."""

    def __init__(self, port: int, token: str = "tokA", query: str = RAW_QUERY) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(
            f"GET /2/tweets/sample/stream?{query} HTTP/1.1\r\nHost: api.x.com\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        self.buffer = b""
        head = self._until(b"\r\n\r\n").decode()
        self.status = int(head.split(" ")[1])
        self.headers = dict(
            (name.lower(), value.strip())
            for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
        )

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buffer += data
        found, self.buffer = self.buffer.split(marker, 1)
        return found

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buffer += data
        found, self.buffer = self.buffer[:size], self.buffer[size:]
        return found

    def chunk(self) -> bytes:
        """The next chunk's payload; b"" is the zero chunk that ends the response."""
        size = int(self._until(b"\r\n"), 16)
        payload = self._exactly(size)
        assert self._exactly(2) == b"\r\n"
        return payload

    def chunks(self, seconds: float) -> list[tuple[float, bytes]]:
        """Chunks for `seconds` (or until the response ends), with monotonic arrival times."""
        got: list[tuple[float, bytes]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                payload = self.chunk()
            except TimeoutError:
                break
            got.append((time.monotonic(), payload))
            if payload == b"":
                break
        return got

    def close(self) -> None:
        self.sock.close()


def lines_of(chunks: list[tuple[float, bytes]]) -> list[bytes]:
    """Body lines, heartbeats as b"" entries (every line on this wire ends in CRLF)."""
    body = b"".join(payload for _, payload in chunks)
    if not body:
        return []
    assert body.endswith(b"\r\n")
    return body[:-2].split(b"\r\n")


class RewriteAdapter(HTTPAdapter):
    """Sends twarc's https://api.twitter.com requests to the fake (the host rewritten)."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
             ) -> requests.Response:
        assert request.url is not None
        request.url = request.url.replace("https://api.twitter.com", self.base, 1)
        return super().send(request, *args, **kwargs)


class FakeTwarc(Twarc2):  # type: ignore[misc]
    """Real Twarc2, re-pointed at the fake on every (re)connect."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        super().__init__(bearer_token=token)

    def connect(self) -> None:
        super().connect()
        self.client.mount("https://api.twitter.com", RewriteAdapter(self.base))


def twarc_messages(api: FakeStreamAPI, token: str, want: Callable[[list[dict[str, Any]]], bool]
                   ) -> list[dict[str, Any]]:
    """Messages Twarc2.sample() yields until `want(messages)` holds."""
    client = FakeTwarc(api.url, token)
    messages: list[dict[str, Any]] = []
    generator = client.sample()
    try:
        for message in generator:
            messages.append(message)
            if want(messages):
                break
    finally:
        generator.close()
        client.client.close()
    # A record is final once its connection has ended (it is updated after each write).
    wait_until(lambda: all_ended(api))
    return messages


def ids_of(api: FakeStreamAPI, indices: list[int]) -> list[str]:
    return [api.factory.message(i)["data"]["id"] for i in indices]


# ---- wire format, clock, fields -----------------------------------------------------------

def test_two_connections_get_the_same_sequence_on_one_clock(make_api: MakeApi) -> None:
    api = make_api(rate=200.0)
    first = RawStream(api.port, "tokA")
    time.sleep(0.3)
    second = RawStream(api.port, "tokB")
    assert first.status == second.status == 200
    assert first.headers["transfer-encoding"] == "chunked"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-rate-limit-limit"] == "50"
    assert int(first.headers["x-rate-limit-remaining"]) == 49
    assert int(first.headers["x-rate-limit-reset"]) > time.time() + 800
    lines_a = [line for line in lines_of(first.chunks(1.0)) if line]
    lines_b = [line for line in lines_of(second.chunks(0.5)) if line]
    # End both responses cleanly and read them to the end, so nothing stays in flight.
    api.inject(Fault("clean_end", token="tokA"), Fault("clean_end", token="tokB"))
    lines_a += [line for line in lines_of(first.chunks(5.0)) if line]
    lines_b += [line for line in lines_of(second.chunks(5.0)) if line]
    first.close()
    second.close()
    wait_until(lambda: all_ended(api))

    # Every line is exactly message i of the shared sequence, contiguous from the clock.
    log = api.connection_log()
    assert lines_a == wire_lines(api, api.sent_whole("tokA"))
    assert lines_b == wire_lines(api, api.sent_whole("tokB"))
    offset = log[1]["first_index"] - log[0]["first_index"]
    assert 40 <= offset <= 200  # B opened ~0.3 s after A, at 200 messages/s
    overlap = min(len(lines_a) - offset, len(lines_b))
    assert overlap >= 80
    assert lines_b[:overlap] == lines_a[offset:offset + overlap]


def test_fields_follow_the_query(make_api: MakeApi) -> None:
    api = make_api()
    bare = RawStream(api.port, query="")
    message = json.loads(next(line for line in lines_of(bare.chunks(0.3)) if line))
    bare.close()
    assert set(message) == {"data"}  # no expansions requested: no includes
    # Only the default fields (edit_history_tweet_ids exists in the newer samples only).
    assert {"id", "text"} <= set(message["data"]) <= {"id", "text", "edit_history_tweet_ids"}

    full = RawStream(api.port, "tokB")
    message = json.loads(next(line for line in lines_of(full.chunks(0.3)) if line))
    full.close()
    assert set(message["data"]) <= {"id", "text", "edit_history_tweet_ids",
                                    *TWEET_FIELDS.split(",")}
    assert "created_at" in message["data"]
    assert "includes" in message


def test_unknown_token_and_missing_auth_get_401(make_api: MakeApi) -> None:
    api = make_api()
    response = stream(api, "wrong")
    assert response.status_code == 401
    assert response.json() == {"title": "Unauthorized", "type": "about:blank", "status": 401,
                               "detail": "Unauthorized"}
    response = requests.get(api.url + "/2/tweets/sample/stream", timeout=5)
    assert response.status_code == 401
    assert [r["status"] for r in api.connection_log()] == [401, 401]
    assert api.connection_log()[0]["token"] is None


# ---- slot and budget ----------------------------------------------------------------------

def test_second_connection_of_a_token_gets_too_many_connections(make_api: MakeApi) -> None:
    api = make_api()
    first = stream(api, "tokA")
    assert first.status_code == 200
    second = stream(api, "tokA")
    assert second.status_code == 429
    assert second.json() == TOO_MANY_CONNECTIONS
    assert second.headers["x-rate-limit-limit"] == "50"
    assert int(second.headers["x-rate-limit-remaining"]) == 48
    assert int(second.headers["x-rate-limit-reset"]) > time.time()
    assert stream(api, "tokB").status_code == 200  # another app has its own slot

    # The slot is freed as soon as the client goes away, even between messages.
    first.close()
    wait_until(lambda: api.connection_log()[0]["end"] is not None, timeout=1.0)
    assert stream(api, "tokA").status_code == 200


def test_enterprise_slots_allow_redundant_connections(make_api: MakeApi) -> None:
    api = make_api(slots=2)
    responses = [stream(api) for _ in range(3)]  # kept open: each holds its slot
    assert [response.status_code for response in responses] == [200, 200, 429]


def test_attempt_budget_gives_429_with_nothing_remaining(make_api: MakeApi) -> None:
    api = make_api(slots=100)  # no slot conflicts: only the budget speaks
    remaining = []
    for _ in range(50):
        raw = RawStream(api.port)
        assert raw.status == 200
        remaining.append(int(raw.headers["x-rate-limit-remaining"]))
        raw.close()
    assert remaining == list(range(49, -1, -1))
    over = stream(api)
    assert over.status_code == 429
    assert over.headers["x-rate-limit-remaining"] == "0"
    reset = int(over.headers["x-rate-limit-reset"])
    assert time.time() + 880 < reset <= time.time() + 901
    assert over.json()["title"] == "Too Many Requests"


def test_attempt_budget_window_rolls_over(make_api: MakeApi) -> None:
    api = make_api(attempt_limit=2, window_seconds=1.0, slots=10)
    codes = [stream(api).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    time.sleep(1.1)
    assert stream(api).status_code == 200


# ---- backfill and heartbeats --------------------------------------------------------------

def test_backfill_replays_from_minutes_ago(make_api: MakeApi) -> None:
    api = make_api(rate=100.0)
    time.sleep(1.0)
    live = RawStream(api.port, "tokA")
    replay = RawStream(api.port, "tokB", RAW_QUERY + "&backfill_minutes=1")
    replayed = [line for line in lines_of(replay.chunks(0.5)) if line]
    live_lines = [line for line in lines_of(live.chunks(0.3)) if line]
    api.inject(Fault("clean_end", token="tokB"))
    replayed += [line for line in lines_of(replay.chunks(5.0)) if line]
    live.close()
    replay.close()
    wait_until(lambda: all_ended(api))
    live_log, replay_log = api.connection_log()
    assert replay_log["first_index"] == 0  # the clock is younger than the minute asked for
    assert live_log["first_index"] >= 95
    # The backlog arrives at once (coalesced), then carries on live: not de-duplicated.
    assert replayed == wire_lines(api, api.sent_whole("tokB"))
    assert len(replayed) > live_log["first_index"]
    assert live_lines[0] in replayed


@pytest.mark.parametrize("value", ["6", "-1", "two"])
def test_backfill_out_of_range_is_an_invalid_request(make_api: MakeApi, value: str) -> None:
    api = make_api()
    response = stream(api, backfill_minutes=value)
    assert response.status_code == 400
    body = response.json()
    assert body["title"] == "Invalid Request"
    assert body["type"] == "https://api.twitter.com/2/problems/invalid-request"
    assert body["errors"][0]["parameters"] == {"backfill_minutes": [value]}
    assert stream(api).status_code == 200  # the failed request did not keep the slot


def test_heartbeats_when_idle(make_api: MakeApi) -> None:
    api = make_api(rate=0.001, heartbeat_interval=0.2)  # next message due in ~1000 s
    raw = RawStream(api.port)
    chunks = raw.chunks(1.1)
    raw.close()
    assert [payload for _, payload in chunks] == [b"\r\n"] * len(chunks)
    assert 4 <= len(chunks) <= 6
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(chunks)]
    assert all(0.15 < gap < 0.35 for gap in gaps)
    wait_until(lambda: all_ended(api), timeout=1.0)


def test_an_idle_stream_picks_up_a_fault_at_once(make_api: MakeApi) -> None:
    api = make_api(rate=0.001, heartbeat_interval=20.0)  # no message, no heartbeat soon
    raw = RawStream(api.port)
    time.sleep(0.2)
    injected = time.monotonic()
    api.inject(Fault("clean_end"))
    (arrived, payload), = raw.chunks(2.0)
    assert payload == b"" and arrived - injected < 0.3
    raw.close()


# ---- faults -------------------------------------------------------------------------------

def test_drop_mid_line_leaves_exactly_the_recorded_whole_messages(make_api: MakeApi) -> None:
    api = make_api()
    api.inject(Fault("drop_mid_line", after=5))
    response = stream(api)
    received: list[bytes] = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        received.extend(line for line in response.iter_lines() if line)
    wait_until(lambda: all_ended(api))
    record = api.connection_log()[0]
    assert record["whole_count"] == 5
    assert record["partial"] == [record["first_index"] + 5]
    assert received == wire_lines(api, api.sent_whole("tokA"))
    assert api.pending_faults() == []


def test_twarc_reconnects_after_drop_and_sees_every_whole_message(make_api: MakeApi) -> None:
    api = make_api(rate=50.0)
    api.inject(Fault("drop_mid_line", after=8))
    messages = twarc_messages(api, "tokA", lambda got: len(got) >= 20)
    first, second = api.connection_log()[:2]
    assert first["whole_count"] == 8 and first["partial"]
    got_ids = [message["data"]["id"] for message in messages]
    sent = expand_runs(first["whole_runs"]) + expand_runs(second["whole_runs"])
    assert got_ids == ids_of(api, sent)[: len(got_ids)]


def test_rst_between_messages(make_api: MakeApi) -> None:
    api = make_api()
    api.inject(Fault("rst", after=3))
    raw = RawStream(api.port)
    chunks: list[tuple[float, bytes]] = []
    with pytest.raises(ConnectionResetError):
        while True:
            chunks.append((time.monotonic(), raw.chunk()))
    raw.close()
    wait_until(lambda: all_ended(api))
    assert [line for line in lines_of(chunks) if line] == wire_lines(api, api.sent_whole("tokA"))
    assert api.connection_log()[0]["whole_count"] == 3
    assert api.connection_log()[0]["partial"] == []


def test_clean_end_then_the_socket_serves_the_next_request(make_api: MakeApi) -> None:
    api = make_api()
    api.inject(Fault("clean_end", after=4))
    with requests.Session() as session:
        response = stream(api, session=session)
        lines = [line for line in response.iter_lines() if line]  # ends without an error
        assert lines == wire_lines(api, api.sent_whole("tokA"))
        assert len(lines) == 4
        wait_until(lambda: all_ended(api))
        again = stream(api, session=session)
        assert again.status_code == 200
        again.close()
    log = api.connection_log()
    assert log[0]["peer"] == log[1]["peer"]  # HTTP keep-alive: same TCP connection
    assert log[0]["events"] == ["clean_end after=4"]


@pytest.mark.parametrize(("status", "headers", "title"), [
    (401, True, "Unauthorized"),
    (403, True, "Client Forbidden"),
    (429, True, "ConnectionException"),
    (429, False, "ConnectionException"),
    (500, True, "Internal Server Error"),
    (503, True, "Service Unavailable"),
])
def test_status_fault_answers_the_next_attempts(make_api: MakeApi, status: int, headers: bool,
                                                title: str) -> None:
    api = make_api()
    api.inject(Fault("status", status=status, count=2, rate_limit_headers=headers))
    for _ in range(2):
        response = stream(api)
        assert response.status_code == status
        assert response.json()["title"] == title
        has_headers = "x-rate-limit-remaining" in response.headers
        assert has_headers == (status == 429 and headers)
    assert stream(api).status_code == 200
    assert [record["status"] for record in api.connection_log()] == [status, status, 200]


def test_status_429_with_nothing_remaining(make_api: MakeApi) -> None:
    api = make_api()
    api.inject(Fault("status", status=429, remaining=0))
    response = stream(api)
    assert response.headers["x-rate-limit-remaining"] == "0"
    assert response.json()["title"] == "Too Many Requests"


def test_twarc_raises_key_error_on_429_without_headers(make_api: MakeApi) -> None:
    api = make_api()
    api.inject(Fault("status", status=429, rate_limit_headers=False))
    with pytest.raises(KeyError, match="x-rate-limit-remaining"):
        twarc_messages(api, "tokA", lambda got: True)


def test_operational_disconnect_old_form_makes_twarc_reconnect(make_api: MakeApi) -> None:
    api = make_api(rate=50.0)
    api.inject(Fault("operational_disconnect", after=3))
    messages = twarc_messages(api, "tokA", lambda got: len(got) >= 8)
    notice = messages[3]
    assert notice["errors"][0]["disconnect_type"] == "OperationalDisconnect"
    assert notice["errors"][0]["type"].startswith("https://api.twitter.com/")
    assert "data" not in notice
    log = api.connection_log()
    assert len(log) >= 2 and log[0]["whole_count"] == 3
    sent = expand_runs(log[0]["whole_runs"]) + expand_runs(log[1]["whole_runs"])
    got = [message["data"]["id"] for message in messages if "data" in message]
    assert got == ids_of(api, sent)[: len(got)]


def test_upstream_operational_disconnect_kept_open(make_api: MakeApi) -> None:
    api = make_api()
    api.inject(Fault("operational_disconnect", after=2, variant="UpstreamOperationalDisconnect",
                     close=False))
    raw = RawStream(api.port)
    lines = [line for line in lines_of(raw.chunks(0.4)) if line]
    raw.close()
    notice = json.loads(lines[2])
    assert notice["errors"][0]["disconnect_type"] == "UpstreamOperationalDisconnect"
    assert notice["errors"][0]["type"] == "https://api.x.com/2/problems/operational-disconnect"
    wait_until(lambda: all_ended(api))
    assert lines[:2] + lines[3:] == wire_lines(api, api.sent_whole("tokA"))
    assert len(lines) > 5  # the stream carried on after the notice
    assert len(api.connection_log()) == 1


@pytest.mark.parametrize(("kind", "injected"), [("malformed_line", MALFORMED_LINE),
                                                 ("non_json_line", HTML_LINE)])
def test_bad_line_then_carry_on(make_api: MakeApi, kind: str, injected: bytes) -> None:
    api = make_api()
    api.inject(Fault(kind, after=3))
    raw = RawStream(api.port)
    lines = [line for line in lines_of(raw.chunks(0.4)) if line]
    raw.close()
    wait_until(lambda: all_ended(api))
    assert lines[3] == injected[:-2]
    assert lines[:3] + lines[4:] == wire_lines(api, api.sent_whole("tokA"))
    assert len(lines) > 6


def test_twarc_dies_on_a_malformed_line(make_api: MakeApi) -> None:
    api = make_api()
    api.inject(Fault("malformed_line", after=2))
    with pytest.raises(json.JSONDecodeError):
        twarc_messages(api, "tokA", lambda got: len(got) > 10)


def test_partial_then_end(make_api: MakeApi) -> None:
    api = make_api()
    api.inject(Fault("partial_then_end", after=3))
    response = stream(api)
    lines = [line for line in response.iter_lines() if line]
    wait_until(lambda: all_ended(api))
    record = api.connection_log()[0]
    assert lines[:3] == wire_lines(api, api.sent_whole("tokA"))
    fragment = lines[3]
    (full_line,) = wire_lines(api, record["partial"])
    assert full_line.startswith(fragment) and len(fragment) < len(full_line)
    assert len(lines) == 4


def test_silent_stall_sends_nothing_then_the_late_messages(make_api: MakeApi) -> None:
    api = make_api(rate=50.0, heartbeat_interval=0.2)
    api.inject(Fault("silent_stall", after=5, seconds=0.8))
    raw = RawStream(api.port)
    chunks = raw.chunks(1.3)
    raw.close()
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(chunks)]
    longest = max(range(len(gaps)), key=gaps.__getitem__)
    assert 0.75 < gaps[longest] < 1.0
    assert chunks[longest + 1][1].count(b"\r\n") >= 20  # the backlog, coalesced
    wait_until(lambda: all_ended(api))
    sent = api.sent_whole("tokA")
    assert sent == list(range(sent[0], sent[-1] + 1))  # nothing skipped
    assert [line for line in lines_of(chunks) if line] == wire_lines(api, sent)


def test_heartbeat_stall_skips_the_messages_due_meanwhile(make_api: MakeApi) -> None:
    api = make_api(rate=50.0, heartbeat_interval=0.2)
    api.inject(Fault("heartbeat_stall", after=5, seconds=0.8))
    raw = RawStream(api.port)
    chunks = raw.chunks(1.3)
    raw.close()
    lines = lines_of(chunks)
    sixth = next(i for i, line in enumerate(lines) if line and i > 5 and lines[i - 1] == b"")
    assert lines[5:sixth] == [b""] * (sixth - 5) and sixth - 5 >= 3  # heartbeats only
    wait_until(lambda: all_ended(api))
    sent = api.sent_whole("tokA")
    assert 35 <= sent[5] - sent[4] <= 50  # ~0.8 s of messages at 50/s never sent
    assert [line for line in lines if line] == wire_lines(api, sent)
    assert any(event.startswith("skipped") for event in api.connection_log()[0]["events"])


def test_refuse_then_listen_again_on_the_same_port(make_api: MakeApi) -> None:
    api = make_api()
    api.inject(Fault("refuse", seconds=0.6))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", api.port), timeout=1)
    wait_until(lambda: api.pending_faults() == [], timeout=2.0)
    assert stream(api).status_code == 200


def test_no_headers_holds_the_request_unanswered(make_api: MakeApi) -> None:
    api = make_api()
    api.inject(Fault("no_headers", seconds=0.6))
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        stream(api, timeout=0.3)
    assert time.monotonic() - started < 0.6
    assert stream(api).status_code == 200  # the held request never took the slot
    record = api.connection_log()[0]
    assert record["status"] is None and record["events"] == ["no_headers seconds=0.6"]


def test_faults_apply_in_order_one_after_the_other(make_api: MakeApi) -> None:
    api = make_api()
    api.inject(Fault("clean_end", after=2), Fault("status", status=503),
               Fault("clean_end", after=1))
    assert len(list(stream(api).iter_lines())) == 2
    assert stream(api).status_code == 503
    assert len([line for line in stream(api).iter_lines() if line]) == 1
    assert [record["status"] for record in api.connection_log()] == [200, 503, 200]


# ---- control endpoints, CLI, speed, pure parts ---------------------------------------------

def test_control_endpoints(make_api: MakeApi) -> None:
    api = make_api()
    faults = [{"kind": "clean_end", "after": 1}, {"kind": "status", "status": 500}]
    response = requests.post(api.url + "/_control/faults", json=faults, timeout=5)
    assert response.status_code == 201 and response.json() == {"queued": 2}
    assert [f["kind"] for f in requests.get(api.url + "/_control/faults", timeout=5).json()] == [
        "clean_end", "status"]
    assert len([line for line in stream(api).iter_lines() if line]) == 1
    assert requests.delete(api.url + "/_control/faults", timeout=5).status_code == 200
    assert stream(api, "tokB").status_code == 200  # the 500 was dropped
    for bad in ({"kind": "meteor"}, {"kind": "rst", "afterwards": 1}, {"kind": "rst",
                "after": "1"}, {"kind": "status", "status": 418}, [1]):
        response = requests.post(api.url + "/_control/faults", json=bad, timeout=5)
        assert response.status_code == 400, bad
    wait_until(lambda: len(api.connection_log()) == 2)
    log = requests.get(api.url + "/_control/log", timeout=5).json()
    assert log["pending_faults"] == []
    assert [r["id"] for r in log["connections"]] == [1, 2]
    assert log["connections"][0] == api.connection_log()[0]


def test_fault_from_json_validates() -> None:
    assert Fault.from_json({"kind": "silent_stall", "seconds": 2}).seconds == 2
    with pytest.raises(FaultError):
        Fault.from_json({"kind": "operational_disconnect", "variant": "Nope"})
    with pytest.raises(FaultError):
        Fault.from_json({"kind": "rst", "after": True})
    assert expand_runs([[3, 5], [9, 9]]) == [3, 4, 5, 9]


def test_templated_lines_are_the_factory_lines(make_api: MakeApi) -> None:
    api = make_api()
    lines = api.lines_for(TWEET_FIELDS.split(","), USER_FIELDS.split(","), ("author_id",))
    indices = [*range(12000), *range(10**9, 10**9 + 3000)]  # every template, reused
    assert [lines.line(i) for i in indices] == [lines.factory.line(i) for i in indices]


def test_cli_prints_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.doubles.fake_api", "--port", "0", "--tokens", "tokA,tokB",
         "--rate", "50", "--heartbeat", "20", "--port-file", str(port_file)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        assert int(port_file.read_text()) == port
        response = requests.get(
            f"http://127.0.0.1:{port}/2/tweets/sample/stream",
            headers={"Authorization": "Bearer tokB"}, stream=True, timeout=5,
        )
        assert response.status_code == 200
        assert next(line for line in response.iter_lines() if line).startswith(b'{"data"')
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        response.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    log = process.stderr.read()
    assert "token#2" in log and "tokB" not in log  # tokens are never logged


def test_feeds_more_than_20000_messages_per_second(make_api: MakeApi) -> None:
    """Judged per CPU second of this process (fake + reader), so a busy CI box cannot fail
    it by taking the CPU away; the wall-clock rate is printed for the record."""
    api = make_api(rate=1e9)
    raw = RawStream(api.port)
    received = 0
    started, cpu_started = time.monotonic(), time.process_time()
    raw.sock.settimeout(5)
    while time.monotonic() - started < 1.0:
        received += raw.sock.recv(1 << 20).count(b'{"data"')
    wall = received / (time.monotonic() - started)
    per_cpu = received / (time.process_time() - cpu_started)
    raw.close()
    print(f"fake API throughput: {wall:.0f} messages/s wall, {per_cpu:.0f} per CPU second")
    assert per_cpu > 20000
