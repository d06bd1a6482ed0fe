"""The "is the previous holder of this id provably gone?" rule, without a server, and the /proc facts it uses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from coord.presence._store import _applied_ttl
from coord.presence.identity import ProcessFacts, Verdict, judge, local_process, process_start
from coord.presence.models import AgentInfo, decode_record, encode_record

ME = ProcessFacts(host="node-a", boot_id="boot-1", pid_ns=4026531836, pid=4242, pid_started=900_000)
"""This process, in the pure tests."""


def nothing_runs(pid: int) -> int | None:
    return None


def holder(**changes: object) -> ProcessFacts:
    """A predecessor on our host, boot and pid namespace, pid 17 started at tick 5000."""
    base = ProcessFacts(host="node-a", boot_id="boot-1", pid_ns=4026531836, pid=17, pid_started=5000)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_same_host_and_a_pid_that_is_not_running_is_gone() -> None:
    verdict = judge(holder(), ME, nothing_runs)
    assert verdict.verdict is Verdict.GONE
    assert "pid 17 is not running" in verdict.why


def test_a_pid_reused_by_another_process_is_gone() -> None:
    verdict = judge(holder(), ME, lambda pid: 7000 if pid == 17 else None)
    assert verdict.verdict is Verdict.GONE
    assert "another process" in verdict.why


def test_the_same_pid_still_running_since_the_same_tick_is_alive() -> None:
    assert judge(holder(), ME, lambda pid: 5000 if pid == 17 else None).verdict is Verdict.ALIVE


def test_our_own_pid_with_another_start_time_is_an_earlier_incarnation_of_us() -> None:
    # A restarted container: the new process is pid 1 again, in a pid namespace with the same inode.
    me = replace(ME, pid=1, pid_started=2_000)
    before = holder(pid=1, pid_started=1_000)
    assert judge(before, me, lambda pid: 2_000 if pid == 1 else None).verdict is Verdict.GONE


def test_our_own_pid_with_our_start_time_is_this_very_process() -> None:
    # Another membership of this process holds the id: two holders in one process are refused too.
    same = holder(pid=ME.pid, pid_started=ME.pid_started)
    assert judge(same, ME, lambda pid: ME.pid_started if pid == ME.pid else None).verdict is Verdict.ALIVE


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"host": "node-b"}, "another host"),
        ({"boot_id": "boot-0"}, "before a reboot"),
        ({"pid_ns": 4026532999}, "another pid namespace"),
        ({"boot_id": None}, "older version"),
        ({"pid_ns": None}, "older version"),
        ({"pid_started": None}, "older version"),
    ],
)
def test_what_cannot_be_proved_is_unproven_even_if_the_pid_is_not_running(changes: dict[str, object], why: str) -> None:
    verdict = judge(holder(**changes), ME, nothing_runs)
    assert verdict.verdict is Verdict.UNPROVEN
    assert why in verdict.why


def test_without_proc_nothing_can_be_proved() -> None:
    no_proc = ProcessFacts(host="node-a", boot_id=None, pid_ns=None, pid=4242, pid_started=None)
    verdict = judge(holder(), no_proc, nothing_runs)
    assert verdict.verdict is Verdict.UNPROVEN
    assert "no /proc" in verdict.why


# --- the facts, read from this machine's /proc ------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux /proc")
def test_process_start_tells_a_running_process_from_a_dead_one_and_a_zombie() -> None:
    me = local_process()
    assert me.pid == os.getpid() and me.boot_id and me.pid_ns and me.pid_started
    assert process_start(os.getpid()) == me.pid_started
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = process_start(child.pid)
        assert started is not None and started >= me.pid_started
        child.send_signal(signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead but not reaped: a zombie
        assert process_start(child.pid) is None
    finally:
        child.kill()
        child.wait()
    assert process_start(child.pid) is None
    assert process_start(0) is None


def test_process_start_reads_a_command_name_with_spaces_and_parentheses(tmp_path: Path) -> None:
    fields = ["S", *[str(n) for n in range(1, 19)], "123456", "0"]  # field 22 (starttime) is 123456
    (tmp_path / "99").mkdir()
    (tmp_path / "99" / "stat").write_text(f"99 (a (b) c) {' '.join(fields)}\n")
    assert process_start(99, proc=str(tmp_path)) == 123456
    (tmp_path / "98").mkdir()
    (tmp_path / "98" / "stat").write_text(f"98 (zz) Z {' '.join(fields[1:])}\n")
    assert process_start(98, proc=str(tmp_path)) is None
    (tmp_path / "97").mkdir()
    (tmp_path / "97" / "stat").write_text("97 (cut) S 1 2\n")
    assert process_start(97, proc=str(tmp_path)) is None


# --- the wire: new fields written, old values still read ----------------------------------------


def test_a_value_carries_the_facts_of_the_process_that_wrote_it() -> None:
    record, problem = decode_record(encode_record(AgentInfo(id="w1"), "i1"), "w1")
    assert problem == "" and record is not None
    assert record.process_facts() == local_process()
    assert "pid_started" not in record.info().model_dump()
    # Info about another pid gets no facts: they would describe the wrong process.
    other, _ = decode_record(encode_record(AgentInfo(id="w1", pid=os.getpid() + 1), "i1"), "w1")
    assert other is not None and (other.boot_id, other.pid_ns, other.pid_started) == (None, None, None)


def test_a_value_from_an_older_version_without_the_facts_still_parses_and_is_unproven() -> None:
    old = (
        b'{"id":"w1","role":"worker","host":"node-a","pid":17,"started_at":"2026-01-01T00:00:00Z",'
        b'"parent":null,"tags":[],"queues":["q"],"capacity":1,"inflight":0,"version":"0.9","instance":"abc"}'
    )
    record, problem = decode_record(old, "w1")
    assert problem == "" and record is not None
    assert record.process_facts() == ProcessFacts("node-a", None, None, 17, None)
    assert judge(record.process_facts(), ME, nothing_runs).verdict is Verdict.UNPROVEN


def test_hostile_facts_are_malformed_values_not_trusted() -> None:
    base = json.loads(encode_record(AgentInfo(id="w1"), "i1"))
    for name, bad in (("pid_started", -1), ("pid_ns", "x"), ("boot_id", "b" * 65), ("pid_ns", 2.5)):
        record, problem = decode_record(json.dumps({**base, name: bad}).encode(), "w1")
        assert record is None and problem.startswith(name)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3s", 3.0), ("1500ms", 1.0), ("20", 20.0), ("2m", 120.0), ("never", None), ("", None), ("-1s", None)],
)
def test_the_ttl_a_value_is_kept_for_is_read_as_the_server_applies_it(header: str, seconds: float | None) -> None:
    assert _applied_ttl(header) == seconds
