"""What the fake writes on the wire, byte for byte: the endpoint's path, HTTP/1.1 heads and
chunks, and the bodies the real API sends (problem objects, disconnect errors, bad lines).

These are the real endpoint's documented and observed bytes; keeping them apart
from the code that decides *when* to send them lets tests compare against the same bytes.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

STREAM_PATH = "/2/tweets/sample/stream"
HEARTBEAT = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"  # the zero-length chunk that ends a chunked response
MAX_CHUNK_BYTES = 64 * 1024

MALFORMED_LINE = b'{"data": {"author_id": "1021159080151404544"\r\n'
HTML_LINE = b"<html><body>502 Bad Gateway</body></html>\r\n"

TOO_MANY_CONNECTIONS = {
    "title": "ConnectionException",
    "detail": "This stream is currently at the maximum allowed connection limit.",
    "connection_issue": "TooManyConnections",
    "type": "https://api.twitter.com/2/problems/streaming-connection",
}
RATE_LIMITED = {
    "title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank",
    "status": 429,
}
PROBLEM_BODIES: dict[int, dict[str, Any]] = {
    401: {"title": "Unauthorized", "type": "about:blank", "status": 401,
          "detail": "Unauthorized"},
    403: {
        "client_id": "28470531",
        "detail": "When authenticating requests to the Twitter API v2 endpoints, you must use "
                  "keys and tokens from a Twitter developer App that is attached to a Project. "
                  "You can create a project via the developer portal.",
        "registration_url": "https://developer.twitter.com/en/docs/projects/overview",
        "title": "Client Forbidden",
        "required_enrollment": "Appropriate Level of API Access",
        "reason": "client-not-enrolled",
        "type": "https://api.twitter.com/2/problems/client-forbidden",
    },
    404: {"title": "Not Found Error", "type": "https://api.twitter.com/2/problems/resource-not-found",
          "detail": "The requested resource was not found."},
    429: TOO_MANY_CONNECTIONS,
    500: {"title": "Internal Server Error", "detail": "Internal Server Error",
          "type": "about:blank", "status": 500},
    503: {"title": "Service Unavailable", "detail": "Service Unavailable",
          "type": "about:blank", "status": 503},
}
DISCONNECT_BODIES = {
    "OperationalDisconnect": {"errors": [{
        "title": "operational-disconnect", "disconnect_type": "OperationalDisconnect",
        "detail": "This stream has been disconnected for operational reasons.",
        "type": "https://api.twitter.com/2/problems/operational-disconnect",
    }]},
    "UpstreamOperationalDisconnect": {"errors": [{
        "title": "operational-disconnect", "disconnect_type": "UpstreamOperationalDisconnect",
        "detail": "This stream has been disconnected upstream for operational reasons.",
        "type": "https://api.x.com/2/problems/operational-disconnect",
    }]},
}
REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


def head(status: int, headers: dict[str, str]) -> bytes:
    """A response's status line and headers, up to and including the blank line."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
             f"date: {formatdate(usegmt=True)}", "server: fake-x-api"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(payload: bytes) -> bytes:
    """One chunk of a chunked response."""
    return b"%X\r\n%s\r\n" % (len(payload), payload)


def invalid_backfill(value: str) -> dict[str, Any]:
    """The 400 body for a `backfill_minutes` outside 0-5."""
    return {
        "errors": [{
            "parameters": {"backfill_minutes": [value]},
            "message": f"The `backfill_minutes` query parameter value [{value}] is not "
                       "between 0 and 5",
        }],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": "https://api.twitter.com/2/problems/invalid-request",
    }
