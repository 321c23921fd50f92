"""A source's daily pass over the vault (Bluesky: posts deleted since their receipt are removed).

It runs inside `process`, under its lock, so it never meets a merge that is writing the same
files, and at most once per local day of `timezone`: the day it last completed is kept in
state_dir. A pass that fails is retried by the next run (its day is not recorded).
"""

from __future__ import annotations

import logging
from datetime import datetime

import orjson

from collector.fsutil import read_state, write_bytes_atomic
from collector.settings import Settings
from collector.sources import Source

log = logging.getLogger("collector.process")

DAILY_STATE = "daily_pass.json"


def daily_pass_due(last_done: object, today: str) -> bool:
    """Whether the pass is due (pure): it has not completed on local day `today`."""
    return not (isinstance(last_done, dict) and last_done.get("day") == today)


def run_daily_pass(source: Source, settings: Settings, now: datetime) -> str | None:
    """Run the source's daily pass if it has one and it is due; returns its log line."""
    if source.daily is None:
        return None
    path = settings.state_dir / DAILY_STATE
    today = now.astimezone(settings.timezone).date().isoformat()
    if not daily_pass_due(read_state(path, log, "the daily pass runs again today"), today):
        return None
    line = source.daily(settings, now)
    write_bytes_atomic(path, orjson.dumps({"day": today, "result": line}))
    log.info("daily pass of %s: %s", today, line)
    return line
