"""The seed's way of capturing, rebuilt as the stream benchmark's yardstick.

Plain `Twarc2.sample()` (twarc reads 512-byte pieces, parses with the stdlib, sleeps its own
way on errors) and `json.dumps` of each message into a file per minute, as the seed and the
prior art (JanaLasser/twitter_sampled_stream_v2) do. Only the host is redirected to the fake,
with a transport adapter that rewrites the API's host to the fake's.

Usage: python -m bench.seed_stream API_URL TOKEN OUT_DIR
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from twarc.client2 import Twarc2


class _Redirect(HTTPAdapter):
    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        assert request.url is not None
        request.url = request.url.replace("https://api.twitter.com", self.base, 1)
        return super().send(request, **kwargs)


class _SeedClient(Twarc2):  # type: ignore[misc]
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        super().__init__(bearer_token=token)

    def connect(self) -> None:
        super().connect()
        self.client.mount("https://api.twitter.com", _Redirect(self.base))


def main() -> int:
    base, token, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = _SeedClient(base, token)
    minute, handle = "", None
    for message in client.sample(event=stop, expansions="author_id",
                                 tweet_fields="author_id,conversation_id,created_at,id,lang,"
                                 "text,referenced_tweets,source",
                                 user_fields="created_at,id,location,name,protected,"
                                 "public_metrics,username,verified"):
        now = time.strftime("%Y-%m-%d_%H-%M")
        if now != minute:
            if handle:
                handle.close()
            minute, handle = now, (out / f"seed_{now}.jsonl").open("w")
        assert handle is not None
        handle.write(json.dumps(message) + "\n")
        if stop.is_set():
            break
    if handle:
        handle.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
