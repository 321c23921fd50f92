"""5. The services around the fleet fail: OSF down, OSF answering 429 or 507, SMTP down.

The stream is left alone (so every row must still show lost=0, duplicated=0); what is
measured is that the main's hourly `collector upload` and its alert mail survive the fault:

* OSF faults. `setup` merges the current hour again on the main (after a `send` from the
  secondaries) so its IDs file differs from the copy on OSF and an upload is due. `inject`
  breaks OSF, then runs `collector upload` on the main `OSF_CYCLES` times, as cron would
  hourly: each run must exit non-zero with one `collector upload: error: ...` line and no
  traceback. OSF *down* is the fake OSF's process stopped (connection refused) and started
  again on the same port; it persists its files (`--state-file`), so it comes back with its
  archive, as osf.io would: the restart is a real process death, not a pretend refusal.
  `recover` ends the fault and starts the next upload cycle in the background; the main
  reports `degraded` ("the last upload failed") until an upload succeeds, so the runner's
  recovery column (seconds until every host is healthy) is here the time from the end of the
  fault to the first successful upload cycle. `verify` checks that this upload exited 0 with
  nothing left pending, then runs one more `collector upload` (the runner's flush merged the
  hours again) and compares every publishable file of the main's vault with the file on the
  fake OSF, downloaded through the API like any client: byte-identical, none missing.
* SMTP down. The SMTP double is stopped, the main's stream is killed (-9) so that its restart
  raises `stream_crashed`; the alert must wait in the main's mail outbox (not vanish), a
  `collector upload` run while mail is down must still succeed, and after the SMTP double
  is back on its port, the next `collector upload` (the main's hourly cron job) delivers it.
  `verify` checks that the lab's maildir holds the `stream_crashed` mail. The recovery
  column is the stream's reconnection (the runner's rule); the mail's delay after SMTP came
  back is printed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.faults.scenarios import Lab, Scenario, Step
from tests.lab import nspawn
from tests.lab.fleet import OSF_PROJECT, as_collector, stop_process

OSF_CYCLES = 3
RESULT_FILE = "/var/tmp/faults-upload"  # on the main: `-<scenario>.log` and `.rc` of the
# first upload after the fault, run in the background
OUTBOX = "mail_outbox"
ONE_LINE = re.compile(r"^collector upload: error: \S.*$")
# Problems found while recovering (the runner lets only `inject` raise); `verify` reports them.
_problems: dict[str, list[str]] = {}


# ---- helpers --------------------------------------------------------------------------------

def _osf_port(lab: Lab) -> int:
    return int(lab.state["processes"]["fake_osf"]["port"])


def _osf_control(lab: Lab, method: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{_osf_port(lab)}/_control/faults",
                                     data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _osf_get(lab: Lab, url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization":
                                                   f"Bearer {lab.state['osf_token']}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        data: bytes = response.read()
        return data


def osf_contents(lab: Lab) -> dict[str, str]:
    """sha256 of every file on the fake OSF, keyed `YYYY/MM/DD/name`, downloaded through the
    API listing's download links as a client would."""
    found: dict[str, str] = {}
    pending = [f"http://127.0.0.1:{_osf_port(lab)}/v2/nodes/{OSF_PROJECT}"
               "/files/osfstorage/"]
    while pending:
        url: str | None = pending.pop()
        while url:
            page = json.loads(_osf_get(lab, url))
            for item in page.get("data", []):
                attributes = item.get("attributes", {})
                if attributes.get("kind") == "folder":
                    pending.append(item["relationships"]["files"]["links"]["related"]["href"])
                else:
                    data = _osf_get(lab, item["links"]["download"])
                    found[attributes["materialized_path"].strip("/")] = \
                        hashlib.sha256(data).hexdigest()
            url = page.get("links", {}).get("next")
    return found


def vault_contents(lab: Lab) -> dict[str, str]:
    """sha256 of every file of the main's vault that belongs on OSF, keyed like OSF's."""
    vault = lab.setting(lab.main, "data_vault_dst")
    listing = lab.run(lab.main, f"cd {shlex.quote(vault)} && "
                      "sha256sum [0-9]*-*-*/*_IDs.txt.xz [0-9]*-*-*/*_report.txt", check=False)
    found: dict[str, str] = {}
    for line in listing.stdout.splitlines():
        digest, _, relative = line.strip().partition("  ")
        day, _, name = relative.partition("/")
        if re.fullmatch(rf"{re.escape(day)}_(\d{{2}}b?_IDs\.txt\.xz|report\.txt)", name):
            found[f"{day.replace('-', '/')}/{name}"] = digest
    return found


