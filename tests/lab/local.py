"""The one-machine lab: the fake API and one real `collector stream`, for about a minute.

It shows the capture end to end without any host set-up: the fake API plays the sampled
stream on loopback (with two faults on the way: a connection reset and an operational
disconnect), `collector stream` runs as an ordinary process with its own settings, and at
the end the lab prints what the fake sent whole, what the chunks hold and how many times the
stream reconnected. The fleet lab (real systemd hosts) builds on the same doubles.

Usage: python -m tests.lab.local [--seconds 60] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

from tests.doubles.fake_api import FakeStreamAPI, Fault

TOKEN = "lab-token-local"


def write_settings(folder: Path, api_url: str, token: str = TOKEN) -> Path:
    """A one-server settings file (with its token file) for a stream against `api_url`."""
    keys = folder / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    token_file = keys / "twitter_api.txt"
    token_file.write_text(f"bearer_token={token}\n")
    token_file.chmod(0o600)
    path = folder / "server_settings.txt"
    path.write_text("\n".join([
        f"API_key_dst={keys}", f"data_storage_dst={folder / 'data'}", "username=lab",
        "groupname=lab", "server_id=lab1", "role=secondary", "servers=lab1",
        "main_host=127.0.0.1", "main_user=lab", f"api_base_url={api_url}",
        "notifications=False", "read_timeout_seconds=5",
    ]) + "\n")
    return path


def run(seconds: float, folder: Path) -> int:
    with FakeStreamAPI([TOKEN], rate=50, heartbeat_interval=2, quiet=True) as api:
        settings = write_settings(folder, api.url)
        log_path = folder / "stream.log"
        print(f"fake API on {api.url}; collector stream for {seconds:.0f} s; data in {folder}")
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "collector", "--settings", str(settings), "stream"],
                stdout=log, stderr=log, env=dict(os.environ, COLLECTOR_BACKOFF_SCALE="0.1"))
        time.sleep(seconds / 3)
        api.inject(Fault("rst", after=10))
        print("  injected: connection reset")
        time.sleep(seconds / 3)
        api.inject(Fault("operational_disconnect", after=10, variant="OperationalDisconnect"))
        print("  injected: operational disconnect")
        time.sleep(seconds / 3)
        api.inject(Fault("heartbeat_stall", seconds=3600))  # nothing in flight at the stop
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        sent = Counter(api.sent_whole(TOKEN))
        connections = [c for c in api.connection_log() if c["status"] == 200]
        factory = api.factory
    chunks = sorted((folder / "data").rglob("*.jsonl"))
    ids = [orjson.loads(line)["data"]["id"] for path in chunks
           for line in path.read_bytes().splitlines() if b'"data"' in line[:9]]
    sent_ids = [factory.message(i)["data"]["id"] for i in sent.elements()]
    parts = list((folder / "data").rglob("*.part"))
    print(f"collector exit code   {code}")
    print(f"messages sent whole   {sum(sent.values())}")
    print(f"tweets in the chunks  {len(ids)}")
    print(f"chunks (minutes)      {len(chunks)}")
    print(f"connections           {len(connections)} (so {len(connections) - 1} reconnects)")
    print(f".part files left      {len(parts)}")
    lost = Counter(sent_ids) - Counter(ids)
    invented = Counter(ids) - Counter(sent_ids)
    print(f"lost / invented       {sum(lost.values())} / {sum(invented.values())}")
    print(f"log                   {folder / 'stream.log'}")
    ok = code == 0 and not parts and not lost and not invented
    print("result                " + ("OK: every message sent whole was captured once"
                                     if ok else "FAILED"))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--keep", type=Path, help="keep data and log in this folder")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args.seconds, args.keep)
    with tempfile.TemporaryDirectory(prefix="collector-lab-") as tmp:
        return run(args.seconds, Path(tmp))


if __name__ == "__main__":
    raise SystemExit(main())
