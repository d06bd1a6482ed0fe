"""Is the previous holder of an agent id provably gone? The facts that identify a process, and the rule.

A worker restarted by its supervisor (systemd, a Kubernetes StatefulSet) comes back with its id
while its dead predecessor's key is still live on the server. Waiting for that key's TTL would make
the restart crash-loop, so a predecessor that is *provably* gone is replaced at once. Proof needs
facts a presence value carries (all optional: values from older versions have none of them):

- ``host`` plus the kernel's boot id (``/proc/sys/kernel/random/boot_id``): the same machine, since
  the same boot (a host name alone is not unique: a pod rescheduled to another node keeps it);
- the pid namespace (inode of ``/proc/self/ns/pid``): pids mean the same thing only inside one;
- the pid and its start time (clock ticks since boot, field 22 of ``/proc/<pid>/stat``): a pid that
  is absent, or whose process started at another time, is not the holder any more (pid reuse; a
  restarted container whose process is pid 1 again).

:func:`judge` is the rule, a pure function; :func:`local_process` and :func:`process_start` read
``/proc`` (Linux). Anything that cannot be proved — another host or boot, another pid namespace, a
value without these facts, no ``/proc`` — is :attr:`Verdict.UNPROVEN`: the caller waits for the old
key to expire instead of replacing it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

__all__ = ["Judgement", "ProcessFacts", "Verdict", "judge", "local_process", "process_start"]

PROC = "/proc"


class Verdict(StrEnum):
    """What is known about the process that holds an agent's key."""

    GONE = "gone"
    """Provably not running any more: its key may be replaced at once."""
    ALIVE = "alive"
    """Provably running (on this host, in this pid namespace): the id is taken."""
    UNPROVEN = "unproven"
    """Neither can be proved from here: wait for its key to expire (or to be renewed)."""


@dataclass(frozen=True)
class Judgement:
    """A :class:`Verdict` and the reason for it, in a few words (for logs and messages)."""

    verdict: Verdict
    why: str


@dataclass(frozen=True)
class ProcessFacts:
    """What identifies one process across restarts; every field may be unknown (None)."""

    host: str | None
    boot_id: str | None
    pid_ns: int | None
    pid: int | None
    pid_started: int | None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def process_start(pid: int, proc: str = PROC) -> int | None:
    """Start time of ``pid`` (clock ticks since boot) in our pid namespace, or None if it is not running.

    A zombie (killed, not yet reaped) or dead process counts as not running: it holds no connection
    and renews nothing. None as well where there is no ``/proc``.
    """
    if pid <= 0:
        return None
    stat = _read(f"{proc}/{pid}/stat")
    if stat is None:
        return None
    # "pid (comm) state ppid ... starttime ...": comm may hold spaces and parentheses.
    fields = stat.rpartition(")")[2].split()
    try:
        state, started = fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None
    return None if state in ("Z", "X", "x") else started


def _pid_namespace(proc: str) -> int | None:
    try:
        return os.stat(f"{proc}/self/ns/pid").st_ino
    except OSError:
        return None


def local_process() -> ProcessFacts:
    """The facts of this process (``boot_id``, ``pid_ns`` and ``pid_started`` None without ``/proc``).

    Cached per pid: a forked child reads its own.
    """
    return _local(os.getpid())


@cache
def _local(pid: int) -> ProcessFacts:
    boot = (_read(f"{PROC}/sys/kernel/random/boot_id") or "").strip()
    return ProcessFacts(
        host=socket.gethostname(),
        boot_id=boot or None,
        pid_ns=_pid_namespace(PROC),
        pid=pid,
        pid_started=process_start(pid),
    )


def judge(holder: ProcessFacts, me: ProcessFacts, probe: Callable[[int], int | None]) -> Judgement:
    """Whether the process described by ``holder`` is provably gone, provably alive, or neither.

    ``me`` is this process; ``probe(pid)`` gives the start time of ``pid`` in our pid namespace
    (None: no such running process), :func:`process_start` outside tests. The holder is judged only
    when it ran on this host, since this boot, in this pid namespace, with a known pid and start
    time; otherwise the verdict is :attr:`Verdict.UNPROVEN`. Then: our own pid with our start time
    is this very process (alive: another membership of ours holds the id); our pid with another
    start time is an earlier incarnation (gone); another pid is gone if it is not running or started
    at another time (its pid was reused), alive otherwise.
    """
    if None in (me.host, me.boot_id, me.pid_ns, me.pid, me.pid_started):
        return Judgement(Verdict.UNPROVEN, "this system does not show process start times (no /proc)")
    if holder.host != me.host:
        return Judgement(Verdict.UNPROVEN, f"it runs on another host ({holder.host})")
    if holder.boot_id is None or holder.pid_ns is None or holder.pid is None or holder.pid_started is None:
        return Judgement(Verdict.UNPROVEN, "its presence value does not say which process it is (an older version)")
    if holder.boot_id != me.boot_id:
        return Judgement(Verdict.UNPROVEN, "it ran on another machine of that name, or before a reboot")
    if holder.pid_ns != me.pid_ns:
        return Judgement(Verdict.UNPROVEN, "it runs in another pid namespace (another container)")
    if holder.pid == me.pid:
        if holder.pid_started == me.pid_started:
            return Judgement(Verdict.ALIVE, "it is this very process")
        return Judgement(Verdict.GONE, f"pid {holder.pid} is now this process, started later")
    running = probe(holder.pid)
    if running is None:
        return Judgement(Verdict.GONE, f"pid {holder.pid} is not running")
    if running != holder.pid_started:
        return Judgement(Verdict.GONE, f"pid {holder.pid} is now another process")
    return Judgement(Verdict.ALIVE, f"pid {holder.pid} is still running")