def differences(vault: dict[str, str], osf: dict[str, str]) -> list[str]:
    """Vault files OSF lacks or holds with other bytes."""
    return sorted(path for path, digest in vault.items() if osf.get(path) != digest)


def _upload(lab: Lab) -> subprocess.CompletedProcess[str]:
    return lab.collector(lab.main, "upload")


def _one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    """What is wrong with a failed upload run's output ("" if it failed as it should)."""
    if result.returncode == 0:
        return "collector upload succeeded during the fault"
    if "Traceback" in result.stderr:
        return "collector upload printed a traceback"
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    if not ONE_LINE.match(last):
        return f"collector upload did not end with a one-line error: {last[-200:]!r}"
    return ""


def _problem(name: str, text: str) -> None:
    print(f"   {name}: {text}", flush=True)
    _problems.setdefault(name, []).append(text)


# ---- OSF faults -----------------------------------------------------------------------------

def _due_upload(name: str) -> Step:
    """New data for the current hour on the main (merged after the next minute boundary),
    so OSF holds an older IDs file and the upload has work to do."""
    def setup(lab: Lab) -> None:
        _problems.pop(name, None)
        lab.run(lab.main, f"rm -f {RESULT_FILE}-{name}.log {RESULT_FILE}-{name}.rc")
        # Only closed chunks are merged, and chunks close at minute boundaries: without a new
        # one since the last merge, merging again gives the same bytes and nothing is due.
        lab.wait_for_closed_chunk([lab.main], lab.last_ended(lab.main, "process"))
        for host in lab.secondaries:
            lab.collector(host, "send")
        # The hour of that chunk, not of the clock: just after :00 the clock's hour has no
        # closed chunk yet.
        hour = _newest_closed_hour(lab, lab.main)
        result = lab.collector(lab.main, f"process --hour {hour} --force")
        if result.returncode != 0:
            _problem(name, f"setup: process {hour} failed: {result.stderr.strip()[-200:]}")
        due = differences(vault_contents(lab), osf_contents(lab))
        print(f"   due for upload: {', '.join(due) or 'nothing'}", flush=True)
        if not due:
            _problem(name, "setup: nothing was due for upload, the fault tested nothing")
    return setup


def _newest_closed_hour(lab: Lab, host: str) -> str:
    """`YYYY-mm-ddTHH` of the hour folder holding the host's newest closed chunk."""
    folder = shlex.quote(lab.setting(host, "data_storage_dst"))
    newest = lab.run(host, f"find {folder} -path '*/.*' -prune -o -name '*.jsonl' "
                     "-printf '%T@ %h\\n' | sort -n | tail -1").stdout.split()
    day, hour = newest[-1].split("/")[-2:]
    return f"{day}T{hour}"


def _failing_cycles(lab: Lab) -> None:
    """`collector upload` as cron would run it while OSF is broken: each run must fail
    cleanly (one line, non-zero exit)."""
    for cycle in range(1, OSF_CYCLES + 1):
        started = time.monotonic()
        result = _upload(lab)
        wrong = _one_line_failure(result)
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        print(f"   upload {cycle}/{OSF_CYCLES} during the fault: rc {result.returncode} "
              f"in {time.monotonic() - started:.1f} s: {last[-160:]}", flush=True)
        if wrong:
            raise RuntimeError(wrong)


def _start_upload(lab: Lab, name: str) -> None:
    """The next upload cycle, in the background on the main; the runner meanwhile polls
    `collector status`, which stays degraded until an upload succeeds."""
    result = f"{RESULT_FILE}-{name}"
    command = f"{as_collector('upload')} > {result}.log 2>&1; echo $? > {result}.rc"
    lab.run(lab.main, f"rm -f {result}.rc; setsid sh -c {shlex.quote(command)} "
                      "< /dev/null > /dev/null 2>&1 &")


