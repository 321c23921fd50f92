"""`collector stream`: run the capture in the foreground until SIGTERM (systemd's stop)."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import threading
from types import FrameType

from collector.alerts.notify import make_notifier
from collector.commands import settings_from_args
from collector.sources import source_for
from collector.stream.run import run_stream

log = logging.getLogger("collector.stream")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(command_name="stream")


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: closing the open chunk and stopping",
                 signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # `kill -USR1` prints every thread's stack to the journal: the way to see a stuck stream.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    summary = run_stream(settings, make_notifier(settings), stop)
    log.info("stopped after %d messages (%d %s) in %d connection(s); %d chunk(s) closed",
             summary.messages, summary.tweets, source_for(settings).record_name,
             summary.connections, summary.chunks_closed)
    return 0
