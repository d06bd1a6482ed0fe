"""``corral submit`` as a user runs it: resubmitting, waiting, and what it shows while it waits."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time

import pytest

from coord.server import NatsServer
from tests.conftest import PYTHON
from tests.corral.helpers_cli import corral

pytestmark = pytest.mark.timeout(60)


async def test_the_same_submit_twice_is_idempotent_and_a_different_one_is_refused(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    args = ("submit", "-q", "idle", "--id", "dup1", "--payload", "1")
    first = await corral(nats_server.url, namespace, subprocess_env, *args)
    again = await corral(nats_server.url, namespace, subprocess_env, *args)
    assert (first.code, again.code) == (0, 0), (first, again)
    assert "submitted dup1" in again.out
    other = await corral(
        nats_server.url, namespace, subprocess_env, "submit", "-q", "idle", "--id", "dup1", "--payload", "2"
    )
    assert other.code == 1 and "already exists with a different definition" in other.err
    shown = await corral(nats_server.url, namespace, subprocess_env, "tasks", "show", "dup1", "--json")
    assert re.fullmatch(r"cli-[A-Za-z0-9_-]+", json.loads(shown.out)["record"]["parent"])


async def test_wait_has_a_documented_default_timeout(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    shown = await corral(nats_server.url, namespace, subprocess_env, "submit", "--help")
    assert shown.code == 0
    [line] = [line for line in shown.out.splitlines() if "--wait-timeout" in line]
    assert "[default: 600.0]" in line


def test_wait_shows_progress_on_a_terminal_and_nothing_off_one(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    base = [PYTHON, "-m", "corral", "--server", nats_server.url, "--namespace", namespace, "submit", "-q", "nobody"]
    env = {**subprocess_env, "COLUMNS": "200", "TERM": "xterm"}
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*base, "--id", "watched", "--wait", "--wait-timeout", "3"], env=env, stdout=subprocess.PIPE, stderr=slave
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break  # the child closed the terminal
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(10) == 2
    text = seen.decode(errors="replace")
    assert "waiting for watched: pending, attempt 0/3" in text, text
    assert "did not finish within 3.0s" in text

    quiet = subprocess.run(
        [*base, "--id", "unwatched", "--wait", "--wait-timeout", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert quiet.returncode == 2
    assert "waiting for" not in quiet.stderr and "did not finish within 1.0s" in quiet.stderr


async def test_payload_from_a_file_and_output_flags_are_checked_before_connecting(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str], tmp_path: object
) -> None:
    missing = await corral(nats_server.url, namespace, subprocess_env, "submit", "--payload", "@/nonexistent/p.json")
    assert missing.code == 2 and "--payload" in missing.err and "cannot read '/nonexistent/p.json'" in missing.err
    assert "Traceback" not in missing.err
    alone = await corral(nats_server.url, namespace, subprocess_env, "submit", "--output", "/tmp/x.json")
    assert alone.code == 2 and "--output needs --wait" in alone.err
    payload = os.path.join(str(tmp_path), "p.json")
    with open(payload, "w") as f:
        json.dump({"n": 7}, f)
    ok = await corral(
        nats_server.url, namespace, subprocess_env, "submit", "-q", "idle", "--id", "f1", "--payload", f"@{payload}"
    )
    assert ok.code == 0, ok
    shown = await corral(nats_server.url, namespace, subprocess_env, "tasks", "show", "f1", "--json")
    assert json.loads(shown.out)["payload"] == {"n": 7}