def _check_recovery_upload(lab: Lab, name: str) -> str:
    """The first upload after the fault: exit 0 and nothing left pending."""
    result = f"{RESULT_FILE}-{name}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        rc = lab.run(lab.main, f"cat {result}.rc", check=False).stdout.strip()
        if rc:
            break
        time.sleep(2)
    else:
        return "the upload after the fault did not finish within 300 s"
    log = lab.run(lab.main, f"cat {result}.log", check=False).stdout
    done = [line for line in log.splitlines() if "upload done:" in line]
    print(f"   {name}: first upload after the fault: rc {rc}; "
          f"{done[-1].split('upload done: ')[-1] if done else log.strip()[-200:]}", flush=True)
    if rc != "0":
        return f"the first upload after the fault failed (rc {rc}): {log.strip()[-200:]}"
    if not done or " 0 pending" not in done[-1]:
        return "the first upload after the fault left files pending"
    return ""


def _osf_verify(name: str) -> Callable[[Lab], str]:
    def verify(lab: Lab) -> str:
        problems = list(_problems.get(name, []))
        if problem := _check_recovery_upload(lab, name):
            problems.append(problem)
        # The runner's flush merged the hours again: the next hourly upload publishes that.
        result = _upload(lab)
        if result.returncode != 0:
            problems.append(f"upload after the flush failed: {result.stderr.strip()[-200:]}")
        missing = differences(vault_contents(lab), osf_contents(lab))
        if missing:
            problems.append(f"OSF lacks or differs on {len(missing)} file(s): "
                            + ", ".join(missing[:4]))
        return "; ".join(problems)
    return verify


def _osf_down(name: str) -> tuple[Step, Step]:
    def inject(lab: Lab) -> None:
        _osf_files_before[name] = osf_contents(lab)
        stop_process(lab.state, "fake_osf")
        _failing_cycles(lab)

    def recover(lab: Lab) -> None:
        if nspawn.pid_alive(int(lab.state["processes"]["fake_osf"]["pid"])):
            _problem(name, "the fake OSF was still running")  # the fault never happened
        lab.fleet.restart_process(lab.state, "fake_osf")
        try:
            after = osf_contents(lab)
        except OSError as error:
            _problem(name, f"the fake OSF did not come back: {error}")
        else:
            if after != _osf_files_before.get(name, after):
                _problem(name, "the fake OSF came back without the files it had")
        _start_upload(lab, name)
    return inject, recover


_osf_files_before: dict[str, dict[str, str]] = {}


def _osf_fault(name: str, fault: dict[str, Any]) -> tuple[Step, Step]:
    def inject(lab: Lab) -> None:
        _osf_control(lab, "POST", dict(fault, count=100_000))
        _failing_cycles(lab)

    def recover(lab: Lab) -> None:
        try:
            _osf_control(lab, "DELETE")
        except OSError as error:
            _problem(name, f"cannot clear the fake OSF's faults: {error}")
        _start_upload(lab, name)
    return inject, recover


# ---- SMTP down ------------------------------------------------------------------------------

CRASH_KIND = "stream_crashed"
_mails_before: set[str] = set()  # the maildir's files when smtp-down began


def _mails(lab: Lab) -> dict[str, str]:
    """Subject of every mail in the lab's maildir, by file name."""
    found = {}
    for path in sorted(Path(lab.state["maildir"]).glob("*.eml")):
        text = path.read_text(errors="replace")
        subject = next((line[len("Subject:"):].strip() for line in text.splitlines()
                        if line.startswith("Subject:")), "")
        found[path.name] = subject
    return found


def _outbox(lab: Lab) -> list[str]:
    folder = f"{lab.setting(lab.main, 'data_storage_dst')}/.collector/{OUTBOX}"
    return lab.run(lab.main, f"ls {folder} 2>/dev/null", check=False).stdout.split()


def _smtp_setup(lab: Lab) -> None:
    """Forget when the main last mailed `stream_crashed`, as if an hour had passed: the
    once-an-hour rule would otherwise (rightly) hold back this scenario's alert on a rerun."""
    _problems.pop("smtp-down", None)
    state = f"{lab.setting(lab.main, 'data_storage_dst')}/.collector/alerts_sent.json"
    script = ("import json, pathlib, sys; p = pathlib.Path(sys.argv[1]); "
              "d = json.loads(p.read_text()) if p.exists() else {}; "
              f"d.pop({CRASH_KIND!r}, None); p.write_text(json.dumps(d))")
    lab.run(lab.main, f"runuser -u collector -- python3 -c {shlex.quote(script)} {state}")
    _mails_before.clear()
    _mails_before.update(_mails(lab))


