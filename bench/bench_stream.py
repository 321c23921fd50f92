"""Stream benchmark: messages per second `collector stream` sustains from the fake API.

The fake API sends as fast as the socket takes (rate 1e9). The benchmark runs, one after the
other on the same machine and the same message sequence, `collector stream` and the seed's
approach (`bench.seed_stream`), each as its own process for the same time, and prints the
steady-state rate (lines written between two readings, after a warm-up), the CPU seconds per
1,000 messages (from the process's own rusage) and the ratios. The goal is 10,000 msg/s,
more than 150 times the sampled stream's average rate (about 60 msg/s).

Usage: python -m bench.bench_stream [--seconds 15] [--warmup 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.doubles.fake_api import FakeStreamAPI
from tests.lab.local import write_settings

TOKEN = "bench-token"
SAMPLED_STREAM_AVERAGE_RATE = 60.0  # ~5 million tweets a day in the 1% sample


@dataclass
class Result:
    name: str
    rate: float  # messages per second, steady state
    lines: int
    cpu_seconds: float

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_seconds / self.lines * 1000 if self.lines else float("nan")


def count_lines(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        if path.is_file() and (path.suffix in (".jsonl", ".part")):
            with path.open("rb") as handle:
                blocks = iter(lambda: handle.read(1 << 20), b"")
                total += sum(block.count(b"\n") for block in blocks)
    return total


def run_capturer(name: str, command: list[str], out: Path, seconds: float, warmup: float,
                 env: dict[str, str]) -> Result:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(warmup)
    first, t1 = count_lines(out), time.monotonic()
    time.sleep(seconds)
    second, t2 = count_lines(out), time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(process.pid, 0)
    lines = count_lines(out)
    return Result(name, (second - first) / (t2 - t1), lines, usage.ru_utime + usage.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        root = Path(tmp)
        env = dict(os.environ)
        for name in ("collector", "seed"):
            folder = root / name
            folder.mkdir()
            # A fresh fake per run: same sequence from message 0, full speed, one slot.
            with FakeStreamAPI([TOKEN], rate=1e9, heartbeat_interval=20, quiet=True) as api:
                if name == "collector":
                    command = [sys.executable, "-m", "collector", "--settings",
                               str(write_settings(folder, api.url, TOKEN)), "stream"]
                    out = folder / "data"
                else:
                    out = folder / "seed"
                    command = [sys.executable, "-m", "bench.seed_stream", api.url, TOKEN,
                               str(out)]
                out.mkdir(parents=True, exist_ok=True)
                results.append(run_capturer(name, command, out, args.seconds, args.warmup,
                                            env))
    collector, seed = results
    print(f"stream benchmark: fake API at full speed, {args.seconds:g} s measured after "
          f"{args.warmup:g} s warm-up, {os.cpu_count()} cores")
    print(f"{'':12}{'msg/s':>10}{'CPU s/1000 msg':>16}{'messages':>11}")
    for result in results:
        print(f"{result.name:12}{result.rate:>10,.0f}{result.cpu_per_1000:>16.3f}"
              f"{result.lines:>11,}")
    print(f"collector/seed: throughput x{collector.rate / seed.rate:.2f}, "
          f"CPU per message x{collector.cpu_per_1000 / seed.cpu_per_1000:.2f}")
    print(f"collector: {collector.rate / SAMPLED_STREAM_AVERAGE_RATE:,.0f} times the sampled "
          f"stream's average rate (goal: 10,000 msg/s, met: {collector.rate >= 10_000})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
