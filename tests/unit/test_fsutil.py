"""The shared filesystem rules: the one lock helper and the one tolerant state reader."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from collector.errors import CollectorError, LockedError
from collector.fsutil import exclusive_lock, read_state


def test_a_held_lock_refuses_a_second_holder_at_once_with_its_message(tmp_path: Path) -> None:
    path = tmp_path / "state" / "send.lock"
    with exclusive_lock(path, "another collector send is running"):
        assert path.is_file()  # the folder was made, the file created
        # Another process: flock is per open file description, so the refusal is real.
        holder = subprocess.run(
            [sys.executable, "-c",
             "import sys; from pathlib import Path; from collector.fsutil import exclusive_lock\n"
             "from collector.errors import LockedError\n"
             "try:\n"
             "    with exclusive_lock(Path(sys.argv[1]), 'another collector send is running'):\n"
             "        print('held')\n"
             "except LockedError as error:\n"
             "    print(f'refused: {error}')",
             str(path)], capture_output=True, text=True, check=True)
    assert holder.stdout == "refused: another collector send is running\n"
    with exclusive_lock(path, "another collector send is running"):
        pass  # released when the first block ended


def test_the_same_process_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "process.lock"
    with exclusive_lock(path, "busy"), pytest.raises(LockedError, match=r"^busy$"), \
            exclusive_lock(path, "busy"):
        pass


def test_a_lock_that_cannot_be_opened_is_one_collector_error_line(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(CollectorError) as raised, \
            exclusive_lock(not_a_folder / "x.lock", "busy", make_folder=False):
        pass
    assert str(raised.value) == f"cannot open the lock {not_a_folder / 'x.lock'}: Not a directory"


def test_read_state_missing_is_none_without_a_word(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert read_state(tmp_path / "none.json", logging.getLogger("t"), "costs nothing") is None
    assert caplog.records == []


def test_read_state_corrupt_is_none_and_one_warning_saying_the_cost(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "send_state.json"
    path.write_bytes(b'{"consecutive_failures": 3')  # torn
    caplog.set_level(logging.WARNING)
    assert read_state(path, logging.getLogger("t"), "the failure count starts again") is None
    assert [r.getMessage() for r in caplog.records] == [
        f"ignoring unreadable {path} (JSONDecodeError); the failure count starts again"]
    path.write_bytes(b'{"consecutive_failures": 3}')
    assert read_state(path, logging.getLogger("t"), "x") == {"consecutive_failures": 3}