def _smtp_inject(lab: Lab) -> None:
    stop_process(lab.state, "smtp")
    lab.kill_stream(lab.main)
    deadline = time.monotonic() + 120
    while not any(CRASH_KIND in name for name in _outbox(lab)):
        if time.monotonic() > deadline:
            raise RuntimeError("the stream_crashed alert never reached the main's outbox")
        time.sleep(2)
    journal = lab.run(lab.main, "journalctl -u collector.service --since -5min -o cat "
                      f"| grep 'alert {CRASH_KIND} not emailed' | tail -n 1",
                      check=False).stdout.strip()
    print(f"   queued on {lab.main}: {journal[-200:]}", flush=True)
    # The main's hourly cron job while mail is down: the upload works, the mail stays queued.
    result = _upload(lab)
    if result.returncode != 0:
        raise RuntimeError(f"collector upload failed while only mail was down: "
                           f"{result.stderr.strip()[-200:]}")
    if "Traceback" in result.stderr:
        raise RuntimeError("collector upload printed a traceback while mail was down")
    if not any(CRASH_KIND in name for name in _outbox(lab)):
        raise RuntimeError("the queued alert left the outbox while mail was down")


def _smtp_recover(lab: Lab) -> None:
    lab.fleet.restart_process(lab.state, "smtp")
    back = time.monotonic()
    result = _upload(lab)  # the main's next hourly cron job
    if result.returncode != 0:
        _problem("smtp-down", f"collector upload failed: {result.stderr.strip()[-200:]}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _new_crash_mails(lab):
            print(f"   the queued alert arrived {time.monotonic() - back:.1f} s after SMTP came "
                  "back", flush=True)
            return
        time.sleep(0.5)


def _new_crash_mails(lab: Lab) -> list[str]:
    return [name for name, subject in _mails(lab).items()
            if CRASH_KIND in subject and name not in _mails_before]


def _smtp_verify(lab: Lab) -> str:
    problems = list(_problems.get("smtp-down", []))
    crashed = _new_crash_mails(lab)
    if not crashed:
        problems.append(f"no {CRASH_KIND} mail arrived after SMTP came back")
    elif len(crashed) > 1:
        problems.append(f"{len(crashed)} {CRASH_KIND} mails arrived (one expected)")
    if left := [name for name in _outbox(lab) if not name.startswith(".")]:
        problems.append(f"{len(left)} mail(s) still queued on {lab.main}")
    return "; ".join(problems)


# ---- the scenarios --------------------------------------------------------------------------

OSF_FAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    # WaterButler rate-limits uploads: every request to it answers 429 with Retry-After 2 s,
    # which the uploader honours twice before giving up (3 attempts).
    "osf-429": ("OSF (WaterButler) answers every request with 429, Retry-After 2 s",
                {"status": 429, "retry_after": 2, "path": "^/v1/"}),
    # The project's storage quota is used up: file uploads answer 507 (folders still work).
    "osf-507": ("OSF answers every file upload with 507 (storage quota exhausted)",
                {"status": 507, "method": "PUT", "path": "^/v1/", "query": "kind=file"}),
}


def scenarios() -> list[Scenario]:
    down_inject, down_recover = _osf_down("osf-down")
    found = [Scenario("osf-down", f"5. OSF down (fake OSF process stopped, connection refused) "
                      f"for {OSF_CYCLES} `upload` runs, then back on its port with its files",
                      down_inject, down_recover, setup=_due_upload("osf-down"),
                      verify=_osf_verify("osf-down"))]
    for name, (text, fault) in OSF_FAULTS.items():
        inject, recover = _osf_fault(name, fault)
        found.append(Scenario(name, f"5. {text}, for {OSF_CYCLES} `upload` runs", inject,
                              recover, setup=_due_upload(name), verify=_osf_verify(name)))
    found.append(Scenario(
        "smtp-down", "5. SMTP server down (process stopped) while the main's stream is killed "
        "(-9): the stream_crashed alert waits in the outbox, mailed by the next `upload` once "
        "SMTP is back", _smtp_inject, _smtp_recover, setup=_smtp_setup,
        reconnects=lambda lab: [lab.main], verify=_smtp_verify))
    return found
